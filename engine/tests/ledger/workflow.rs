//! Approval workflows: a maintenance request walked end to end, every refusal the
//! rules make, and an adjustment whose effect runs exactly once, even when the ledger
//! fails between the approval and the posting.

use std::sync::Arc;

use onecard_engine::Ledger;
use onecard_engine::account::{AccountId, AccountKind};
use onecard_engine::workflow::{Action, Actor, EffectState, Status, WorkflowError, Workflows};
use onecard_tests::TempDir;
use serde_json::json;

use crate::support::config;

fn actor(name: &str, roles: &[&str]) -> Actor {
    Actor {
        name: name.to_owned(),
        roles: roles.iter().map(|r| (*r).to_owned()).collect(),
        from: "127.0.0.1".to_owned(),
    }
}

fn maintenance_form() -> serde_json::Value {
    json!({
        "category": "water_meter",
        "reporter": "李雷",
        "student_number": "2023001",
        "phone": "13800000000",
        "dormitory": "东区 3 栋 402",
        "description": "热水表不走字",
    })
}

#[test]
fn a_maintenance_request_walks_to_its_rating_and_every_refusal_is_typed() {
    let dir = TempDir::new("workflow-maintenance");
    let ledger = Arc::new(Ledger::open(dir.path(), config(2)).expect("opens"));
    let workflows = Workflows::new(Arc::clone(&ledger), &[]).expect("built-ins parse");
    let student = actor("2023001", &[]);
    let (wang, zhang) = (actor("clerk.wang", &["clerk"]), actor("clerk.zhang", &["clerk"]));
    let finance = actor("finance.li", &["finance"]);

    assert!(matches!(
        workflows.submit(&student, "nope", json!({})),
        Err(WorkflowError::UnknownWorkflow(_))
    ));
    let mut bad = maintenance_form();
    bad["category"] = json!("roof");
    assert!(matches!(workflows.submit(&student, "maintenance", bad), Err(WorkflowError::Form(_))));

    let id = workflows.submit(&student, "maintenance", maintenance_form()).expect("submits").id;
    assert_eq!(workflows.inbox(&wang).expect("reads").len(), 1, "in the clerks' inbox");
    assert!(workflows.inbox(&finance).expect("reads").is_empty());
    assert!(matches!(
        workflows.act(&finance, id, Action::Approve, "", None, None),
        Err(WorkflowError::NotYourTurn(_))
    ));
    assert!(matches!(
        workflows.act(&student, id, Action::Approve, "", None, None),
        Err(WorkflowError::NotYourTurn(_))
    ));
    workflows.act(&wang, id, Action::Comment, "看过了", None, None).expect("comments");
    workflows.act(&wang, id, Action::Approve, "派单", None, None).expect("triages");
    // Handed to one person, the step is theirs alone.
    assert!(
        matches!(
            workflows.act(&wang, id, Action::HandOver, "", Some(&finance), None),
            Err(WorkflowError::Form(_))
        ),
        "only to someone who holds the step's role"
    );
    workflows.act(&wang, id, Action::HandOver, "水表归你", Some(&zhang), None).expect("hands over");
    assert!(matches!(
        workflows.act(&wang, id, Action::Approve, "", None, None),
        Err(WorkflowError::NotYourTurn(_))
    ));
    assert!(matches!(
        workflows.act(&zhang, id, Action::Reject, "", None, None),
        Err(WorkflowError::ActionNotAllowed { action: Action::Reject, .. })
    ));
    workflows.act(&zhang, id, Action::Approve, "已修好", None, None).expect("handles");
    assert!(matches!(
        workflows.act(&student, id, Action::Approve, "", None, Some(9)),
        Err(WorkflowError::Form(_))
    ));
    let done = workflows.act(&student, id, Action::Approve, "谢谢", None, Some(5)).expect("rates");
    assert_eq!(done.status, Status::Completed);
    assert_eq!(
        done.effect,
        Some(EffectState::Done { transfer_id: 0, rows: Vec::new(), note: String::new() }),
        "no ledger effect"
    );
    let actions: Vec<&str> = done.history.iter().map(|h| h.action.as_str()).collect();
    assert_eq!(actions, ["submit", "comment", "approve", "hand_over", "approve", "approve"]);
    assert_eq!(done.history.last().and_then(|h| h.rating), Some(5));
    assert!(matches!(
        workflows.act(&wang, id, Action::Comment, "", None, None),
        Err(WorkflowError::Finished(_))
    ));

    // The same clerk cannot approve twice in one application, and a clerk who applies
    // cannot approve their own.
    let twice = workflows.submit(&student, "maintenance", maintenance_form()).expect("submits").id;
    workflows.act(&wang, twice, Action::Approve, "", None, None).expect("triages");
    assert!(matches!(
        workflows.act(&wang, twice, Action::Approve, "", None, None),
        Err(WorkflowError::FourEyes(_))
    ));
    let own = workflows.submit(&wang, "maintenance", maintenance_form()).expect("submits").id;
    assert!(matches!(
        workflows.act(&wang, own, Action::Approve, "", None, None),
        Err(WorkflowError::FourEyes(_))
    ));
    assert!(workflows.inbox(&wang).expect("reads").iter().all(|i| i.id != own), "not in own inbox");
    // Returned to the applicant, who resubmits.
    workflows.act(&zhang, own, Action::Return, "写清楚宿舍", None, None).expect("returns");
    assert_eq!(workflows.inbox(&wang).expect("reads").iter().filter(|i| i.id == own).count(), 1);
    let mut changed = maintenance_form();
    changed["dormitory"] = json!("东区 3 栋 402 室");
    assert!(
        matches!(
            workflows.resubmit(&zhang, own, changed.clone(), ""),
            Err(WorkflowError::NotYourTurn(_))
        ),
        "only the applicant resubmits"
    );
    let back = workflows.resubmit(&wang, own, changed, "补上房号").expect("resubmits");
    assert_eq!((back.status, back.step), (Status::Open, 0));
    assert_eq!(back.form["dormitory"], "东区 3 栋 402 室");
    assert!(
        matches!(
            workflows.resubmit(&wang, own, maintenance_form(), ""),
            Err(WorkflowError::NotYourTurn(_))
        ),
        "an open application is not resubmitted"
    );
    // Overdue: a day past triage's 24 hours.
    let later = back.step_since_ms + 25 * 3_600_000;
    assert!(workflows.overdue(later).expect("reads").iter().any(|i| i.id == own));
    assert!(workflows.overdue(back.step_since_ms).expect("reads").iter().all(|i| i.id != own));
}

