//! Approval workflows (审批): the card centre's applications, who acts on them at each
//! step, and the ledger effect that runs, exactly once, when the last approval lands.
//!
//! A workflow's *definition* is data (TOML): its steps, the role that acts at each,
//! the actions that role may take there, a deadline, and the effect. An *instance* is
//! one application: its form, where it stands, and its full history; instances live
//! in the `workflow` column family, one JSON record each, written synced before any
//! answer. The rules every instance keeps:
//! - only the step's role acts (or the one person a step was handed over to); a step
//!   whose role is `applicant` is the applicant's own;
//! - the applicant never approves their own application at another role's step, and
//!   nobody approves twice in one instance (four eyes, 双人作业);
//! - a finished instance (completed or rejected) takes no action.
//!
//! Effects run exactly once: the last approval first stores the instance as
//! completed with its effect *pending*; the effect then posts under an idempotency key
//! derived from the instance, and the instance is stored again with the outcome. A
//! process that dies in between finds the pending effect at start
//! ([`Workflows::recover`]) and runs it; the key makes a second run post nothing.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};

use serde::{Deserialize, Serialize};

use crate::account::AccountId;
use crate::adjustment::AdjustmentOrder;
use crate::date::now_ms;
use crate::journal::CONTROL_JOURNAL;
use crate::ledger::{ControlError, Ledger};
use crate::notice::{self, Notice, NoticeKind};
use crate::store::CF_WORKFLOW;

/// Instances listed at most by one query.
pub const INSTANCES_LISTED_MAX: usize = 1_000;

/// Longest comment, form text field or name, in bytes.
pub const WORKFLOW_TEXT_BYTES_MAX: usize = 2_048;

/// The bit that marks an idempotency key as a workflow's (its instance id below it):
/// a workflow's adjustment id or subsidy batch key, never shared with one made
/// through the API.
pub const WORKFLOW_KEY_BIT: u64 = 1 << 62;

/// The role name of a step the applicant takes.
pub const APPLICANT: &str = "applicant";

/// The role of a cardholder acting in the service hall, and the `applicants` entry
/// that opens a workflow to them.
pub const CARDHOLDER: &str = "cardholder";

/// What someone may do at a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Pass the step (at the last step: complete the instance and run its effect).
    Approve,
    /// End the instance; nothing runs.
    Reject,
    /// Send it back to the applicant for changes.
    Return,
    /// Add a comment; the step stays.
    Comment,
    /// Give the step to one named person of the same role.
    HandOver,
}

/// The ledger effect of a completed instance.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Effect {
    /// None: a request handled and closed (maintenance).
    #[default]
    None,
    /// An adjustment (调账): the form's debit, credit, amount and reason.
    Adjustment,
    /// A subsidy batch (补助): the form's rows posted in one go from subsidy funding;
    /// a row that cannot post is reported, the rest post, the batch never twice.
    SubsidyBatch,
    /// Card closure with refund (销户退款): each card's balance and deposit to refund
    /// payable, which finance pays out.
    CardClosure,
    /// Validity extension (延期) of a list of cards to one date.
    CardExtension,
    /// Batch card opening from the student office's or HR's list: each row a card.
    CardOpening,
    /// A merchant's commission change, in force from the next business day.
    CommissionChange,
    /// A new merchant (商户入驻), created disabled and opened by the next business
    /// day's cutover.
    MerchantOnboarding,
    /// Term-end expiry (清零): every restricted purse's balance back to subsidy
    /// funding. `serve` applies for it at each configured term end.
    SubsidyExpiry,
}

/// One step of a definition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Step {
    /// The step's name.
    pub name: String,
    /// The role that acts (`applicant`, or an operator role such as `finance`).
    pub role: String,
    /// What that role may do here.
    pub actions: Vec<Action>,
    /// Hours the step may take before it is overdue (0: no deadline).
    #[serde(default)]
    pub deadline_hours: u32,
    /// The step applies only when the application's amount is above this many fen
    /// (a refund above a threshold needs the department head); absent: always.
    #[serde(default)]
    pub when_over_fen: Option<i64>,
}

/// A workflow definition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Definition {
    /// Its name, as the API and the instances name it.
    pub name: String,
    /// What the card centre calls it.
    pub title: String,
    /// The effect when the last step approves.
    #[serde(default)]
    pub effect: Effect,
    /// Who besides operators may apply: `cardholder` opens it to cardholders in the
    /// service hall. Absent: operators only.
    #[serde(default)]
    pub applicants: Vec<String>,
    /// The category the service hall lists it under (服务分类).
    #[serde(default)]
    pub category: String,
    /// The form's fields, as a page asks for them; the form must hold each.
    #[serde(default)]
    pub fields: Vec<Field>,
    /// The steps, in order.
    pub steps: Vec<Step>,
}

/// One field of a workflow's form.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Field {
    /// Its key in the form.
    pub name: String,
    /// What a page calls it.
    pub label: String,
    /// What it holds.
    #[serde(default)]
    pub kind: FieldKind,
    /// The values a `choice` takes.
    #[serde(default)]
    pub choices: Vec<Choice>,
    /// Filled in from the applicant's card (一表通), not by the applicant.
    #[serde(default)]
    pub prefill: Option<Prefill>,
}

/// What a form field holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FieldKind {
    /// A line of text.
    #[default]
    Text,
    /// Several lines of text.
    LongText,
    /// One of the field's choices.
    Choice,
}

/// One value a `choice` field takes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Choice {
    /// The value the form holds.
    pub value: String,
    /// What a page shows.
    pub label: String,
}

/// What onecard fills a field in with, from the applicant's card.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Prefill {
    /// The holder's name.
    HolderName,
    /// The holder's student or staff number.
    HolderId,
    /// The card number.
    CardNumber,
}

/// The built-in definitions: the TOML files in `engine/workflows/`, written as a card
/// centre writes its own.
pub const BUILT_IN: [&str; 10] = [
    include_str!("../workflows/maintenance.toml"),
    include_str!("../workflows/adjustment.toml"),
    include_str!("../workflows/discrepancy.toml"),
    include_str!("../workflows/subsidy_batch.toml"),
    include_str!("../workflows/card_closure.toml"),
    include_str!("../workflows/merchant_onboarding.toml"),
    include_str!("../workflows/commission_change.toml"),
    include_str!("../workflows/card_opening.toml"),
    include_str!("../workflows/card_extension.toml"),
    include_str!("../workflows/subsidy_expiry.toml"),
];

/// Cards one batch application lists at most.
pub const BATCH_CARDS_MAX: usize = crate::limits::SUBSIDY_BATCH_ROWS_MAX;

