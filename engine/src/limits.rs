//! Every bound the engine works within, named in one place.
//!
//! Wire-level bounds (frame size, pipeline depth) are the protocol's and live in
//! `onecard_protocol::limits`; the bounds here are the server's own.

use std::time::Duration;

/// Terminal connections served at once. A permit is taken before `accept()`, so
/// connection 20,001 waits in the kernel's backlog instead of costing memory here.
pub const TERMINAL_CONNECTIONS_MAX: usize = 20_000;

/// A connection that sends nothing for this long is closed. Terminals heartbeat
/// every 30 seconds.
pub const TERMINAL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// A frame once started must arrive whole within this, so a client trickling one byte
/// a minute cannot hold a connection's buffer.
pub const FRAME_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Unauthenticated frames (unknown terminal) tolerated on one connection before it is
/// closed.
pub const UNKNOWN_TERMINAL_FRAMES_MAX: u32 = 3;

const _: () = assert!(FRAME_READ_TIMEOUT.as_secs() < TERMINAL_IDLE_TIMEOUT.as_secs());
const _: () = assert!(UNKNOWN_TERMINAL_FRAMES_MAX >= 1);
