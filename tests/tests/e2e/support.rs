//! A small campus built through the server's own API, so each scenario reads as a
//! story: a card centre with a top-up kiosk, two canteen windows on different shards,
//! and a few funded cards.

use onecard_protocol::message::{Reference, TopUp};
use onecard_protocol::{
    Answer, AnswerCode, Channel, ClientConfig, Request, TerminalClient, TerminalKey,
};
use std::time::Duration;

use onecard_tests::{Api, Server, TempDir};
use serde_json::json;

/// A terminal the campus created, and its key.
#[derive(Debug, Clone)]
pub struct TerminalSpec {
    /// Its id.
    pub id: u32,
    /// Its merchant.
    pub merchant_id: u32,
    /// Its key.
    pub key: TerminalKey,
}

impl TerminalSpec {
    /// Connects and signs on.
    pub async fn connect(&self, server: &Server) -> TerminalClient {
        self.connect_with(server, ClientConfig::default()).await
    }

    /// Connects and signs on with `config`.
    pub async fn connect_with(&self, server: &Server, config: ClientConfig) -> TerminalClient {
        TerminalClient::connect(server.terminal_addr(), self.id, &self.key, 0, config)
            .await
            .expect("the terminal signs on")
    }
}

/// A terminal's client for tests that check the ledger exactly: one attempt, with time
/// enough for it, and no reversal on giving up. The test knows which sequence each
/// request went under, and a request slowed by a busy machine is answered rather than
/// committed behind a terminal that gave up.
pub fn one_attempt() -> ClientConfig {
    ClientConfig {
        reverse_on_give_up: false,
        attempts_max: 1,
        answer_timeout: Duration::from_secs(30),
        ..ClientConfig::default()
    }
}

/// The campus.
pub struct Campus {
    /// The data directory (removed on drop, after the server).
    pub server: Server,
    /// Logged in as admin.
    pub admin: Api,
    /// The card centre's kiosk: top-ups.
    pub kiosk: TerminalSpec,
    /// A canteen window.
    pub canteen: TerminalSpec,
    /// Another canteen window, on the other shard.
    pub other_canteen: TerminalSpec,
    /// Open, funded cards.
    pub cards: Vec<u64>,
    /// Kept last so the server stops before its directory goes.
    pub dir: TempDir,
}

/// The first card number of a campus.
pub const FIRST_CARD: u64 = 7_000_001;

/// Each card's balance after the campus is built, in fen.
pub const FUNDED_FEN: i64 = 10_000;

fn key_for(terminal: u8) -> TerminalKey {
    TerminalKey::new([terminal; 32])
}

/// Creates a merchant through the API; returns its id.
pub fn merchant(admin: &Api, name: &str, category: &str) -> u32 {
    let (status, body) = admin.post(
        "/api/merchants",
        &json!({ "name": name, "category": category, "commission_rate": "0.015" }),
    );
    assert_eq!(status, 200, "{body}");
    u32::try_from(body["id"].as_u64().expect("an id")).expect("fits")
}

/// Creates a terminal through the API with a key derived from `seed`.
pub fn terminal(admin: &Api, merchant_id: u32, seed: u8) -> TerminalSpec {
    let key = key_for(seed);
    let (status, body) = admin
        .post("/api/terminals", &json!({ "merchant_id": merchant_id, "key_hex": key.to_hex() }));
    assert_eq!(status, 200, "{body}");
    assert!(
        body.get("key_hex").is_none() && !body.to_string().contains(&key.to_hex()),
        "no key out"
    );
    let id = u32::try_from(body["id"].as_u64().expect("an id")).expect("fits");
    TerminalSpec { id, merchant_id, key }
}

/// Opens a student card through the API.
pub fn open_card(admin: &Api, card_number: u64) {
    let (status, body) = admin.post(
        "/api/cards",
        &json!({
            "card_number": card_number,
            "holder_id": format!("S{card_number}"),
            "holder_name": "测试学生",
            "card_type": "student",
            "expiry_date": "2030-07-31",
        }),
    );
    assert_eq!(status, 200, "{body}");
}