/// Why a definition, a form or an action was refused. Nothing was written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WorkflowError {
    /// A definition that does not parse or breaks a rule.
    #[error("definition: {0}")]
    Definition(String),
    /// No workflow has this name.
    #[error("no workflow {0:?}")]
    UnknownWorkflow(String),
    /// No instance has this id.
    #[error("no application {0}")]
    UnknownInstance(u64),
    /// The form is not what the workflow needs.
    #[error("form: {0}")]
    Form(String),
    /// The instance is completed or rejected.
    #[error("application {0} is finished")]
    Finished(u64),
    /// Not this person's turn: another role's step, or handed to someone else.
    #[error("not your turn: {0}")]
    NotYourTurn(String),
    /// The step does not offer this action.
    #[error("{action:?} is not an action of step {step:?}")]
    ActionNotAllowed {
        /// The action asked for.
        action: Action,
        /// The step.
        step: String,
    },
    /// A second approval by one person, or the applicant approving their own.
    #[error("four eyes: {0}")]
    FourEyes(String),
    /// The ledger refused or failed.
    #[error(transparent)]
    Ledger(#[from] ControlError),
    /// The store failed.
    #[error("storage: {0}")]
    Storage(#[from] rocksdb::Error),
}

/// Who acts: their name and roles (operator roles; `applicant` is implied by name).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor {
    /// The operator's name.
    pub name: String,
    /// The roles they hold.
    pub roles: Vec<String>,
    /// Where they act from (an address), for the history.
    pub from: String,
}

/// Where an instance stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Waiting at its current step.
    Open,
    /// Sent back to the applicant, who may resubmit.
    Returned,
    /// Rejected: nothing ran.
    Rejected,
    /// Every step approved; its effect ran (or is pending).
    Completed,
}

/// One line of an instance's history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryEntry {
    /// When, ms since the epoch.
    pub at_ms: u64,
    /// Who.
    pub actor: String,
    /// `submit`, `resubmit`, or an action's name.
    pub action: String,
    /// The step it was taken at.
    pub step: String,
    /// What they wrote.
    pub comment: String,
    /// Where from.
    pub from: String,
    /// A rating (1 to 5) the applicant gave when confirming, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rating: Option<u8>,
    /// What they saw: the SHA-256 of the form as it stood when they acted (hex).
    #[serde(default)]
    pub form_sha256: String,
}

/// The SHA-256 of a form's JSON, hex: what an approver saw, kept in the history.
#[must_use]
pub fn form_digest(form: &serde_json::Value) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(serde_json::to_vec(form).unwrap_or_default()))
}

/// What a completed instance's effect did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "state")]
pub enum EffectState {
    /// Approved; not yet run (or interrupted: recovery runs it).
    Pending,
    /// Ran; `transfer_id` is what it posted (0: nothing, or many: see `rows`).
    Done {
        /// The transfer posted.
        transfer_id: u64,
        /// For a batch: what became of each row, in order.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        rows: Vec<RowOutcome>,
        /// What it did, in words, where that is not a transfer or rows.
        #[serde(default, skip_serializing_if = "String::is_empty")]
        note: String,
    },
    /// The ledger refused it (a closed card, say); the instance is complete and the
    /// refusal is on record.
    Refused {
        /// Why.
        reason: String,
    },
}

/// What a batch effect did with one row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RowOutcome {
    /// The row: a card number.
    pub card_number: u64,
    /// `posted`, `closed`, `extended`, `already done`, or why it could not.
    pub outcome: String,
    /// Whether it took effect (now or before).
    pub ok: bool,
}

impl RowOutcome {
    fn new(card_number: u64, outcome: impl Into<String>, ok: bool) -> Self {
        Self { card_number, outcome: outcome.into(), ok }
    }

    /// A row's outcome from a ledger call: `done` when it took effect, the refusal in
    /// words when the ledger refused it. A storage failure is the effect's own error:
    /// the effect stays pending and runs again.
    fn of<T>(
        card_number: u64,
        done: &str,
        result: Result<T, ControlError>,
    ) -> Result<Self, WorkflowError> {
        match result {
            Ok(_) => Ok(Self::new(card_number, done, true)),
            Err(error @ (ControlError::Storage(_) | ControlError::Write(_))) => Err(error.into()),
            Err(refused) => Ok(Self::new(card_number, refused.to_string(), false)),
        }
    }
}

/// One application.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Instance {
    /// Its id.
    pub id: u64,
    /// Its workflow.
    pub workflow: String,
    /// Who applied.
    pub applicant: String,
    /// What they applied for.
    pub form: serde_json::Value,
    /// Where it stands.
    pub status: Status,
    /// Its current step (the index into the definition's steps).
    pub step: usize,
    /// The amount the application moves, fen, as reckoned when it was submitted (what
    /// conditional steps compare against).
    #[serde(default)]
    pub amount_fen: i64,
    /// The one person the current step was handed over to, if any.
    pub assignee: Option<String>,
    /// When the current step began, ms since the epoch.
    pub step_since_ms: u64,
    /// Everything done to it, oldest first.
    pub history: Vec<HistoryEntry>,
    /// The effect, once completed.
    pub effect: Option<EffectState>,
}

/// The notices a change of `after` (stored before as `before`, if at all) makes:
/// none when it did not move (a comment), else the applicant's and the inbox's.
fn notices_of(
    definition: &Definition,
    before: Option<&Instance>,
    after: &Instance,
    at_ms: u64,
) -> Vec<Notice> {
    let place = |i: &Instance| (i.status, i.step, i.assignee.clone());
    if before.is_some_and(|before| place(before) == place(after)) {
        return Vec::new();
    }
    let step = definition.steps.get(after.step);
    let notice = |to: String, kind: NoticeKind| Notice {
        id: 0,
        at_ms,
        to,
        kind,
        application: after.id,
        workflow: after.workflow.clone(),
        title: definition.title.clone(),
        step: if after.status == Status::Open {
            step.map(|s| s.name.clone()).unwrap_or_default()
        } else {
            String::new()
        },
    };
    let applicant = |kind| notice(after.applicant.clone(), kind);
    match after.status {
        Status::Open => match step {
            Some(step) if step.role == APPLICANT => vec![applicant(NoticeKind::YourTurn)],
            Some(step) => {
                let inbox =
                    after.assignee.clone().unwrap_or_else(|| notice::role_recipient(&step.role));
                vec![applicant(NoticeKind::Progressed), notice(inbox, NoticeKind::Waiting)]
            }
            None => vec![applicant(NoticeKind::Progressed)],
        },
        Status::Returned => vec![applicant(NoticeKind::Returned)],
        Status::Rejected => vec![applicant(NoticeKind::Rejected)],
        Status::Completed => vec![applicant(NoticeKind::Completed)],
    }
}

