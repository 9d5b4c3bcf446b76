//! ledger-throughput: the engine's in-process throughput harness.
//!
//! Builds a campus on a fresh ledger (a card centre, canteens and a few shops and
//! utilities, terminals spread over them, cards opened and funded through the ledger's
//! own API), then drives the lunch-peak mix straight into `Ledger::submit` — no network,
//! no frames, no MACs — and reports what the shards committed and how long each answer
//! took to become durable.
//!
//! The mix: 85% purchases of 1–30 yuan, 8% top-ups at the card centre, 5% balance
//! inquiries, 1% refunds (half of an earlier approved purchase of the same terminal) and
//! 1% reversals (of that terminal's latest approved purchase). A fifth of the merchants
//! take 80% of the purchases and inquiries; cards are uniformly random.
//!
//! Two modes:
//! - `--rate 0` (saturation, the default): each driver thread keeps up to
//!   `--in-flight` requests outstanding (at most 64 per terminal), collects answers by
//!   polling (blocking on the oldest when nothing has arrived), and measures each one
//!   from submission to the driver seeing its answer.
//! - `--rate R`: open loop. Requests are scheduled at R per second whatever the answers
//!   do, and latency is measured from the *scheduled* time, so a stall is charged to
//!   every request it delayed (coordinated omission corrected). Per-shard collector
//!   threads block on the answers, so each is timed as it arrives; the latency from
//!   the actual submission, and how late the harness's own pacing submitted, are
//!   printed too.
//!
//! The last line of output is a machine-readable `SUMMARY` with `key=value` fields.
//! Exits non-zero if `verify` finds the ledger unclean or a shard poisoned itself.
//!
//! ```text
//! cargo run --release -p onecard-benches --bin ledger-throughput -- \
//!     [--cards 50000] [--merchants 300] [--shards N] [--seconds 10] [--rate R] \
//!     [--no-sync] [--data-dir DIR]
//! ```

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use clap::Parser;
use hdrhistogram::Histogram;
use onecard_benches::campus::{self, Campus, PIPELINE_DEPTH, Rng, Spec, TempDir};
use onecard_engine::ledger::ShardHealth;
use onecard_engine::{Ledger, LedgerConfig, Submission};
use onecard_protocol::message::{BalanceInquiry, Refund, Reversal};
use onecard_protocol::{Answer, AnswerCode, MacAlgorithm, Request};
use tokio::sync::oneshot::{self, error::TryRecvError};

/// The in-process ledger throughput harness.
#[derive(Debug, Parser)]
#[command(name = "ledger-throughput", about)]
struct Args {
    /// Cards to open and fund.
    #[arg(long, default_value_t = 50_000)]
    cards: u64,
    /// Merchants besides the card centre.
    #[arg(long, default_value_t = 300)]
    merchants: u32,
    /// Terminals in all, the card centre's included.
    #[arg(long, default_value_t = 1_000)]
    terminals: u32,
    /// Shards of the new store (default: the ledger's, one per core).
    #[arg(long)]
    shards: Option<usize>,
    /// Seconds measured, after the warm-up.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Seconds of load before measuring starts.
    #[arg(long, default_value_t = 1)]
    warmup: u64,
    /// Requests per second offered, open loop; 0 for saturation.
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// Do not sync commits (the ledger's `sync: false`).
    #[arg(long)]
    no_sync: bool,
    /// Store directory; must be empty or absent. Default: a temporary directory,
    /// removed at the end.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Driver threads, each owning a disjoint set of terminals.
    #[arg(long, default_value_t = 2)]
    drivers: usize,
    /// Saturation: requests outstanding at most, over all drivers.
    #[arg(long, default_value_t = 16_384)]
    in_flight: usize,
    /// Requests outstanding per terminal at most.
    #[arg(long, default_value_t = PIPELINE_DEPTH)]
    depth: usize,
    /// Each card's opening top-up, fen.
    #[arg(long, default_value_t = 500_000)]
    fund_fen: u32,
    /// Seed of the request generator.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

/// What a request is, for the mix and the reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Purchase,
    TopUp,
    Inquiry,
    Refund,
    Reversal,
}

