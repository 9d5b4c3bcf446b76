//! Terminals and the loops that drive them.
//!
//! Each simulated terminal is a real `TerminalClient` over its own TCP connection,
//! signed on with its own key. The open loop schedules requests on the scenario's rate
//! curve (Poisson arrivals) and hands each to a task the moment it is due, whether or
//! not earlier ones have been answered; its latency counts from that moment. The
//! closed loop keeps a fixed number of requests in flight and measures from the send.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::BytesMut;
use futures_util::StreamExt as _;
use onecard_protocol::frame::{self, Envelope};
use onecard_protocol::message::{BalanceInquiry, Purchase, Reference, Refund, Reversal, TopUp};
use onecard_protocol::{
    Answer, AnswerCode, Channel, ClientConfig, ClientError, FrameCodec, MacAlgorithm, MacKey,
    MealPeriod, MessageType, Request, TerminalClient, TerminalKey, snake_case as snake,
};
use tokio::io::AsyncWriteExt as _;
use tokio::sync::mpsc;
use tokio_util::codec::FramedRead;

use crate::campus::{Campus, CampusTerminal};
use crate::recorder::{Effect, Outcome, Recorder};
use crate::scenario::{Mode, Scenario};
use crate::workload::{Kind, Plan, Workload};

/// Purchases each terminal remembers for refunds, reversals and retries.
const RECENT_PURCHASES_MAX: usize = 32;
/// Requests the open loop lets wait at once before it counts new ones as dropped
/// by the generator (a server stalled for many seconds at thousands per second).
const OUTSTANDING_MAX: usize = 200_000;
/// Terminals signing on at once.
const CONNECTING_MAX: usize = 64;
/// How long the end of a run waits for the last answers.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(15);

/// A purchase a terminal was told was approved.
#[derive(Debug, Clone, Copy)]
struct RecentPurchase {
    sequence: u64,
    transfer_id: u64,
    card: u64,
    amount_fen: u32,
}

/// A signed-on simulated terminal.
pub struct Terminal {
    client: TerminalClient,
    spec: CampusTerminal,
    recent: Mutex<VecDeque<RecentPurchase>>,
}

impl std::fmt::Debug for Terminal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Terminal").field("id", &self.spec.id).finish_non_exhaustive()
    }
}

impl Terminal {
    fn recent(&self) -> std::sync::MutexGuard<'_, VecDeque<RecentPurchase>> {
        self.recent.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The terminal's merchant.
    #[must_use]
    pub const fn merchant_id(&self) -> u32 {
        self.spec.merchant_id
    }
}

/// Picks the scenario's terminals from the campus: merchant terminals round-robin over
/// the merchants (so many merchants take part), then card-centre terminals.
#[must_use]
pub fn choose_terminals(campus: &Campus, scenario: &Scenario) -> Vec<CampusTerminal> {
    let mut by_merchant: std::collections::BTreeMap<u32, VecDeque<&CampusTerminal>> =
        std::collections::BTreeMap::new();
    for terminal in campus.terminals.iter().filter(|t| t.category != "card_centre") {
        by_merchant.entry(terminal.merchant_id).or_default().push_back(terminal);
    }
    let mut chosen = Vec::new();
    while chosen.len() < scenario.terminals && by_merchant.values().any(|q| !q.is_empty()) {
        for queue in by_merchant.values_mut() {
            if chosen.len() < scenario.terminals
                && let Some(terminal) = queue.pop_front()
            {
                chosen.push(terminal.clone());
            }
        }
    }
    chosen.extend(
        campus
            .terminals
            .iter()
            .filter(|t| t.category == "card_centre")
            .take(scenario.top_up_terminals)
            .cloned(),
    );
    chosen
}

/// Signs every terminal on, a few at a time.
///
/// # Errors
/// If a terminal cannot sign on.
pub async fn connect(
    addr: SocketAddr,
    specs: Vec<CampusTerminal>,
) -> anyhow::Result<Vec<Arc<Terminal>>> {
    let permits = Arc::new(tokio::sync::Semaphore::new(CONNECTING_MAX));
    let mut tasks = Vec::with_capacity(specs.len());
    for spec in specs {
        let permits = Arc::clone(&permits);
        tasks.push(tokio::spawn(async move {
            let _permit = permits.acquire().await;
            let client =
                TerminalClient::connect(addr, spec.id, &spec.key, 0, ClientConfig::default())
                    .await
                    .with_context(|| format!("terminal {} signing on", spec.id))?;
            anyhow::Ok(Arc::new(Terminal { client, spec, recent: Mutex::new(VecDeque::new()) }))
        }));
    }
    let mut terminals = Vec::with_capacity(tasks.len());
    for task in tasks {
        terminals.push(task.await.context("a connecting task")??);
    }
    Ok(terminals)
}

