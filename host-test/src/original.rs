//! The original Python credential (vibedata-studio-azure-cred-broker 0.2.0),
//! run beside the component in the benchmarks: `python/bench/original.py` in
//! a virtualenv (`venv-original` in cargo's target directory) holding the pinned original
//! (`python/bench/requirements-original.txt`), made on first use.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};

/// A Python that can import the original credential.
pub struct OriginalPython {
    python: PathBuf,
    script: PathBuf,
    env: Vec<(String, String)>,
}

/// The repository's root (host-test's parent).
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("host-test is inside the repository")
        .to_path_buf()
}

fn run(command: &mut Command) -> Result<()> {
    let status = command
        .status()
        .with_context(|| format!("running {command:?}"))?;
    if !status.success() {
        bail!("{command:?} failed ({status})");
    }
    Ok(())
}

impl OriginalPython {
    /// The virtualenv's Python, making the virtualenv first if needed (with
    /// `python3 -m venv` and pip from the package index). `env` is what every
    /// run gets: the broker URL and bearer file variables.
    pub fn ensure(env: &[(&str, &str)]) -> Result<OriginalPython> {
        let root = root();
        let venv = Path::new(env!("VD_CARGO_TARGET_DIR")).join("venv-original");
        let python = venv.join("bin/python");
        let requirements = root.join("python/bench/requirements-original.txt");
        let marker = venv.join(".installed");
        if std::fs::read(&marker).ok() != std::fs::read(&requirements).ok() {
            if !python.exists() {
                run(Command::new("python3").args(["-m", "venv"]).arg(&venv))?;
            }
            run(Command::new(&python)
                .args([
                    "-m",
                    "pip",
                    "install",
                    "--quiet",
                    "--disable-pip-version-check",
                ])
                .args(["--no-deps", "-r"])
                .arg(&requirements))?;
            std::fs::copy(&requirements, &marker)?;
        }
        Ok(OriginalPython {
            python,
            script: root.join("python/bench/original.py"),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        })
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(&self.python);
        command
            .arg(&self.script)
            .args(args)
            .env_clear()
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stderr(Stdio::inherit());
        command
    }

    /// `n` sequential `get_token` calls in one process (after 50 warm-up
    /// calls): each call's time.
    pub fn calls(&self, n: usize) -> Result<Vec<Duration>> {
        let out = self.command(&["calls", &n.to_string()]).output()?;
        if !out.status.success() {
            bail!("original.py calls failed ({})", out.status);
        }
        parse_times(&String::from_utf8_lossy(&out.stdout))
    }

    /// A process with one credential, ready to make one call on [`Waiting::go`].
    pub fn agent(&self) -> Result<Waiting> {
        Waiting::start(self.command(&["agent"]))
    }

    /// A process with `n` credentials in `n` threads, all calling at once on
    /// [`Waiting::go`].
    pub fn threads(&self, n: usize) -> Result<Waiting> {
        Waiting::start(self.command(&["threads", &n.to_string()]))
    }
}

/// A started process that has imported and built its credentials.
pub struct Waiting {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    /// Its resident set size once ready, in KiB.
    pub rss_kib: u64,
}

impl Waiting {
    fn start(mut command: Command) -> Result<Waiting> {
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()?;
        let stdin = child.stdin.take().expect("piped");
        let mut stdout = BufReader::new(child.stdout.take().expect("piped"));
        let mut line = String::new();
        stdout.read_line(&mut line)?;
        let rss_kib = line
            .strip_prefix("ready ")
            .and_then(|r| r.trim().parse().ok())
            .with_context(|| format!("original.py did not get ready: {line:?}"))?;
        Ok(Waiting {
            child,
            stdin,
            stdout,
            rss_kib,
        })
    }

    /// Start the call(s); their times count from `release` (this machine's
    /// wall clock, which the process reads too).
    pub fn go(&mut self, release: std::time::SystemTime) -> Result<()> {
        let at = release.duration_since(std::time::UNIX_EPOCH)?.as_secs_f64();
        self.stdin.write_all(format!("go {at:.6}\n").as_bytes())?;
        Ok(self.stdin.flush()?)
    }

    /// The call times it reports (from the release), once done (the process is then left to
    /// exit; [`Waiting::finish`] waits for it).
    pub fn times(&mut self) -> Result<Vec<Duration>> {
        let mut line = String::new();
        self.stdout.read_line(&mut line)?;
        match line.trim().parse::<f64>() {
            Ok(seconds) => Ok(vec![Duration::from_secs_f64(seconds)]),
            Err(_) => parse_times(&line),
        }
    }

    /// Wait for the process to exit.
    pub fn finish(mut self) -> Result<()> {
        self.child.wait()?;
        Ok(())
    }
}

fn parse_times(json: &str) -> Result<Vec<Duration>> {
    let seconds: Vec<f64> = serde_json::from_str(json.trim())
        .with_context(|| format!("times from original.py: {json:?}"))?;
    Ok(seconds.into_iter().map(Duration::from_secs_f64).collect())
}