#[test]
fn an_approved_adjustment_posts_exactly_once_even_when_the_ledger_fails_in_between() {
    let dir = TempDir::new("workflow-adjustment");
    // One master key across the restart, as the service keeps it.
    let config = config(2);
    let suspense = AccountId::single(AccountKind::Suspense);
    let form = json!({
        "debit": "channel_clearing:1",
        "credit": "suspense:0",
        "amount_fen": 300,
        "reason": "长款 WX-404",
    });
    let maker = actor("finance.li", &["finance"]);
    let checker = actor("finance.zhao", &["finance"]);
    let id = {
        let ledger = Arc::new(Ledger::open(dir.path(), config.clone()).expect("opens"));
        let workflows = Workflows::new(Arc::clone(&ledger), &[]).expect("built-ins");
        let mut bad = form.clone();
        bad["amount_fen"] = json!(-1);
        assert!(matches!(workflows.submit(&maker, "adjustment", bad), Err(WorkflowError::Form(_))));
        let id = workflows.submit(&maker, "adjustment", form.clone()).expect("submits").id;
        assert!(matches!(
            workflows.act(&maker, id, Action::Approve, "", None, None),
            Err(WorkflowError::FourEyes(_))
        ));
        // The approval lands (one write); the ledger write of its effect fails.
        ledger.inject_fault("write_fails@control+1".parse().expect("a plan"));
        assert!(workflows.act(&checker, id, Action::Approve, "核对无误", None, None).is_err());
        let stored = workflows.instance(id).expect("stored");
        assert_eq!((stored.status, stored.effect), (Status::Completed, Some(EffectState::Pending)));
        assert_eq!(ledger.account_balance(suspense).expect("reads"), 0, "nothing posted yet");
        assert!(matches!(
            workflows.act(&checker, id, Action::Approve, "", None, None),
            Err(WorkflowError::Finished(_))
        ));
        drop(workflows);
        Arc::into_inner(ledger).expect("the only holder").close();
        id
    };
    // Restarted, recovery finishes what was approved, once.
    let ledger = Arc::new(Ledger::open(dir.path(), config).expect("reopens"));
    let workflows = Workflows::new(Arc::clone(&ledger), &[]).expect("built-ins");
    assert_eq!(workflows.recover().expect("recovers"), [id]);
    assert!(workflows.recover().expect("recovers").is_empty(), "once");
    let done = workflows.instance(id).expect("stored");
    assert!(matches!(done.effect, Some(EffectState::Done { transfer_id, .. }) if transfer_id != 0));
    assert_eq!(ledger.account_balance(suspense).expect("reads"), 300, "posted exactly once");
    let report = ledger.verify().expect("reads");
    assert!(report.is_clean(), "{report}");
}

