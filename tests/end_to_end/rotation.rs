//! The bearer file is re-read on every call: Studio rotates it.

use crate::{Fixture, VAULT, options};

/// The `Authorization` header of every request the broker received, in order.
fn authorizations(f: &Fixture) -> Vec<String> {
    f.broker
        .requests()
        .iter()
        .map(|r| r.header("authorization").unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn each_call_carries_the_current_bearer() {
    let f = Fixture::new();
    let mut sandbox = f.sandbox().await;
    let credential = sandbox.open(&options()).await.unwrap().unwrap();
    let first = sandbox
        .credential_get_token(credential, &[VAULT])
        .await
        .unwrap()
        .unwrap();
    f.write_bearer("vd_iat_rotated\n");
    let second = sandbox
        .credential_get_token(credential, &[VAULT])
        .await
        .unwrap()
        .unwrap();
    assert_ne!(first.token, second.token);

    let auth = authorizations(&f);
    assert_eq!(
        auth,
        [
            format!("Bearer {}", f.bearer),
            "Bearer vd_iat_rotated".to_string()
        ]
    );
}

#[tokio::test]
async fn a_bearer_removed_after_a_success_fails_the_next_call() {
    let f = Fixture::new();
    let mut sandbox = f.sandbox().await;
    sandbox.get_token(&[VAULT]).await.unwrap().unwrap();
    std::fs::remove_file(f.dir.path().join("credential")).unwrap();
    let err = sandbox.get_token(&[VAULT]).await.unwrap().unwrap_err();
    assert!(
        matches!(err, vd_cred_broker::CredentialError::BearerUnavailable(_)),
        "{err}"
    );
    assert_eq!(f.broker.request_count(), 1);
}

/// The rotation race: the call read the old bearer just before Studio
/// rotated the file; the broker, which accepts only the new bearer, answers
/// 401. The credential sees the file changed, reads the new bearer and tries
/// once more, inside the same deadline.
#[tokio::test]
async fn a_rejection_after_a_rotation_is_retried_once_with_the_new_bearer() {
    use host_test::Reply;

    let f = Fixture::new();
    let new = "vd_iat_rotated_in_flight";
    f.broker.set_default(Reply::Authorized {
        bearer: new.into(),
        then: Box::new(Reply::Mint),
    });
    // The file is rotated once the broker has the request with the old
    // bearer, before it answers 401: at that point of the call, whatever
    // the machine's speed.
    f.broker
        .push(Reply::json(401, r#"{"error":"bearer rotated"}"#));
    let path = f.dir.path().join("credential");
    f.broker.on_request(move |n, _| {
        if n == 1 {
            std::fs::write(&path, format!("{new}\n")).unwrap();
        }
    });
    let token = f.get_token(&[VAULT]).await.unwrap();
    assert_eq!(token.token, "mock-token-2");
    let auth = authorizations(&f);
    assert_eq!(
        auth,
        [format!("Bearer {}", f.bearer), format!("Bearer {new}")]
    );
}

/// Never more than once, and never with the same bearer.
#[tokio::test]
async fn a_rejection_is_retried_only_for_a_changed_bearer_and_only_once() {
    use host_test::Reply;

    let f = Fixture::new();
    f.broker
        .set_default(Reply::json(401, r#"{"error":"revoked"}"#));
    // Unchanged bearer: one request.
    let err = f.get_token(&[VAULT]).await.unwrap_err();
    assert!(
        matches!(
            err,
            vd_cred_broker::CredentialError::BrokerRejected { status: 401, .. }
        ),
        "{err}"
    );
    assert_eq!(f.broker.request_count(), 1);
    // Rotated to a bearer the broker also rejects (once the broker has the
    // second call's request, before it answers): one more, then the 401.
    let path = f.dir.path().join("credential");
    f.broker.on_request(move |n, _| {
        if n == 2 {
            std::fs::write(&path, "vd_iat_also_revoked\n").unwrap();
        }
    });
    let err = f.get_token(&[VAULT]).await.unwrap_err();
    assert!(
        matches!(
            err,
            vd_cred_broker::CredentialError::BrokerRejected { status: 401, .. }
        ),
        "{err}"
    );
    assert_eq!(
        f.broker.request_count(),
        3,
        "the first call 1, the second 2"
    );
    let auth = authorizations(&f);
    assert_eq!(
        auth[1..],
        [
            format!("Bearer {}", f.bearer),
            "Bearer vd_iat_also_revoked".to_string()
        ],
        "the retry carries the rotated bearer"
    );
}

/// A cached call reads the bearer cheaply (the path's identity, then the kept
/// file), yet every kind of change is seen on the very next call: a rewrite
/// of the same length in place (even with its modification time put back),
/// a replace-by-rename, a truncation, a removal.
#[tokio::test]
async fn every_change_to_the_bearer_file_is_seen_on_the_next_cached_call() {
    use std::io::{Seek, SeekFrom, Write};
    use vd_cred_broker::CredentialError as E;

    let f = Fixture::new();
    let path = f.dir.path().join("credential");
    let mut sandbox = f.sandbox().await;
    let credential = sandbox.open(&options()).await.unwrap().unwrap();
    let mut call = async || {
        sandbox
            .credential_get_token(credential, &[VAULT])
            .await
            .unwrap()
    };
    let same_len = |tag: char| format!("vd_iat_{}", tag.to_string().repeat(16));
    assert_eq!(f.bearer.len(), same_len('a').len());

    call().await.unwrap();
    call().await.unwrap(); // a hit: nothing sent
    assert_eq!(f.broker.request_count(), 1);

    // Rewritten in place, same length, same second, modification time put back.
    let mtime = std::fs::metadata(&path).unwrap().modified().unwrap();
    let mut file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    file.write_all(format!("{}\n", same_len('b')).as_bytes())
        .unwrap();
    file.set_modified(mtime).unwrap();
    drop(file);
    call().await.unwrap();

    // Rewritten in place without truncating, same length again.
    let mut file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    file.seek(SeekFrom::Start(0)).unwrap();
    file.write_all(same_len('c').as_bytes()).unwrap();
    drop(file);
    call().await.unwrap();

    // Replaced by rename.
    std::fs::write(f.dir.path().join("next"), same_len('d')).unwrap();
    std::fs::rename(f.dir.path().join("next"), &path).unwrap();
    call().await.unwrap();

    // Truncated: the next call fails; written again: it mints.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(0)
        .unwrap();
    let err = call().await.unwrap_err();
    assert!(
        matches!(err, E::BearerUnavailable(ref m) if m.contains("is empty")),
        "{err}"
    );
    std::fs::write(&path, same_len('e')).unwrap();
    call().await.unwrap();

    // Removed: the next call fails; created again: it mints.
    std::fs::remove_file(&path).unwrap();
    let err = call().await.unwrap_err();
    assert!(
        matches!(err, E::BearerUnavailable(ref m) if m.contains("does not exist")),
        "{err}"
    );
    std::fs::write(&path, same_len('f')).unwrap();
    call().await.unwrap();
    call().await.unwrap(); // a hit again

    let sent: Vec<String> = f
        .broker
        .requests()
        .iter()
        .map(|r| {
            r.header("authorization")
                .unwrap()
                .trim_start_matches("Bearer ")
                .to_string()
        })
        .collect();
    let expected: Vec<String> = std::iter::once(f.bearer.clone())
        .chain("bcdef".chars().map(same_len))
        .collect();
    assert_eq!(sent, expected);
}
