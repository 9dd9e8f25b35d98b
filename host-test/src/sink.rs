//! Loopback servers that hold requests: [`Sink`] reads everything it is
//! sent and never answers (what an agent's flood would meet at a server of
//! its own); [`Gate`] answers each request only once a test lets it
//! through, so that a test acts at a chosen moment (say, while the broker
//! holds a mint) without assuming how long anything takes.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use anyhow::Result;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Semaphore;

use crate::server_thread::ServerThread;

/// What a [`Sink`] has seen.
#[derive(Default)]
struct Seen {
    accepted: AtomicUsize,
    open: AtomicUsize,
    most_open: AtomicUsize,
    bytes: AtomicU64,
}

/// A server on 127.0.0.1 that accepts every connection and never answers:
/// [`Sink::reading`] reads everything it is sent, [`Sink::mute`] nothing
/// (what it is sent stays in the sender's buffers); stops when dropped.
pub struct Sink {
    _thread: ServerThread,
    addr: SocketAddr,
    seen: Arc<Seen>,
}

impl Sink {
    /// Start on `127.0.0.1:0`, reading everything.
    pub fn reading() -> Result<Sink> {
        Sink::start(true)
    }

    /// Start on `127.0.0.1:0`, reading nothing.
    pub fn mute() -> Result<Sink> {
        Sink::start(false)
    }

    fn start(reads: bool) -> Result<Sink> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let seen = Arc::new(Seen::default());
        let counts = seen.clone();
        let thread = ServerThread::spawn("sink", move |mut stopped| async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
            loop {
                let stream = tokio::select! {
                    _ = &mut stopped => return,
                    accepted = listener.accept() => match accepted {
                        Ok((stream, _)) => stream,
                        Err(_) => continue,
                    },
                };
                counts.accepted.fetch_add(1, Ordering::SeqCst);
                let open = counts.open.fetch_add(1, Ordering::SeqCst) + 1;
                counts.most_open.fetch_max(open, Ordering::SeqCst);
                let counts = counts.clone();
                tokio::spawn(async move {
                    let mut stream = stream;
                    let mut buf = vec![0u8; 64 * 1024];
                    if reads {
                        while let Ok(n @ 1..) = stream.read(&mut buf).await {
                            counts.bytes.fetch_add(n as u64, Ordering::SeqCst);
                        }
                    } else {
                        // Held, unread, until the server stops (counted as
                        // open meanwhile).
                        std::future::pending::<()>().await;
                    }
                    counts.open.fetch_sub(1, Ordering::SeqCst);
                });
            }
        })?;
        Ok(Sink {
            _thread: thread,
            addr,
            seen,
        })
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Connections accepted since the start.
    pub fn accepted(&self) -> usize {
        self.seen.accepted.load(Ordering::SeqCst)
    }

    /// The most connections open at once (for a mute sink, every
    /// connection accepted is held open).
    pub fn most_open(&self) -> usize {
        self.seen.most_open.load(Ordering::SeqCst)
    }

    /// Bytes read, over every connection.
    pub fn bytes(&self) -> u64 {
        self.seen.bytes.load(Ordering::SeqCst)
    }
}

/// A server on 127.0.0.1 that reads each request's head and answers
/// `200` (and closes) only once [`Gate::opener`] lets one through; stops
/// when dropped.
pub struct Gate {
    _thread: ServerThread,
    addr: SocketAddr,
    permits: Arc<Semaphore>,
}

/// Lets one request through a [`Gate`] per call; cloneable, usable from
/// any thread (a broker's request hook, say).
#[derive(Clone)]
pub struct Opener(Arc<Semaphore>);

impl Opener {
    /// Let the next (or next waiting) request be answered.
    pub fn let_one_through(&self) {
        self.0.add_permits(1);
    }
}

impl Gate {
    /// Start on `127.0.0.1:0`.
    pub fn start() -> Result<Gate> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let permits = Arc::new(Semaphore::new(0));
        let gate = permits.clone();
        let thread = ServerThread::spawn("gate", move |mut stopped| async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
            loop {
                let mut stream = tokio::select! {
                    _ = &mut stopped => return,
                    accepted = listener.accept() => match accepted {
                        Ok((stream, _)) => stream,
                        Err(_) => continue,
                    },
                };
                let gate = gate.clone();
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut byte = [0u8; 1];
                    while !head.ends_with(b"\r\n\r\n") {
                        match stream.read(&mut byte).await {
                            Ok(1) => head.push(byte[0]),
                            _ => return,
                        }
                    }
                    let Ok(permit) = gate.acquire().await else {
                        return;
                    };
                    permit.forget();
                    let answer =
                        b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";
                    let _ = stream.write_all(answer).await;
                    let _ = stream.shutdown().await;
                });
            }
        })?;
        Ok(Gate {
            _thread: thread,
            addr,
            permits,
        })
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// What lets requests through.
    pub fn opener(&self) -> Opener {
        Opener(self.permits.clone())
    }
}