#[test]
fn a_definition_is_data_and_a_bad_one_is_refused() {
    let dir = TempDir::new("workflow-definitions");
    let ledger = Arc::new(Ledger::open(dir.path(), config(1)).expect("opens"));
    let extra = "name = \"lost_and_found\"\ntitle = \"失物招领\"\n[[steps]]\nname = \"desk\"\nrole = \"clerk\"\nactions = [\"approve\", \"reject\"]\n";
    let workflows = Workflows::new(Arc::clone(&ledger), &[extra.to_owned()]).expect("loads");
    let names: Vec<&str> = workflows.definitions().iter().map(|d| d.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "adjustment",
            "card_closure",
            "card_extension",
            "card_opening",
            "commission_change",
            "discrepancy",
            "lost_and_found",
            "maintenance",
            "merchant_onboarding",
            "subsidy_batch",
            "subsidy_expiry"
        ]
    );
    for bad in [
        "name = \"x\"\ntitle = \"x\"\nsteps = []\n",
        "name = \"Bad Name\"\ntitle = \"x\"\n[[steps]]\nname = \"s\"\nrole = \"clerk\"\nactions = [\"approve\"]\n",
        "name = \"x\"\ntitle = \"x\"\n[[steps]]\nname = \"s\"\nrole = \"clerk\"\nactions = [\"comment\"]\n",
        "name = \"x\"\ntitle = \"x\"\nsurprise = 1\n",
        "name = \"maintenance\"\ntitle = \"again\"\n[[steps]]\nname = \"s\"\nrole = \"clerk\"\nactions = [\"approve\"]\n",
        // Only cardholders may be named as applicants besides operators.
        "name = \"x\"\ntitle = \"x\"\napplicants = [\"visitor\"]\n[[steps]]\nname = \"s\"\nrole = \"clerk\"\nactions = [\"approve\"]\n",
        // A choice needs its choices; a field is named once.
        "name = \"x\"\ntitle = \"x\"\n[[fields]]\nname = \"f\"\nlabel = \"F\"\nkind = \"choice\"\n[[steps]]\nname = \"s\"\nrole = \"clerk\"\nactions = [\"approve\"]\n",
        "name = \"x\"\ntitle = \"x\"\n[[fields]]\nname = \"f\"\nlabel = \"F\"\n[[fields]]\nname = \"f\"\nlabel = \"G\"\n[[steps]]\nname = \"s\"\nrole = \"clerk\"\nactions = [\"approve\"]\n",
    ] {
        assert!(
            matches!(
                Workflows::new(Arc::clone(&ledger), &[bad.to_owned()]),
                Err(WorkflowError::Definition(_))
            ),
            "{bad}"
        );
    }
}

/// A second finance operator, to check what `maker` made.
fn checker_of(maker: &Actor) -> Actor {
    actor(&format!("{}.checker", maker.name), &["finance"])
}

