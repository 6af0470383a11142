//! A server the tests run beside themselves: its own small tokio runtime on a named
//! thread, serving a listener until it is dropped. The fault proxy and the Neo4j
//! stand-in are two such servers.

use std::future::Future;
use std::net::{SocketAddr, TcpListener};

/// A running background server. Dropping it stops the server and waits for its thread;
/// connections still open end with the runtime, as they would with a process.
pub struct Background {
    pub addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Background {
    /// Serve `listener` (bound by the caller, to 127.0.0.1) with `serve`, on a runtime
    /// of two workers whose threads are named `name`.
    pub fn start<S, F>(name: &str, listener: TcpListener, serve: S) -> std::io::Result<Background>
    where
        S: FnOnce(tokio::net::TcpListener) -> F + Send + 'static,
        F: Future<Output = ()>,
    {
        let addr = listener.local_addr()?;
        listener.set_nonblocking(true)?;
        let runtime =
            tokio::runtime::Builder::new_multi_thread().worker_threads(2).thread_name(name).enable_all().build()?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new().name(name.to_owned()).spawn(move || {
            runtime.block_on(async move {
                let Ok(listener) = tokio::net::TcpListener::from_std(listener) else { return };
                tokio::select! {
                    _ = serve(listener) => {}
                    _ = stopped => {}
                }
            });
            runtime.shutdown_background();
        })?;
        Ok(Background { addr, stop: Some(stop), thread: Some(thread) })
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