impl Kind {
    const ALL: [Self; 5] =
        [Self::Purchase, Self::TopUp, Self::Inquiry, Self::Refund, Self::Reversal];

    const fn index(self) -> usize {
        match self {
            Self::Purchase => 0,
            Self::TopUp => 1,
            Self::Inquiry => 2,
            Self::Refund => 3,
            Self::Reversal => 4,
        }
    }

    const fn name(self) -> &'static str {
        match self {
            Self::Purchase => "purchase",
            Self::TopUp => "top-up",
            Self::Inquiry => "inquiry",
            Self::Refund => "refund",
            Self::Reversal => "reversal",
        }
    }
}

/// Approved purchases a terminal remembers for later refunds and reversals.
const SALES_KEPT: usize = 8;

/// A reversal's original must still be in the terminal's retry window (64 answers)
/// when the shard decides it; this leaves a margin.
const REVERSAL_REACH: u64 = 56;

/// An approved purchase, as its answer told it.
#[derive(Debug, Clone, Copy)]
struct Sale {
    sequence: u64,
    card: u64,
    amount: u32,
    transfer_id: u64,
}

/// A terminal a driver owns.
#[derive(Debug)]
struct Term {
    id: u32,
    /// Its shard: answers of one shard come back in submission order.
    lane: usize,
    next_sequence: u64,
    outstanding: usize,
    sales: VecDeque<Sale>,
}

/// A request chosen but not yet submitted.
struct Planned {
    term: usize,
    kind: Kind,
    card: u64,
    amount: u32,
    request: Request,
}

/// What a driver remembers of a request it submitted.
#[derive(Debug, Clone, Copy)]
struct Sent {
    term: usize,
    kind: Kind,
    card: u64,
    amount: u32,
    sequence: u64,
    /// Submission time (saturation) or scheduled time (open loop): latency is
    /// measured from here.
    start: Instant,
    /// When `Ledger::submit` was called.
    submitted: Instant,
}

/// A request submitted and not yet answered.
struct Pending {
    sent: Sent,
    answer: oneshot::Receiver<Answer>,
}

/// The measured interval: requests submitted (or scheduled) inside it count.
#[derive(Debug, Clone, Copy)]
struct Window {
    from: Instant,
    to: Instant,
}

impl Window {
    fn contains(&self, at: Instant) -> bool {
        at >= self.from && at < self.to
    }
}

/// A histogram of µs, up to an hour, 3 significant digits.
fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds")
}

/// The µs from `from` to `to`, 0 if `to` is earlier.
fn micros_between(from: Instant, to: Instant) -> u64 {
    u64::try_from(to.saturating_duration_since(from).as_micros()).unwrap_or(u64::MAX)
}

/// What a driver saw of its measured requests.
struct Tally {
    latency_us: Histogram<u64>,
    codes: HashMap<AnswerCode, u64>,
    kinds: [u64; 5],
    answers: u64,
    /// Refunds and reversals that became purchases: no eligible earlier sale.
    fallbacks: u64,
    /// Times the next request's terminal already had its pipeline full.
    stalls: u64,
    /// Open loop: from submission (not schedule) to answer.
    service_us: Histogram<u64>,
    /// Open loop: how late each request was submitted after its scheduled time.
    lag_us: Histogram<u64>,
}

impl Tally {
    fn new() -> Self {
        Self {
            latency_us: histogram(),
            codes: HashMap::new(),
            kinds: [0; 5],
            answers: 0,
            fallbacks: 0,
            stalls: 0,
            service_us: histogram(),
            lag_us: histogram(),
        }
    }

    fn merge(&mut self, other: &Self) {
        self.latency_us.add(&other.latency_us).expect("histograms of equal bounds merge");
        for (code, count) in &other.codes {
            *self.codes.entry(*code).or_default() += count;
        }
        for (mine, theirs) in self.kinds.iter_mut().zip(other.kinds) {
            *mine += theirs;
        }
        self.answers += other.answers;
        self.fallbacks += other.fallbacks;
        self.stalls += other.stalls;
        self.service_us.add(&other.service_us).expect("histograms of equal bounds merge");
        self.lag_us.add(&other.lag_us).expect("histograms of equal bounds merge");
    }
}

