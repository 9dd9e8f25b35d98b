//! `vd-cred get-token <scope>...`: one token, minted by the component in a
//! sandbox built from this process's environment
//! ([`vd_cred_host::from_env`]), printed as `{"token", "expires_on"}`.

use std::process::ExitCode;

use anyhow::Result;
use vd_cred_host::Host;

/// Mint a token for `scopes` and print it as JSON on stdout; a credential
/// error is printed on stderr and the exit code is 1.
pub async fn run(scopes: &[String]) -> Result<ExitCode> {
    let env = |name: &str| std::env::var(name).ok();
    let mut sandbox = vd_cred_host::from_env::sandbox_from_env(Host::shared(), env)?
        .build()
        .await?;
    let scopes: Vec<&str> = scopes.iter().map(String::as_str).collect();
    match sandbox.get_token(&scopes).await? {
        Ok(token) => {
            let json = serde_json::json!({ "token": token.token, "expires_on": token.expires_on });
            println!("{json}");
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("error: {e}");
            Ok(ExitCode::FAILURE)
        }
    }
}
