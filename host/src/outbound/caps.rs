//! What one agent's own HTTP holds in the host at once, counted against its
//! limits ([`crate::egress::EgressLimits`]): requests in flight, connections
//! open, and bytes of request bodies held.
//!
//! Threat model: the agent is hostile. Everything it makes the host hold
//! for its requests (a request waiting for its answer, a socket, a body
//! collected in host memory) is outside its store's memory limit, so
//! without these counts one agent could take the host's memory or
//! descriptors, and with them the credential and every other agent. Each
//! count is taken before the thing it counts exists, and given back by a
//! drop guard when the thing goes, however it goes (answered, failed, or
//! abandoned by the agent): a [`Slot`] for a request or a connection, a
//! [`Reservation`] that lives exactly as long as the body bytes it covers
//! (it owns them: see [`held_bytes`]). Over a limit, the request is refused
//! (`connection-limit-reached`) and the refusal recorded; nothing waits.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;

/// Which count a refusal hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Limit {
    /// Requests sent and not yet done with (counted by the agent route).
    #[cfg_attr(not(feature = "agent"), allow(dead_code))]
    RequestsInFlight,
    /// Connections open, idle ones included.
    Connections,
    /// Bytes of request bodies held in host memory.
    BodyBytes,
}

/// Told of every refusal: the limit, and the request's `scheme://host[:port]`.
pub(crate) type OnRefusal = Box<dyn Fn(Limit, &str) + Send + Sync>;

/// One agent's counts and their limits (shared by its policy, its client
/// and every request in flight).
pub(crate) struct Caps {
    requests: usize,
    connections: usize,
    body_bytes: usize,
    in_flight: AtomicUsize,
    open: AtomicUsize,
    held: AtomicUsize,
    on_refusal: OnRefusal,
}

impl Caps {
    /// Counts starting at zero, with these limits.
    #[cfg(feature = "agent")]
    pub(crate) fn new(
        requests: usize,
        connections: usize,
        body_bytes: usize,
        on_refusal: OnRefusal,
    ) -> Arc<Caps> {
        Arc::new(Caps {
            requests,
            connections,
            body_bytes,
            in_flight: AtomicUsize::new(0),
            open: AtomicUsize::new(0),
            held: AtomicUsize::new(0),
            on_refusal,
        })
    }

    fn count(&self, limit: Limit) -> (&AtomicUsize, usize) {
        match limit {
            Limit::RequestsInFlight => (&self.in_flight, self.requests),
            Limit::Connections => (&self.open, self.connections),
            Limit::BodyBytes => (&self.held, self.body_bytes),
        }
    }

    /// Add `n` to `limit`'s count if it stays within the limit.
    fn add(&self, limit: Limit, n: usize) -> bool {
        let (count, most) = self.count(limit);
        count
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |now| {
                now.checked_add(n).filter(|&after| after <= most)
            })
            .is_ok()
    }

    fn sub(&self, limit: Limit, n: usize) {
        self.count(limit).0.fetch_sub(n, Ordering::AcqRel);
    }

    /// Record a refusal of the request to `target` by `limit`.
    pub(crate) fn refuse(&self, limit: Limit, target: &str) {
        (self.on_refusal)(limit, target);
    }

    /// A request or connection slot, or `None` (the refusal recorded) when
    /// every one is taken.
    pub(crate) fn take(self: &Arc<Self>, limit: Limit, target: &str) -> Option<Slot> {
        if self.add(limit, 1) {
            return Some(Slot {
                caps: self.clone(),
                limit,
            });
        }
        self.refuse(limit, target);
        None
    }

    /// No bytes reserved yet, for one body.
    pub(crate) fn reservation(self: &Arc<Self>) -> Reservation {
        Reservation {
            caps: self.clone(),
            bytes: 0,
        }
    }

    /// Requests in flight, connections open and body bytes held, now.
    #[cfg(feature = "agent")]
    pub(crate) fn now(&self) -> (usize, usize, usize) {
        let load = |c: &AtomicUsize| c.load(Ordering::Acquire);
        (load(&self.in_flight), load(&self.open), load(&self.held))
    }
}

/// A request in flight or a connection open, counted until dropped.
pub(crate) struct Slot {
    caps: Arc<Caps>,
    limit: Limit,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.caps.sub(self.limit, 1);
    }
}

/// Body bytes counted against the agent's limit, until dropped.
pub(crate) struct Reservation {
    caps: Arc<Caps>,
    bytes: usize,
}

impl Reservation {
    /// Count `n` more bytes, if the limit allows.
    pub(crate) fn grow(&mut self, n: usize) -> bool {
        let ok = self.caps.add(Limit::BodyBytes, n);
        if ok {
            self.bytes += n;
        }
        ok
    }