/// One driver thread: its terminals, its generator, its requests in flight.
struct Driver<'a> {
    ledger: &'a Ledger,
    terms: Vec<Term>,
    /// Hot and cold merchants, each as its terminals (indices into `terms`).
    hot: Vec<Vec<usize>>,
    cold: Vec<Vec<usize>>,
    /// Card-centre terminals (indices into `terms`).
    centre: Vec<usize>,
    cards: u64,
    rng: Rng,
    /// Requests in flight per shard, oldest first.
    lanes: Vec<VecDeque<Pending>>,
    in_flight: usize,
    depth: usize,
    window: Window,
    tally: Tally,
}

impl Driver<'_> {
    /// A merchant terminal: a hot merchant's 80% of the time.
    fn merchant_terminal(&mut self) -> usize {
        let hot = self.cold.is_empty() || (!self.hot.is_empty() && self.rng.below(100) < 80);
        let group = if hot { &self.hot } else { &self.cold };
        let terminals = &group[self.rng.index(group.len())];
        terminals[self.rng.index(terminals.len())]
    }

    fn plan(&mut self) -> Planned {
        let roll = self.rng.below(100);
        let card = Campus::card_number(self.rng.below(self.cards));
        let kind = match roll {
            0..=84 => Kind::Purchase,
            85..=92 => Kind::TopUp,
            93..=97 => Kind::Inquiry,
            98 => Kind::Refund,
            _ => Kind::Reversal,
        };
        if kind == Kind::TopUp && !self.centre.is_empty() {
            let term = self.centre[self.rng.index(self.centre.len())];
            let amount = self.rng.between(5_000, 20_000);
            return Planned { term, kind, card, amount, request: campus::top_up(card, amount) };
        }
        let term = self.merchant_terminal();
        match kind {
            Kind::Inquiry => {
                let request = Request::BalanceInquiry(BalanceInquiry { card_number: card });
                return Planned { term, kind, card, amount: 0, request };
            }
            Kind::Refund => {
                if let Some(sale) = self.terms[term].sales.pop_front() {
                    let amount = (sale.amount / 2).max(1);
                    let request = Request::Refund(Refund {
                        card_number: sale.card,
                        purchase_transfer_id: sale.transfer_id,
                        amount_fen: amount,
                    });
                    return Planned { term, kind, card: sale.card, amount, request };
                }
                self.tally.fallbacks += 1;
            }
            Kind::Reversal => {
                let terminal = &mut self.terms[term];
                if let Some(sale) = terminal.sales.back().copied()
                    && terminal.next_sequence - sale.sequence <= REVERSAL_REACH
                {
                    terminal.sales.pop_back();
                    let request = Request::Reversal(Reversal {
                        original_sequence: sale.sequence,
                        card_number: sale.card,
                        amount_fen: sale.amount,
                    });
                    return Planned { term, kind, card: sale.card, amount: sale.amount, request };
                }
                self.tally.fallbacks += 1;
            }
            Kind::Purchase | Kind::TopUp => {}
        }
        let amount = self.rng.between(100, 3_000);
        Planned {
            term,
            kind: Kind::Purchase,
            card,
            amount,
            request: campus::purchase(card, amount),
        }
    }

    /// Submits `planned` under its terminal's next sequence; returns its shard and
    /// what to wait on.
    fn submit(&mut self, planned: Planned, start: Instant) -> (usize, Pending) {
        let term = &mut self.terms[planned.term];
        let sequence = term.next_sequence;
        term.next_sequence += 1;
        term.outstanding += 1;
        let lane = term.lane;
        let answer = self.ledger.submit(Submission {
            terminal_id: term.id,
            sequence,
            mac_algorithm: MacAlgorithm::HmacSha256,
            request: planned.request,
        });
        let submitted = Instant::now();
        self.in_flight += 1;
        if self.window.contains(start) {
            self.tally.kinds[planned.kind.index()] += 1;
            self.tally.lag_us.saturating_record(micros_between(start, submitted));
        }
        let sent = Sent {
            term: planned.term,
            kind: planned.kind,
            card: planned.card,
            amount: planned.amount,
            sequence,
            start,
            submitted,
        };
        (lane, Pending { sent, answer })
    }

    fn settle(&mut self, pending: Sent, answer: Option<Answer>, now: Instant) {
        let term = &mut self.terms[pending.term];
        term.outstanding -= 1;
        self.in_flight -= 1;
        let code = answer.as_ref().map_or(AnswerCode::ShuttingDown, Answer::code);
        if let Some(Answer::Purchase(transfer)) = &answer
            && pending.kind == Kind::Purchase
            && transfer.code == AnswerCode::Approved
        {
            if term.sales.len() >= SALES_KEPT {
                term.sales.pop_front();
            }
            term.sales.push_back(Sale {
                sequence: pending.sequence,
                card: pending.card,
                amount: pending.amount,
                transfer_id: transfer.transfer_id,
            });
        }
        if self.window.contains(pending.start) {
            self.tally.latency_us.saturating_record(micros_between(pending.start, now));
            self.tally.service_us.saturating_record(micros_between(pending.submitted, now));
            *self.tally.codes.entry(code).or_default() += 1;
            self.tally.answers += 1;
        }
    }

    /// Settles every answer that has arrived; returns how many.
    fn sweep(&mut self) -> usize {
        let mut settled = 0;
        for lane in 0..self.lanes.len() {
            let mut now = None;
            while let Some(front) = self.lanes[lane].front_mut() {
                let answer = match front.answer.try_recv() {
                    Ok(answer) => Some(answer),
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Closed) => None,
                };
                let now = *now.get_or_insert_with(Instant::now);
                if let Some(pending) = self.lanes[lane].pop_front() {
                    self.settle(pending.sent, answer, now);
                    settled += 1;
                }
            }
        }
        settled
    }

    /// Waits for the oldest request of shard `lane`; false if it has none.
    fn block_lane(&mut self, lane: usize) -> bool {
        let Some(Pending { sent, answer }) = self.lanes[lane].pop_front() else { return false };
        let answer = answer.blocking_recv();
        self.settle(sent, answer.ok(), Instant::now());
        true
    }

    /// Waits for the oldest request in flight; false if none is.
    fn block_oldest(&mut self) -> bool {
        let oldest = (0..self.lanes.len())
            .filter_map(|lane| self.lanes[lane].front().map(|p| (p.sent.start, lane)))
            .min();
        oldest.is_some_and(|(_, lane)| self.block_lane(lane))
    }

    /// Keeps up to `cap` requests in flight until `end`, then drains.
    fn saturate(&mut self, cap: usize, end: Instant) {
        let mut planned: Option<Planned> = None;
        while Instant::now() < end {
            let mut submitted = 0;
            while self.in_flight < cap && submitted < 512 {
                let next = planned.take().unwrap_or_else(|| self.plan());
                if self.terms[next.term].outstanding >= self.depth {
                    self.tally.stalls += 1;
                    planned = Some(next);
                    break;
                }
                let (lane, pending) = self.submit(next, Instant::now());
                self.lanes[lane].push_back(pending);
                submitted += 1;
            }
            if self.sweep() == 0 && submitted == 0 {
                match &planned {
                    Some(next) if self.in_flight < cap => {
                        self.block_lane(self.terms[next.term].lane);
                    }
                    _ => {
                        self.block_oldest();
                    }
                }
            }
        }
        self.drain();
    }

    /// Offers `rate` requests per second, the first at `first`, until `end`; then
    /// drains. One collector thread per shard waits on that shard's answers in
    /// submission order (a shard answers in the order it was given work), so each
    /// answer is timed the moment it arrives.
    fn offer(&mut self, rate: u64, first: Instant, end: Instant) {
        let at = |i: u64| {
            let nanos = u128::from(i) * 1_000_000_000 / u128::from(rate.max(1));
            first + Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
        };
        let (answered, answers) = mpsc::channel::<(Sent, Option<Answer>, Instant)>();
        std::thread::scope(|scope| {
            let mut lanes = Vec::new();
            for _ in 0..self.lanes.len() {
                let (lane, waiting) = mpsc::channel::<Pending>();
                let answered = answered.clone();
                scope.spawn(move || {
                    for Pending { sent, answer } in waiting {
                        let answer = answer.blocking_recv().ok();
                        if answered.send((sent, answer, Instant::now())).is_err() {
                            break;
                        }
                    }
                });
                lanes.push(lane);
            }
            drop(answered);
            let mut next = 0u64;
            while at(next) < end {
                let due = at(next);
                let now = Instant::now();
                if due > now {
                    std::thread::sleep(due - now);
                }
                while let Ok((sent, answer, when)) = answers.try_recv() {
                    self.settle(sent, answer, when);
                }
                let planned = self.plan();
                while self.terms[planned.term].outstanding >= self.depth {
                    self.tally.stalls += 1;
                    let Ok((sent, answer, when)) = answers.recv() else { break };
                    self.settle(sent, answer, when);
                }
                let (lane, pending) = self.submit(planned, due);
                if lanes[lane].send(pending).is_err() {
                    break;
                }
                next += 1;
            }
            drop(lanes);
            for (sent, answer, when) in answers {
                self.settle(sent, answer, when);
            }
        });
    }

    fn drain(&mut self) {
        while self.in_flight > 0 {
            if self.sweep() == 0 && !self.block_oldest() {
                break;
            }
        }
    }
}

