//! A real `onecard` API in process for the fuzz targets: a ledger in a scratch
//! directory (commits not synced, so a run is not bound by the disk), the router
//! `serve` uses, and an admin's bearer token.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{Request, StatusCode};
use onecard_engine::Ledger;
use onecard_engine::workflow::Workflows;
use onecard_ops::api::{AppState, router};
use onecard_ops::backup::Backups;
use onecard_ops::config::{Config, Settings};
use onecard_ops::operators::{OperatorRecord, Role, hash_password};
use tower::ServiceExt as _;

const PASSWORD: &str = "fuzzing-admin-password";

/// The API under fuzzing.
pub struct Harness {
    runtime: tokio::runtime::Runtime,
    router: axum::Router,
    token: String,
    /// The workflow names the server defines.
    pub workflows: Vec<String>,
}

impl Harness {
    /// A server over a fresh ledger in the system's temp directory, with one merchant,
    /// one terminal and one card for paths to name.
    ///
    /// # Panics
    /// If the ledger cannot be set up.
    #[must_use]
    pub fn new() -> Self {
        let dir = std::env::temp_dir().join(format!("onecard-fuzz-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let settings = Settings { data_dir: Some(dir.clone()), ..Settings::default() };
        let mut config = Config::resolve(settings).expect("a config");
        config.ledger.sync = false;
        config.backup.daily_at_minutes = None;
        let config = Arc::new(config);
        let ledger = Arc::new(Ledger::open(&dir, config.ledger.clone()).expect("opens"));
        let workflows = Workflows::new(Arc::clone(&ledger), &[]).expect("built-in workflows");
        let names = workflows.definitions().iter().map(|d| d.name.clone()).collect();
        let backups = Arc::new(Backups::new(Arc::clone(&ledger), config.backup.clone()));
        let state = AppState::new(Arc::clone(&ledger), Arc::clone(&config), workflows, backups);
        let hash = hash_password(PASSWORD).expect("hashes");
        state
            .operators
            .create(&OperatorRecord::new("admin".into(), Role::Admin, hash, false, "fuzz".into()))
            .expect("an admin");
        let runtime = tokio::runtime::Builder::new_current_thread().build().expect("a runtime");
        let mut harness =
            Self { runtime, router: router(state), token: String::new(), workflows: names };
        let body = format!(r#"{{"operator":"admin","password":"{PASSWORD}"}}"#);
        let (status, answer) = harness.post("/api/auth/login", "application/json", body.as_bytes());
        assert_eq!(status, StatusCode::OK, "{answer}");
        harness.token = answer["token"].as_str().expect("a token").to_owned();
        let merchant = r#"{"name":"第一食堂","category":"canteen","commission_rate":"0.015"}"#;
        harness.post("/api/merchants", "application/json", merchant.as_bytes());
        let card = r#"{"card_number":8800000001,"holder_id":"S1","holder_name":"李雷","card_type":"student","expiry_date":"2030-07-31"}"#;
        harness.post("/api/cards", "application/json", card.as_bytes());
        harness
    }

    /// POSTs `body` to `path` as an admin; the status and the answer, parsed.
    ///
    /// # Panics
    /// If the answer is not JSON, or an error answer has no code: every answer of the
    /// API is JSON, and every refusal names its code.
    pub fn post(
        &self,
        path: &str,
        content_type: &str,
        body: &[u8],
    ) -> (StatusCode, serde_json::Value) {
        let mut request = Request::post(path)
            .header("content-type", content_type)
            .header("authorization", format!("Bearer {}", self.token))
            .body(Body::from(body.to_vec()))
            .expect("a request");
        request.extensions_mut().insert(ConnectInfo(SocketAddr::from(([127, 0, 0, 1], 9))));
        let router = self.router.clone();
        self.runtime.block_on(async move {
            let response = router.oneshot(request).await.expect("infallible");
            let status = response.status();
            let bytes = axum::body::to_bytes(response.into_body(), 1 << 24).await.expect("a body");
            let answer: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_else(|_| {
                panic!(
                    "{path}: {status} with a body that is not JSON: {}",
                    String::from_utf8_lossy(&bytes)
                )
            });
            if !status.is_success() {
                assert!(answer["error"]["code"].is_string(), "{path}: {status} {answer}");
            }
            (status, answer)
        })
    }
}

impl Default for Harness {
    fn default() -> Self {
        Self::new()
    }
}