fn open_card(ledger: &Ledger, card_number: u64, funded_fen: i64) {
    use onecard_engine::cards::{CardType, LimitOverrides, Purse};
    ledger
        .open_card(onecard_engine::OpenCard {
            card_number,
            holder_id: format!("S{card_number}"),
            holder_name: "王五".to_owned(),
            card_type: CardType::Student,
            expiry_date: crate::support::EXPIRY - 10_000,
            deposit_fen: 20_00,
            pin: None,
            overrides: LimitOverrides::default(),
        })
        .expect("opens");
    if funded_fen > 0 {
        ledger.post_subsidy(card_number, funded_fen, Purse::Main).expect("funds");
    }
}

#[test]
fn subsidies_closures_and_extensions_take_effect_once_with_each_row_reported() {
    let dir = TempDir::new("workflow-batches");
    let ledger = Arc::new(Ledger::open(dir.path(), config(2)).expect("opens"));
    let workflows = Workflows::new(Arc::clone(&ledger), &[]).expect("built-ins");
    let finance = actor("finance.li", &["finance"]);
    let head = actor("head.chen", &["department_head"]);
    let admin = actor("admin.he", &["admin"]);
    let clerk = actor("clerk.wang", &["clerk"]);
    for card in [1001, 1002, 1003] {
        open_card(&ledger, card, 0);
    }
    ledger.close_card(1003).expect("closes");

    // A subsidy batch: two rows post, the closed card's and the unknown card's are
    // reported, and the batch never posts twice.
    let rows = json!({ "reason": "2026 秋季补助", "rows": [
        { "card_number": 1001, "amount_fen": 150_00, "purse": "main" },
        { "card_number": 1002, "amount_fen": 50_00, "purse": "restricted" },
        { "card_number": 1003, "amount_fen": 10_00 },
        { "card_number": 9999, "amount_fen": 10_00 },
    ]});
    let mut bad = rows.clone();
    bad["rows"][0]["amount_fen"] = json!(0);
    assert!(matches!(
        workflows.submit(&finance, "subsidy_batch", bad),
        Err(WorkflowError::Form(_))
    ));
    let id = workflows.submit(&finance, "subsidy_batch", rows).expect("submits").id;
    workflows.act(&head, id, Action::Approve, "", None, None).expect("head approves");
    let done = workflows.act(&admin, id, Action::Approve, "", None, None).expect("centre approves");
    let Some(EffectState::Done { rows, .. }) = &done.effect else { panic!("done: {done:?}") };
    let oks: Vec<bool> = rows.iter().map(|r| r.ok).collect();
    assert_eq!(oks, [true, true, false, false]);
    let card = |n| ledger.card(n).expect("a card");
    assert_eq!((card(1001).balance_fen, card(1002).restricted_fen), (150_00, 50_00));
    // Run again (as recovery would): the stored outcome, nothing posted.
    let (again, before) = ledger
        .post_subsidies_once(onecard_engine::workflow::WORKFLOW_KEY_BIT | id, &[])
        .expect("reads");
    assert!(before && again.len() == 4);
    assert_eq!(card(1001).balance_fen, 150_00);

    // A closure whose refund is above 1,000 yuan needs the department head too.
    open_card(&ledger, 2001, 1_200_00);
    let small = workflows
        .submit(&clerk, "card_closure", json!({ "cards": [1002], "reason": "graduation" }))
        .expect("submits");
    let closed =
        workflows.act(&finance, small.id, Action::Approve, "", None, None).expect("approves");
    assert_eq!(closed.status, Status::Completed, "20.00 of deposit: no head needed");
    let big = workflows
        .submit(&clerk, "card_closure", json!({ "cards": [2001, 1003], "reason": "leaving" }))
        .expect("submits");
    assert_eq!(big.amount_fen, 1_220_00, "balance and deposit");
    let after_finance =
        workflows.act(&finance, big.id, Action::Approve, "", None, None).expect("ok");
    assert_eq!(after_finance.status, Status::Open, "waits for the head");
    assert!(matches!(
        workflows.act(&finance, big.id, Action::Approve, "", None, None),
        Err(WorkflowError::NotYourTurn(_))
    ));
    let done = workflows.act(&head, big.id, Action::Approve, "", None, None).expect("head");
    let Some(EffectState::Done { rows, .. }) = &done.effect else { panic!("done: {done:?}") };
    let outcomes: Vec<&str> = rows.iter().map(|r| r.outcome.as_str()).collect();
    assert_eq!(outcomes, ["closed", "already closed: nothing refunded by this application"]);
    let payable =
        ledger.account_balance(AccountId::single(AccountKind::RefundPayable)).expect("reads");
    assert_eq!(
        payable,
        1_220_00 + 20_00 + 20_00,
        "1002's deposit, 2001's balance and deposit, 1003's deposit at its own closure"
    );

    // An extension: to a later date, and a card already valid is already done.
    let date = crate::support::EXPIRY;
    let ext = workflows
        .submit(&clerk, "card_extension", json!({ "cards": [1001], "expiry_date": date }))
        .expect("submits");
    let done = workflows.act(&admin, ext.id, Action::Approve, "", None, None).expect("approves");
    let Some(EffectState::Done { rows, .. }) = &done.effect else { panic!("done: {done:?}") };
    assert_eq!(rows[0].outcome, "extended");
    assert_eq!(card(1001).expiry_date, date);

    // A batch opening from the student office's list: one new, one already open for the
    // same holder (a rerun), one whose number is someone else's.
    let list = json!({ "source": "学生处 2026 级新生", "rows": [
        { "card_number": 3001, "holder_id": "S3001", "holder_name": "新生甲", "card_type": "student", "expiry_date": 20_300_731, "deposit_fen": 20_00 },
        { "card_number": 1001, "holder_id": "S1001", "holder_name": "王五", "card_type": "student", "expiry_date": 20_300_731 },
        { "card_number": 1002, "holder_id": "S9999", "holder_name": "冒名", "card_type": "staff", "expiry_date": 20_300_731 },
    ]});
    let mut bad = list.clone();
    bad["rows"][0]["card_type"] = json!("alien");
    assert!(matches!(workflows.submit(&clerk, "card_opening", bad), Err(WorkflowError::Form(_))));
    let opening = workflows.submit(&clerk, "card_opening", list).expect("submits");
    let done =
        workflows.act(&admin, opening.id, Action::Approve, "", None, None).expect("approves");
    let Some(EffectState::Done { rows, .. }) = &done.effect else { panic!("done: {done:?}") };
    let outcomes: Vec<(&str, bool)> = rows.iter().map(|r| (r.outcome.as_str(), r.ok)).collect();
    assert_eq!(
        outcomes,
        [("opened", true), ("already open", true), ("the number belongs to another holder", false)]
    );
    assert_eq!(card(3001).deposit_fen, 20_00);

    // A commission change applies from the next business day: today keeps its rate.
    let merchant = ledger
        .create_merchant(
            "一食堂",
            onecard_engine::directory::MerchantCategory::Canteen,
            "0.015".parse().expect("rate"),
        )
        .expect("a merchant");
    let change =
        json!({ "merchant_id": merchant.id, "commission_rate": "0.02", "reason": "新学年" });
    let mut bad = change.clone();
    bad["commission_rate"] = json!("1.5");
    assert!(matches!(
        workflows.submit(&finance, "commission_change", bad),
        Err(WorkflowError::Form(_))
    ));
    let id = workflows.submit(&finance, "commission_change", change).expect("submits").id;
    workflows.act(&checker_of(&finance), id, Action::Approve, "", None, None).expect("finance");
    let done = workflows.act(&head, id, Action::Approve, "", None, None).expect("head");
    assert!(matches!(&done.effect, Some(EffectState::Done { note, .. }) if note.contains("0.02")));
    let record = ledger.merchant(merchant.id).expect("the merchant");
    let today = ledger.business_date();
    assert_eq!(record.rate_on(today.to_yyyymmdd()), "0.015".parse().expect("rate"));
    assert_eq!(record.rate_on(today.next().to_yyyymmdd()), "0.02".parse().expect("rate"));

    // A merchant onboarded today opens with tomorrow's cutover, once.
    let onboarding = json!({ "name": "三食堂", "category": "canteen", "commission_rate": "0.01" });
    let id = workflows.submit(&finance, "merchant_onboarding", onboarding).expect("submits").id;
    workflows.act(&checker_of(&finance), id, Action::Approve, "", None, None).expect("finance");
    let done = workflows.act(&head, id, Action::Approve, "", None, None).expect("head");
    assert!(
        matches!(&done.effect, Some(EffectState::Done { note, .. }) if note.contains("opens on"))
    );
    let made = ledger.merchants().into_iter().find(|m| m.name == "三食堂").expect("created");
    assert!(!made.enabled, "not before its first business day");
    ledger.cutover(ledger.business_date()).expect("turns");
    assert!(ledger.merchant(made.id).expect("the merchant").enabled, "opened by the cutover");

    // A discrepancy needs the reconciliation line it resolves.
    let form = json!({ "debit": "channel_clearing:1", "credit": "suspense:0", "amount_fen": 300, "reason": "长款" });
    assert!(matches!(
        workflows.submit(&finance, "discrepancy", form.clone()),
        Err(WorkflowError::Form(_))
    ));
    let mut with_reference = form;
    with_reference["reference"] = json!("channel:app:2026-09-01:line 5");
    let small = workflows.submit(&finance, "discrepancy", with_reference).expect("submits");
    let checker = actor("finance.zhao", &["finance"]);
    let done = workflows.act(&checker, small.id, Action::Approve, "", None, None).expect("posts");
    assert!(matches!(done.effect, Some(EffectState::Done { transfer_id, .. }) if transfer_id != 0));
    let report = ledger.verify().expect("reads");
    assert!(report.is_clean(), "{report}");
}