/// Sums the ledger's shard counters.
#[derive(Debug, Clone, Copy, Default)]
struct Totals {
    batches: u64,
    requests: u64,
    transfers: u64,
    commit_us: u64,
}

impl Totals {
    fn of(health: &ShardHealth) -> Self {
        Self {
            batches: health.batches,
            requests: health.requests,
            transfers: health.transfers,
            commit_us: health.commit_us_total,
        }
    }

    fn since(self, before: Self) -> Self {
        Self {
            batches: self.batches - before.batches,
            requests: self.requests - before.requests,
            transfers: self.transfers - before.transfers,
            commit_us: self.commit_us - before.commit_us,
        }
    }

    fn add(&mut self, other: Self) {
        self.batches += other.batches;
        self.requests += other.requests;
        self.transfers += other.transfers;
        self.commit_us += other.commit_us;
    }
}

/// `count` per second over `elapsed`.
fn per_second(count: u64, elapsed: Duration) -> u64 {
    let micros = elapsed.as_micros().max(1);
    u64::try_from(u128::from(count) * 1_000_000 / micros).unwrap_or(u64::MAX)
}

/// `numerator / denominator` with `decimals` digits after the point, in integers.
fn ratio(numerator: u64, denominator: u64, decimals: u32) -> String {
    if denominator == 0 {
        return "-".to_owned();
    }
    let scale = 10u128.pow(decimals);
    let scaled = u128::from(numerator) * scale / u128::from(denominator);
    if decimals == 0 {
        return scaled.to_string();
    }
    let width = usize::try_from(decimals).unwrap_or(0);
    format!("{}.{:0width$}", scaled / scale, scaled % scale)
}