/// Notices read back at most for one recipient's list.
pub const NOTICES_SCANNED_MAX: usize = 10_000;

fn read_notice(value: &[u8]) -> Result<Notice, WorkflowError> {
    serde_json::from_slice(value)
        .map_err(|error| WorkflowError::Ledger(ControlError::Corrupt(format!("notice: {error}"))))
}

/// The workflows of a ledger: definitions and instances.
#[derive(Clone)]
pub struct Workflows {
    ledger: Arc<Ledger>,
    definitions: Arc<BTreeMap<String, Definition>>,
    /// Serialises the read-modify-write of instances.
    write: Arc<Mutex<()>>,
    /// Abort the process right after an approval stores a pending effect, before the
    /// effect runs: the crash point the exactly-once test kills a real server at.
    crash_before_effect: bool,
}

impl std::fmt::Debug for Workflows {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Workflows").field("definitions", &self.definitions.keys()).finish()
    }
}

fn instance_key(id: u64) -> Vec<u8> {
    let mut key = b"i".to_vec();
    key.extend_from_slice(&id.to_be_bytes());
    key
}

const KEY_NEXT: &[u8] = b"n";

/// Parses and checks one definition.
///
/// # Errors
/// [`WorkflowError::Definition`] naming what is wrong.
pub fn parse_definition(text: &str) -> Result<Definition, WorkflowError> {
    let definition: Definition =
        toml::from_str(text).map_err(|error| WorkflowError::Definition(error.to_string()))?;
    let bad = |what: String| Err(WorkflowError::Definition(format!("{}: {what}", definition.name)));
    if definition.name.is_empty()
        || !definition
            .name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    {
        return bad("a name is lowercase letters, digits and _".to_owned());
    }
    if definition.steps.is_empty() {
        return bad("a workflow has at least one step".to_owned());
    }
    if definition.effect != Effect::None && definition.steps.iter().all(|s| s.role == APPLICANT) {
        return bad(
            "a workflow that moves money needs a step someone besides its applicant approves"
                .to_owned(),
        );
    }
    if let Some(other) = definition.applicants.iter().find(|a| *a != CARDHOLDER) {
        return bad(format!("applicants may name only {CARDHOLDER:?}, not {other:?}"));
    }
    let mut names = std::collections::HashSet::new();
    for field in &definition.fields {
        if field.name.is_empty() || !names.insert(field.name.as_str()) {
            return bad(format!("field {:?} is empty or named twice", field.name));
        }
        if (field.kind == FieldKind::Choice) == field.choices.is_empty() {
            return bad(format!("field {:?}: a choice has choices, and only a choice", field.name));
        }
    }
    for step in &definition.steps {
        if !step.actions.contains(&Action::Approve) && !step.actions.contains(&Action::Reject) {
            return bad(format!("step {:?} can neither approve nor reject", step.name));
        }
        if step.role.is_empty() {
            return bad(format!("step {:?} has no role", step.name));
        }
    }
    Ok(definition)
}

/// Checks that the form holds each field the definition declares, a choice one of
/// its values.
fn check_fields(definition: &Definition, form: &serde_json::Value) -> Result<(), WorkflowError> {
    for field in &definition.fields {
        let value = text_field(form, &field.name)?;
        if field.kind == FieldKind::Choice && !field.choices.iter().any(|c| c.value == value) {
            let values: Vec<&str> = field.choices.iter().map(|c| c.value.as_str()).collect();
            return Err(WorkflowError::Form(format!(
                "{} {value:?} is not one of {}",
                field.name,
                values.join(", ")
            )));
        }
    }
    Ok(())
}

fn text_field<'a>(form: &'a serde_json::Value, field: &str) -> Result<&'a str, WorkflowError> {
    let text = form
        .get(field)
        .and_then(serde_json::Value::as_str)
        .ok_or_else(|| WorkflowError::Form(format!("{field} is required (text)")))?;
    if text.trim().is_empty() || text.len() > WORKFLOW_TEXT_BYTES_MAX {
        return Err(WorkflowError::Form(format!(
            "{field} must be 1 to {WORKFLOW_TEXT_BYTES_MAX} bytes"
        )));
    }
    Ok(text)
}

/// An adjustment form as the effect reads it.
fn adjustment_of(form: &serde_json::Value) -> Result<(AccountId, AccountId, i64), WorkflowError> {
    let account = |field: &str| -> Result<AccountId, WorkflowError> {
        let text = text_field(form, field)?;
        crate::account::parse_account(text).ok_or_else(|| {
            WorkflowError::Form(format!("{field} {text:?} is not an account such as merchant:12"))
        })
    };
    let (debit, credit) = (account("debit")?, account("credit")?);
    let amount_fen = form
        .get("amount_fen")
        .and_then(serde_json::Value::as_i64)
        .filter(|fen| *fen > 0)
        .ok_or_else(|| {
            WorkflowError::Form("amount_fen must be a positive number of fen".to_owned())
        })?;
    if debit == credit {
        return Err(WorkflowError::Form("debit and credit are the same account".to_owned()));
    }
    text_field(form, "reason")?;
    Ok((debit, credit, amount_fen))
}

/// Checks a form for its workflow before anything is stored.
fn check_form(
    ledger: &Ledger,
    definition: &Definition,
    form: &serde_json::Value,
) -> Result<i64, WorkflowError> {
    if !form.is_object() {
        return Err(WorkflowError::Form("a form is a JSON object".to_owned()));
    }
    check_fields(definition, form)?;
    match (definition.effect, definition.name.as_str()) {
        (Effect::Adjustment, name) => {
            if name == "discrepancy" {
                text_field(form, "reference")?;
            }
            adjustment_of(form).map(|(_, _, fen)| fen)
        }
        (Effect::SubsidyBatch, _) => {
            text_field(form, "reason")?;
            Ok(subsidy_rows_of(form)?.iter().map(|row| row.amount_fen).sum())
        }
        (Effect::CardClosure, _) => {
            let reason = text_field(form, "reason")?;
            if !["graduation", "leaving", "retirement", "other"].contains(&reason) {
                return Err(WorkflowError::Form(
                    "reason is graduation, leaving, retirement or other".to_owned(),
                ));
            }
            // The refund: each card's main purse and deposit as they stand now.
            Ok(cards_of(form)?
                .iter()
                .filter_map(|card| ledger.card(*card))
                .map(|view| view.balance_fen + view.deposit_fen)
                .sum())
        }
        (Effect::CardExtension, _) => {
            cards_of(form)?;
            expiry_of(form)?;
            Ok(0)
        }
        (Effect::CardOpening, _) => {
            text_field(form, "source")?;
            Ok(openings_of(form)?.iter().map(|open| open.deposit_fen).sum())
        }
        (Effect::MerchantOnboarding, _) => {
            onboarding_of(form)?;
            Ok(0)
        }
        (Effect::SubsidyExpiry, _) => {
            text_field(form, "term_end")?;
            text_field(form, "reason")?;
            Ok(ledger.restricted_purses().iter().map(|(_, fen)| fen).sum())
        }
        (Effect::CommissionChange, _) => {
            let (merchant, _) = rate_change_of(form)?;
            if ledger.merchant(merchant).is_none() {
                return Err(WorkflowError::Form(format!("no merchant {merchant}")));
            }
            text_field(form, "reason")?;
            Ok(0)
        }
        (Effect::None, _) => Ok(0),
    }
}

