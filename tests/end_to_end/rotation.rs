//! The bearer file is re-read on every call: Studio rotates it.

use crate::{Fixture, VAULT, options};

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

    let auth: Vec<String> = f
        .broker
        .requests()
        .iter()
        .map(|r| r.header("authorization").unwrap().to_string())
        .collect();
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
