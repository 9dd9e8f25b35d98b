//! `vd-cred run-agent <agent.wasm> --invoke '<fn>(<args>)'...`: the agent in
//! its own store ([`vd_cred_host::runner::AgentBuilder`]), its credential
//! import linked by the host to the credential in the sandbox `get-token`
//! would build, each call's results printed in WAVE and an audit line on
//! stderr for each token handed out, request injected into or call refused.

use std::net::SocketAddr;
use std::path::Path;
use std::process::ExitCode;

use anyhow::{Result, anyhow, bail, ensure};
use vd_cred_host::Host;
use vd_cred_host::linked::{AgentPolicy, LinkedCredential, TokenSource};
use vd_cred_host::runner::{self, AgentBuilder};
use wasmtime::component::wasm_wave::untyped::UntypedFuncCall;

use crate::USAGE;

/// `run-agent`'s command line, checked before anything is compiled.
#[derive(Debug, Default, PartialEq)]
pub struct Options {
    /// The agent component's file.
    pub wasm: String,
    /// The calls, in order (`--invoke`).
    pub invoke: Vec<String>,
    /// Resources or audiences the agent may get tokens for (`--allow`);
    /// `None`: the six default resources.
    pub allow: Option<Vec<String>>,
    /// Origins the agent's own HTTP may reach (`--egress`).
    pub egress: Vec<String>,
    /// Host directories preopened for the agent, with their guest paths (`--dir`).
    pub dirs: Vec<(String, String)>,
    /// The agent's environment (`--env`).
    pub env: Vec<(String, String)>,
    /// Injection rules, `defaults` for the default ones (`--inject`).
    pub inject: Vec<String>,
    /// Whether the agent's own token calls are answered (`--reveal-tokens`).
    pub reveal_tokens: Option<bool>,
    /// CA files the agent's https also trusts (`--trust`).
    pub trust: Vec<String>,
    /// Addresses for the agent's requests to a host and port (`--connect-to`).
    pub connect_to: Vec<(String, u16, SocketAddr)>,
}

impl Options {
    /// Parse `<agent.wasm> --flag value...`; a malformed option or call is
    /// an error naming it, with the usage.
    pub fn parse(args: &[String]) -> Result<Options> {
        let (wasm, flags) = args.split_first().ok_or_else(|| anyhow!("{USAGE}"))?;
        let mut o = Options {
            wasm: wasm.clone(),
            ..Options::default()
        };
        let mut rest = flags.iter();
        while let Some(flag) = rest.next() {
            let value = rest
                .next()
                .ok_or_else(|| anyhow!("{flag} needs a value\n{USAGE}"))?;
            let list = || value.split(',').filter(|v| !v.is_empty()).map(String::from);
            match flag.as_str() {
                "--invoke" => o.invoke.push(value.clone()),
                "--allow" => o.allow.get_or_insert_with(Vec::new).extend(list()),
                "--egress" => o.egress.extend(list()),
                "--dir" => {
                    let (host, guest) = value.split_once("::").unwrap_or((value, value));
                    o.dirs.push((host.into(), guest.into()));
                }
                "--env" => {
                    let (k, v) = value.split_once('=').unwrap_or((value, ""));
                    o.env.push((k.into(), v.into()));
                }
                "--inject" => o.inject.extend(list()),
                "--reveal-tokens" => {
                    o.reveal_tokens = Some(match value.as_str() {
                        "yes" => true,
                        "no" => false,
                        other => bail!("--reveal-tokens {other}: yes or no\n{USAGE}"),
                    })
                }
                "--trust" => o.trust.push(value.clone()),
                "--connect-to" => {
                    let parsed = value.split_once('=').and_then(|(from, to)| {
                        let (host, port) = from.rsplit_once(':')?;
                        Some((host.to_string(), port.parse().ok()?, to.parse().ok()?))
                    });
                    let Some(parsed) = parsed else {
                        bail!("--connect-to {value}: <host>:<port>=<ip>:<port>\n{USAGE}");
                    };
                    o.connect_to.push(parsed);
                }
                other => bail!("unknown option {other}\n{USAGE}"),
            }
        }
        ensure!(!o.invoke.is_empty(), "--invoke is required\n{USAGE}");
        // Malformed calls are reported before the agent is compiled.
        for call in &o.invoke {
            UntypedFuncCall::parse(call).map_err(|e| anyhow!("--invoke {call}: {e}"))?;
        }
        Ok(o)
    }