/// A batch form's list `field`: 1 to [`BATCH_CARDS_MAX`] items, each one `what`.
fn list_of<'a>(
    form: &'a serde_json::Value,
    field: &str,
    what: &str,
) -> Result<&'a Vec<serde_json::Value>, WorkflowError> {
    form.get(field)
        .and_then(serde_json::Value::as_array)
        .filter(|items| !items.is_empty() && items.len() <= BATCH_CARDS_MAX)
        .ok_or_else(|| {
            WorkflowError::Form(format!("{field} must list 1 to {BATCH_CARDS_MAX} {what}"))
        })
}

/// A batch form's card numbers (`cards`: a list of numbers).
fn cards_of(form: &serde_json::Value) -> Result<Vec<u64>, WorkflowError> {
    list_of(form, "cards", "card numbers")?
        .iter()
        .enumerate()
        .map(|(row, card)| {
            card.as_u64()
                .filter(|n| *n > 0)
                .ok_or_else(|| WorkflowError::Form(format!("cards[{row}] is not a card number")))
        })
        .collect()
}

/// A batch opening form's rows (`rows`: card_number, holder_id, holder_name,
/// card_type, expiry_date, deposit_fen).
fn openings_of(form: &serde_json::Value) -> Result<Vec<crate::OpenCard>, WorkflowError> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Row {
        card_number: u64,
        holder_id: String,
        holder_name: String,
        card_type: crate::cards::CardType,
        expiry_date: u32,
        #[serde(default)]
        deposit_fen: i64,
    }
    list_of(form, "rows", "cards to open")?
        .iter()
        .enumerate()
        .map(|(index, row)| {
            let row: Row = serde_json::from_value(row.clone())
                .map_err(|error| WorkflowError::Form(format!("rows[{index}]: {error}")))?;
            if row.card_number == 0 || !(0..=i64::from(u32::MAX)).contains(&row.deposit_fen) {
                return Err(WorkflowError::Form(format!("rows[{index}]: card number or deposit")));
            }
            if crate::date::BusinessDate::from_yyyymmdd(row.expiry_date).is_none() {
                return Err(WorkflowError::Form(format!("rows[{index}]: expiry_date")));
            }
            Ok(crate::OpenCard {
                card_number: row.card_number,
                holder_id: row.holder_id,
                holder_name: row.holder_name,
                card_type: row.card_type,
                expiry_date: row.expiry_date,
                deposit_fen: row.deposit_fen,
                pin: None,
                overrides: crate::cards::LimitOverrides::default(),
            })
        })
        .collect()
}

/// An onboarding form: `name`, `category` (canteen, shop, utility, card_centre...)
/// and `commission_rate` (a decimal string).
fn onboarding_of(
    form: &serde_json::Value,
) -> Result<(String, crate::directory::MerchantCategory, rust_decimal::Decimal), WorkflowError> {
    let name = text_field(form, "name")?.trim().to_owned();
    let category: crate::directory::MerchantCategory = form
        .get("category")
        .cloned()
        .and_then(|value| serde_json::from_value(value).ok())
        .ok_or_else(|| WorkflowError::Form("category is not a merchant category".to_owned()))?;
    Ok((name, category, rate_of(form)?))
}

/// A form's `commission_rate`: a decimal string, a fraction from 0 to 1.
fn rate_of(form: &serde_json::Value) -> Result<rust_decimal::Decimal, WorkflowError> {
    let text = text_field(form, "commission_rate")?;
    let rate: rust_decimal::Decimal = text
        .parse()
        .ok()
        .filter(|rate: &rust_decimal::Decimal| {
            *rate >= rust_decimal::Decimal::ZERO && *rate < rust_decimal::Decimal::ONE
        })
        .ok_or_else(|| {
            WorkflowError::Form(format!("commission_rate {text:?} is not a fraction from 0 to 1"))
        })?;
    Ok(rate)
}

/// A commission change form: `merchant_id` and `commission_rate` (a decimal string,
/// a fraction: "0.02" for 2%).
fn rate_change_of(form: &serde_json::Value) -> Result<(u32, rust_decimal::Decimal), WorkflowError> {
    let merchant = form
        .get("merchant_id")
        .and_then(serde_json::Value::as_u64)
        .and_then(|id| u32::try_from(id).ok())
        .ok_or_else(|| WorkflowError::Form("merchant_id is a merchant's number".to_owned()))?;
    Ok((merchant, rate_of(form)?))
}

/// An extension form's date (`expiry_date`, yyyymmdd).
fn expiry_of(form: &serde_json::Value) -> Result<u32, WorkflowError> {
    form.get("expiry_date")
        .and_then(serde_json::Value::as_u64)
        .and_then(|d| u32::try_from(d).ok())
        .filter(|d| crate::date::BusinessDate::from_yyyymmdd(*d).is_some())
        .ok_or_else(|| WorkflowError::Form("expiry_date is a date as yyyymmdd".to_owned()))
}

/// A subsidy batch form's rows (`rows`: card_number, amount_fen, purse).
fn subsidy_rows_of(
    form: &serde_json::Value,
) -> Result<Vec<crate::ledger::SubsidyRow>, WorkflowError> {
    use crate::cards::Purse;
    list_of(form, "rows", "subsidies")?
        .iter()
        .enumerate()
        .map(|(index, row)| {
            let bad = |what: &str| WorkflowError::Form(format!("rows[{index}]: {what}"));
            let card_number = row
                .get("card_number")
                .and_then(serde_json::Value::as_u64)
                .filter(|card| *card > 0)
                .ok_or_else(|| bad("card_number"))?;
            let amount_fen = row
                .get("amount_fen")
                .and_then(serde_json::Value::as_i64)
                .filter(|fen| (1..=i64::from(u32::MAX)).contains(fen))
                .ok_or_else(|| bad("amount_fen must be a positive number of fen"))?;
            let purse = match row.get("purse").and_then(serde_json::Value::as_str).unwrap_or("main")
            {
                "main" => Purse::Main,
                "restricted" => Purse::Restricted,
                _ => return Err(bad("purse is main or restricted")),
            };
            Ok(crate::ledger::SubsidyRow { card_number, amount_fen, purse })
        })
        .collect()
}