/// What a run needs to share with its request tasks.
#[derive(Clone)]
pub struct Shared {
    /// The signed-on terminals.
    pub terminals: Arc<Vec<Arc<Terminal>>>,
    /// Where results go.
    pub recorder: Arc<Recorder>,
    /// Requests scheduled and not yet finished.
    pub outstanding: Arc<AtomicUsize>,
}

/// Runs the scenario until its duration is up and every answer is in.
///
/// # Errors
/// If the forged-MAC connection cannot be opened.
pub async fn run(
    shared: Shared,
    scenario: &Scenario,
    campus: &Arc<Campus>,
    addr: SocketAddr,
) -> anyhow::Result<()> {
    let merchant_of: Vec<Option<u32>> = shared
        .terminals
        .iter()
        .map(|t| (t.spec.category != "card_centre").then_some(t.spec.merchant_id))
        .collect();
    let forged = if scenario.bad_fraction > 0.0 {
        let victim = shared.terminals.first().map_or(1, |t| t.spec.id);
        Some(spawn_forger(addr, victim, Arc::clone(&shared.recorder)).await?)
    } else {
        None
    };
    let start = Instant::now();
    match scenario.mode {
        Mode::Open => {
            let workload = Workload::new(scenario, Arc::clone(campus), &merchant_of, 0);
            open_loop(&shared, scenario, workload, forged.as_ref(), start).await;
        }
        Mode::Closed => {
            let workers = shared.terminals.len()
                * usize::try_from(scenario.in_flight_per_terminal).unwrap_or(1);
            let mut tasks = Vec::with_capacity(workers);
            for worker in 0..workers {
                let workload =
                    Workload::new(scenario, Arc::clone(campus), &merchant_of, worker as u64 + 1);
                let shared = shared.clone();
                let duration = Duration::from_secs_f64(scenario.duration_secs);
                let forged = forged.clone();
                tasks.push(tokio::spawn(async move {
                    closed_loop(shared, workload, forged, start, duration).await;
                }));
            }
            for task in tasks {
                let _ = task.await;
            }
        }
    }
    let drained = Instant::now();
    while shared.outstanding.load(Ordering::Acquire) > 0 && drained.elapsed() < DRAIN_TIMEOUT {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}

async fn open_loop(
    shared: &Shared,
    scenario: &Scenario,
    mut workload: Workload,
    forged: Option<&mpsc::Sender<(Instant, f64)>>,
    start: Instant,
) {
    let duration = scenario.duration_secs;
    let mut next = 0.0;
    while next < duration {
        let now = start.elapsed().as_secs_f64();
        while next <= now && next < duration {
            let plan = workload.next_plan();
            shared.recorder.scheduled(plan.kind);
            let scheduled = start + Duration::from_secs_f64(next);
            if shared.outstanding.load(Ordering::Acquire) >= OUTSTANDING_MAX {
                shared.recorder.record(
                    plan.kind,
                    next,
                    scheduled.elapsed(),
                    Outcome::Failed("generator_backlog".to_owned()),
                );
            } else if plan.kind == Kind::BadMac {
                if let Some(forged) = forged
                    && forged.try_send((scheduled, next)).is_err()
                {
                    shared.recorder.record(
                        plan.kind,
                        next,
                        Duration::ZERO,
                        Outcome::Failed("generator_backlog".to_owned()),
                    );
                }
            } else {
                shared.outstanding.fetch_add(1, Ordering::AcqRel);
                let shared = shared.clone();
                let at = next;
                tokio::spawn(async move {
                    send(&shared, plan, scheduled, at).await;
                    shared.outstanding.fetch_sub(1, Ordering::AcqRel);
                });
            }
            next += workload.interval_secs(scenario.rate_at(next));
        }
        if next < duration {
            tokio::time::sleep_until((start + Duration::from_secs_f64(next)).into()).await;
        }
    }
}

async fn closed_loop(
    shared: Shared,
    mut workload: Workload,
    forged: Option<mpsc::Sender<(Instant, f64)>>,
    start: Instant,
    duration: Duration,
) {
    while start.elapsed() < duration {
        let plan = workload.next_plan();
        shared.recorder.scheduled(plan.kind);
        let sent = Instant::now();
        let at = start.elapsed().as_secs_f64();
        if plan.kind == Kind::BadMac {
            if let Some(forged) = &forged {
                let _ = forged.send((sent, at)).await;
            }
            continue;
        }
        shared.outstanding.fetch_add(1, Ordering::AcqRel);
        send(&shared, plan, sent, at).await;
        shared.outstanding.fetch_sub(1, Ordering::AcqRel);
    }
}

fn purchase(card_number: u64, amount_fen: u32) -> Request {
    Request::Purchase(Purchase {
        card_number,
        amount_fen,
        meal_period: MealPeriod::Unspecified,
        item_code: 0,
        pin_block: None,
    })
}

/// A top-up carries the channel's order number; the loadtest makes one from the
/// terminal and the sequence, unique across the run.
fn with_reference(request: Request, terminal: u32, sequence: u64) -> Request {
    match request {
        Request::TopUp(mut top_up) => {
            let reference = format!("lt-{terminal}-{sequence}");
            top_up.reference = Reference::new(reference.as_bytes()).unwrap_or(Reference::EMPTY);
            Request::TopUp(top_up)
        }
        other => other,
    }
}

/// The answer's code as reports name it.
fn code_of(answer: &Answer) -> String {
    if answer.is_duplicate() { "duplicate".to_owned() } else { snake(answer.code()) }
}

fn transfer_id(answer: &Answer) -> u64 {
    match answer {
        Answer::Purchase(a) | Answer::TopUp(a) | Answer::Refund(a) | Answer::Reversal(a) => {
            a.transfer_id
        }
        _ => 0,
    }
}

/// Sends one planned request from its terminal and records how it ended.
async fn send(shared: &Shared, plan: Plan, scheduled: Instant, at_secs: f64) {
    let Some(terminal) = shared.terminals.get(plan.terminal).cloned() else { return };
    let merchant = terminal.merchant_id();
    let client = &terminal.client;
    // What the request is, and the money it moves if approved.
    // A refund, reversal or retry needs an earlier approved purchase of this
    // terminal; with none yet, the request is a plain purchase.
    let mut plan = plan;
    let recent = {
        let mut recent = terminal.recent();
        match plan.kind {
            Kind::Refund => recent.pop_front(),
            Kind::Reversal => recent.pop_back(),
            // Taken, not copied: two retries of one sequence at once would be one
            // terminal racing itself, which no terminal does.
            Kind::Retry => recent.pop_back(),
            _ => None,
        }
    };
    if matches!(plan.kind, Kind::Refund | Kind::Reversal | Kind::Retry) && recent.is_none() {
        plan.kind = Kind::Purchase;
    }
    // What the request is, and the money it moves if approved.
    let (request, retry_of, effect) = match (plan.kind, recent) {
        (Kind::TopUp, _) => {
            let request = Request::TopUp(TopUp {
                card_number: plan.card,
                amount_fen: plan.amount_fen,
                channel: Channel::App,
                reference: Reference::EMPTY,
            });
            (request, None, Some(Effect::TopUp(i64::from(plan.amount_fen))))
        }
        (Kind::Inquiry, _) => {
            let request = Request::BalanceInquiry(BalanceInquiry { card_number: plan.card });
            (request, None, None)
        }
        (Kind::Refund, Some(p)) => {
            let amount = (p.amount_fen / 2).max(1);
            let request = Request::Refund(Refund {
                card_number: p.card,
                purchase_transfer_id: p.transfer_id,
                amount_fen: amount,
            });
            (request, None, Some(Effect::Refund(merchant, i64::from(amount))))
        }
        (Kind::Reversal, Some(p)) => {
            let request = Request::Reversal(Reversal {
                original_sequence: p.sequence,
                card_number: p.card,
                amount_fen: p.amount_fen,
            });
            let effect = Effect::Reversal(merchant, i64::from(p.amount_fen));
            (request, None, Some(effect))
        }
        (Kind::Retry, Some(p)) => (purchase(p.card, p.amount_fen), Some(p.sequence), None),
        _ => (
            purchase(plan.card, plan.amount_fen),
            None,
            Some(Effect::Purchase(merchant, i64::from(plan.amount_fen))),
        ),
    };
    let is_purchase = matches!(plan.kind, Kind::Purchase | Kind::Insufficient | Kind::LostCard);
    let (sequence, result) = match retry_of {
        Some(sequence) => (sequence, client.call_with_sequence(sequence, request).await),
        None => {
            client
                .call_numbered(|sequence| with_reference(request, terminal.spec.id, sequence))
                .await
        }
    };
    let latency = scheduled.elapsed();
    let outcome = match result {
        Ok(answer) => {
            let code = code_of(&answer);
            if code == "approved" {
                if let Some(effect) = effect {
                    shared.recorder.money(effect);
                }
                if is_purchase {
                    let mut recent = terminal.recent();
                    if recent.len() >= RECENT_PURCHASES_MAX {
                        recent.pop_front();
                    }
                    let transfer_id = transfer_id(&answer);
                    recent.push_back(RecentPurchase {
                        sequence,
                        transfer_id,
                        card: plan.card,
                        amount_fen: plan.amount_fen,
                    });
                }
            }
            Outcome::Answered(code)
        }
        Err(ClientError::GaveUp {
            reversal: AnswerCode::Approved | AnswerCode::AlreadyReversed,
            ..
        }) => {
            // Unanswered, then reversed: settled, no money moved.
            Outcome::Failed("gave_up_reversed".to_owned())
        }
        Err(error) => {
            match effect {
                Some(Effect::TopUp(fen)) => shared.recorder.money(Effect::UnknownTopUp(fen)),
                Some(
                    Effect::Purchase(m, fen) | Effect::Refund(m, fen) | Effect::Reversal(m, fen),
                ) => {
                    shared.recorder.money(Effect::Unknown(m, fen));
                }
                _ => {}
            }
            Outcome::Failed(match error {
                ClientError::NoAnswer { .. } | ClientError::GaveUp { .. } => "no_answer".to_owned(),
                ClientError::Disconnected { .. } => "disconnected".to_owned(),
                _ => "client_error".to_owned(),
            })
        }
    };
    shared.recorder.record(plan.kind, at_secs, latency, outcome);
}

/// A connection that sends purchases signed with a forged key for a real terminal,
/// one at a time, and records the refusal each gets.
async fn spawn_forger(
    addr: SocketAddr,
    victim: u32,
    recorder: Arc<Recorder>,
) -> anyhow::Result<mpsc::Sender<(Instant, f64)>> {
    let stream =
        tokio::net::TcpStream::connect(addr).await.context("opening the forged-MAC connection")?;
    stream.set_nodelay(true).context("nodelay")?;
    let (read, mut write) = stream.into_split();
    let mut answers = FramedRead::new(read, FrameCodec);
    let key = MacKey::new(MacAlgorithm::HmacSha256, &TerminalKey::new([0xAB; 32]))
        .context("a forged key")?;
    let (tx, mut rx) = mpsc::channel::<(Instant, f64)>(1_024);
    tokio::spawn(async move {
        let mut sequence = 1u64 << 40;
        let mut out = BytesMut::new();
        while let Some((scheduled, at)) = rx.recv().await {
            sequence += 1;
            out.clear();
            let envelope = Envelope {
                terminal_id: victim,
                sequence,
                timestamp_ms: onecard_protocol::client::now_ms(),
            };
            if frame::encode(envelope, &purchase(1, 100), Some(&key), &mut out).is_err()
                || write.write_all(&out).await.is_err()
            {
                recorder.record(
                    Kind::BadMac,
                    at,
                    scheduled.elapsed(),
                    Outcome::Failed("disconnected".to_owned()),
                );
                continue;
            }
            let outcome = match tokio::time::timeout(Duration::from_secs(5), answers.next()).await {
                Ok(Some(Ok(frame))) => frame
                    .header()
                    .message_type()
                    .ok()
                    .filter(|t| *t == MessageType::Reject)
                    .and_then(|t| Answer::decode(t, &frame.body()).ok())
                    .map_or_else(
                        || Outcome::Failed("unexpected_answer".to_owned()),
                        |a| Outcome::Answered(snake(a.code())),
                    ),
                Ok(_) => Outcome::Failed("disconnected".to_owned()),
                Err(_) => Outcome::Failed("no_answer".to_owned()),
            };
            recorder.record(Kind::BadMac, at, scheduled.elapsed(), outcome);
        }
    });
    Ok(tx)
}
