//! The terminal front door: the TCP listener and one task per terminal connection.
//!
//! ```text
//! accept (permit first) ─▶ connection task ─▶ verify MAC ─▶ Ledger::submit ─▶ shard queue
//!                               ▲                                                │
//!                               └──────── answer, signed ◀── oneshot ◀── durable batch
//! ```
//!
//! A permit from a semaphore of [`FrontDoorConfig::connections_max`] is taken *before*
//! `accept()`, so load beyond the cap waits in the kernel backlog and costs nothing
//! here. Each connection is one task that reads frames, checks each one's terminal,
//! MAC, sequence and session, hands requests to the ledger, and writes the signed
//! answers back as they become durable; see [`connection`].
//!
//! Shutdown: when `shutdown` turns true the listener stops accepting and every
//! connection stops reading, waits for the answers to what it already handed to the
//! ledger, writes them and closes. [`serve`] returns once every connection is gone, so
//! the caller can then close the ledger with nothing in flight. The listener is only
//! borrowed: a node of a cell that loses the lead keeps its port and serves
//! [`redirect`] on it instead.

mod connection;
mod redirect;

pub use redirect::redirect;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{Semaphore, mpsc, watch};

use crate::Ledger;
use crate::limits::{
    FRAME_READ_TIMEOUT, SHUTDOWN_DRAIN_TIMEOUT, TERMINAL_CONNECTIONS_MAX, TERMINAL_IDLE_TIMEOUT,
    TERMINAL_WRITE_TIMEOUT,
};

/// How the front door treats connections. The defaults are the limits in
/// [`crate::limits`]; operators may lower them.
#[derive(Debug, Clone)]
pub struct FrontDoorConfig {
    /// Connections served at once; more wait in the kernel's backlog.
    pub connections_max: usize,
    /// A connection that sends nothing for this long is closed.
    pub idle_timeout: Duration,
    /// A started frame must arrive whole within this (checked at this granularity, so
    /// a frame may take up to twice it).
    pub frame_read_timeout: Duration,
    /// Answers that cannot be written within this close the connection.
    pub write_timeout: Duration,
    /// At shutdown, how long a connection waits for answers still in the ledger.
    pub drain_timeout: Duration,
}

impl Default for FrontDoorConfig {
    fn default() -> Self {
        Self {
            connections_max: TERMINAL_CONNECTIONS_MAX,
            idle_timeout: TERMINAL_IDLE_TIMEOUT,
            frame_read_timeout: FRAME_READ_TIMEOUT,
            write_timeout: TERMINAL_WRITE_TIMEOUT,
            drain_timeout: SHUTDOWN_DRAIN_TIMEOUT,
        }
    }
}

/// Accepts terminal connections until `shutdown` turns true, then waits for every
/// connection to finish its answers and close.
///
/// # Errors
/// Only if the listener itself fails; a failed connection is logged and dropped.
pub async fn serve(
    listener: &TcpListener,
    ledger: Arc<Ledger>,
    config: FrontDoorConfig,
    mut shutdown: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let config = Arc::new(config);
    let permits = Arc::new(Semaphore::new(config.connections_max.max(1)));
    let metrics = Arc::clone(ledger.metrics());
    metrics.connections_max.set(i64::try_from(config.connections_max).unwrap_or(i64::MAX));
    // Every connection task holds a clone of `done`; when the last is dropped, `recv`
    // on `all_done` returns `None`: every connection has finished.
    let (done, mut all_done) = mpsc::channel::<()>(1);
    loop {
        if permits.available_permits() == 0 {
            // Full: whoever connects now waits in the backlog until a slot frees.
            metrics.connections_at_cap.inc();
        }
        let permit = tokio::select! {
            permit = Arc::clone(&permits).acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
            _ = shutdown.changed() => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors and the like: wait and go on.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => break,
        };
        ledger.metrics().connections_accepted.inc();
        let task = ConnectionTask {
            ledger: Arc::clone(&ledger),
            config: Arc::clone(&config),
            shutdown: shutdown.clone(),
            peer,
        };
        let done = done.clone();
        tokio::spawn(async move {
            task.run(stream).await;
            drop(permit);
            drop(done);
        });
    }
    drop(done);
    let _ = all_done.recv().await;
    Ok(())
}

/// What one connection task needs.
struct ConnectionTask {
    ledger: Arc<Ledger>,
    config: Arc<FrontDoorConfig>,
    shutdown: watch::Receiver<bool>,
    peer: SocketAddr,
}

impl ConnectionTask {
    async fn run(self, stream: tokio::net::TcpStream) {
        let metrics = Arc::clone(self.ledger.metrics());
        metrics.connections_open.inc();
        let reason = connection::Connection::new(self.ledger, self.config, self.peer)
            .run(stream, self.shutdown)
            .await;
        tracing::debug!(peer = %self.peer, reason = reason.label(), "terminal connection closed");
        metrics.closed(reason);
        metrics.connections_open.dec();
    }
}