/// The step `instance` stands at, or an error if its definition has no such step (a
/// definition edited while the application was open).
fn step_of<'a>(definition: &'a Definition, instance: &Instance) -> Result<&'a Step, WorkflowError> {
    definition.steps.get(instance.step).ok_or_else(|| {
        WorkflowError::Definition(format!(
            "{} has no step {} any more (application {})",
            definition.name, instance.step, instance.id
        ))
    })
}

/// The first step at or after `from` that applies to an application of `amount_fen`.
fn applicable_step(definition: &Definition, from: usize, amount_fen: i64) -> Option<usize> {
    (from..definition.steps.len())
        .find(|index| definition.steps[*index].when_over_fen.is_none_or(|over| amount_fen > over))
}

impl Workflows {
    /// The built-in workflows and those in `extra` (TOML texts), over `ledger`.
    ///
    /// # Errors
    /// [`WorkflowError::Definition`] for a definition that does not parse, breaks a
    /// rule, or reuses a name.
    pub fn new(ledger: Arc<Ledger>, extra: &[String]) -> Result<Self, WorkflowError> {
        let mut definitions = BTreeMap::new();
        for text in BUILT_IN.iter().copied().chain(extra.iter().map(String::as_str)) {
            let definition = parse_definition(text)?;
            if definitions.contains_key(&definition.name) {
                return Err(WorkflowError::Definition(format!(
                    "{} is defined twice",
                    definition.name
                )));
            }
            definitions.insert(definition.name.clone(), definition);
        }
        Ok(Self {
            ledger,
            definitions: Arc::new(definitions),
            write: Arc::new(Mutex::new(())),
            crash_before_effect: false,
        })
    }

    /// Checks that every step's role is `applicant` or one of `known`: a step nobody
    /// holds would strand every application that reached it.
    ///
    /// # Errors
    /// [`WorkflowError::Definition`] naming the step and its role.
    pub fn check_roles(&self, known: &[&str]) -> Result<(), WorkflowError> {
        for definition in self.definitions.values() {
            for step in &definition.steps {
                if step.role != APPLICANT && !known.contains(&step.role.as_str()) {
                    return Err(WorkflowError::Definition(format!(
                        "{}: step {:?} is for role {:?}, which no operator can hold (roles: {})",
                        definition.name,
                        step.name,
                        step.role,
                        known.join(", ")
                    )));
                }
            }
        }
        Ok(())
    }

    /// Makes the process abort between storing an approval and running its effect
    /// (for the crash test; never set in service).
    pub fn crash_before_effects(&mut self) {
        self.crash_before_effect = true;
    }

    /// Every definition, by name.
    #[must_use]
    pub fn definitions(&self) -> Vec<&Definition> {
        self.definitions.values().collect()
    }

    /// The definition named `name`.
    ///
    /// # Errors
    /// [`WorkflowError::UnknownWorkflow`].
    pub fn definition(&self, name: &str) -> Result<&Definition, WorkflowError> {
        self.definitions.get(name).ok_or_else(|| WorkflowError::UnknownWorkflow(name.to_owned()))
    }

    /// Instance `id`.
    ///
    /// # Errors
    /// [`WorkflowError::UnknownInstance`], or a failed read.
    pub fn instance(&self, id: u64) -> Result<Instance, WorkflowError> {
        let store = self.ledger.store();
        let bytes = store
            .db()
            .get_cf(store.cf(CF_WORKFLOW), instance_key(id))?
            .ok_or(WorkflowError::UnknownInstance(id))?;
        serde_json::from_slice(&bytes)
            .map_err(|error| ControlError::Corrupt(format!("application {id}: {error}")).into())
    }

    fn put(&self, instance: &Instance, next: Option<u64>) -> Result<(), WorkflowError> {
        let store = self.ledger.store();
        let cf = store.cf(CF_WORKFLOW);
        let mut write = rocksdb::WriteBatch::default();
        let value = serde_json::to_vec(instance).expect("an instance always serialises");
        write.put_cf(cf, instance_key(instance.id), value);
        if let Some(next) = next {
            write.put_cf(cf, KEY_NEXT, next.to_be_bytes());
        }
        // Its notices, in the same write (callers hold the write lock, so the
        // counter read here is not raced).
        if let Some(definition) = self.definitions.get(&instance.workflow) {
            let before = match self.instance(instance.id) {
                Ok(before) => Some(before),
                Err(WorkflowError::UnknownInstance(_)) => None,
                Err(error) => return Err(error),
            };
            let notices = notices_of(definition, before.as_ref(), instance, now_ms());
            if !notices.is_empty() {
                let mut id = store.counter(CF_WORKFLOW, notice::KEY_NEXT_NOTICE)?;
                for mut notice in notices {
                    notice.id = id;
                    let value = serde_json::to_vec(&notice).expect("a notice always serialises");
                    write.put_cf(cf, notice::notice_key(id), value);
                    id += 1;
                }
                write.put_cf(cf, notice::KEY_NEXT_NOTICE, id.to_be_bytes());
            }
        }
        store.write_synced(CONTROL_JOURNAL, write).map_err(ControlError::Write)?;
        Ok(())
    }

    /// The newest notices for any of `recipients`, newest first, at most `limit`
    /// (and only among the latest [`NOTICES_SCANNED_MAX`]).
    ///
    /// # Errors
    /// A failed or corrupt read.
    pub fn notices_for(
        &self,
        recipients: &[String],
        limit: usize,
    ) -> Result<Vec<Notice>, WorkflowError> {
        let store = self.ledger.store();
        let from = notice::notice_key(u64::MAX);
        let mode = rocksdb::IteratorMode::From(&from, rocksdb::Direction::Reverse);
        let mut out = Vec::new();
        for item in store.db().iterator_cf(store.cf(CF_WORKFLOW), mode).take(NOTICES_SCANNED_MAX) {
            let (key, value) = item?;
            if key.first() != Some(&notice::NOTICE_PREFIX) || out.len() >= limit {
                break;
            }
            let notice = read_notice(&value)?;
            if recipients.contains(&notice.to) {
                out.push(notice);
            }
        }
        Ok(out)
    }