fn seconds(duration: Duration) -> String {
    format!("{:.2}", duration.as_secs_f64())
}

fn micros(duration: Duration) -> u64 {
    u64::try_from(duration.as_micros()).unwrap_or(u64::MAX)
}

fn sleep_until(at: Instant) {
    let now = Instant::now();
    if at > now {
        std::thread::sleep(at - now);
    }
}

/// The store directory: the one given (which must be empty), or a temporary one.
fn store_dir(args: &Args) -> Result<(PathBuf, Option<TempDir>), String> {
    match &args.data_dir {
        Some(dir) => {
            if dir.exists() {
                let mut entries =
                    std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
                if entries.next().is_some() {
                    return Err(format!("{} is not empty", dir.display()));
                }
            } else {
                std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
            }
            Ok((dir.clone(), None))
        }
        None => {
            let temp = TempDir::try_new("ledger-throughput")
                .map_err(|e| format!("temporary directory: {e}"))?;
            Ok((temp.path().to_path_buf(), Some(temp)))
        }
    }
}

/// Opens the ledger and builds, opens and funds the campus.
fn set_up(args: &Args, path: &Path, config: LedgerConfig) -> Result<(Ledger, Campus), String> {
    let started = Instant::now();
    let ledger = Ledger::open(path, config).map_err(|e| format!("open: {e}"))?;
    let opened = started.elapsed();
    let centre_terminals = (args.terminals / 20).max(2);
    let spec = Spec {
        cards: args.cards,
        merchants: args.merchants.max(1),
        centre_terminals,
        merchant_terminals: args.terminals.saturating_sub(centre_terminals),
    };
    let started = Instant::now();
    let mut campus = Campus::build(&ledger, &spec).map_err(|e| format!("campus: {e}"))?;
    let built = started.elapsed();
    let started = Instant::now();
    campus
        .open_cards(&ledger, spec.cards, |done| {
            eprintln!("  {done} cards opened ({} s)", seconds(started.elapsed()));
        })
        .map_err(|e| format!("open cards: {e}"))?;
    let carded = started.elapsed();
    let started = Instant::now();
    campus.fund(&ledger, args.fund_fen)?;
    let funded = started.elapsed();
    let terminals = campus.centre.terminals.len()
        + campus.merchants.iter().map(|m| m.terminals.len()).sum::<usize>();
    println!(
        "setup: open {} s; {} merchants and {terminals} terminals {} s; {} cards {} s \
         ({}/s, 10,000 to a synced batch); funding {} s ({} top-ups/s)",
        seconds(opened),
        campus.merchants.len() + 1,
        seconds(built),
        spec.cards,
        seconds(carded),
        per_second(spec.cards, carded),
        seconds(funded),
        per_second(spec.cards, funded),
    );
    Ok((ledger, campus))
}

