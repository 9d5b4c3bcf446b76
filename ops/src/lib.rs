//! onecard's operations layer: configuration, the admin and finance API, operators,
//! backups, the day's jobs and the files finance pulls; the `onecard` binary
//! (`main.rs`) wires them to the engine.
//!
//! # Layout
//! - `config.rs` — the configuration: file, flags, environment.
//! - `master_key.rs` — the master key that seals terminal keys: environment or file.
//! - `api/` — the admin and finance HTTP API, /metrics and health.
//! - `operators.rs` — operators of the API and their passwords.
//! - `hall.rs` — cardholders of the service hall: hall passwords and sessions.
//! - `notices.rs` — the notices' outbox: each posted to the webhook, at least once.
//! - `pages/` — the web pages: the card centre's console and the service hall.
//! - `tokens.rs` — live sessions by token, operators' and cardholders'.
//! - `demo.rs` — the demo campus.
//! - `settlement_files.rs` — the settlement files finance pulls.
//! - `day.rs` — the day cutover and settlement, on a schedule inside `serve`.
//! - `channels.rs` — top-up channels' statement files, their adapters and reports.
//! - `backup.rs` — backups: taken, mirrored offsite, kept, verified, restored.

pub mod api;
pub mod backup;
pub mod channels;
pub mod config;
pub mod day;
pub mod demo;
pub mod hall;
pub mod master_key;
pub mod notices;
pub mod operators;
pub mod pages;
pub mod settlement_files;
pub mod tokens;
