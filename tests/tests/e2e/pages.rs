//! The console and the service hall in a real browser (headless Chromium over
//! WebDriver) against a real `onecard serve --demo`.

use std::path::Path;

use onecard_protocol::{AnswerCode, ClientConfig, TerminalClient, TerminalKey};
use onecard_tests::browser::Browser;
use onecard_tests::webhook::Webhook;
use onecard_tests::{Server, TempDir};

use crate::support::{outcome, purchase};

/// A demo cardholder: card number, name, hall password.
struct Holder {
    card: u64,
    name: String,
    password: String,
}

/// The demo's `n`-th cardholder with a hall password (0 is the first card).
fn holder(demo: &Path, n: usize) -> Holder {
    let csv = std::fs::read_to_string(demo.join("cardholders.csv")).expect("cardholders.csv");
    let fields: Vec<String> =
        csv.lines().nth(n + 1).expect("a cardholder").split(',').map(str::to_owned).collect();
    Holder {
        card: fields[0].parse().expect("a card number"),
        name: fields[2].clone(),
        password: fields[3].clone(),
    }
}

/// The demo operator of `role` and their password.
fn operator(demo: &Path, role: &str) -> (String, String) {
    let csv = std::fs::read_to_string(demo.join("operators.csv")).expect("operators.csv");
    let line = csv.lines().find(|l| l.starts_with(&format!("demo-{role},"))).expect("an operator");
    let fields: Vec<&str> = line.split(',').collect();
    (fields[0].to_owned(), fields[2].to_owned())
}

/// A canteen till of the demo, signed on.
async fn till(server: &Server, demo: &Path) -> TerminalClient {
    let csv = std::fs::read_to_string(demo.join("terminals.csv")).expect("terminals.csv");
    let fields: Vec<&str> =
        csv.lines().find(|l| l.contains(",canteen,")).expect("a canteen").split(',').collect();
    let key = TerminalKey::from_hex(fields[4]).expect("a key");
    TerminalClient::connect(
        server.terminal_addr(),
        fields[0].parse().expect("an id"),
        &key,
        0,
        ClientConfig::default(),
    )
    .await
    .expect("the till signs on")
}

/// Saves the page as `name`.png in `ONECARD_SCREENSHOTS`, when set (how the pictures
/// in docs/ are made: `ONECARD_SCREENSHOTS=docs/pages cargo test -p onecard-tests
/// --test e2e pages::`).
async fn picture(browser: &Browser, name: &str) {
    if let Some(dir) = std::env::var_os("ONECARD_SCREENSHOTS") {
        let dir = std::path::PathBuf::from(dir);
        std::fs::create_dir_all(&dir).expect("the screenshots' folder");
        browser.screenshot(&dir.join(format!("{name}.png"))).await;
    }
}

/// Logs `holder` in with the issued password and sets `new_password`.
async fn first_login(browser: &Browser, site: &str, holder: &Holder, new_password: &str) {
    log_in(browser, site, holder.card, &holder.password).await;
    browser.fill("input[name=current]", &holder.password).await;
    browser.fill("input[name=new]", new_password).await;
    browser.fill("input[name=repeat]", new_password).await;
    browser.click("form.card button[type=submit]").await;
}

/// Fills and sends the hall's login form.
async fn log_in(browser: &Browser, site: &str, card: u64, password: &str) {
    if !browser.url().await.ends_with("/hall/login") {
        browser.open(&format!("{site}/hall/login")).await;
    }
    browser.fill("input[name=card_number]", &card.to_string()).await;
    browser.fill("input[name=password]", password).await;
    browser.click("button[type=submit]").await;
}

/// Signs `name` in to the console.
async fn sign_in(browser: &Browser, site: &str, name: &str, password: &str) {
    browser.open(&format!("{site}/console/login")).await;
    browser.fill("input[name=operator]", name).await;
    browser.fill("input[name=password]", password).await;
    browser.click("button[type=submit]").await;
}