    /// Notices after `id`, oldest first, at most `limit`: what the outbox hands on.
    ///
    /// # Errors
    /// A failed or corrupt read.
    pub fn notices_after(&self, id: u64, limit: usize) -> Result<Vec<Notice>, WorkflowError> {
        let store = self.ledger.store();
        let from = notice::notice_key(id.saturating_add(1));
        let mode = rocksdb::IteratorMode::From(&from, rocksdb::Direction::Forward);
        let mut out = Vec::new();
        for item in store.db().iterator_cf(store.cf(CF_WORKFLOW), mode) {
            let (key, value) = item?;
            if key.first() != Some(&notice::NOTICE_PREFIX) || out.len() >= limit {
                break;
            }
            out.push(read_notice(&value)?);
        }
        Ok(out)
    }

    /// The last notice the outbox delivered (0: none).
    ///
    /// # Errors
    /// A failed read.
    pub fn delivered_through(&self) -> Result<u64, WorkflowError> {
        Ok(self.ledger.store().counter(CF_WORKFLOW, notice::KEY_DELIVERED)?.saturating_sub(1))
    }

    /// Records that the outbox delivered every notice up to `id`, synced.
    ///
    /// # Errors
    /// A failed write.
    pub fn set_delivered_through(&self, id: u64) -> Result<(), WorkflowError> {
        let store = self.ledger.store();
        let mut write = rocksdb::WriteBatch::default();
        // Kept one above, as a counter is: absent reads as 1, nothing delivered.
        write.put_cf(store.cf(CF_WORKFLOW), notice::KEY_DELIVERED, (id + 1).to_be_bytes());
        store.write_synced(CONTROL_JOURNAL, write).map_err(ControlError::Write)?;
        Ok(())
    }

    /// Every instance, oldest first, at most [`INSTANCES_LISTED_MAX`] that `keep` keeps.
    ///
    /// # Errors
    /// A failed or corrupt read.
    pub fn list(
        &self,
        mut keep: impl FnMut(&Instance) -> bool,
    ) -> Result<Vec<Instance>, WorkflowError> {
        let store = self.ledger.store();
        let mut out = Vec::new();
        let mode = rocksdb::IteratorMode::From(b"i", rocksdb::Direction::Forward);
        for item in store.db().iterator_cf(store.cf(CF_WORKFLOW), mode) {
            let (key, value) = item?;
            if key.first() != Some(&b'i') || out.len() >= INSTANCES_LISTED_MAX {
                break;
            }
            let instance: Instance = serde_json::from_slice(&value)
                .map_err(|error| ControlError::Corrupt(format!("application: {error}")))?;
            if keep(&instance) {
                out.push(instance);
            }
        }
        Ok(out)
    }

    /// Submits an application: checks the form, stores the instance at its first
    /// step.
    ///
    /// # Errors
    /// [`WorkflowError::UnknownWorkflow`], [`WorkflowError::Form`], a failed write.
    pub fn submit(
        &self,
        actor: &Actor,
        workflow: &str,
        form: serde_json::Value,
    ) -> Result<Instance, WorkflowError> {
        let definition = self.definition(workflow)?;
        if actor.roles.iter().any(|role| role == CARDHOLDER)
            && !definition.applicants.iter().any(|a| a == CARDHOLDER)
        {
            return Err(WorkflowError::NotYourTurn(format!(
                "{workflow} is not open to cardholders"
            )));
        }
        let amount_fen = check_form(&self.ledger, definition, &form)?;
        let first = applicable_step(definition, 0, amount_fen).ok_or_else(|| {
            WorkflowError::Definition(format!("{workflow}: no step applies to this application"))
        })?;
        let _writing = self.write.lock().unwrap_or_else(PoisonError::into_inner);
        let id = self.ledger.store().counter(CF_WORKFLOW, KEY_NEXT)?;
        let now = now_ms();
        let digest = form_digest(&form);
        let instance = Instance {
            id,
            workflow: workflow.to_owned(),
            applicant: actor.name.clone(),
            form,
            status: Status::Open,
            step: first,
            amount_fen,
            assignee: None,
            step_since_ms: now,
            history: vec![HistoryEntry {
                at_ms: now,
                actor: actor.name.clone(),
                action: "submit".to_owned(),
                step: definition.steps[first].name.clone(),
                comment: String::new(),
                from: actor.from.clone(),
                rating: None,
                form_sha256: digest,
            }],
            effect: None,
        };
        self.put(&instance, Some(id + 1))?;
        Ok(instance)
    }

    /// Whether it is `actor`'s turn at `instance`'s current step.
    fn turn(
        definition: &Definition,
        instance: &Instance,
        actor: &Actor,
    ) -> Result<(), WorkflowError> {
        if instance.status == Status::Returned {
            return if actor.name == instance.applicant {
                Ok(())
            } else {
                Err(WorkflowError::NotYourTurn("it is back with its applicant".to_owned()))
            };
        }
        let step = step_of(definition, instance)?;
        if let Some(assignee) = &instance.assignee {
            return if *assignee == actor.name {
                Ok(())
            } else {
                Err(WorkflowError::NotYourTurn(format!("step {:?} is {assignee}'s", step.name)))
            };
        }
        let holds = if step.role == APPLICANT {
            actor.name == instance.applicant
        } else {
            actor.roles.contains(&step.role)
        };
        if holds {
            Ok(())
        } else {
            Err(WorkflowError::NotYourTurn(format!("step {:?} is for {}", step.name, step.role)))
        }
    }

