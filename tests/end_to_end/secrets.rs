//! No error text, in any scenario, holds the bearer or a minted token; and
//! the component writes nothing to stdout or stderr.

use std::time::Duration;

use host_test::Reply;
use vd_cred_broker::CredentialError as E;

use crate::{Fixture, VAULT, options};

/// The error kind a scenario must end in.
type Kind = fn(&E) -> bool;

const TOKEN: &str = "eyJ0eXAiOiJKV1QifQ.minted-secret-token.sig";

#[tokio::test]
async fn no_error_or_output_contains_a_secret() {
    let f = Fixture::new();
    let echo_bearer = format!(r#"{{"error":"bad bearer","got":"{}"}}"#, f.bearer);
    let echo_both = format!("rejected Bearer {} (had {TOKEN})", f.bearer);
    let rejected: Kind = |e| matches!(e, E::BrokerRejected { .. });
    let failed: Kind = |e| matches!(e, E::BrokerFailed { .. });
    let invalid: Kind = |e| matches!(e, E::InvalidResponse(_));
    let unreachable: Kind = |e| matches!(e, E::BrokerUnreachable(_));
    let scenarios: Vec<(&str, Reply, Kind)> = vec![
        (
            "401 echoing the bearer",
            Reply::json(401, echo_bearer.clone()),
            rejected,
        ),
        (
            "403 plain text echo",
            Reply::json(403, echo_both.clone()),
            rejected,
        ),
        (
            "500 echoing both",
            Reply::json(
                500,
                format!(r#"{{"access_token":"{TOKEN}","detail":"{}"}}"#, f.bearer),
            ),
            failed,
        ),
        (
            "502 text",
            Reply::json(502, format!("upstream gave {TOKEN} for {}", f.bearer)),
            failed,
        ),
        (
            "200 bad expires_in",
            Reply::json(
                200,
                format!(r#"{{"access_token":"{TOKEN}","expires_in":"never"}}"#),
            ),
            invalid,
        ),
        (
            "200 zero expires_in",
            Reply::json(
                200,
                format!(r#"{{"access_token":"{TOKEN}","expires_in":0}}"#),
            ),
            invalid,
        ),
        (
            "200 not an object",
            Reply::json(200, format!(r#"["{TOKEN}"]"#)),
            invalid,
        ),
        (
            "200 token with a space",
            Reply::json(200, format!(r#"{{"access_token":"{TOKEN} x"}}"#)),
            invalid,
        ),
        (
            "dropped",
            Reply::Drop {
                delay: Duration::ZERO,
            },
            unreachable,
        ),
        (
            // Far past the 400 ms deadline set for it below, so the
            // deadline comes first however slow the machine.
            "slow",
            Reply::Mint.after(Duration::from_secs(30)),
            unreachable,
        ),
    ];
    for (name, reply, kind) in scenarios {
        // As the default, so retries of a transient failure get it too.
        f.broker.set_default(reply);
        let mut sandbox = f.sandbox().await;
        let mut o = options();
        // Only the slow broker gets a short deadline: the others keep the
        // default, so that a busy machine cannot turn their answer into a
        // timeout (a 502 once ended as `BrokerUnreachable` under load).
        if name == "slow" {
            o.timeout_ms = Some(400);
        }
        let credential = sandbox.open(&o).await.unwrap().unwrap();
        let err = sandbox
            .credential_get_token(credential, &[VAULT])
            .await
            .unwrap()
            .unwrap_err();
        assert!(kind(&err), "{name}: unexpected error kind: {err}");
        let texts = [
            err.to_string(),
            format!("{err:?}"),
            sandbox.describe_error(&err).await.unwrap(),
        ];
        for text in &texts {
            assert!(!text.contains(&f.bearer), "{name}: bearer leaked: {text}");
            assert!(
                !text.contains("minted-secret-token"),
                "{name}: token leaked: {text}"
            );
        }
        let (out, errout) = sandbox.output();
        assert!(
            out.is_empty() && errout.is_empty(),
            "{name}: the component wrote output: {:?} / {:?}",
            String::from_utf8_lossy(&out),
            String::from_utf8_lossy(&errout)
        );
    }
    f.broker.set_default(Reply::Mint);
    // Errors before the broker: the bearer is read but must not be echoed.
    for content in [
        format!("{}\nsecond-line", f.bearer),
        format!("{}\u{7}", f.bearer),
    ] {
        f.write_bearer(&content);
        let err = f.get_token(&[VAULT]).await.unwrap_err();
        assert!(matches!(err, E::BearerUnavailable(_)), "{err}");
        assert!(!err.to_string().contains(&f.bearer), "bearer leaked: {err}");
    }
}
