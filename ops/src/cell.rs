//! `onecard serve` on a node of a cell: the node (its replica, its Raft log, the
//! cluster link) runs all the time; the ledger is open only while this node leads.
//!
//! ```text
//!            ┌──────────── follow ◀─────────────────────────────┐
//!  start ─▶  │ terminals: Redirect to the leader                 │ deposed, a write not
//!            │ admin: health, metrics, /api/cluster; the rest    │ confirmed, or the term
//!            │   refused 503 `not_leader` naming the leader      │ moved on
//!            └─▶ elected ─▶ caught up (ensure_linearizable) ─▶ lead
//!                             ledger opened on the replica, front door, day, backups,
//!                             the whole admin API
//! ```
//!
//! Two runtimes: the node's (`onecard-cell`: openraft, the cluster link, the door's
//! commits) and the services' (`onecard-io`: terminals, the admin API). The ledger's
//! writes wait on the node's runtime from its own threads and the services' threads,
//! so a commit never waits for a thread that is waiting for it.
//!
//! A node whose Raft stops (its store failed a write: a failed disk) exits non-zero,
//! for its service manager to restart it or an operator to replace it; the other two
//! go on. docs/OPERATIONS.md, "A cell of three nodes".

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use axum::Json;
use axum::Router;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use onecard_cluster::{Node, NodeAddress, NodeSettings};
use onecard_engine::Ledger;
use openraft_metrics::{RaftMetrics, ServerState};
use prometheus::{Gauge, IntCounter, IntGauge, IntGaugeVec, Opts, Registry};
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tower::ServiceExt as _;

use crate::config::{ClusterConfig, Config};
use crate::{Signals, api, master_key, prepare, run_ledger, storage_fault};

/// openraft's metrics types, as the cluster crate exposes them.
mod openraft_metrics {
    pub use onecard_cluster::openraft::ServerState;
    pub type RaftMetrics = onecard_cluster::openraft::RaftMetrics<
        onecard_cluster::NodeId,
        onecard_cluster::NodeAddress,
    >;
}

/// How long a newly elected leader may take to confirm its lead and apply every
/// committed entry before it gives up this term.
const CATCH_UP_MAX: Duration = Duration::from_secs(10);

/// How often a leader checks that its ledger still takes writes.
const POISON_CHECK_EVERY: Duration = Duration::from_millis(200);

/// How often the node's Raft metrics are read into the gauges, the admin view and
/// the address redirects name.
const WATCH_EVERY: Duration = Duration::from_millis(100);

/// How long a deposed leader waits for the last users of its ledger (an admin
/// request in flight) before it stops the process instead.
const LEDGER_RELEASE_MAX: Duration = Duration::from_secs(10);

/// Serves this node of its cell until SIGTERM, or until its Raft stops.
pub fn serve(config: Config) -> anyhow::Result<()> {
    let cluster = config.cluster.clone().context("serve::cell without a [cluster] section")?;
    anyhow::ensure!(
        !matches!(config.master_key_source, master_key::Source::New(_)),
        "every node of a cell seals with the same master key: create it once (`onecard cell \
         init` does), give each node the file (master_key_file) or ONECARD_MASTER_KEY, and start \
         again"
    );
    let config = Arc::new(config);
    let cell_runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .thread_name("onecard-cell")
        .build()
        .context("starting the cell's runtime")?;
    let io_runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("onecard-io")
        .build()
        .context("starting the async runtime")?;
    let settings = NodeSettings {
        cell: cluster.cell.clone(),
        id: cluster.node_id,
        dir: config.data_dir.clone(),
        members: cluster.members.iter().map(|(id, m)| (*id, m.address())).collect(),
        listen: Some(cluster.cluster_listen),
        shards: config.ledger.shards,
    };
    // A node with no Raft log yet is new; the first member founds a new cell.
    let fresh = !config.data_dir.join("raft-log").exists();
    let node = cell_runtime.block_on(Node::start(settings)).context("starting the cell node")?;
    // A test hook: this node's disk fails a write (engine/src/storage.rs).
    if let (Some(plan), Some(store)) = (storage_fault()?, node.store()) {
        store.arm_fault(plan);
    }
    let founder = cluster.members.keys().next() == Some(&cluster.node_id);
    if founder && fresh {
        cell_runtime.block_on(node.initialize()).context("founding the cell")?;
        tracing::info!(cell = %cluster.cell, "founded the cell");
    }
    let node = Arc::new(node);
    let outcome = io_runtime.block_on(supervise(Arc::clone(&config), cluster, Arc::clone(&node)));
    drop(io_runtime);
    match Arc::try_unwrap(node) {
        Ok(node) => cell_runtime.block_on(node.shutdown()),
        Err(_) => tracing::warn!("the node is still shared at exit; it stops as the process ends"),
    }
    tracing::info!("cell node stopped");
    outcome
}