fn demo_server(label: &str) -> (TempDir, Server) {
    let dir = TempDir::new(label);
    let server = Server::start_with(dir.path(), &["--demo", "--demo-cards", "500"]);
    (dir, server)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clerk_finds_a_card_by_the_holders_name_reports_it_lost_and_the_till_refuses_it() {
    let (dir, server) = demo_server("pages-clerk");
    let demo = dir.path().join("demo");
    let site = format!("http://{}", server.admin_addr());
    let holder = holder(&demo, 3);
    let (clerk, password) = operator(&demo, "clerk");
    let browser = Browser::start().await;

    browser.open(&format!("{site}/console/")).await;
    assert!(
        browser.url().await.ends_with("/console/login"),
        "signed out, the console asks to sign in"
    );
    browser.fill("input[name=operator]", &clerk).await;
    browser.fill("input[name=password]", &password).await;
    browser.click("button[type=submit]").await;
    browser.find("#business-date").await;

    browser.fill("input[name=q]", &holder.name).await;
    browser.click("form.search button").await;
    picture(&browser, "console-search").await;
    browser.click(&format!("a[href='/console/cards/{}']", holder.card)).await;
    assert_eq!(browser.text("#card-state").await, "正常");
    picture(&browser, "console-card").await;
    browser.click("#report-lost").await;
    assert_eq!(browser.text("#card-state").await, "已挂失", "the page shows the card lost");

    let till = till(&server, &demo).await;
    let answer = till.call(purchase(holder.card, 500)).await.expect("answered");
    assert_eq!(outcome(&answer).0, AnswerCode::CardLost, "{answer:?}");

    // The audit log names the clerk and the card.
    let mut api = server.api();
    let (admin, admin_password) = operator(&demo, "admin");
    api.login(&admin, &admin_password).expect("the admin logs in to the API");
    let (status, audit) = api.get("/api/audit?limit=50");
    assert_eq!(status, 200, "{audit}");
    let reported = audit
        .as_array()
        .or_else(|| audit["records"].as_array())
        .expect("audit records")
        .iter()
        .find(|r| r["action"] == "card.report_lost")
        .unwrap_or_else(|| panic!("no report in the audit log: {audit}"))
        .clone();
    assert_eq!(reported["actor"], clerk.as_str());
    assert_eq!(reported["target"], format!("card:{}", holder.card));
    browser.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_student_logs_in_changes_the_first_password_sees_a_purchase_and_reports_the_card_lost() {
    let (dir, server) = demo_server("pages-student");
    let demo = dir.path().join("demo");
    let site = format!("http://{}", server.admin_addr());
    let student = holder(&demo, 0);
    let till = till(&server, &demo).await;
    let answer = till.call(purchase(student.card, 1_250)).await.expect("answered");
    assert_eq!(outcome(&answer).0, AnswerCode::Approved, "{answer:?}");
    let browser = Browser::start().await;

    // A wrong password is refused and says nothing of which part was wrong.
    log_in(&browser, &site, student.card, "not-the-password").await;
    assert!(browser.text(".error").await.contains("卡号或查询密码错误"));

    picture(&browser, "hall-login").await;

    // The issued password works once, for changing it.
    log_in(&browser, &site, student.card, &student.password).await;
    assert!(browser.url().await.ends_with("/hall/password"), "an issued password is changed first");
    browser.open(&format!("{site}/hall/")).await;
    assert!(browser.url().await.ends_with("/hall/password"), "nothing else before the change");
    browser.fill("input[name=current]", &student.password).await;
    browser.fill("input[name=new]", "my-own-secret-1").await;
    browser.fill("input[name=repeat]", "my-own-secret-1").await;
    browser.click("form.card button[type=submit]").await;

    assert_eq!(browser.text("#card-number").await, student.card.to_string());
    assert!(browser.text("#holder").await.contains(&student.name));
    let statement = browser.text("table.statement").await;
    assert!(statement.contains("12.50"), "the purchase is on the statement: {statement}");
    assert!(statement.contains("消费"), "{statement}");
    assert!(
        statement.contains("食堂") || statement.contains("餐厅"),
        "with the canteen's name: {statement}"
    );
    picture(&browser, "hall-my-card").await;

    browser.click("#report-lost").await;
    assert_eq!(browser.text("#card-state").await, "已挂失");
    assert!(browser.text("#lost-notice").await.contains("卡务中心"), "how to get a new card");
    let answer = till.call(purchase(student.card, 100)).await.expect("answered");
    assert_eq!(outcome(&answer).0, AnswerCode::CardLost, "{answer:?}");

    // The old password no longer works; the new one does.
    browser.click("header form button").await;
    log_in(&browser, &site, student.card, &student.password).await;
    assert!(browser.text(".error").await.contains("卡号或查询密码错误"));
    log_in(&browser, &site, student.card, "my-own-secret-1").await;
    assert_eq!(browser.text("#card-state").await, "已挂失");
    browser.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cardholder_session_reaches_no_operator_page_and_no_form_without_its_token() {
    let (dir, server) = demo_server("pages-refused");
    let demo = dir.path().join("demo");
    let site = format!("http://{}", server.admin_addr());
    let student = holder(&demo, 1);
    let other = holder(&demo, 2);
    let browser = Browser::start().await;
    first_login(&browser, &site, &student, "another-secret-2").await;
    assert_eq!(browser.text("#card-number").await, student.card.to_string());

    // Every console page sends a cardholder to the operators' sign-in.
    let console_pages = [
        "/console/".to_owned(),
        "/console/cards?q=1".to_owned(),
        format!("/console/cards/{}", other.card),
        "/console/inbox".to_owned(),
        "/console/notices".to_owned(),
        "/console/applications/1".to_owned(),
        "/console/terminals".to_owned(),
        "/console/merchants".to_owned(),
        "/console/day".to_owned(),
        "/console/audit".to_owned(),
        "/console/operators".to_owned(),
        "/console/backups".to_owned(),
    ];
    for path in &console_pages {
        browser.open(&format!("{site}{path}")).await;
        assert!(browser.url().await.ends_with("/console/login"), "{path} let a cardholder in");
        assert!(!browser.page_text().await.contains(&other.name), "{path} showed another's name");
    }
    // The hall names no card in its addresses: asking for another's shows one's own.
    browser.open(&format!("{site}/hall/?card={}", other.card)).await;
    assert_eq!(browser.text("#card-number").await, student.card.to_string());

    // A form without its anti-forgery token does nothing.
    let cookie = browser
        .client()
        .get_named_cookie("onecard_hall")
        .await
        .expect("the session cookie")
        .value()
        .to_owned();
    let refused = ureq::post(&format!("{site}/hall/report-lost"))
        .header("Cookie", &format!("onecard_hall={cookie}"))
        .header("Content-Type", "application/x-www-form-urlencoded")
        .config()
        .http_status_as_error(false)
        .build()
        .send("forgery=")
        .expect("an answer");
    assert_eq!(refused.status().as_u16(), 403);
    let mut admin = server.api();
    let (name, password) = operator(&demo, "clerk");
    admin.login(&name, &password).expect("a clerk");
    let (_, card) = admin.get(&format!("/api/cards/{}", student.card));
    assert_eq!(card["state"], "active", "the forged report changed nothing: {card}");

    // Pages carry the policy that keeps other sites' scripts and frames out.
    let page = ureq::get(&format!("{site}/hall/login")).call().expect("the login page");
    let policy = page.headers().get("content-security-policy").expect("a policy");
    assert!(policy.to_str().expect("ascii").contains("frame-ancestors 'none'"));
    browser.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_student_reports_a_fault_the_clerk_handles_it_from_the_inbox_and_the_student_rates_it() {
    // The gateway refuses the first notice once: it is posted again, after a backoff.
    let webhook = Webhook::start(1);
    let dir = TempDir::new("pages-repair");
    let url = webhook.url();
    let server = Server::start_with(
        dir.path(),
        &["--demo", "--demo-cards", "500", "--notice-webhook", &url],
    );
    let demo = dir.path().join("demo");
    let site = format!("http://{}", server.admin_addr());
    let student = holder(&demo, 4);
    let (clerk, clerk_password) = operator(&demo, "clerk");
    let browser = Browser::start().await;

    first_login(&browser, &site, &student, "repair-secret-3").await;

    // The maintenance request is listed under its category and found by name; its
    // form knows the holder already.
    browser.open(&format!("{site}/hall/services?q=报修")).await;
    browser.click("a[href='/hall/services/maintenance']").await;
    let reporter = browser.find("input[name=reporter]").await;
    assert_eq!(
        reporter.prop("value").await.expect("a value").as_deref(),
        Some(student.name.as_str())
    );
    browser
        .find("select[name=category] option[value=water_meter]")
        .await
        .click()
        .await
        .expect("a choice");
    browser.fill("input[name=phone]", "13800000000").await;
    browser.fill("input[name=dormitory]", "7号楼 512").await;
    browser.fill("textarea[name=description]", "水表不计数").await;
    picture(&browser, "hall-maintenance").await;
    browser.click("form.card button[type=submit]").await;
    let url = browser.url().await;
    let id: u64 =
        url.rsplit('/').next().and_then(|id| id.parse().ok()).expect("the application's page");
    assert!(browser.text("#progress").await.contains("办理中"));

    // The clerk finds it in the inbox and triages it; a second clerk (four eyes:
    // nobody passes two steps of one application) handles it.
    let mut admin = server.api();
    let (admin_name, admin_password) = operator(&demo, "admin");
    admin.login(&admin_name, &admin_password).expect("the admin");
    let _ = crate::support::operator(&server, &admin, "repairs", "clerk");
    for (name, password, note) in [
        (clerk.as_str(), clerk_password.as_str(), "已派维修工"),
        ("repairs", "repairs-own-password", "已更换水表"),
    ] {
        let console = Browser::start().await;
        sign_in(&console, &site, name, password).await;
        console.click("a[href='/console/inbox']").await;
        console.click(&format!("a[href='/console/applications/{id}']")).await;
        assert!(console.page_text().await.contains("水表不计数"), "{name} sees the form");
        console.fill("textarea[name=comment]", note).await;
        console.click("#approve").await;
        assert!(console.page_text().await.contains(note), "{name}'s note is in the history");
        console.close().await;
    }

    // The student sees it done, confirms and rates it.
    browser.open(&format!("{site}/hall/applications/{id}")).await;
    assert!(
        browser.page_text().await.contains("已更换水表"),
        "the history shows the clerk's notes"
    );
    browser.find("select[name=rating] option[value='4']").await.click().await.expect("a rating");
    browser.fill("textarea[name=comment]", "修得很快").await;
    browser.click("#confirm").await;
    assert_eq!(browser.text("#progress").await, "已办结");
    assert!(browser.page_text().await.contains("4/5"), "the rating is in the history");

    // Every step change was a notice: in the hall, and at the gateway each once.
    browser.open(&format!("{site}/hall/notices")).await;
    let notices = browser.text("ul.notices").await;
    assert!(notices.contains("已办结") && notices.contains("请您确认"), "{notices}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let accepted = loop {
        let accepted: Vec<_> = webhook.received().into_iter().filter(|r| r.accepted).collect();
        if accepted.len() >= 6 {
            break accepted;
        }
        assert!(std::time::Instant::now() < deadline, "the gateway got {:?}", webhook.received());
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    let ids: Vec<u64> = accepted.iter().map(|r| r.body["id"].as_u64().expect("an id")).collect();
    assert_eq!(ids, (1..=6).collect::<Vec<u64>>(), "each notice once, in order");
    for received in &accepted {
        assert_eq!(received.key.as_deref(), Some(received.body["id"].to_string().as_str()));
        assert_eq!(received.body["application"], id);
    }
    let all = webhook.received();
    assert!(
        !all[0].accepted && all[1].body["id"] == all[0].body["id"],
        "the refused one again first"
    );
    assert_eq!(accepted.last().expect("one").body["kind"], "completed");

    // Another cardholder's application is as absent as none.
    browser.open(&format!("{site}/hall/applications/{}", id + 1000)).await;
    assert!(browser.page_text().await.contains("没有这份申请"));
    let mut api = server.api();
    api.login(&clerk, &clerk_password).expect("the clerk");
    let (status, application) = api.get(&format!("/api/applications/{id}"));
    assert_eq!(status, 200, "{application}");
    assert_eq!(application["status"], "completed");
    assert_eq!(application["applicant"], format!("cardholder:{}", student.card));
    browser.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finance_opens_yesterdays_settlement_and_its_workbook_totals_equal_the_csv_trailer() {
    let (dir, server) = demo_server("pages-finance");
    let demo = dir.path().join("demo");
    let site = format!("http://{}", server.admin_addr());
    let till = till(&server, &demo).await;
    for (n, fen) in [(0, 1_250), (1, 1_350), (2, 860)] {
        let answer = till.call(purchase(holder(&demo, n).card, fen)).await;
        assert_eq!(outcome(&answer.expect("answered")).0, AnswerCode::Approved);
    }
    let (finance, password) = operator(&demo, "finance");
    let browser = Browser::start().await;
    sign_in(&browser, &site, &finance, &password).await;
    browser.click("a[href='/console/day']").await;
    let today = browser.text("#open-date").await;

    // Finance turns the day from the page; serve settles the closed date by itself.
    browser.click("#cutover").await;
    assert_ne!(browser.text("#open-date").await, today, "the day turned");
    assert_eq!(browser.text("#closed-through").await, today);
    let mut api = server.api();
    api.login(&finance, &password).expect("finance logs in");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while api.get(&format!("/api/settlements/{today}")).0 != 200 {
        assert!(std::time::Instant::now() < deadline, "{today} was never settled");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }

    browser.open(&format!("{site}/console/day")).await;
    browser.click(&format!("a[href='/console/settlements/{today}']")).await;
    let net_payable = browser.text("#net-payable").await;
    picture(&browser, "console-settlement").await;
    let cookie = browser
        .client()
        .get_named_cookie("onecard_console")
        .await
        .expect("the console's session")
        .value()
        .to_owned();
    let download = |id: &'static str| {
        let (browser, site, cookie) = (&browser, &site, &cookie);
        async move {
            let href = browser.find(&format!("a#download-{id}")).await.attr("href").await;
            let href = href.expect("an attribute").expect("a link");
            let mut answer = ureq::get(&format!("{site}{href}"))
                .header("Cookie", &format!("onecard_console={cookie}"))
                .call()
                .expect("the file");
            answer.body_mut().read_to_vec().expect("its bytes")
        }
    };
    let csv = download("merchants").await;
    let body = csv.strip_prefix(b"\xEF\xBB\xBF".as_slice()).expect("a BOM");
    let last =
        String::from_utf8_lossy(body).trim_end().lines().last().expect("a trailer").to_owned();
    let trailer: Vec<&str> = last.split(',').collect();
    assert_eq!(trailer[0], "TRAILER");
    assert_eq!(trailer[4], net_payable, "the page's net payable is the trailer's");

    let xlsx = download("xlsx").await;
    let mut workbook: calamine::Xlsx<_> =
        calamine::Reader::new(std::io::Cursor::new(xlsx)).expect("a workbook");
    let sheet = calamine::Reader::worksheet_range(&mut workbook, "merchants").expect("a sheet");
    let header: Vec<String> =
        sheet.rows().next().expect("a header").iter().map(ToString::to_string).collect();
    let total = sheet.rows().next_back().expect("a total row");
    assert_eq!(total[0].to_string(), "TOTAL");
    for (field, at) in [("gross_yuan", 2), ("commission_yuan", 3), ("net_payable_yuan", 4)] {
        let column = header.iter().position(|h| h == field).expect("the column");
        let cell: f64 = total[column].to_string().parse().expect("a number");
        let trailer_fen = trailer[at].replace('.', "").parse::<i64>().expect("yuan");
        #[allow(clippy::cast_possible_truncation, reason = "yuan to fen of a test's day")]
        let cell_fen = (cell * 100.0).round() as i64;
        assert_eq!(cell_fen, trailer_fen, "{field}: the workbook's total is the trailer's");
    }

    // The day's reconciliation, from the day page: every check agrees.
    browser.open(&format!("{site}/console/day")).await;
    browser.click(&format!("a[href='/console/reconciliations/{today}']")).await;
    assert!(browser.text("#verdict").await.contains("全部核对一致"), "the day reconciles");
    assert!(browser.text("table.checks").await.contains("一致"));
    browser.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_gives_a_terminal_a_new_key_shown_once_and_the_old_key_no_longer_signs_on() {
    let (dir, server) = demo_server("pages-terminals");
    let demo = dir.path().join("demo");
    let site = format!("http://{}", server.admin_addr());
    let csv = std::fs::read_to_string(demo.join("terminals.csv")).expect("terminals.csv");
    let fields: Vec<&str> =
        csv.lines().find(|l| l.contains(",canteen,")).expect("a canteen").split(',').collect();
    let (id, old_key): (u32, TerminalKey) =
        (fields[0].parse().expect("an id"), TerminalKey::from_hex(fields[4]).expect("a key"));
    let connect = |key: TerminalKey| {
        let address = server.terminal_addr();
        async move { TerminalClient::connect(address, id, &key, 0, ClientConfig::default()).await }
    };
    connect(old_key.clone()).await.expect("the old key signs on");

    let (admin, password) = operator(&demo, "admin");
    let browser = Browser::start().await;
    sign_in(&browser, &site, &admin, &password).await;
    assert!(
        browser.text("#waiting").await.parse::<usize>().is_ok(),
        "the dashboard counts the inbox"
    );
    browser.click("a[href='/console/terminals']").await;
    browser.click(&format!("#rotate-key-{id}")).await;
    let new_key = TerminalKey::from_hex(&browser.text("#new-key").await).expect("64 hex digits");
    assert!(connect(old_key).await.is_err(), "the old key is refused");
    let client = connect(new_key.clone()).await.expect("the new key signs on");
    drop(client);
    browser.open(&format!("{site}/console/terminals")).await;
    assert!(!browser.page_text().await.contains(&new_key.to_hex()), "the key is shown once only");

    browser.click(&format!("#disable-{id}")).await;
    assert!(connect(new_key).await.is_err(), "a disabled terminal does not sign on");

    // The audit search finds both, by who and what; the operators' list is the admin's.
    browser.open(&format!("{site}/console/audit?actor={admin}&target=terminal:{id}")).await;
    let actions = browser.text("table.audit tbody").await;
    assert!(
        actions.contains("terminal.rotate_key") && actions.contains("terminal.disable"),
        "{actions}"
    );
    browser.open(&format!("{site}/console/operators")).await;
    assert!(browser.text("table.operators").await.contains("demo-clerk"));
    browser.close().await;

    let (clerk, clerk_password) = operator(&demo, "clerk");
    let browser = Browser::start().await;
    sign_in(&browser, &site, &clerk, &clerk_password).await;
    for path in ["/console/audit", "/console/operators"] {
        browser.open(&format!("{site}{path}")).await;
        assert!(browser.text(".error").await.contains("may not"), "a clerk reads no {path}");
    }
    browser.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_with_a_password_set_by_an_admin_changes_it_at_the_console_before_signing_in() {
    let (dir, server) = demo_server("pages-first-password");
    let demo = dir.path().join("demo");
    let site = format!("http://{}", server.admin_addr());
    let mut admin = server.api();
    let (name, password) = operator(&demo, "admin");
    admin.login(&name, &password).expect("the admin");
    let body =
        serde_json::json!({ "name": "clerk.li", "role": "clerk", "password": "set-by-admin-1" });
    assert_eq!(admin.post("/api/operators", &body).0, 200);

    let browser = Browser::start().await;
    sign_in(&browser, &site, "clerk.li", "set-by-admin-1").await;
    assert!(browser.text(".error").await.contains("密码须先修改"), "held at the change");
    browser.fill("input[name=password]", "set-by-admin-1").await;
    browser.fill("input[name=new_password]", "li-own-password").await;
    browser.fill("input[name=repeat]", "li-own-password-typo").await;
    browser.click("button[type=submit]").await;
    assert!(browser.text(".error").await.contains("不一致"), "the two must agree");
    browser.fill("input[name=password]", "set-by-admin-1").await;
    browser.fill("input[name=new_password]", "li-own-password").await;
    browser.fill("input[name=repeat]", "li-own-password").await;
    browser.click("button[type=submit]").await;
    sign_in(&browser, &site, "clerk.li", "set-by-admin-1").await;
    assert!(
        browser.text(".error").await.contains("wrong operator or password"),
        "the old one is gone"
    );
    sign_in(&browser, &site, "clerk.li", "li-own-password").await;
    assert!(!browser.text("#business-date").await.is_empty(), "signed in with the new one");
    browser.close().await;
}

/// The console as one operator sees it over plain HTTP, redirects not followed: the
/// session cookie holds the API token, as the console's sign-in sets it.
struct ConsoleAs {
    agent: ureq::Agent,
    site: String,
    cookie: String,
    forgery: String,
}

impl ConsoleAs {
    fn new(server: &Server, name: &str, password: &str) -> Self {
        let mut api = server.api();
        api.login(name, password).expect("the operator logs in");
        let config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .max_redirects(0)
            .timeout_global(Some(std::time::Duration::from_secs(60)))
            .build();
        let mut console = Self {
            agent: ureq::Agent::new_with_config(config),
            site: format!("http://{}", server.admin_addr()),
            cookie: format!("onecard_console={}", api.token().expect("a token")),
            forgery: String::new(),
        };
        // The session's anti-forgery token rides in every page's sign-out form.
        let (_, home) = console.get("/console/");
        console.forgery = between(&home, "name=\"forgery\" value=\"", "\"").to_owned();
        assert!(!console.forgery.is_empty(), "the home page carries the forgery token");
        console
    }

    fn get(&self, path: &str) -> (u16, String) {
        let mut answer = self
            .agent
            .get(&format!("{}{path}", self.site))
            .header("Cookie", &self.cookie)
            .call()
            .expect("an answer");
        (answer.status().as_u16(), answer.body_mut().read_to_string().unwrap_or_default())
    }

    /// Posts a form with this session's anti-forgery token: the status and where a
    /// 303 sends the browser.
    fn post(&self, path: &str, fields: &[(&str, &str)]) -> (u16, String) {
        let forgery = ("forgery", self.forgery.as_str());
        let body: Vec<String> = std::iter::once(&forgery)
            .chain(fields)
            .map(|(key, value)| format!("{key}={}", value.replace(' ', "+")))
            .collect();
        let answer = self
            .agent
            .post(&format!("{}{path}", self.site))
            .header("Cookie", &self.cookie)
            .header("Content-Type", "application/x-www-form-urlencoded")
            .send(body.join("&"))
            .expect("an answer");
        let location = answer
            .headers()
            .get("location")
            .and_then(|value| value.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        (answer.status().as_u16(), location)
    }
}

/// A console form: where it posts, its fields, and the roles that may post it.
type Guarded<'a> = (String, Vec<(&'a str, &'a str)>, &'a [&'a str]);

/// The text of `html` between the first `start` and the next `end`.
fn between<'a>(html: &'a str, start: &str, end: &str) -> &'a str {
    html.split_once(start).and_then(|(_, rest)| rest.split_once(end)).map_or("", |(text, _)| text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_console_page_and_form_is_open_to_the_roles_that_may_use_it_and_to_no_other() {
    let (dir, server) = demo_server("pages-roles");
    let demo = dir.path().join("demo");
    let roles = ["admin", "clerk", "finance", "auditor", "department_head"];
    let consoles: Vec<(&str, ConsoleAs)> = roles
        .iter()
        .map(|role| {
            let (name, password) = operator(&demo, role);
            (*role, ConsoleAs::new(&server, &name, &password))
        })
        .collect();
    let card = holder(&demo, 3).card;
    let (_, day) = consoles[0].1.get("/console/day");
    let open = between(&day, "id=\"open-date\">", "<").to_owned();
    assert_eq!(open.len(), 10, "the open date, YYYY-MM-DD: {open:?}");
    let every = &roles[..];
    let ledger = &["admin", "finance", "auditor"][..];
    let pages: [(String, &[&str]); 12] = [
        ("/console/".to_owned(), every),
        (format!("/console/cards?q={card}"), every),
        (format!("/console/cards/{card}"), every),
        ("/console/merchants".to_owned(), every),
        ("/console/terminals".to_owned(), every),
        ("/console/terminals?attention=1".to_owned(), every),
        ("/console/inbox".to_owned(), every),
        ("/console/notices".to_owned(), every),
        ("/console/day".to_owned(), ledger),
        ("/console/audit".to_owned(), &["admin", "auditor"]),
        ("/console/operators".to_owned(), &["admin"]),
        ("/console/backups".to_owned(), &["admin"]),
    ];
    for (path, allowed) in &pages {
        for (role, console) in &consoles {
            let (status, body) = console.get(path);
            let expected = if allowed.contains(role) { 200 } else { 403 };
            assert_eq!(status, expected, "{role} at {path}: {body:.300}");
        }
    }

    // Every form refused to the roles that may not use it, and nothing changes.
    let merchant = between(&consoles[0].1.get("/console/merchants").1, "<td>", "<").to_owned();
    let terminal = between(&consoles[0].1.get("/console/terminals").1, "<td>", "<").to_owned();
    let forms: [Guarded<'_>; 10] = [
        (
            "/console/merchants".to_owned(),
            vec![("name", "Noodle Bar"), ("category", "canteen"), ("commission_rate", "0.01")],
            &["admin"],
        ),
        (format!("/console/merchants/{merchant}/disable"), vec![], &["admin"]),
        (
            format!("/console/merchants/{merchant}/commission"),
            vec![("commission_rate", "0.02")],
            &["admin", "finance"],
        ),
        (format!("/console/terminals/{terminal}/disable"), vec![], &["admin"]),
        (format!("/console/cards/{card}/freeze"), vec![], &["admin", "clerk"]),
        ("/console/operators".to_owned(), vec![("name", "new.one"), ("role", "clerk")], &["admin"]),
        ("/console/operators/demo-clerk/disable".to_owned(), vec![], &["admin"]),
        ("/console/backups".to_owned(), vec![], &["admin"]),
        ("/console/day/cutover".to_owned(), vec![], &["admin", "finance"]),
        (format!("/console/settlements/{open}"), vec![], &["admin", "finance"]),
    ];
    for (path, fields, allowed) in &forms {
        for (role, console) in consoles.iter().filter(|(role, _)| !allowed.contains(role)) {
            let (status, _) = console.post(path, fields);
            assert_eq!(status, 403, "{role} posted {path}");
        }
    }
    let mut api = server.api();
    let (admin, admin_password) = operator(&demo, "admin");
    api.login(&admin, &admin_password).expect("the admin");
    let (_, merchants) = api.get("/api/merchants");
    let merchants = merchants.as_array().expect("merchants").clone();
    assert!(merchants.iter().all(|m| m["name"] != "Noodle Bar" && m["enabled"] == true));
    assert!(merchants.iter().all(|m| m["scheduled_rates"].as_array().is_some_and(Vec::is_empty)));
    let (_, terminal_json) = api.get(&format!("/api/terminals/{terminal}"));
    assert_eq!(terminal_json["enabled"], true, "{terminal_json}");
    assert_eq!(api.get(&format!("/api/cards/{card}")).1["state"], "active");
    let (_, operators) = api.get("/api/operators");
    assert!(operators.as_array().expect("operators").iter().all(|o| o["name"] != "new.one"));
    assert!(
        operators.as_array().expect("operators").iter().all(|o| o["disabled"] == false),
        "{operators}"
    );
    assert!(api.get("/api/backups").1["backups"].as_array().expect("backups").is_empty());
    let (_, day) = consoles[0].1.get("/console/day");
    assert_eq!(between(&day, "id=\"open-date\">", "<"), open, "no one turned the day");

    // Finance, who may, closes the day and settles it from the console's forms.
    let finance = &consoles[2].1;
    assert_eq!(finance.post("/console/day/cutover", &[]), (303, "/console/day".to_owned()));
    let settled = finance.post(&format!("/console/settlements/{open}"), &[]);
    assert_eq!(settled, (303, format!("/console/settlements/{open}")));
    let (status, page) = finance.get(&format!("/console/settlements/{open}"));
    assert_eq!(status, 200);
    assert!(page.contains("id=\"net-payable\""), "the settlement's figures: {page:.300}");
    let (_, day) = finance.get("/console/day");
    assert_ne!(between(&day, "id=\"open-date\">", "<"), open, "the day turned");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_adds_an_operator_a_merchant_and_a_backup_from_the_console() {
    let (dir, server) = demo_server("pages-admin");
    let demo = dir.path().join("demo");
    let site = format!("http://{}", server.admin_addr());
    let (admin, password) = operator(&demo, "admin");
    let browser = Browser::start().await;
    sign_in(&browser, &site, &admin, &password).await;

    // A new operator: their first password shown once, and held at the change.
    browser.click("a[href='/console/operators']").await;
    browser.fill("#operator-name", "clerk.wang").await;
    browser.click("#create-operator").await;
    let first = browser.text("#first-password").await;
    assert_eq!(first.len(), 20, "a made password: {first:?}");
    browser.open(&format!("{site}/console/operators")).await;
    assert!(!browser.page_text().await.contains(&first), "shown once only");
    assert!(browser.text("table.operators").await.contains("clerk.wang"));
    let mut api = server.api();
    let refused = api.login("clerk.wang", &first).expect_err("must change it first");
    assert_eq!(refused.body["error"]["code"], "password_change_required", "{:?}", refused.body);

    // A reset makes another, and the first no longer works.
    browser.click("#reset-password-clerk\\.wang").await;
    let second = browser.text("#first-password").await;
    assert_ne!(second, first);
    let refused = api.login("clerk.wang", &first).expect_err("the first is gone");
    assert_eq!(refused.status, 401, "{:?}", refused.body);

    // A merchant, created and disabled.
    browser.open(&format!("{site}/console/merchants")).await;
    browser.fill("#merchant-name", "Second Canteen Noodles").await;
    browser.fill("#merchant-rate", "0.012").await;
    browser.click("#create-merchant").await;
    let table = browser.text("table.merchants").await;
    assert!(table.contains("Second Canteen Noodles") && table.contains("0.012"), "{table}");
    let (admin_api, admin_password) = (admin.clone(), password.clone());
    api.login(&admin_api, &admin_password).expect("the admin");
    let (_, merchants) = api.get("/api/merchants");
    let created = merchants
        .as_array()
        .expect("merchants")
        .iter()
        .find(|m| m["name"] == "Second Canteen Noodles")
        .expect("the merchant")
        .clone();
    browser.click(&format!("#disable-{}", created["id"])).await;
    let (_, shown) = api.get(&format!("/api/merchants/{}", created["id"]));
    assert_eq!(shown["enabled"], false, "{shown}");
    picture(&browser, "console-merchants").await;

    // A backup taken now, listed, and the last attempt says so.
    browser.open(&format!("{site}/console/backups")).await;
    assert!(browser.text("#last-attempt").await.contains("尚未"), "none yet");
    browser.click("#take-backup").await;
    assert!(browser.text("#last-attempt").await.contains("成功"), "taken");
    assert_eq!(api.get("/api/backups").1["backups"].as_array().expect("backups").len(), 1);
    browser.close().await;
}