/// Splits the campus into `drivers` drivers' shares: merchants and card-centre
/// terminals dealt round.
fn drivers<'a>(
    ledger: &'a Ledger,
    campus: &Campus,
    args: &Args,
    drivers: usize,
    window: Window,
) -> Vec<Driver<'a>> {
    let lanes = usize::from(ledger.shards());
    let mut out: Vec<Driver<'a>> = (0..drivers)
        .map(|index| Driver {
            ledger,
            terms: Vec::new(),
            hot: Vec::new(),
            cold: Vec::new(),
            centre: Vec::new(),
            cards: campus.cards,
            rng: Rng::new(
                args.seed.wrapping_mul(0x2545_F491_4F6C_DD1D) ^ u64::try_from(index).unwrap_or(0),
            ),
            lanes: (0..lanes).map(|_| VecDeque::new()).collect(),
            in_flight: 0,
            depth: args.depth.clamp(1, PIPELINE_DEPTH),
            window,
            tally: Tally::new(),
        })
        .collect();
    let term = |driver: &mut Driver<'a>, id: u32, shard: u8| {
        let slot = usize::try_from(id).unwrap_or(0);
        driver.terms.push(Term {
            id,
            lane: usize::from(shard),
            next_sequence: campus.next_sequence.get(slot).copied().unwrap_or(1),
            outstanding: 0,
            sales: VecDeque::with_capacity(SALES_KEPT),
        });
        driver.terms.len() - 1
    };
    for (index, &id) in campus.centre.terminals.iter().enumerate() {
        let driver = &mut out[index % drivers];
        let at = term(driver, id, campus.centre.shard);
        driver.centre.push(at);
    }
    for (index, merchant) in campus.merchants.iter().enumerate() {
        let driver = &mut out[index % drivers];
        let terminals =
            merchant.terminals.iter().map(|&id| term(driver, id, merchant.shard)).collect();
        if merchant.hot {
            driver.hot.push(terminals);
        } else {
            driver.cold.push(terminals);
        }
    }
    out
}