/// The node's life: follow, lead when elected, follow again when deposed.
async fn supervise(
    config: Arc<Config>,
    cluster: ClusterConfig,
    node: Arc<Node>,
) -> anyhow::Result<()> {
    let terminals = Arc::new(
        TcpListener::bind(config.terminal_listen)
            .await
            .with_context(|| format!("binding the terminal port {}", config.terminal_listen))?,
    );
    let admin = TcpListener::bind(config.admin_listen)
        .await
        .with_context(|| format!("binding the admin port {}", config.admin_listen))?;
    let terminal_addr = terminals.local_addr().context("reading the terminal address")?;
    let admin_addr = admin.local_addr().context("reading the admin address")?;
    let (stop_tx, stop) = watch::channel(false);
    let stop_tx = Arc::new(stop_tx);
    let mut signals = Signals::register().context("registering for SIGTERM and SIGINT")?;

    let metrics = Arc::new(CellMetrics::new().context("registering the cell's metrics")?);
    let view = Arc::new(View::new(&cluster, Arc::clone(&metrics), config.metrics_token.clone()));
    let (leader_tx, leader_terminals) = watch::channel(String::new());
    let watcher =
        tokio::spawn(watch_node(Arc::clone(&node), Arc::clone(&view), leader_tx, stop.clone()));
    let http = {
        let view = Arc::clone(&view);
        let mut stop = stop.clone();
        tokio::spawn(async move {
            let app = Router::new().fallback(dispatch).with_state(view);
            axum::serve(admin, app.into_make_service_with_connect_info::<SocketAddr>())
                .with_graceful_shutdown(async move {
                    let _ = stop.wait_for(|stop| *stop).await;
                })
                .await
        })
    };
    tracing::info!(%terminal_addr, %admin_addr, node = cluster.node_id, cell = %cluster.cell, "listening");
    println!(
        "onecard cell {} node {}: cluster link on {}",
        cluster.cell,
        cluster.node_id,
        node.address()
    );
    println!("onecard ready: terminals on {terminal_addr} admin on {admin_addr}");
    let stopping = Arc::clone(&stop_tx);
    tokio::spawn(async move {
        signals.next().await;
        tracing::info!("shutting down: no new connections; answering what is in flight");
        let _ = stopping.send(true);
        signals.next().await;
        tracing::warn!("second signal: exiting now");
        std::process::exit(130);
    });

    let outcome = loop {
        // Follow: terminals are sent to the leader until this node is elected.
        let (follow_end, follow_ended) = watch::channel(false);
        let redirect = {
            let (terminals, leader) = (Arc::clone(&terminals), leader_terminals.clone());
            let (max, timeout) =
                (config.front_door.connections_max, config.front_door.frame_read_timeout);
            tokio::spawn(async move {
                onecard_engine::frontdoor::redirect(&terminals, leader, max, timeout, follow_ended)
                    .await
            })
        };
        let elected = elected(&node, stop.clone()).await;
        let _ = follow_end.send(true);
        let _ = redirect.await;
        let term = match elected {
            Ok(Some(term)) => term,
            Ok(None) => break Ok(()),
            Err(error) => break Err(error),
        };
        let led = lead(&config, &node, term, &terminals, &view, &metrics, stop.clone()).await;
        if *stop.borrow() {
            break led;
        }
        match led {
            Ok(()) => {}
            Err(error) => {
                tracing::error!(error = format!("{error:#}"), "leading failed; following again");
                // Not at once: an error here (the store would not open) would repeat.
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    };
    // A signal, or this node's Raft stopped: everything else stops too.
    let _ = stop_tx.send(true);
    let _ = watcher.await;
    match tokio::time::timeout(onecard_engine::limits::SHUTDOWN_DRAIN_TIMEOUT, http).await {
        Ok(served) => served.context("admin API task")?.context("admin API")?,
        Err(_) => tracing::warn!("admin API connections still open at shutdown; closing them"),
    }
    outcome
}

/// Waits until this node leads, and says in which term; `None` once `stop` turns.
///
/// # Errors
/// If the node's Raft has stopped (its store failed).
async fn elected(node: &Node, mut stop: watch::Receiver<bool>) -> anyhow::Result<Option<u64>> {
    let mut metrics = node.raft().metrics();
    loop {
        {
            let now = metrics.borrow_and_update();
            if let Err(fatal) = &now.running_state {
                anyhow::bail!("this node's raft stopped: {fatal}");
            }
            if now.state == ServerState::Leader && now.current_leader == Some(node.id()) {
                return Ok(Some(now.current_term));
            }
        }
        tokio::select! {
            changed = metrics.changed() => {
                if changed.is_err() {
                    anyhow::bail!("this node's raft stopped");
                }
            }
            () = stopped(&mut stop) => return Ok(None),
        }
    }
}

/// Resolves once `stop` turns true (or its sender is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|stop| *stop).await.map(drop);
}

/// Why a leader stopped leading.
#[derive(Debug, Clone, Copy)]
enum Ended {
    Stopping,
    Deposed,
    NotConfirmed,
}

/// Leads for `term`: catch up, open the ledger on the replica, serve it all until
/// deposed or stopped, then close it.
async fn lead(
    config: &Arc<Config>,
    node: &Arc<Node>,
    term: u64,
    terminals: &Arc<TcpListener>,
    view: &Arc<View>,
    metrics: &Arc<CellMetrics>,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let started = Instant::now();
    match tokio::time::timeout(CATCH_UP_MAX, node.raft().ensure_linearizable()).await {
        Ok(Ok(_)) => {}
        Ok(Err(error)) => {
            tracing::warn!(%error, "elected, but the lead was not confirmed");
            return Ok(());
        }
        Err(_) => {
            tracing::warn!("elected, but not caught up within {CATCH_UP_MAX:?}");
            return Ok(());
        }
    }
    let store = node.store().context("the replica is being replaced by a snapshot")?;
    // Writes a previous term's ledger failed to get confirmed poisoned its journals;
    // the store itself holds only what the cell committed.
    store.clear_poison();
    let ledger_config = config.ledger.clone();
    let prepared = {
        let config = Arc::clone(config);
        tokio::task::spawn_blocking(move || -> anyhow::Result<(Arc<Ledger>, api::AppState)> {
            let ledger = Arc::new(
                Ledger::open_on(store, ledger_config)
                    .context("opening the ledger on the replica")?,
            );
            let state = prepare(&config, &ledger)?;
            Ok((ledger, state))
        })
        .await
        .context("opening the ledger")?
    };
    let (ledger, state) = prepared?;
    tracing::info!(
        term,
        business_date = %ledger.business_date(),
        opened_ms = started.elapsed().as_millis(),
        "leading the cell: ledger open"
    );
    metrics.ledger_open.set(1);
    if let Err(error) = ledger.metrics().registry().register(Box::new(metrics.as_ref().clone())) {
        tracing::warn!(%error, "the cell's series are not on the leader's /metrics");
    }
    view.lead(api::router(state.clone()).merge(api::cell::routes(state.clone(), Arc::clone(node))));
    let (lead_end, lead_ended) = watch::channel(false);
    let services = tokio::spawn(run_ledger(
        Arc::clone(config),
        Arc::clone(&ledger),
        state,
        Arc::clone(terminals),
        lead_ended,
    ));

    let mut raft_metrics = node.raft().metrics();
    let mut poison_check = tokio::time::interval(POISON_CHECK_EVERY);
    let ended = loop {
        tokio::select! {
            () = stopped(&mut stop) => break Ended::Stopping,
            changed = raft_metrics.changed() => {
                let now = raft_metrics.borrow_and_update();
                if changed.is_err() || !leads(&now, node.id(), term) {
                    break Ended::Deposed;
                }
            }
            _ = poison_check.tick() => {
                if ledger.control_poisoned() || ledger.health().iter().any(|h| h.poisoned) {
                    break Ended::NotConfirmed;
                }
            }
        }
    };
    tracing::warn!(?ended, term, "no longer leading: closing the ledger");
    view.follow();
    let _ = lead_end.send(true);
    services.await.context("ledger services")??;
    metrics.ledger_open.set(0);
    close_ledger(ledger).await
}

/// Whether `metrics` says `id` still leads in `term`.
fn leads(metrics: &RaftMetrics, id: u64, term: u64) -> bool {
    metrics.running_state.is_ok()
        && metrics.state == ServerState::Leader
        && metrics.current_leader == Some(id)
        && metrics.current_term == term
}

/// Closes a ledger once nobody else holds it (an admin request may for a moment).
async fn close_ledger(mut ledger: Arc<Ledger>) -> anyhow::Result<()> {
    let deadline = Instant::now() + LEDGER_RELEASE_MAX;
    let ledger = loop {
        match Arc::try_unwrap(ledger) {
            Ok(ledger) => break ledger,
            Err(shared) if Instant::now() < deadline => {
                ledger = shared;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(_) => anyhow::bail!(
                "the ledger is still in use {LEDGER_RELEASE_MAX:?} after this node stopped \
                 leading; stopping the process rather than serve a stale ledger"
            ),
        }
    };
    tokio::task::spawn_blocking(move || ledger.close()).await.context("closing the ledger")?;
    tracing::info!("ledger closed");
    Ok(())
}

/// Follows the node's Raft metrics into the cell's gauges, the leader's terminal
/// address (what redirects name) and the admin view.
async fn watch_node(
    node: Arc<Node>,
    view: Arc<View>,
    leader_terminals: watch::Sender<String>,
    mut stop: watch::Receiver<bool>,
) {
    let metrics = node.raft().metrics();
    let mut last_term = None;
    let mut last_leader = None;
    loop {
        let now = metrics.borrow().clone();
        if last_term.is_some_and(|term| term != now.current_term) {
            view.metrics.term_changes.inc();
        }
        if last_leader.is_some() && last_leader != Some(now.current_leader) {
            view.metrics.leader_changes.inc();
        }
        last_term = Some(now.current_term);
        last_leader = Some(now.current_leader);
        view.metrics.observe(&now, node.snapshots());
        let address = now
            .current_leader
            .and_then(|id| now.membership_config.membership().get_node(&id))
            .map(|member| member.terminals.clone())
            .unwrap_or_default();
        leader_terminals.send_if_modified(|held| {
            let changed = *held != address;
            held.clone_from(&address);
            changed
        });
        view.set_raft(now);
        tokio::select! {
            () = tokio::time::sleep(WATCH_EVERY) => {}
            () = stopped(&mut stop) => return,
        }
    }
}

/// The admin port's current face: the whole API while this node leads, the
/// follower's few routes otherwise.
struct View {
    leader_api: RwLock<Option<Router>>,
    follower: Router,
    node_id: u64,
    cell: String,
    raft: RwLock<Option<RaftMetrics>>,
    metrics: Arc<CellMetrics>,
    metrics_token: Option<String>,
}

impl View {
    fn new(
        cluster: &ClusterConfig,
        metrics: Arc<CellMetrics>,
        metrics_token: Option<String>,
    ) -> Self {
        let follower = Router::new()
            .route("/healthz", get(|| async { Json(serde_json::json!({ "status": "alive" })) }))
            .route("/readyz", get(follower_ready))
            .route("/metrics", get(follower_metrics))
            .fallback(not_leader);
        Self {
            leader_api: RwLock::new(None),
            follower,
            node_id: cluster.node_id,
            cell: cluster.cell.clone(),
            raft: RwLock::new(None),
            metrics,
            metrics_token,
        }
    }

    fn lead(&self, api: Router) {
        *self.leader_api.write().unwrap_or_else(PoisonError::into_inner) = Some(api);
    }

    fn follow(&self) {
        self.leader_api.write().unwrap_or_else(PoisonError::into_inner).take();
    }

    fn set_raft(&self, metrics: RaftMetrics) {
        *self.raft.write().unwrap_or_else(PoisonError::into_inner) = Some(metrics);
    }

    /// `/api/cluster`: this node's view of the cell.
    fn status(&self) -> CellStatus {
        let raft = self.raft.read().unwrap_or_else(PoisonError::into_inner).clone();
        let leading = self.leader_api.read().unwrap_or_else(PoisonError::into_inner).is_some();
        let leader = raft.as_ref().and_then(|m| m.current_leader);
        let membership = raft.as_ref().map(|m| Arc::clone(&m.membership_config));
        let member = |id: u64| {
            let node = membership.as_ref()?.membership().get_node(&id)?.clone();
            Some(MemberJson { id, voter: membership.as_ref()?.voter_ids().any(|v| v == id), node })
        };
        let members: Vec<MemberJson> = membership
            .as_ref()
            .map(|m| m.membership().nodes().filter_map(|(id, _)| member(*id)).collect())
            .unwrap_or_default();
        let last_log_index = raft.as_ref().and_then(|m| m.last_log_index);
        let followers = raft
            .as_ref()
            .and_then(|m| m.replication.clone())
            .map(|replication| {
                replication
                    .into_iter()
                    .filter(|(id, _)| *id != self.node_id)
                    .map(|(id, matched)| {
                        let matched_index = matched.map(|log_id| log_id.index);
                        FollowerJson {
                            id,
                            matched_index,
                            lag_entries: last_log_index
                                .unwrap_or(0)
                                .saturating_sub(matched_index.unwrap_or(0)),
                        }
                    })
                    .collect()
            })
            .unwrap_or_default();
        CellStatus {
            cell: self.cell.clone(),
            node: self.node_id,
            role: raft.as_ref().map_or("starting", |m| role(m.state)),
            ledger_open: leading,
            term: raft.as_ref().map_or(0, |m| m.current_term),
            leader: leader.and_then(member),
            last_log_index,
            applied_index: raft.as_ref().and_then(|m| m.last_applied.map(|log_id| log_id.index)),
            snapshot_index: raft.as_ref().and_then(|m| m.snapshot.map(|log_id| log_id.index)),
            millis_since_quorum_ack: raft.as_ref().and_then(|m| m.millis_since_quorum_ack),
            members,
            followers,
        }
    }
}

/// Sends each admin request to the face the node shows now; `/api/cluster` is the
/// same on every node.
async fn dispatch(State(view): State<Arc<View>>, request: Request) -> Response {
    if request.uri().path() == "/api/cluster" {
        return Json(view.status()).into_response();
    }
    let leader = view.leader_api.read().unwrap_or_else(PoisonError::into_inner).clone();
    let router = match leader {
        Some(api) => api,
        None => {
            if request.uri().path() == "/metrics"
                && let Some(refused) = refuse_metrics(&view, &request)
            {
                return refused;
            }
            view.follower.clone().layer(axum::Extension(Arc::clone(&view)))
        }
    };
    match router.oneshot(request).await {
        Ok(response) => response,
        Err(never) => match never {},
    }
}

/// The metrics token, checked on a follower as the leader's API checks it.
fn refuse_metrics(view: &View, request: &Request) -> Option<Response> {
    if api::metrics_token_given(view.metrics_token.as_deref(), request.headers()) {
        return None;
    }
    Some(
        api::ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
            "the metrics token is required",
        )
        .into_response(),
    )
}

/// A follower's `/readyz`: not ready for terminals or operators (the leader is),
/// with where the leader is.
async fn follower_ready(axum::Extension(view): axum::Extension<Arc<View>>) -> Response {
    (StatusCode::SERVICE_UNAVAILABLE, Json(view.status())).into_response()
}

/// A follower's `/metrics`: the cell's series.
async fn follower_metrics(axum::Extension(view): axum::Extension<Arc<View>>) -> Response {
    match prometheus::TextEncoder::new().encode_to_string(&view.metrics.registry.gather()) {
        Ok(text) => {
            ([(axum::http::header::CONTENT_TYPE, prometheus::TEXT_FORMAT)], text).into_response()
        }
        Err(error) => (StatusCode::INTERNAL_SERVER_ERROR, error.to_string()).into_response(),
    }
}

/// Everything else on a follower: refused, naming the leader's admin address.
async fn not_leader(axum::Extension(view): axum::Extension<Arc<View>>) -> Response {
    let status = view.status();
    let message = match &status.leader {
        Some(leader) => format!(
            "node {} does not lead cell {}; node {} does: send this to http://{}",
            status.node, status.cell, leader.id, leader.node.admin
        ),
        None => format!("cell {} is electing a leader; try again in a few seconds", status.cell),
    };
    let body = serde_json::json!({
        "error": { "code": "not_leader", "message": message },
        "leader": status.leader,
    });
    (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
}

const fn role(state: ServerState) -> &'static str {
    match state {
        ServerState::Leader => "leader",
        ServerState::Follower => "follower",
        ServerState::Candidate => "candidate",
        ServerState::Learner => "learner",
        ServerState::Shutdown => "stopped",
    }
}

/// `/api/cluster`.
#[derive(Debug, Serialize)]
struct CellStatus {
    cell: String,
    node: u64,
    role: &'static str,
    /// Whether this node's ledger is open (it leads and has caught up).
    ledger_open: bool,
    term: u64,
    leader: Option<MemberJson>,
    last_log_index: Option<u64>,
    applied_index: Option<u64>,
    snapshot_index: Option<u64>,
    /// On the leader: how long since a majority last acknowledged it.
    millis_since_quorum_ack: Option<u64>,
    members: Vec<MemberJson>,
    /// On the leader: each follower's matched log index and how far behind it is.
    followers: Vec<FollowerJson>,
}

#[derive(Debug, Clone, Serialize)]
struct MemberJson {
    id: u64,
    /// A voter, or a learner still catching up.
    voter: bool,
    #[serde(flatten)]
    node: NodeAddress,
}

#[derive(Debug, Serialize)]
struct FollowerJson {
    id: u64,
    matched_index: Option<u64>,
    lag_entries: u64,
}

/// The cell's series: on every node's `/metrics` (a leader serves them beside the
/// ledger's).
#[derive(Clone)]
struct CellMetrics {
    registry: Registry,
    leader: IntGauge,
    leader_known: IntGauge,
    ledger_open: IntGauge,
    term: IntGauge,
    last_log_index: IntGauge,
    applied_index: IntGauge,
    snapshot_index: IntGauge,
    quorum_ack_age: Gauge,
    voters: IntGauge,
    follower_lag: IntGaugeVec,
    term_changes: IntCounter,
    leader_changes: IntCounter,
    snapshots_built: IntGauge,
    snapshots_installed: IntGauge,
}

impl CellMetrics {
    fn new() -> prometheus::Result<Self> {
        let gauge = |name: &str, help: &str| IntGauge::new(name, help);
        let metrics = Self {
            registry: Registry::new(),
            leader: gauge("onecard_cell_leader", "1 while this node leads its cell")?,
            leader_known: gauge(
                "onecard_cell_leader_known",
                "1 while this node knows a leader of its cell",
            )?,
            ledger_open: gauge(
                "onecard_cell_ledger_open",
                "1 while this node's ledger is open (it leads and has caught up)",
            )?,
            term: gauge("onecard_cell_term", "the Raft term this node is in")?,
            last_log_index: gauge(
                "onecard_cell_last_log_index",
                "the index of the last entry in this node's log",
            )?,
            applied_index: gauge(
                "onecard_cell_applied_index",
                "the index of the last entry applied to this node's store",
            )?,
            snapshot_index: gauge(
                "onecard_cell_snapshot_index",
                "the last index this node's newest snapshot holds",
            )?,
            quorum_ack_age: Gauge::new(
                "onecard_cell_quorum_ack_age_seconds",
                "on the leader: seconds since a majority last acknowledged it (-1 elsewhere)",
            )?,
            voters: gauge("onecard_cell_voters", "voting members of the cell")?,
            follower_lag: IntGaugeVec::new(
                Opts::new(
                    "onecard_cell_follower_lag_entries",
                    "on the leader: entries each follower has yet to match",
                ),
                &["node"],
            )?,
            term_changes: IntCounter::new(
                "onecard_cell_term_changes_total",
                "elections this node has seen (the term moved on)",
            )?,
            leader_changes: IntCounter::new(
                "onecard_cell_leader_changes_total",
                "times the leader this node knows changed",
            )?,
            snapshots_built: gauge(
                "onecard_cell_snapshots_built",
                "snapshots this node built since it started",
            )?,
            snapshots_installed: gauge(
                "onecard_cell_snapshots_installed",
                "snapshots this node installed from a leader since it started",
            )?,
        };
        metrics.registry.register(Box::new(metrics.clone()))?;
        Ok(metrics)
    }

    fn observe(&self, now: &RaftMetrics, (built, installed): (u64, u64)) {
        let int = |value: u64| i64::try_from(value).unwrap_or(i64::MAX);
        self.leader.set(i64::from(now.state == ServerState::Leader));
        self.leader_known.set(i64::from(now.current_leader.is_some()));
        self.term.set(int(now.current_term));
        self.last_log_index.set(int(now.last_log_index.unwrap_or(0)));
        self.applied_index.set(int(now.last_applied.map_or(0, |log_id| log_id.index)));
        self.snapshot_index.set(int(now.snapshot.map_or(0, |log_id| log_id.index)));
        self.quorum_ack_age.set(
            now.millis_since_quorum_ack.map_or(-1.0, |ms| Duration::from_millis(ms).as_secs_f64()),
        );
        self.voters.set(int(now.membership_config.membership().voter_ids().count() as u64));
        self.follower_lag.reset();
        if let Some(replication) = &now.replication {
            let last = now.last_log_index.unwrap_or(0);
            for (id, matched) in replication {
                if *id == now.id {
                    continue;
                }
                let matched = matched.map_or(0, |log_id| log_id.index);
                self.follower_lag
                    .with_label_values(&[&id.to_string()])
                    .set(int(last.saturating_sub(matched)));
            }
        }
        self.snapshots_built.set(int(built));
        self.snapshots_installed.set(int(installed));
    }
}

impl CellMetrics {
    /// Every series of the cell, for the collector.
    fn series(&self) -> [&dyn prometheus::core::Collector; 14] {
        [
            &self.leader,
            &self.leader_known,
            &self.ledger_open,
            &self.term,
            &self.last_log_index,
            &self.applied_index,
            &self.snapshot_index,
            &self.voters,
            &self.snapshots_built,
            &self.snapshots_installed,
            &self.quorum_ack_age,
            &self.follower_lag,
            &self.term_changes,
            &self.leader_changes,
        ]
    }
}

impl prometheus::core::Collector for CellMetrics {
    fn desc(&self) -> Vec<&prometheus::core::Desc> {
        self.series().into_iter().flat_map(prometheus::core::Collector::desc).collect()
    }

    fn collect(&self) -> Vec<prometheus::proto::MetricFamily> {
        self.series().into_iter().flat_map(prometheus::core::Collector::collect).collect()
    }
}

/// `onecard cell init`: the files for a cell of `nodes` on this machine, for trying
/// it: one master key and one config per node, ports counting up from `base_port`.
pub fn init(
    dir: &Path,
    nodes: u64,
    base_port: u16,
    demo_cards: u64,
) -> anyhow::Result<Vec<PathBuf>> {
    anyhow::ensure!((1..=7).contains(&nodes), "a cell has 1 to 7 nodes (3 is the usual)");
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let key_file = dir.join("master.key");
    anyhow::ensure!(
        !key_file.exists(),
        "{} already exists: this directory holds a cell already",
        key_file.display()
    );
    let key = onecard_engine::sealing::MasterKey::generate()?;
    crate::demo::write_private(&key_file, format!("{}\n", key.to_hex()).as_bytes())?;
    let port = |node: u64, offset: u16| -> anyhow::Result<u16> {
        let node = u16::try_from(node).context("node number")?;
        base_port.checked_add(offset + node).context("the ports run past 65535")
    };
    let mut members = String::new();
    for id in 1..=nodes {
        members.push_str(&format!(
            "\n[[cluster.members]]\nid = {id}\ncluster = \"127.0.0.1:{}\"\nterminals = \"127.0.0.1:{}\"\nadmin = \"127.0.0.1:{}\"\n",
            port(id, 200)?,
            port(id, 0)?,
            port(id, 80)?,
        ));
    }
    let mut written = Vec::new();
    for id in 1..=nodes {
        let path = dir.join(format!("node{id}.toml"));
        let data = dir.join(format!("node{id}"));
        let text = format!(
            "# Node {id} of the demo cell (`onecard cell init`). Start each node with\n\
             # `onecard serve --config {}`.\n\
             data_dir = {:?}\nmaster_key_file = {:?}\ndemo = true\ndemo_cards = {demo_cards}\n\n\
             [cluster]\ncell = \"demo-campus\"\nnode_id = {id}\n{members}",
            path.display(),
            data.display().to_string(),
            key_file.display().to_string(),
        );
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        written.push(path);
    }
    Ok(written)
}
