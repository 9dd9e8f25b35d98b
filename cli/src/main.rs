//! `vd-cred get-token`, `vd-cred run-agent` and `vd-cred demo`: see
//! [`vd_cred_cli::USAGE`].

use std::process::ExitCode;

use vd_cred_cli::USAGE;

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("get-token") if args.len() > 1 => vd_cred_cli::get_token::run(&args[1..]).await,
        Some("run-agent") if args.len() > 1 => {
            match vd_cred_cli::run_agent::Options::parse(&args[1..]) {
                Ok(options) => options.run().await,
                Err(e) => Err(e),
            }
        }
        Some("demo") => demo(&args[1..]).await,
        Some("--help" | "-h" | "help") => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        _ => {
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    result.unwrap_or_else(|e| {
        eprintln!("vd-cred: {e:#}");
        ExitCode::from(2)
    })
}

#[cfg(feature = "demo")]
async fn demo(args: &[String]) -> anyhow::Result<ExitCode> {
    let mut rest = args.iter().map(String::as_str);
    let (mut scope, mut component) = ("https://vault.azure.net/.default", None);
    while let Some(arg) = rest.next() {
        match arg {
            "--component" => {
                component = Some(
                    rest.next()
                        .ok_or_else(|| anyhow::anyhow!("--component needs a file\n{USAGE}"))?,
                )
            }
            _ => scope = arg,
        }
    }
    vd_cred_cli::demo::run(scope, component).await
}

#[cfg(not(feature = "demo"))]
async fn demo(_: &[String]) -> anyhow::Result<ExitCode> {
    anyhow::bail!(
        "this vd-cred was built without the demo: build it with the default features \
         (`cargo run -p vd-cred-cli -- demo`)"
    )
}