fn run(args: &Args) -> Result<bool, String> {
    let (path, temp) = store_dir(args)?;
    let mut config = LedgerConfig { sync: !args.no_sync, ..LedgerConfig::default() };
    if let Some(shards) = args.shards {
        config.shards = shards;
    }
    let (ledger, campus) = set_up(args, &path, config)?;
    let shards = ledger.shards();
    let driver_count = args.drivers.clamp(1, campus.merchants.len().max(1));
    let saturation = args.rate == 0;
    let in_flight_each = (args.in_flight / driver_count).max(1);
    println!(
        "run: {}, {shards} shards, sync {}, {} cards, {} merchants, {} drivers, {}, \
         {} s measured after {} s warm-up, store {}",
        if saturation { "saturation".to_owned() } else { format!("open loop at {}/s", args.rate) },
        if args.no_sync { "off" } else { "on" },
        campus.cards,
        campus.merchants.len() + 1,
        driver_count,
        if saturation {
            format!(
                "{} in flight at most ({} per terminal)",
                in_flight_each * driver_count,
                args.depth.clamp(1, PIPELINE_DEPTH)
            )
        } else {
            format!("up to {} in flight per terminal", args.depth.clamp(1, PIPELINE_DEPTH))
        },
        args.seconds,
        args.warmup,
        path.display(),
    );

    let start = Instant::now();
    let window = Window {
        from: start + Duration::from_secs(args.warmup),
        to: start + Duration::from_secs(args.warmup + args.seconds.max(1)),
    };
    let mut workers = drivers(&ledger, &campus, args, driver_count, window);
    let driver_total = u64::try_from(driver_count).unwrap_or(1);
    let (before, after, measured) = std::thread::scope(|scope| {
        let mut handles = Vec::new();
        for (index, mut driver) in workers.drain(..).enumerate() {
            let rate = args.rate / driver_total
                + u64::from(u64::try_from(index).unwrap_or(0) < args.rate % driver_total);
            let offset = Duration::from_nanos(
                1_000_000_000 / args.rate.max(1) * u64::try_from(index).unwrap_or(0),
            );
            handles.push(scope.spawn(move || {
                if saturation {
                    driver.saturate(in_flight_each, window.to);
                } else {
                    driver.offer(rate, start + offset, window.to);
                }
                driver.tally
            }));
        }
        sleep_until(window.from);
        let before = (Instant::now(), ledger.health());
        sleep_until(window.to);
        let after = (Instant::now(), ledger.health());
        let mut tally = Tally::new();
        for handle in handles {
            tally.merge(&handle.join().expect("a driver thread panicked"));
        }
        (before, after, tally)
    });
    let elapsed = after.0 - before.0;

    // The ledger's own counters over the measured interval.
    let mut total = Totals::default();
    let mut shard_lines = Vec::new();
    let mut poisoned = false;
    for (old, new) in before.1.iter().zip(&after.1) {
        let delta = Totals::of(new).since(Totals::of(old));
        total.add(delta);
        poisoned |= new.poisoned;
        shard_lines.push(format!(
            "  shard {}: {} batches, {} requests, {} transfers; mean batch {} requests; \
             mean write {} µs per batch; in RocksDB writes {}% of wall time; queue {} at end{}",
            new.shard,
            delta.batches,
            delta.requests,
            delta.transfers,
            ratio(delta.requests, delta.batches, 1),
            ratio(delta.commit_us, delta.batches, 0),
            ratio(delta.commit_us * 100, micros(elapsed), 1),
            new.queue_depth,
            if new.poisoned { ", POISONED" } else { "" },
        ));
    }
    let transfers_per_s = per_second(total.transfers, elapsed);
    let requests_per_s = per_second(total.requests, elapsed);
    println!(
        "committed over {} s: {transfers_per_s} transfers/s, {requests_per_s} requests/s \
         ({} transfers, {} requests, {} batches); mean batch {} requests",
        seconds(elapsed),
        total.transfers,
        total.requests,
        total.batches,
        ratio(total.requests, total.batches, 1),
    );
    for line in &shard_lines {
        println!("{line}");
    }
    let submitted: u64 = measured.kinds.iter().sum();
    let mix: Vec<String> = Kind::ALL
        .iter()
        .map(|kind| {
            let count = measured.kinds[kind.index()];
            format!("{} {count} ({}%)", kind.name(), ratio(count * 100, submitted, 1))
        })
        .collect();
    println!(
        "submitted in the interval: {submitted} ({}/s): {}; {} refunds/reversals became \
         purchases (no eligible sale); {} pipeline-full waits",
        per_second(submitted, elapsed),
        mix.join(", "),
        measured.fallbacks,
        measured.stalls,
    );
    let mut codes: Vec<(AnswerCode, u64)> = measured.codes.iter().map(|(c, n)| (*c, *n)).collect();
    codes.sort_unstable();
    let approved = measured.codes.get(&AnswerCode::Approved).copied().unwrap_or(0);
    let code_text: Vec<String> = codes
        .iter()
        .map(|(code, count)| {
            format!("{code:?} {count} ({}%)", ratio(count * 100, measured.answers, 2))
        })
        .collect();
    println!("answers: {}: {}", measured.answers, code_text.join(", "));
    let histogram = &measured.latency_us;
    let quantiles = [0.5, 0.9, 0.99, 0.999].map(|q| histogram.value_at_quantile(q));
    println!(
        "latency µs ({}): mean {:.0}, p50 {}, p90 {}, p99 {}, p99.9 {}, max {}",
        if saturation {
            "submission to durable answer"
        } else {
            "scheduled time to durable answer, coordinated omission corrected"
        },
        histogram.mean(),
        quantiles[0],
        quantiles[1],
        quantiles[2],
        quantiles[3],
        histogram.max(),
    );
    if !saturation {
        let (service, lag) = (&measured.service_us, &measured.lag_us);
        println!(
            "  from submission instead: p50 {}, p90 {}, p99 {}, p99.9 {}, max {}; submitted \
             late by p50 {}, p99 {}, max {} (the harness's pacing)",
            service.value_at_quantile(0.5),
            service.value_at_quantile(0.9),
            service.value_at_quantile(0.99),
            service.value_at_quantile(0.999),
            service.max(),
            lag.value_at_quantile(0.5),
            lag.value_at_quantile(0.99),
            lag.max(),
        );
    }
    if saturation {
        println!(
            "target 500,000 transfers/s (saturation): {} — {transfers_per_s} transfers/s",
            if transfers_per_s >= 500_000 { "met" } else { "NOT met" }
        );
    } else {
        println!(
            "target: p99 commit latency at 10,000 requests/s: p99 {} µs at {} requests/s offered \
             ({} answered/s)",
            quantiles[2],
            args.rate,
            per_second(measured.answers, elapsed),
        );
    }

    let started = Instant::now();
    let report = ledger.verify().map_err(|e| format!("verify: {e}"))?;
    println!("verify ({} s): {report}", seconds(started.elapsed()));
    let clean = report.is_clean() && !poisoned;
    println!(
        "SUMMARY mode={} shards={shards} sync={} cards={} merchants={} terminals={} drivers={} \
         rate={} seconds={} transfers_per_s={transfers_per_s} requests_per_s={requests_per_s} \
         answers={} approved_pct={} mean_batch={} p50_us={} p90_us={} p99_us={} p999_us={} \
         max_us={} commit_busy_pct={} verify={}",
        if saturation { "saturation" } else { "rate" },
        u8::from(!args.no_sync),
        campus.cards,
        campus.merchants.len() + 1,
        campus.centre.terminals.len()
            + campus.merchants.iter().map(|m| m.terminals.len()).sum::<usize>(),
        driver_count,
        args.rate,
        seconds(elapsed),
        measured.answers,
        ratio(approved * 100, measured.answers, 2),
        ratio(total.requests, total.batches, 1),
        quantiles[0],
        quantiles[1],
        quantiles[2],
        quantiles[3],
        histogram.max(),
        ratio(total.commit_us * 100, micros(elapsed) * u64::from(shards), 1),
        if clean { "clean" } else { "FAILED" },
    );
    ledger.close();
    drop(temp);
    Ok(clean)
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(error) => {
            eprintln!("ledger-throughput: {error}");
            ExitCode::FAILURE
        }
    }
}