#[test]
fn the_term_end_expiry_empties_every_restricted_purse_once_approved() {
    use onecard_engine::cards::Purse;
    let dir = TempDir::new("workflow-expiry");
    let ledger = Arc::new(Ledger::open(dir.path(), config(2)).expect("opens"));
    let workflows = Workflows::new(Arc::clone(&ledger), &[]).expect("built-ins");
    for card in [5001, 5002, 5003] {
        open_card(&ledger, card, 10_00);
    }
    ledger.post_subsidy(5001, 30_00, Purse::Restricted).expect("credits");
    ledger.post_subsidy(5002, 12_50, Purse::Restricted).expect("credits");
    let system = actor("onecard", &[]);
    let form = json!({ "term_end": "2027-01-20", "reason": "学期末清零" });
    let id = workflows.submit(&system, "subsidy_expiry", form).expect("applies").id;
    assert_eq!(
        workflows.instance(id).expect("stored").amount_fen,
        42_50,
        "what it would take back"
    );
    workflows
        .act(&actor("finance.li", &["finance"]), id, Action::Approve, "", None, None)
        .expect("ok");
    let done = workflows
        .act(&actor("head.chen", &["department_head"]), id, Action::Approve, "", None, None)
        .expect("runs");
    let Some(EffectState::Done { note, .. }) = &done.effect else { panic!("done: {done:?}") };
    assert_eq!(note, "2 restricted purses emptied, 4250 fen back to subsidy funding");
    for card in [5001, 5002, 5003] {
        let view = ledger.card(card).expect("a card");
        assert_eq!(
            (view.restricted_fen, view.balance_fen),
            (0, 10_00),
            "card {card}: main untouched"
        );
    }
    assert!(ledger.restricted_purses().is_empty());
    let report = ledger.verify().expect("reads");
    assert!(report.is_clean(), "{report}");
}

