//! Arbitrary bodies POSTed to the admin API's endpoints that read JSON (cards,
//! merchants, terminals, operators, adjustments, every workflow's form) or CSV (a
//! subsidy list, a channel statement), through the router `serve` runs, over a real
//! ledger. Every answer must be JSON, every refusal must carry a code, and none may be
//! a 500: bad input is the caller's error, never the server's.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use onecard_ops_fuzz::Harness;

const JSON_PATHS: &[&str] = &[
    "/api/cards",
    "/api/cards/8800000001/limits",
    "/api/cards/8800000001/pin",
    "/api/cards/8800000001/reissue",
    "/api/cards/8800000001/extend",
    "/api/merchants",
    "/api/merchants/1/commission",
    "/api/terminals",
    "/api/terminals/1/key",
    "/api/operators",
    "/api/auth/password",
    "/api/adjustments",
    "/api/adjustments/1/approve",
    "/api/applications/1/approve",
    "/api/applications/1/resubmit",
    "/api/cutover",
];

const CSV_PATHS: &[&str] = &[
    "/api/workflows/subsidy_batch/csv?reason=fuzz",
    "/api/reconciliations/2026-11-22/channels/app",
];

static HARNESS: OnceLock<Harness> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    let harness = HARNESS.get_or_init(Harness::new);
    let Some((&pick, body)) = data.split_first() else { return };
    let workflows: Vec<String> =
        harness.workflows.iter().map(|name| format!("/api/workflows/{name}")).collect();
    let json: Vec<&str> =
        JSON_PATHS.iter().copied().chain(workflows.iter().map(String::as_str)).collect();
    let pick = usize::from(pick);
    let (path, content_type) = if pick < json.len() {
        (json[pick], "application/json")
    } else {
        (CSV_PATHS[pick % CSV_PATHS.len()], "text/csv")
    };
    let (status, answer) = harness.post(path, content_type, body);
    assert!(status.as_u16() != 500, "{path}: 500 {answer}");
});
