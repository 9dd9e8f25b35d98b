//! A mock server's own thread: a current-thread tokio runtime running the
//! server until it is told to stop, which happens (and is waited for) when
//! the [`ServerThread`] is dropped. The mock broker and the mock Azure
//! services run on one each.

use std::future::Future;
use std::thread::JoinHandle;

use tokio::sync::oneshot;

/// A running server thread; stopped and joined when dropped.
pub(crate) struct ServerThread {
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl ServerThread {
    /// Run `serve(stopped)` on a thread called `name`; `stopped` resolves
    /// when the server should return.
    pub(crate) fn spawn<F, Fut>(name: &str, serve: F) -> std::io::Result<ServerThread>
    where
        F: FnOnce(oneshot::Receiver<()>) -> Fut + Send + 'static,
        Fut: Future<Output = ()>,
    {
        let (stop, stopped) = oneshot::channel();
        let thread = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("runtime");
                rt.block_on(serve(stopped));
            })?;
        Ok(ServerThread {
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

impl Drop for ServerThread {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
