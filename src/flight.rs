//! Shared mints: concurrent misses for one audience and bearer wait for one
//! request to the broker and all receive its answer, or its one failure.
//!
//! Only a build whose exports are `async` (WASI 0.3) ever has concurrent
//! calls in one instance; under WASI 0.2 a call finishes before the next
//! starts, so every flight has its leader alone.
//!
//! The first call to miss leads: it mints and [`Lead::land`]s the outcome.
//! Calls that miss while it is in the air [`Flights::join`] it and wait for
//! that outcome, each within its own deadline. A leader that is dropped
//! before landing (its caller cancelled) abandons the flight: its followers
//! wake and try again, one of them leading.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use crate::CredentialError;
use crate::cache::{BearerDigest, TokenInfo};

/// What a flight ended with, as every caller on it receives it.
pub type Outcome = Result<TokenInfo, CredentialError>;

/// The flights in the air, by audience and bearer.
#[derive(Debug, Default)]
pub struct Flights {
    flying: Mutex<Vec<(Key, Arc<Flight>)>>,
}

type Key = (String, BearerDigest);

#[derive(Debug, Default)]
struct Flight {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// `None` while in the air; then the outcome, or `Some(None)`: abandoned.
    landed: Option<Option<Outcome>>,
    waiting: Vec<Waker>,
}

/// How a call takes part in a flight.
pub enum Joined<'f> {
    /// No flight was in the air for the key: this call mints and lands.
    Lead(Lead<'f>),
    /// Another call is minting: wait for its outcome.
    Follow(Follow),
}

impl Flights {
    /// Join the flight for `audience` and `digest`, or start it.
    pub fn join(&self, audience: &str, digest: BearerDigest) -> Joined<'_> {
        let mut flying = self.flying.lock().unwrap();
        if let Some((_, flight)) = flying
            .iter()
            .find(|((a, d), _)| a == audience && *d == digest)
        {
            return Joined::Follow(Follow {
                flight: flight.clone(),
            });
        }
        let flight = Arc::new(Flight::default());
        let key = (audience.to_string(), digest);
        flying.push((key.clone(), flight.clone()));
        Joined::Lead(Lead {
            flights: self,
            key,
            flight,
            landed: false,
        })
    }

    /// Whether a flight for `audience` and `digest` is in the air.
    pub fn in_air(&self, audience: &str, digest: BearerDigest) -> bool {
        let flying = self.flying.lock().unwrap();
        flying
            .iter()
            .any(|((a, d), _)| a == audience && *d == digest)
    }

    fn end(&self, key: &Key, flight: &Arc<Flight>, outcome: Option<Outcome>) {
        self.flying
            .lock()
            .unwrap()
            .retain(|(k, f)| !(k == key && Arc::ptr_eq(f, flight)));
        let waiting = {
            let mut state = flight.state.lock().unwrap();
            state.landed = Some(outcome);
            std::mem::take(&mut state.waiting)
        };
        waiting.into_iter().for_each(Waker::wake);
    }
}

/// The call minting for a flight. Dropped without [`Lead::land`], it
/// abandons the flight.
pub struct Lead<'f> {
    flights: &'f Flights,
    key: Key,
    flight: Arc<Flight>,
    landed: bool,
}

impl Lead<'_> {
    /// End the flight with `outcome`, which every follower receives.
    pub fn land(mut self, outcome: &Outcome) {
        self.landed = true;
        self.flights
            .end(&self.key, &self.flight, Some(outcome.clone()));
    }
}

impl Drop for Lead<'_> {
    fn drop(&mut self) {
        if !self.landed {
            self.flights.end(&self.key, &self.flight, None);
        }
    }
}

/// Waiting for another call's mint: the outcome, or `None` if that call
/// was dropped before it landed (try again).
pub struct Follow {
    flight: Arc<Flight>,
}

impl Future for Follow {
    type Output = Option<Outcome>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut state = self.flight.state.lock().unwrap();
        match &state.landed {
            Some(outcome) => Poll::Ready(outcome.clone()),
            None => {
                if !state.waiting.iter().any(|w| w.will_wake(cx.waker())) {
                    state.waiting.push(cx.waker().clone());
                }
                Poll::Pending
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Secret;
    use std::task::Waker;

    fn info(token: &str) -> TokenInfo {
        TokenInfo {
            token: Secret::new(token.into()),
            expires_on: 100,
            refresh_on: None,
        }
    }

    fn digest(b: &str) -> BearerDigest {
        BearerDigest::of(&Secret::new(b.into()))
    }

    fn poll(follow: &mut Follow) -> Poll<Option<Outcome>> {
        Pin::new(follow).poll(&mut Context::from_waker(Waker::noop()))
    }

    #[test]
    fn followers_get_the_leaders_outcome_and_the_flight_ends() {
        let flights = Flights::default();
        let Joined::Lead(lead) = flights.join("vault", digest("a")) else {
            panic!("first call leads")
        };
        let Joined::Follow(mut one) = flights.join("vault", digest("a")) else {
            panic!("second call follows")
        };
        let Joined::Follow(mut two) = flights.join("vault", digest("a")) else {
            panic!("third call follows")
        };
        // Another audience, another bearer: flights of their own.
        assert!(matches!(
            flights.join("storage", digest("a")),
            Joined::Lead(_)
        ));
        assert!(matches!(
            flights.join("vault", digest("b")),
            Joined::Lead(_)
        ));
        assert!(poll(&mut one).is_pending());
        lead.land(&Ok(info("t")));
        assert_eq!(poll(&mut one), Poll::Ready(Some(Ok(info("t")))));
        assert_eq!(poll(&mut two), Poll::Ready(Some(Ok(info("t")))));
        assert!(!flights.in_air("vault", digest("a")));
        assert!(matches!(
            flights.join("vault", digest("a")),
            Joined::Lead(_)
        ));
    }

    #[test]
    fn a_failure_is_shared_too() {
        let flights = Flights::default();
        let Joined::Lead(lead) = flights.join("vault", digest("a")) else {
            panic!()
        };
        let Joined::Follow(mut follower) = flights.join("vault", digest("a")) else {
            panic!()
        };
        let error = CredentialError::BrokerUnreachable("down".into());
        lead.land(&Err(error.clone()));
        assert_eq!(poll(&mut follower), Poll::Ready(Some(Err(error))));
    }

    #[test]
    fn a_dropped_leader_abandons_and_wakes_its_followers() {
        let flights = Flights::default();
        let Joined::Lead(lead) = flights.join("vault", digest("a")) else {
            panic!()
        };
        let Joined::Follow(mut follower) = flights.join("vault", digest("a")) else {
            panic!()
        };
        assert!(poll(&mut follower).is_pending());
        drop(lead);
        assert_eq!(poll(&mut follower), Poll::Ready(None));
        assert!(matches!(
            flights.join("vault", digest("a")),
            Joined::Lead(_)
        ));
    }
}
