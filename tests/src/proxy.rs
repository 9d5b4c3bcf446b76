//! A TCP proxy for cutting a node off: it forwards every connection made to its own
//! address to the node's, byte for byte in both directions, until it is cut. A cut
//! closes every connection it carries and refuses new ones (accepted and closed at
//! once, as a dead link looks to the caller) until it is healed.

use std::io;
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread;
use std::time::Duration;

/// How long the proxy waits for the node to take a forwarded connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// What the proxy's threads share.
#[derive(Debug, Default)]
struct Shared {
    cut: AtomicBool,
    stopped: AtomicBool,
    /// Both ends of every connection carried now, to close on a cut.
    live: Mutex<Vec<TcpStream>>,
    /// Connections refused while cut.
    refused: AtomicU64,
}

impl Shared {
    fn close_live(&self) {
        for stream in self.live.lock().unwrap_or_else(PoisonError::into_inner).drain(..) {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }
}

/// A running proxy in front of one address.
#[derive(Debug)]
pub struct Proxy {
    address: SocketAddr,
    shared: Arc<Shared>,
}

impl Proxy {
    /// A proxy on a free loopback port, forwarding to `target`.
    ///
    /// # Panics
    /// If no loopback port can be bound.
    #[must_use]
    pub fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("a loopback port for a proxy");
        let address = listener.local_addr().expect("the proxy's address");
        let shared = Arc::new(Shared::default());
        let accepting = Arc::clone(&shared);
        thread::Builder::new()
            .name(format!("proxy-{address}"))
            .spawn(move || accept_loop(&listener, target, &accepting))
            .expect("a proxy thread");
        Self { address, shared }
    }

    /// Where callers connect.
    #[must_use]
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Cuts the link: every connection carried now is closed, and new ones are too.
    pub fn cut(&self) {
        self.shared.cut.store(true, Ordering::Release);
        self.shared.close_live();
    }

    /// Heals the link: new connections are forwarded again.
    pub fn heal(&self) {
        self.shared.cut.store(false, Ordering::Release);
    }

    /// Connections refused while the link was cut.
    #[must_use]
    pub fn refused(&self) -> u64 {
        self.shared.refused.load(Ordering::Relaxed)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shared.stopped.store(true, Ordering::Release);
        self.shared.close_live();
        // Wakes the accepting thread so it sees the stop.
        let _ = TcpStream::connect_timeout(&self.address, CONNECT_TIMEOUT);
    }
}

fn accept_loop(listener: &TcpListener, target: SocketAddr, shared: &Arc<Shared>) {
    for incoming in listener.incoming() {
        if shared.stopped.load(Ordering::Acquire) {
            return;
        }
        let Ok(caller) = incoming else { continue };
        if shared.cut.load(Ordering::Acquire) {
            shared.refused.fetch_add(1, Ordering::Relaxed);
            let _ = caller.shutdown(Shutdown::Both);
            continue;
        }
        let Ok(node) = TcpStream::connect_timeout(&target, CONNECT_TIMEOUT) else {
            // The node is down: the caller sees the link close, as it would.
            let _ = caller.shutdown(Shutdown::Both);
            continue;
        };
        if let Err(error) = forward(caller, node, shared) {
            eprintln!("proxy to {target}: {error}");
        }
    }
}

/// Carries one connection: a thread for each direction.
fn forward(caller: TcpStream, node: TcpStream, shared: &Arc<Shared>) -> io::Result<()> {
    let _ = caller.set_nodelay(true);
    let _ = node.set_nodelay(true);
    {
        let mut live = shared.live.lock().unwrap_or_else(PoisonError::into_inner);
        // Drop the ends the system no longer reports connected, so the list follows
        // the connections carried rather than every one ever made.
        live.retain(|stream| stream.peer_addr().is_ok());
        live.push(caller.try_clone()?);
        live.push(node.try_clone()?);
    }
    for (mut from, mut to) in [(caller.try_clone()?, node.try_clone()?), (node, caller)] {
        thread::Builder::new().name("proxy-copy".to_owned()).spawn(move || {
            let _ = io::copy(&mut from, &mut to);
            let _ = to.shutdown(Shutdown::Both);
            let _ = from.shutdown(Shutdown::Both);
        })?;
    }
    Ok(())
}