    /// The agent's policy: its id is the file's stem.
    fn policy(&self) -> AgentPolicy {
        let id = Path::new(&self.wasm)
            .file_stem()
            .map_or(self.wasm.clone(), |s| s.to_string_lossy().into_owned());
        let mut policy = AgentPolicy::new(id);
        if let Some(allow) = &self.allow {
            policy = policy.allow(allow);
        }
        if let Some(reveal) = self.reveal_tokens {
            policy = policy.reveal_tokens(reveal);
        }
        policy
    }

    /// The agent's store, as the options describe it.
    fn builder(&self) -> Result<AgentBuilder> {
        let mut builder = AgentBuilder::default();
        for origin in &self.egress {
            builder = builder.egress(origin);
        }
        for (host, guest) in &self.dirs {
            builder = builder.dir(host, guest);
        }
        for (k, v) in &self.env {
            builder = builder.env(k, v);
        }
        for rule in &self.inject {
            builder = match rule.as_str() {
                "defaults" => builder.inject_defaults(),
                rule => builder.inject(rule),
            };
        }
        if !self.trust.is_empty() {
            let mut roots = vd_cred_host::TrustedRoots::public();
            for file in &self.trust {
                roots.add_pem_file(file)?;
            }
            builder = builder.trust(roots);
        }
        for (host, port, addr) in &self.connect_to {
            builder = builder.connect_to(host, *port, *addr);
        }
        Ok(builder)
    }