    /// Stop counting `n` of the bytes counted (they were let go).
    pub(crate) fn release(&mut self, n: usize) {
        let n = n.min(self.bytes);
        self.caps.sub(Limit::BodyBytes, n);
        self.bytes -= n;
    }

    /// Record the refusal of the body to `target`.
    pub(crate) fn refuse(&self, target: &str) {
        self.caps.refuse(Limit::BodyBytes, target);
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.caps.sub(Limit::BodyBytes, self.bytes);
    }
}

#[cfg(feature = "agent")]
pub(crate) use held_answer::holding;

/// An agent's answers, each holding its request's slot (the agent route's
/// egress only).
#[cfg(feature = "agent")]
mod held_answer {
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use bytes::Bytes;
    use http_body_util::BodyExt;
    use hyper::body::{Body, Frame};
    use wasmtime_wasi_http::{Error, WasiBody};

    use super::Slot;

    /// `response` whose body holds `slot` (its request's) until the body is
    /// done with: read to its end, failed, or dropped unread.
    pub(crate) fn holding(
        slot: Slot,
        response: hyper::Response<WasiBody>,
    ) -> hyper::Response<WasiBody> {
        response.map(|body| {
            SlotBody {
                body,
                slot: Some(slot),
            }
            .boxed_unsync()
        })
    }

    /// An answer's body holding its request's slot until it ends.
    struct SlotBody {
        body: WasiBody,
        slot: Option<Slot>,
    }

    impl Body for SlotBody {
        type Data = Bytes;
        type Error = Error;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
            let polled = Pin::new(&mut self.body).poll_frame(cx);
            if matches!(polled, Poll::Ready(None | Some(Err(_)))) {
                self.slot = None;
            }
            polled
        }

        fn is_end_stream(&self) -> bool {
            self.body.is_end_stream()
        }

        fn size_hint(&self) -> hyper::body::SizeHint {
            self.body.size_hint()
        }
    }
}

/// `data` as [`Bytes`] that own `reservation`: the bytes stay counted for
/// as long as any copy of them is alive (in a retry, in hyper's write
/// queue), and no longer.
pub(crate) fn held_bytes(data: Vec<u8>, reservation: Reservation) -> Bytes {
    Bytes::from_owner(Held {
        data,
        _reservation: reservation,
    })
}

struct Held {
    data: Vec<u8>,
    _reservation: Reservation,
}

impl AsRef<[u8]> for Held {
    fn as_ref(&self) -> &[u8] {
        &self.data
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    fn caps(refused: &Arc<Mutex<Vec<(Limit, String)>>>) -> Arc<Caps> {
        let seen = refused.clone();
        Caps::new(
            2,
            1,
            100,
            Box::new(move |limit, target| seen.lock().unwrap().push((limit, target.into()))),
        )
    }

    #[test]
    fn slots_are_refused_past_the_limit_and_given_back_when_dropped() {
        let refused = Arc::default();
        let caps = caps(&refused);
        let a = caps.take(Limit::RequestsInFlight, "http://a").unwrap();
        let _b = caps.take(Limit::RequestsInFlight, "http://b").unwrap();
        assert!(caps.take(Limit::RequestsInFlight, "http://c").is_none());
        let _conn = caps.take(Limit::Connections, "http://a").unwrap();
        assert!(caps.take(Limit::Connections, "http://d").is_none());
        assert_eq!(caps.now(), (2, 1, 0));
        drop(a);
        assert!(caps.take(Limit::RequestsInFlight, "http://c").is_some());
        assert_eq!(
            *refused.lock().unwrap(),
            [
                (Limit::RequestsInFlight, "http://c".to_string()),
                (Limit::Connections, "http://d".to_string())
            ]
        );
    }

    #[test]
    fn held_bytes_stay_counted_while_any_copy_lives() {
        let refused = Arc::default();
        let caps = caps(&refused);
        let mut r = caps.reservation();
        assert!(r.grow(60));
        let mut other = caps.reservation();
        assert!(!other.grow(41), "60 + 41 is over 100");
        assert!(other.grow(40));
        drop(other);
        let mut grown = caps.reservation();
        assert!(grown.grow(30));
        grown.release(20);
        assert_eq!(caps.now().2, 70);
        drop(grown);
        let bytes = held_bytes(vec![7; 60], r);
        let copy = bytes.slice(10..20);
        drop(bytes);
        assert_eq!(caps.now().2, 60);
        assert_eq!(&copy[..], &[7; 10]);
        drop(copy);
        assert_eq!(caps.now().2, 0);
    }
}
