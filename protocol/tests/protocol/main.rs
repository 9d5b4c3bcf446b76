//! The protocol crate's integration tests, one binary.

mod client;
mod codec;
mod roundtrip;
mod strategies;
mod vectors;