    /// Takes `action` on application `id` as `actor`. `hand_to` is the person a
    /// hand-over goes to; `rating` (1 to 5) goes with an applicant's approval.
    ///
    /// # Errors
    /// Every refusal of [`WorkflowError`]; nothing is written when refused.
    pub fn act(
        &self,
        actor: &Actor,
        id: u64,
        action: Action,
        comment: &str,
        hand_to: Option<&Actor>,
        rating: Option<u8>,
    ) -> Result<Instance, WorkflowError> {
        if comment.len() > WORKFLOW_TEXT_BYTES_MAX {
            return Err(WorkflowError::Form(format!(
                "a comment is at most {WORKFLOW_TEXT_BYTES_MAX} bytes"
            )));
        }
        if rating.is_some_and(|r| !(1..=5).contains(&r)) {
            return Err(WorkflowError::Form("a rating is 1 to 5".to_owned()));
        }
        let guard = self.write.lock().unwrap_or_else(PoisonError::into_inner);
        let mut instance = self.instance(id)?;
        let definition = self.definition(&instance.workflow)?.clone();
        if matches!(instance.status, Status::Completed | Status::Rejected) {
            return Err(WorkflowError::Finished(id));
        }
        Self::turn(&definition, &instance, actor)?;
        let now = now_ms();
        let step = step_of(&definition, &instance)?.clone();
        let mut entry = HistoryEntry {
            at_ms: now,
            actor: actor.name.clone(),
            action: serde_json::to_value(action)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default(),
            step: step.name.clone(),
            comment: comment.to_owned(),
            from: actor.from.clone(),
            rating: None,
            form_sha256: form_digest(&instance.form),
        };
        if instance.status == Status::Returned {
            // The applicant resubmits (approve) or withdraws (reject).
            match action {
                Action::Approve => {
                    instance.status = Status::Open;
                    instance.step =
                        applicable_step(&definition, 0, instance.amount_fen).unwrap_or(0);
                    instance.assignee = None;
                    instance.step_since_ms = now;
                    entry.action = "resubmit".to_owned();
                }
                Action::Reject => instance.status = Status::Rejected,
                Action::Comment => {}
                other => {
                    return Err(WorkflowError::ActionNotAllowed {
                        action: other,
                        step: "returned".to_owned(),
                    });
                }
            }
            instance.history.push(entry);
            self.put(&instance, None)?;
            return Ok(instance);
        }
        if !step.actions.contains(&action) {
            return Err(WorkflowError::ActionNotAllowed { action, step: step.name });
        }
        let mut run_effect = false;
        match action {
            Action::Approve => {
                if step.role != APPLICANT {
                    if actor.name == instance.applicant {
                        return Err(WorkflowError::FourEyes(
                            "an applicant does not approve their own application".to_owned(),
                        ));
                    }
                    // Since the last resubmission: a returned application is a new round.
                    let round = instance
                        .history
                        .iter()
                        .rposition(|h| h.action == "resubmit")
                        .map_or(0, |at| at + 1);
                    let approved_before = instance.history[round..]
                        .iter()
                        .any(|h| h.actor == actor.name && h.action == "approve");
                    if approved_before {
                        return Err(WorkflowError::FourEyes(format!(
                            "{} has already approved this application",
                            actor.name
                        )));
                    }
                }
                if step.role == APPLICANT {
                    entry.rating = rating;
                }
                instance.assignee = None;
                instance.step_since_ms = now;
                let next = applicable_step(&definition, instance.step + 1, instance.amount_fen);
                if let Some(next) = next {
                    instance.step = next;
                } else {
                    instance.status = Status::Completed;
                    instance.effect = Some(match definition.effect {
                        Effect::None => EffectState::Done {
                            transfer_id: 0,
                            rows: Vec::new(),
                            note: String::new(),
                        },
                        _ => EffectState::Pending,
                    });
                    run_effect = definition.effect != Effect::None;
                }
            }
            Action::Reject => instance.status = Status::Rejected,
            Action::Return => {
                instance.status = Status::Returned;
                instance.assignee = None;
                instance.step_since_ms = now;
            }
            Action::Comment => {}
            Action::HandOver => {
                let to = hand_to.ok_or_else(|| {
                    WorkflowError::Form("a hand-over names who it goes to".to_owned())
                })?;
                if step.role != APPLICANT && !to.roles.contains(&step.role) {
                    return Err(WorkflowError::Form(format!(
                        "{} does not hold the role {} of step {:?}",
                        to.name, step.role, step.name
                    )));
                }
                instance.assignee = Some(to.name.clone());
                entry.comment = format!("to {}: {comment}", to.name);
            }
        }
        instance.history.push(entry);
        self.put(&instance, None)?;
        drop(guard);
        if run_effect {
            if self.crash_before_effect {
                tracing::error!(id, "crashing before the effect, as asked");
                std::process::abort();
            }
            return self.run_effect(id);
        }
        Ok(instance)
    }

    /// Runs instance `id`'s pending effect (once: the ledger's idempotency key is
    /// derived from the instance) and stores its outcome.
    fn run_effect(&self, id: u64) -> Result<Instance, WorkflowError> {
        let _writing = self.write.lock().unwrap_or_else(PoisonError::into_inner);
        let mut instance = self.instance(id)?;
        if instance.effect != Some(EffectState::Pending) {
            return Ok(instance);
        }
        let definition = self.definition(&instance.workflow)?;
        let mut rows = Vec::new();
        let mut note = String::new();
        let outcome = match definition.effect {
            Effect::None => Ok(0),
            Effect::Adjustment => {
                let (debit, credit, amount_fen) = adjustment_of(&instance.form)?;
                let order =
                    AdjustmentOrder { id: WORKFLOW_KEY_BIT | id, debit, credit, amount_fen };
                self.ledger.post_adjustment(order)
            }
            Effect::SubsidyBatch => {
                let batch = subsidy_rows_of(&instance.form)?;
                self.ledger.post_subsidies_once(WORKFLOW_KEY_BIT | id, &batch).map(
                    |(outcomes, _)| {
                        rows = batch
                            .iter()
                            .zip(outcomes)
                            .map(|(row, refused)| RowOutcome {
                                card_number: row.card_number,
                                ok: refused.is_none(),
                                outcome: refused.unwrap_or_else(|| "posted".to_owned()),
                            })
                            .collect();
                        0
                    },
                )
            }
            Effect::CardClosure => {
                for card in cards_of(&instance.form)? {
                    rows.push(self.close_one(card)?);
                }
                Ok(0)
            }
            Effect::CardExtension => {
                let date = expiry_of(&instance.form)?;
                for card in cards_of(&instance.form)? {
                    rows.push(self.extend_one(card, date)?);
                }
                Ok(0)
            }
            Effect::CardOpening => {
                for open in openings_of(&instance.form)? {
                    rows.push(self.open_one(open)?);
                }
                Ok(0)
            }
            Effect::SubsidyExpiry => {
                // A run again after a crash finds the purses it emptied empty.
                let (mut purses, mut fen) = (0u64, 0i64);
                for (account, _) in self.ledger.restricted_purses() {
                    let moved = self.ledger.expire_restricted(account)?;
                    purses += u64::from(moved > 0);
                    fen += moved;
                }
                note = format!(
                    "{purses} restricted purses emptied, {fen} fen back to subsidy funding"
                );
                Ok(0)
            }
            Effect::MerchantOnboarding => {
                let (name, category, rate) = onboarding_of(&instance.form)?;
                // A rerun after a crash finds the merchant it made.
                if let Some(made) = self.ledger.merchants().iter().find(|m| m.name == name) {
                    note = format!("merchant {} {name:?} was already onboarded", made.id);
                    Ok(0)
                } else {
                    self.ledger.onboard_merchant(&name, category, rate).map(|(record, from)| {
                        note = format!("merchant {} {name:?} opens on {from}", record.id);
                        0
                    })
                }
            }
            Effect::CommissionChange => {
                let (merchant, rate) = rate_change_of(&instance.form)?;
                self.ledger.schedule_commission_rate(merchant, rate).map(|(_, from)| {
                    note = format!("merchant {merchant} pays {rate} from {from}");
                    0
                })
            }
        };
        instance.effect = Some(match outcome {
            Ok(transfer_id) => EffectState::Done { transfer_id, rows, note },
            // A storage failure leaves the effect pending: recovery runs it again.
            Err(ControlError::Storage(error)) => return Err(WorkflowError::Storage(error)),
            Err(error @ ControlError::Write(_)) => return Err(error.into()),
            Err(refused) => EffectState::Refused { reason: refused.to_string() },
        });
        self.put(&instance, None)?;
        Ok(instance)
    }