#[test]
fn a_cardholder_applies_only_where_the_definition_opens_it_and_with_every_declared_field() {
    let dir = TempDir::new("workflow-cardholder");
    let ledger = Arc::new(Ledger::open(dir.path(), config(1)).expect("opens"));
    let workflows = Workflows::new(Arc::clone(&ledger), &[]).expect("built-ins parse");
    let holder = actor("cardholder:20260000001", &["cardholder"]);
    let open: Vec<&str> = workflows
        .definitions()
        .iter()
        .filter(|d| d.applicants.iter().any(|a| a == "cardholder"))
        .map(|d| d.name.as_str())
        .collect();
    assert_eq!(open, ["maintenance"], "the repair request is the hall's first service");
    let form = json!({ "debit": "1", "credit": "2", "amount_yuan": "1.00", "reason": "x" });
    assert!(matches!(
        workflows.submit(&holder, "adjustment", form),
        Err(WorkflowError::NotYourTurn(_))
    ));
    for missing in ["category", "reporter", "student_number", "phone", "dormitory", "description"] {
        let mut form = maintenance_form();
        form.as_object_mut().expect("an object").remove(missing);
        assert!(
            matches!(workflows.submit(&holder, "maintenance", form), Err(WorkflowError::Form(_))),
            "{missing} is declared, so required"
        );
    }
    let instance = workflows.submit(&holder, "maintenance", maintenance_form()).expect("applies");
    assert_eq!(instance.applicant, "cardholder:20260000001");
    ledger_close(ledger, workflows);
}

