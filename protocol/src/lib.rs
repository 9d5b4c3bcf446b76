//! # onecard-protocol
//!
//! The wire protocol that campus terminals (POS, kiosks, meters) speak to onecard: a
//! long-lived TCP connection carrying length-prefixed, MAC-signed frames, many requests
//! in flight at once, exactly one answer per request. docs/PROTOCOL.md is the byte-level
//! specification; this crate is its reference implementation.
//!
//! # Layout
//! - [`limits`] — every bound: frame sizes, list lengths, pipeline depth.
//! - [`frame`] — the frame layout, check-then-parse, and encoding.
//! - [`codec`] — [`FrameCodec`], the `tokio_util` decoder and encoder.
//! - [`message`] — requests, answers and their body layouts.
//! - [`code`] — fixed-number enums: answer codes, card states, meal periods, channels.
//! - [`mac`] — terminal keys and the MAC algorithms a frame can name.
//! - [`pin`] — PIN blocks for purchases above the no-PIN limit.
//! - [`error`] — typed errors for everything the network can send.
//! - [`client`] — [`TerminalClient`], an async pipelining terminal.
//! - [`failover`] — [`CellClient`], a terminal of a cell: finds the leader, follows
//!   redirects, and resends an unanswered request under its original sequence.
//! - [`vectors`] — the specification's test vectors, checked against docs/PROTOCOL.md.
//!
//! No socket policy lives here: timeouts, connection caps and sign-on rules belong to
//! the server in onecard-engine.

pub mod client;
pub mod code;
pub mod codec;
pub mod error;
pub mod failover;
pub mod frame;
pub mod limits;
pub mod mac;
pub mod message;
pub mod pin;
pub mod vectors;
mod wire;

pub use client::{ClientConfig, ClientError, TerminalClient};
pub use code::{AnswerCode, CardState, Channel, MealPeriod, snake_case};
pub use codec::{FrameCodec, Outgoing};
pub use error::{DecodeError, EncodeError, FrameError, MacError, PinError, SendError};
pub use failover::CellClient;
pub use frame::{Envelope, Frame, Header, VERSION};
pub use mac::{MacAlgorithm, MacKey, TerminalKey};
pub use message::{Answer, Body, MessageType, Request};
pub use pin::{Pin, PinBlock, PinContext};