    /// Run the agent: each call in turn, in one store; each result printed
    /// in WAVE on stdout, the audit lines on stderr.
    pub async fn run(self) -> Result<ExitCode> {
        let host = Host::shared();
        let setup = vd_cred_host::from_env::Setup::from_env(|name| std::env::var(name).ok());
        let mut builder = self.builder()?;
        if let Some(url) = &setup.broker_url {
            builder = builder.credential_broker(url);
        }
        let sandbox = setup.sandbox(host)?.build().await?;
        let builder = builder.on_inject(|e| {
            eprintln!(
                "audit: agent {}'s request to {}: {} token {}, {:?}{}",
                e.agent_id,
                e.destination,
                e.audience,
                match e.source {
                    Some(TokenSource::Minted) => "minted and added",
                    Some(TokenSource::Cached) => "from the cache added",
                    None => "not had",
                },
                e.outcome,
                match e.removed_agent_authorization {
                    true => "; the agent's own Authorization was removed",
                    false => "",
                }
            )
        });
        let linked = LinkedCredential::new(sandbox, self.policy())
            .on_token(|e| {
                eprintln!(
                    "audit: agent {} got a {} token expiring at {} ({})",
                    e.agent_id,
                    e.audience,
                    e.expires_on,
                    match e.source {
                        TokenSource::Minted => "minted",
                        TokenSource::Cached => "cached",
                    }
                )
            })
            .on_error(|e| {
                eprintln!(
                    "audit: agent {} was refused{}: {}",
                    e.agent_id,
                    e.audience
                        .map(|a| format!(" a {a} token"))
                        .unwrap_or_default(),
                    e.error
                )
            });
        // Compiled once, then loaded from the per-user precompiled cache, as
        // the credential is: never from beside the .wasm, where an agent may
        // be able to write (see vd_cred_host::precompiled).
        let (component, _) = vd_cred_host::precompiled::load(host.engine(), Path::new(&self.wasm))
            .map_err(|e| anyhow!("loading {}: {e:#}", self.wasm))?;
        let pre = runner::link(host.engine(), &component)?;
        let (mut store, instance) = builder.instantiate(host.engine(), &pre, linked).await?;
        for call in &self.invoke {
            let results = crate::invoke(&component, &instance, &mut store, call).await?;
            for result in &results {
                println!("{}", wasmtime::component::wasm_wave::to_string(result)?);
            }
        }
        Ok(ExitCode::SUCCESS)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(words: &[&str]) -> Vec<String> {
        words.iter().map(|w| w.to_string()).collect()
    }

    #[test]
    fn every_option_is_read() {
        let o = Options::parse(&args(&[
            "agents/reader.wasm",
            "--invoke",
            r#"mint(["https://vault.azure.net/.default"])"#,
            "--allow",
            "vault,https://storage.azure.com",
            "--egress",
            "https://*.vault.azure.net,",
            "--dir",
            "/srv/work::/work",
            "--env",
            "MODE=a=b",
            "--inject",
            "defaults,api.example.test=vault",
            "--reveal-tokens",
            "no",
            "--trust",
            "/tmp/ca.pem",
            "--connect-to",
            "myvault.vault.azure.net:443=127.0.0.1:8443",
            "--invoke",
            "done()",
        ]))
        .unwrap();
        assert_eq!(o.wasm, "agents/reader.wasm");
        assert_eq!(o.invoke.len(), 2);
        assert_eq!(
            o.allow.as_deref(),
            Some(&["vault".to_string(), "https://storage.azure.com".to_string()][..])
        );
        assert_eq!(o.egress, ["https://*.vault.azure.net"]);
        assert_eq!(o.dirs, [("/srv/work".into(), "/work".into())]);
        assert_eq!(o.env, [("MODE".into(), "a=b".into())]);
        assert_eq!(o.inject, ["defaults", "api.example.test=vault"]);
        assert_eq!(o.reveal_tokens, Some(false));
        assert_eq!(o.trust, ["/tmp/ca.pem"]);
        assert_eq!(
            o.connect_to,
            [(
                "myvault.vault.azure.net".into(),
                443,
                "127.0.0.1:8443".parse().unwrap()
            )]
        );
        let expected = AgentPolicy::new("reader")
            .allow(["vault", "https://storage.azure.com"])
            .reveal_tokens(false);
        assert_eq!(o.policy(), expected);
        // Without --allow, the defaults; with an empty one, nothing.
        let bare = Options::parse(&args(&["a.wasm", "--invoke", "f()"])).unwrap();
        assert_eq!(bare.policy(), AgentPolicy::new("a"));
        let none = Options::parse(&args(&["a.wasm", "--invoke", "f()", "--allow", ""])).unwrap();
        assert_eq!(none.policy(), AgentPolicy::new("a").allow([""; 0]));
    }

    #[test]
    fn a_malformed_command_line_says_which_option() {
        let cases: [(&[&str], &str); 6] = [
            (&["a.wasm"], "--invoke is required"),
            (&["a.wasm", "--invoke"], "--invoke needs a value"),
            (&["a.wasm", "--invoke", "f("], "--invoke f("),
            (
                &["a.wasm", "--invoke", "f()", "--reveal-tokens", "maybe"],
                "--reveal-tokens maybe: yes or no",
            ),
            (
                &["a.wasm", "--invoke", "f()", "--connect-to", "vault:443"],
                "--connect-to vault:443: <host>:<port>=<ip>:<port>",
            ),
            (
                &["a.wasm", "--invoke", "f()", "--grant", "all"],
                "unknown option --grant",
            ),
        ];
        for (words, expected) in cases {
            let error = Options::parse(&args(words)).unwrap_err().to_string();
            assert!(error.starts_with(expected), "{words:?}: {error}");
        }
    }
}
