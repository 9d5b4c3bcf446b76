//! The ledger engine's integration tests: one binary, one module per concern.
//!
//! Amounts are written yuan_fen: `12_50` is 12.50 yuan, 1,250 fen.

#![allow(clippy::inconsistent_digit_grouping)]

mod chain;
mod checkpoint;
mod concurrency;
mod corruption;
mod faults;
mod model;
mod rules;
mod sealing;
mod settlement;
mod statement;
mod support;
mod workflow;