fn ledger_close(ledger: Arc<Ledger>, workflows: Workflows) {
    drop(workflows);
    Arc::into_inner(ledger).expect("the only holder").close();
}

#[test]
fn every_step_change_notifies_the_applicant_and_the_inbox_it_reaches_and_a_comment_nobody() {
    use onecard_engine::notice::NoticeKind;
    let dir = TempDir::new("workflow-notices");
    let ledger = Arc::new(Ledger::open(dir.path(), config(1)).expect("opens"));
    let workflows = Workflows::new(Arc::clone(&ledger), &[]).expect("built-ins parse");
    let holder = actor("cardholder:20260000001", &["cardholder"]);
    let (wang, zhang) = (actor("clerk.wang", &["clerk"]), actor("clerk.zhang", &["clerk"]));
    let id = workflows.submit(&holder, "maintenance", maintenance_form()).expect("applies").id;
    workflows.act(&wang, id, Action::Comment, "looking", None, None).expect("comments");
    workflows.act(&wang, id, Action::Approve, "", None, None).expect("triaged");
    workflows.act(&zhang, id, Action::Approve, "fixed", None, None).expect("handled");
    workflows.act(&holder, id, Action::Approve, "thanks", None, Some(5)).expect("confirmed");
    let all = workflows.notices_after(0, 100).expect("reads");
    let said: Vec<(&str, NoticeKind, &str)> =
        all.iter().map(|n| (n.to.as_str(), n.kind, n.step.as_str())).collect();
    assert_eq!(
        said,
        [
            ("cardholder:20260000001", NoticeKind::Progressed, "triage"),
            ("role:clerk", NoticeKind::Waiting, "triage"),
            ("cardholder:20260000001", NoticeKind::Progressed, "handle"),
            ("role:clerk", NoticeKind::Waiting, "handle"),
            ("cardholder:20260000001", NoticeKind::YourTurn, "confirm"),
            ("cardholder:20260000001", NoticeKind::Completed, ""),
        ],
        "the comment moved nothing and notified nobody"
    );
    let ids: Vec<u64> = all.iter().map(|n| n.id).collect();
    assert_eq!(ids, (1..=6).collect::<Vec<_>>(), "dense from 1");
    let mine = workflows.notices_for(&["cardholder:20260000001".to_owned()], 10).expect("reads");
    assert_eq!(mine.len(), 4);
    assert_eq!(mine[0].kind, NoticeKind::Completed, "newest first");
    assert_eq!(workflows.delivered_through().expect("reads"), 0);
    workflows.set_delivered_through(4).expect("writes");
    assert_eq!(workflows.delivered_through().expect("reads"), 4);
    assert_eq!(workflows.notices_after(4, 100).expect("reads").len(), 2);
    ledger_close(ledger, workflows);
}