/// A card's balance in fen, through the API.
pub fn balance_fen(admin: &Api, card_number: u64) -> i64 {
    let (status, body) = admin.get(&format!("/api/cards/{card_number}"));
    assert_eq!(status, 200, "{body}");
    yuan_to_fen(body["balance_yuan"].as_str().expect("a balance"))
}

/// Parses "12.34" into 1234.
pub fn yuan_to_fen(text: &str) -> i64 {
    let negative = text.starts_with('-');
    let digits: String = text.chars().filter(char::is_ascii_digit).collect();
    let fen: i64 = digits.parse().expect("an amount");
    if negative { -fen } else { fen }
}

pub use onecard_tests::purchase;

/// A top-up request.
pub fn top_up(card_number: u64, amount_fen: u32, reference: &str) -> Request {
    Request::TopUp(TopUp {
        card_number,
        amount_fen,
        channel: Channel::App,
        reference: Reference::new(reference.as_bytes()).expect("short"),
    })
}

/// The code and transfer id of a transfer answer.
pub fn outcome(answer: &Answer) -> (AnswerCode, u64) {
    match answer {
        Answer::Purchase(a) | Answer::TopUp(a) | Answer::Refund(a) | Answer::Reversal(a) => {
            (if a.duplicate { AnswerCode::Duplicate } else { a.code }, a.transfer_id)
        }
        other => (other.code(), 0),
    }
}

impl Campus {
    /// Both canteen windows and `extra` more, created alternately on each canteen's
    /// merchant with keys from `first_seed` on: the load of the lunch-peak tests.
    pub fn windows(&self, extra: u8, first_seed: u8) -> Vec<TerminalSpec> {
        let mut windows = vec![self.canteen.clone(), self.other_canteen.clone()];
        for n in 0..extra {
            let canteen = if n % 2 == 0 { &self.canteen } else { &self.other_canteen };
            windows.push(terminal(&self.admin, canteen.merchant_id, first_seed + n));
        }
        windows
    }

    /// Starts a server on a fresh directory and builds the campus with `cards`
    /// funded cards.
    pub async fn build(label: &str, cards: u64, extra: &[&str]) -> Self {
        let dir = TempDir::new(label);
        let server = Server::start_with(dir.path(), extra);
        let admin = server.admin();
        let centre = merchant(&admin, "校园卡服务中心", "card_centre");
        let first = merchant(&admin, "第一食堂 01号窗口", "canteen");
        let second = merchant(&admin, "第一食堂 02号窗口", "canteen");
        let kiosk = terminal(&admin, centre, 1);
        let canteen = terminal(&admin, first, 2);
        let other_canteen = terminal(&admin, second, 3);
        let numbers: Vec<u64> = (FIRST_CARD..FIRST_CARD + cards).collect();
        for card in &numbers {
            open_card(&admin, *card);
        }
        let client = kiosk.connect(&server).await;
        for card in &numbers {
            let answer = client
                .call(top_up(
                    *card,
                    u32::try_from(FUNDED_FEN).expect("fits"),
                    &format!("fund-{card}"),
                ))
                .await
                .expect("answered");
            assert_eq!(outcome(&answer).0, AnswerCode::Approved, "{answer:?}");
        }
        client.sign_off().await.expect("signs off");
        Self { server, admin, kiosk, canteen, other_canteen, cards: numbers, dir }
    }
}

/// Creates an operator and logs in as them (changing the admin-set password first).
pub fn operator(server: &Server, admin: &Api, name: &str, role: &str) -> Api {
    let initial = format!("{name}-initial-pw");
    let (status, body) =
        admin.post("/api/operators", &json!({ "name": name, "role": role, "password": initial }));
    assert_eq!(status, 200, "{body}");
    let mut api = server.api();
    let refused = api.login(name, &initial).expect_err("must change first");
    assert_eq!(
        (refused.status, refused.body["error"]["code"].as_str()),
        (403, Some("password_change_required"))
    );
    let password = format!("{name}-own-password");
    let (status, body) = api.post(
        "/api/auth/password",
        &json!({ "operator": name, "password": initial, "new_password": password }),
    );
    assert_eq!(status, 200, "{body}");
    api.login(name, &password).expect("logs in");
    api
}