    /// The applicant resubmits a returned application with a changed form: the form
    /// is checked again, its amount reckoned again, and the application starts over
    /// at its first step that applies.
    ///
    /// # Errors
    /// [`WorkflowError::NotYourTurn`] unless the application is returned and `actor`
    /// is its applicant; [`WorkflowError::Form`] for a form its workflow refuses.
    pub fn resubmit(
        &self,
        actor: &Actor,
        id: u64,
        form: serde_json::Value,
        comment: &str,
    ) -> Result<Instance, WorkflowError> {
        if comment.len() > WORKFLOW_TEXT_BYTES_MAX {
            return Err(WorkflowError::Form(format!(
                "a comment is at most {WORKFLOW_TEXT_BYTES_MAX} bytes"
            )));
        }
        let _writing = self.write.lock().unwrap_or_else(PoisonError::into_inner);
        let mut instance = self.instance(id)?;
        if instance.status != Status::Returned || instance.applicant != actor.name {
            return Err(WorkflowError::NotYourTurn(
                "only its applicant resubmits a returned application".to_owned(),
            ));
        }
        let definition = self.definition(&instance.workflow)?;
        let amount_fen = check_form(&self.ledger, definition, &form)?;
        let first = applicable_step(definition, 0, amount_fen).ok_or_else(|| {
            WorkflowError::Definition(format!("{}: no step applies", definition.name))
        })?;
        let now = now_ms();
        instance.history.push(HistoryEntry {
            at_ms: now,
            actor: actor.name.clone(),
            action: "resubmit".to_owned(),
            step: definition.steps[first].name.clone(),
            comment: comment.to_owned(),
            from: actor.from.clone(),
            rating: None,
            form_sha256: form_digest(&form),
        });
        instance.form = form;
        instance.amount_fen = amount_fen;
        instance.status = Status::Open;
        instance.step = first;
        instance.assignee = None;
        instance.step_since_ms = now;
        self.put(&instance, None)?;
        Ok(instance)
    }

    /// Closes one card for a closure batch. A card already closed counts as done: a
    /// batch run again after a crash moves no money twice, because closing moves it.
    fn close_one(&self, card: u64) -> Result<RowOutcome, WorkflowError> {
        match self.ledger.close_card(card) {
            Err(ControlError::NotAllowed {
                state: onecard_protocol::CardState::Closed, ..
            }) => Ok(RowOutcome::new(
                card,
                "already closed: nothing refunded by this application",
                true,
            )),
            result => RowOutcome::of(card, "closed", result),
        }
    }

    /// Opens one card for an opening batch. A card that already exists for the same
    /// holder counts as done (a batch run again after a crash opens nothing twice);
    /// one that exists for someone else is refused.
    fn open_one(&self, open: crate::OpenCard) -> Result<RowOutcome, WorkflowError> {
        let card = open.card_number;
        if let Some(view) = self.ledger.card(card) {
            return Ok(if view.holder_id == open.holder_id {
                RowOutcome::new(card, "already open", true)
            } else {
                RowOutcome::new(card, "the number belongs to another holder", false)
            });
        }
        RowOutcome::of(card, "opened", self.ledger.open_card(open))
    }

    /// Extends one card for an extension batch; a card already valid to the date (or
    /// later) counts as done.
    fn extend_one(&self, card: u64, date: u32) -> Result<RowOutcome, WorkflowError> {
        if self.ledger.card(card).is_some_and(|view| view.expiry_date >= date) {
            return Ok(RowOutcome::new(card, "already valid to the date", true));
        }
        RowOutcome::of(card, "extended", self.ledger.extend(card, date))
    }

    /// Finishes every effect that was approved but not run (a process that died
    /// between the approval and the ledger). Returns the instances it ran.
    ///
    /// # Errors
    /// A failed read or write.
    pub fn recover(&self) -> Result<Vec<u64>, WorkflowError> {
        let pending = self.list(|i| i.effect == Some(EffectState::Pending))?;
        let mut ran = Vec::new();
        for instance in pending {
            self.run_effect(instance.id)?;
            ran.push(instance.id);
        }
        Ok(ran)
    }

    /// An actor's inbox (待办): open instances whose current step is theirs, and their
    /// own returned applications.
    ///
    /// # Errors
    /// A failed read.
    pub fn inbox(&self, actor: &Actor) -> Result<Vec<Instance>, WorkflowError> {
        self.list(|instance| {
            matches!(instance.status, Status::Open | Status::Returned)
                && self.definitions.get(&instance.workflow).is_some_and(|definition| {
                    Self::turn(definition, instance, actor).is_ok()
                        && !(instance.status == Status::Open
                            && step_of(definition, instance).is_ok_and(|s| s.role != APPLICANT)
                            && instance.applicant == actor.name)
                })
        })
    }

    /// Open instances whose current step is past its deadline at `now_ms`.
    ///
    /// # Errors
    /// A failed read.
    pub fn overdue(&self, now_ms: u64) -> Result<Vec<Instance>, WorkflowError> {
        self.list(|instance| self.is_overdue(instance, now_ms))
    }

    /// Whether `instance` is open at a step past its deadline at `now_ms`.
    #[must_use]
    pub fn is_overdue(&self, instance: &Instance, now_ms: u64) -> bool {
        instance.status == Status::Open
            && self.definitions.get(&instance.workflow).is_some_and(|definition| {
                let hours = step_of(definition, instance).map_or(0, |s| s.deadline_hours);
                hours > 0
                    && now_ms.saturating_sub(instance.step_since_ms) > u64::from(hours) * 3_600_000
            })
    }
}
