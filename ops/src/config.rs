//! The configuration of `onecard serve`: one TOML file, every key overridable by a
//! flag and by an environment variable.
//!
//! Each key has one name in three spellings: `token_ttl_secs` in the file,
//! `--token-ttl-secs` on the command line, `ONECARD_TOKEN_TTL_SECS` in the
//! environment. A flag beats the environment, which beats the file, which beats the
//! default. [`Settings`] is that one list of keys (its doc comments are the `--help`
//! text); [`Config`] is what they resolve to.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use onecard_engine::LedgerConfig;
use onecard_engine::date::Clock;
use onecard_engine::frontdoor::FrontDoorConfig;
use onecard_engine::settlement::MealHours;
use serde::Deserialize;

use crate::backup::{BACKUPS_KEPT_MIN, BackupConfig};

/// Every configuration key. All optional here: what is not given keeps its default.
#[derive(Debug, Clone, Default, clap::Args, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Directory of the RocksDB store; created if missing. [default: ./data]
    #[arg(long, env = "ONECARD_DATA_DIR")]
    pub data_dir: Option<PathBuf>,

    /// Address the terminal front door listens on; port 0 picks a free one (printed on
    /// the ready line). [default: 127.0.0.1:7700]
    #[arg(long, env = "ONECARD_TERMINAL_LISTEN")]
    pub terminal_listen: Option<SocketAddr>,

    /// Address of the admin and finance HTTP API, /metrics and the health checks.
    /// [default: 127.0.0.1:7780]
    #[arg(long, env = "ONECARD_ADMIN_LISTEN")]
    pub admin_listen: Option<SocketAddr>,

    /// Shards of a new store (an existing store keeps its own). [default: the number
    /// of cores]
    #[arg(long, env = "ONECARD_SHARDS")]
    pub shards: Option<usize>,

    /// The card centre's time zone, minutes east of UTC. [default: 480, China]
    #[arg(long, env = "ONECARD_UTC_OFFSET_MINUTES", allow_hyphen_values = true)]
    pub utc_offset_minutes: Option<i32>,

    /// Local time the business day turns, HH:MM. [default: 00:00]
    #[arg(long, env = "ONECARD_CUTOVER")]
    pub cutover: Option<String>,

    /// Where breakfast, lunch, dinner and night begin, for the settlement's meal
    /// breakdown. [default: 05:00,10:30,16:00,20:00]
    #[arg(long, env = "ONECARD_MEAL_HOURS")]
    pub meal_hours: Option<String>,

    /// Milliseconds between checkpoints of changed balances. A restart after a crash
    /// replays at most this much journal; each checkpoint writes one merge per
    /// account changed since the last. [default: 1000]
    #[arg(long, env = "ONECARD_CHECKPOINT_INTERVAL_MS")]
    pub checkpoint_interval_ms: Option<u64>,

    /// Milliseconds between writes of the card statement index; a statement reads at
    /// most this much journal beside it. [default: 200]
    #[arg(long, env = "ONECARD_INDEX_INTERVAL_MS")]
    pub index_interval_ms: Option<u64>,

    /// Settle each date and write its files as soon as the day turns.
    /// [default: true]
    #[arg(long, env = "ONECARD_AUTO_SETTLE", num_args = 0..=1, default_missing_value = "true")]
    pub auto_settle: Option<bool>,

    /// The term ends (学期末), YYYY-MM-DD, comma-separated: on each, serve applies for
    /// the expiry (清零) of every restricted purse, which runs once approved.
    /// [default: none]
    #[arg(long, env = "ONECARD_TERM_ENDS")]
    pub term_ends: Option<String>,

    /// Directory of workflow definitions, one `<name>.toml` each, loaded beside the
    /// built-in ones. [default: <data_dir>/workflows]
    #[arg(long, env = "ONECARD_WORKFLOWS_DIR")]
    pub workflows_dir: Option<PathBuf>,

    /// Directory of top-up channel statement adapters, one `<name>.toml` each.
    /// [default: <data_dir>/channel-adapters]
    #[arg(long, env = "ONECARD_CHANNEL_ADAPTERS_DIR")]
    pub channel_adapters_dir: Option<PathBuf>,

    /// Directory the settlement files are written to, one folder per date.
    /// [default: <data_dir>/settlements]
    #[arg(long, env = "ONECARD_SETTLEMENT_DIR")]
    pub settlement_dir: Option<PathBuf>,

    /// Directory of the store's backups (RocksDB's backup layout).
    /// [default: <data_dir>/backups]
    #[arg(long, env = "ONECARD_BACKUP_DIR")]
    pub backup_dir: Option<PathBuf>,

    /// Directory every backup is copied to after it is taken: another disk, or a
    /// mount of another machine. [default: none]
    #[arg(long, env = "ONECARD_BACKUP_OFFSITE_DIR")]
    pub backup_offsite_dir: Option<PathBuf>,

    /// Backups kept, at least 15 (the card centre keeps 15 days). [default: 15]
    #[arg(long, env = "ONECARD_BACKUP_KEEP")]
    pub backup_keep: Option<usize>,

    /// Local time of serve's daily backup, HH:MM, or `off`. A server that starts
    /// after it with no backup yet that day backs up at once. [default: 03:00]
    #[arg(long, env = "ONECARD_BACKUP_AT")]
    pub backup_at: Option<String>,

    /// Terminal connections served at once; more wait in the kernel backlog.
    /// [default: 20000]
    #[arg(long, env = "ONECARD_TERMINAL_CONNECTIONS_MAX")]
    pub terminal_connections_max: Option<usize>,

    /// Seconds a terminal connection may stay silent before it is closed. [default: 90]
    #[arg(long, env = "ONECARD_TERMINAL_IDLE_TIMEOUT_SECS")]
    pub terminal_idle_timeout_secs: Option<u64>,

    /// Seconds a started frame may take to arrive whole. [default: 10]
    #[arg(long, env = "ONECARD_FRAME_READ_TIMEOUT_SECS")]
    pub frame_read_timeout_secs: Option<u64>,

    /// Seconds an answer may take to be written before the connection is closed (a
    /// terminal that does not read). [default: 10]
    #[arg(long, env = "ONECARD_TERMINAL_WRITE_TIMEOUT_SECS")]
    pub terminal_write_timeout_secs: Option<u64>,

    /// A terminal not heard from for this many seconds is listed as offline.
    /// [default: 120]
    #[arg(long, env = "ONECARD_TERMINAL_OFFLINE_AFTER_SECS")]
    pub terminal_offline_after_secs: Option<u64>,

    /// Seconds an operator's bearer token lives. [default: 28800, 8 hours]
    #[arg(long, env = "ONECARD_TOKEN_TTL_SECS")]
    pub token_ttl_secs: Option<u64>,

    /// Days after which an operator must change their password before logging in
    /// again. [default: 90]
    #[arg(long, env = "ONECARD_PASSWORD_MAX_AGE_DAYS")]
    pub password_max_age_days: Option<u64>,

    /// Wrong passwords in a row that lock an operator. [default: 5]
    #[arg(long, env = "ONECARD_LOGIN_FAILURES_MAX")]
    pub login_failures_max: Option<u32>,

    /// Seconds a locked operator stays locked (an admin may unlock sooner).
    /// [default: 900]
    #[arg(long, env = "ONECARD_LOCKOUT_SECS")]
    pub lockout_secs: Option<u64>,

    /// File holding the master key that seals terminal keys at rest, 64 hex digits,
    /// mode 600 (or 640 with the service's group); created at the first start if
    /// missing. Keep a copy apart from the data and the backups. The environment
    /// variable ONECARD_MASTER_KEY, holding the key itself, beats it.
    /// [default: <data_dir>/master.key]
    #[arg(long, env = "ONECARD_MASTER_KEY_FILE")]
    pub master_key_file: Option<PathBuf>,

    /// A bearer token Prometheus presents to scrape /metrics. Unset: /metrics is open,
    /// like the health checks (bind the admin port to the management network).
    #[arg(long, env = "ONECARD_METRICS_TOKEN")]
    pub metrics_token: Option<String>,

    /// Where notices of applications' progress are posted as JSON (the campus's
    /// enterprise WeChat or mail gateway on the campus network),
    /// `http://host:port/path`: each at least once, with its id to tell a repeat,
    /// retried with backoff. [default: none]
    #[arg(long, env = "ONECARD_NOTICE_WEBHOOK")]
    pub notice_webhook: Option<String>,

    /// Log as JSON lines instead of human-readable text. [default: false]
    #[arg(long, env = "ONECARD_LOG_JSON", num_args = 0..=1, default_missing_value = "true")]
    pub log_json: Option<bool>,

    /// Create the demo campus on an empty store (50,000 cards, 300 merchants, 1,000
    /// terminals) and serve it. [default: false]
    #[arg(long, env = "ONECARD_DEMO", num_args = 0..=1, default_missing_value = "true")]
    pub demo: Option<bool>,

    /// Cards in the demo campus, 1 to 2,000,000. [default: 50000]
    #[arg(long, env = "ONECARD_DEMO_CARDS")]
    pub demo_cards: Option<u64>,

    /// This node's cell: the `[cluster]` section of the config file (no flag or
    /// environment variable). Absent, `serve` is a single node. docs/OPERATIONS.md,
    /// "A cell of three nodes".
    #[arg(skip)]
    #[serde(default)]
    pub cluster: Option<ClusterSettings>,
}

/// The `[cluster]` section: which cell this node belongs to and every member's
/// addresses. Every node of a cell has the same `cell` and `members`, and its own
/// `node_id`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterSettings {
    /// The cell's name (a campus).
    pub cell: String,
    /// This node's id among the members.
    pub node_id: u64,
    /// Where this node listens for its peers, when that is not the cluster address
    /// its own entry in `members` gives (a node behind a proxy or a NAT: the entry
    /// names the address the others reach, this the one the node binds).
    #[serde(default)]
    pub cluster_listen: Option<SocketAddr>,
    /// Every member, this node included.
    pub members: Vec<MemberSettings>,
}

/// One member of a cell and its three addresses.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemberSettings {
    /// The member's id: never reused for another machine.
    pub id: u64,
    /// Its cluster-link address (the other nodes connect here).
    pub cluster: SocketAddr,
    /// Its terminal port, as terminals reach it (what a redirect names).
    pub terminals: SocketAddr,
    /// Its admin API, as operators reach it (what a refused write names).
    pub admin: SocketAddr,
}

impl MemberSettings {
    /// The member's addresses as the cell's membership carries them.
    #[must_use]
    pub fn address(&self) -> onecard_cluster::NodeAddress {
        onecard_cluster::NodeAddress {
            cluster: self.cluster.to_string(),
            terminals: self.terminals.to_string(),
            admin: self.admin.to_string(),
        }
    }
}

/// A cell's resolved settings.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// The cell's name.
    pub cell: String,
    /// This node's id.
    pub node_id: u64,
    /// Where this node listens on the cluster link: its `cluster_listen`, or else its
    /// own entry's cluster address.
    pub cluster_listen: SocketAddr,
    /// Every member by id.
    pub members: std::collections::BTreeMap<u64, MemberSettings>,
}

impl ClusterConfig {
    /// Checks the section: a name, at least one member, ids and addresses unique, this
    /// node among them.
    ///
    /// # Errors
    /// What is wrong with it.
    pub fn resolve(settings: ClusterSettings) -> anyhow::Result<Self> {
        anyhow::ensure!(
            !settings.cell.is_empty()
                && settings.cell.len() <= 64
                && settings
                    .cell
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
            "cluster.cell must be 1 to 64 letters, digits, '-' or '_'"
        );
        let mut members = std::collections::BTreeMap::new();
        let mut addresses = std::collections::BTreeSet::new();
        for member in settings.members {
            anyhow::ensure!(member.id > 0, "cluster.members: a node id is at least 1");
            for address in [member.cluster, member.terminals, member.admin] {
                anyhow::ensure!(
                    addresses.insert(address),
                    "cluster.members: the address {address} is given twice"
                );
            }
            let id = member.id;
            anyhow::ensure!(
                members.insert(id, member).is_none(),
                "cluster.members: node {id} is given twice"
            );
        }
        let me = members.get(&settings.node_id).with_context(|| {
            format!("cluster.node_id {} is not among cluster.members", settings.node_id)
        })?;
        let cluster_listen = settings.cluster_listen.unwrap_or(me.cluster);
        Ok(Self { cell: settings.cell, node_id: settings.node_id, cluster_listen, members })
    }

    /// This node's own entry.
    #[must_use]
    pub fn me(&self) -> &MemberSettings {
        &self.members[&self.node_id]
    }
}

/// Overlays `top` on `base`: every key `top` sets wins.
macro_rules! overlay {
    ($base:expr, $top:expr, $($field:ident),+ $(,)?) => {
        Settings { $($field: $top.$field.or($base.$field)),+ }
    };
}

impl Settings {
    /// `self` with every key `top` sets replaced.
    #[must_use]
    pub fn overlaid_with(self, top: Self) -> Self {
        overlay!(
            self,
            top,
            data_dir,
            terminal_listen,
            admin_listen,
            shards,
            utc_offset_minutes,
            cutover,
            meal_hours,
            checkpoint_interval_ms,
            index_interval_ms,
            auto_settle,
            channel_adapters_dir,
            term_ends,
            workflows_dir,
            settlement_dir,
            backup_dir,
            backup_offsite_dir,
            backup_keep,
            backup_at,
            terminal_connections_max,
            terminal_idle_timeout_secs,
            frame_read_timeout_secs,
            terminal_write_timeout_secs,
            terminal_offline_after_secs,
            token_ttl_secs,
            password_max_age_days,
            login_failures_max,
            lockout_secs,
            master_key_file,
            metrics_token,
            notice_webhook,
            log_json,
            demo,
            demo_cards,
            cluster,
        )
    }

    /// Reads a TOML file of settings.
    ///
    /// # Errors
    /// If the file cannot be read, is not TOML, or names an unknown key.
    pub fn from_file(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the config file {}", path.display()))?;
        toml::from_str(&text).with_context(|| format!("parsing the config file {}", path.display()))
    }
}

/// How operators' logins and tokens behave.
#[derive(Debug, Clone)]
pub struct AuthConfig {
    /// How long a bearer token lives.
    pub token_ttl: Duration,
    /// How old a password may get before it must be changed.
    pub password_max_age: Duration,
    /// Wrong passwords in a row that lock an operator.
    pub login_failures_max: u32,
    /// How long a lock lasts.
    pub lockout: Duration,
}

/// The resolved configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The store's directory.
    pub data_dir: PathBuf,
    /// Where settlement files are written, one folder per date.
    pub settlement_dir: PathBuf,
    /// Settle each date as soon as the day turns.
    pub auto_settle: bool,
    /// Where channel statement adapters are.
    pub channel_adapters_dir: PathBuf,
    /// Where workflow definitions beside the built-in ones are.
    pub workflows_dir: PathBuf,
    /// The term ends, when the restricted purses' expiry is applied for.
    pub term_ends: Vec<onecard_engine::BusinessDate>,
    /// Backups: where, how many, when.
    pub backup: BackupConfig,
    /// The terminal port.
    pub terminal_listen: SocketAddr,
    /// The admin port.
    pub admin_listen: SocketAddr,
    /// The ledger's settings.
    pub ledger: LedgerConfig,
    /// The front door's limits.
    pub front_door: FrontDoorConfig,
    /// When a terminal counts as offline.
    pub terminal_offline_after: Duration,
    /// Operators and tokens.
    pub auth: AuthConfig,
    /// Where the ledger's master key came from.
    pub master_key_source: crate::master_key::Source,
    /// The token /metrics asks for, if any.
    pub metrics_token: Option<String>,
    /// Where notices are posted, if anywhere.
    pub notice_webhook: Option<String>,
    /// JSON logs.
    pub log_json: bool,
    /// Build the demo campus on an empty store.
    pub demo: bool,
    /// Cards in the demo campus.
    pub demo_cards: u64,
    /// The cell this node belongs to; `None` for a single node.
    pub cluster: Option<ClusterConfig>,
}

impl Config {
    /// Where the store is: the data directory itself for a single node, its `store/`
    /// for a node of a cell (beside `raft-log/` and `snapshots/`).
    #[must_use]
    pub fn store_dir(&self) -> PathBuf {
        match self.cluster {
            Some(_) => self.data_dir.join("store"),
            None => self.data_dir.clone(),
        }
    }
}

const fn secs(value: u64) -> Duration {
    Duration::from_secs(value)
}

/// Parses `HH:MM` into minutes after midnight.
fn cutover_minutes(text: &str) -> anyhow::Result<u32> {
    let parsed = text.split_once(':').and_then(|(hours, minutes)| {
        let hours: u32 = hours.parse().ok()?;
        let minutes: u32 = minutes.parse().ok()?;
        (hours < 24 && minutes < 60 && text.len() == 5).then_some(hours * 60 + minutes)
    });
    parsed.with_context(|| format!("{text:?} is not a time of day as HH:MM"))
}

impl Config {
    /// Resolves settings against the defaults, checking each value.
    ///
    /// # Errors
    /// If a value is out of range.
    pub fn resolve(settings: Settings) -> anyhow::Result<Self> {
        let defaults = LedgerConfig::default();
        let utc_offset_minutes = settings.utc_offset_minutes.unwrap_or(defaults.utc_offset_minutes);
        anyhow::ensure!(
            (-14 * 60..=14 * 60).contains(&utc_offset_minutes),
            "utc_offset_minutes {utc_offset_minutes} is not a time zone"
        );
        let shards = settings.shards.unwrap_or(defaults.shards);
        anyhow::ensure!(
            (1..=onecard_engine::limits::SHARDS_MAX).contains(&shards),
            "shards must be 1 to {}",
            onecard_engine::limits::SHARDS_MAX
        );
        let front = FrontDoorConfig::default();
        let front_door = FrontDoorConfig {
            connections_max: settings.terminal_connections_max.unwrap_or(front.connections_max),
            idle_timeout: settings.terminal_idle_timeout_secs.map_or(front.idle_timeout, secs),
            frame_read_timeout: settings
                .frame_read_timeout_secs
                .map_or(front.frame_read_timeout, secs),
            write_timeout: settings.terminal_write_timeout_secs.map_or(front.write_timeout, secs),
            drain_timeout: front.drain_timeout,
        };
        anyhow::ensure!(
            (1..=onecard_engine::limits::TERMINAL_CONNECTIONS_MAX)
                .contains(&front_door.connections_max),
            "terminal_connections_max must be 1 to {}",
            onecard_engine::limits::TERMINAL_CONNECTIONS_MAX
        );
        anyhow::ensure!(
            !front_door.frame_read_timeout.is_zero()
                && front_door.frame_read_timeout <= front_door.idle_timeout,
            "frame_read_timeout_secs must be at least 1 and at most terminal_idle_timeout_secs"
        );
        anyhow::ensure!(
            !front_door.write_timeout.is_zero(),
            "terminal_write_timeout_secs must be at least 1"
        );
        let auth = AuthConfig {
            token_ttl: secs(settings.token_ttl_secs.unwrap_or(8 * 3600)),
            password_max_age: secs(settings.password_max_age_days.unwrap_or(90) * 86_400),
            login_failures_max: settings.login_failures_max.unwrap_or(5),
            lockout: secs(settings.lockout_secs.unwrap_or(900)),
        };
        anyhow::ensure!(!auth.token_ttl.is_zero(), "token_ttl_secs must be at least 1");
        anyhow::ensure!(auth.login_failures_max >= 1, "login_failures_max must be at least 1");
        if let Some(url) = &settings.notice_webhook {
            anyhow::ensure!(
                url.starts_with("http://") && url.len() > "http://".len(),
                "notice_webhook must be an http:// address on the campus network, not {url:?}"
            );
        }
        if let Some(token) = &settings.metrics_token {
            anyhow::ensure!(token.len() >= 16, "metrics_token must be at least 16 characters");
        }
        let demo_cards = settings.demo_cards.unwrap_or(crate::demo::DEMO_CARDS_DEFAULT);
        anyhow::ensure!(
            (1..=crate::demo::DEMO_CARDS_MAX).contains(&demo_cards),
            "demo_cards must be 1 to {}",
            crate::demo::DEMO_CARDS_MAX
        );
        let meal_hours = settings
            .meal_hours
            .as_deref()
            .map_or(Ok(defaults.meal_hours), MealHours::parse)
            .map_err(anyhow::Error::msg)?;
        let data_dir = settings.data_dir.unwrap_or_else(|| PathBuf::from("./data"));
        let term_ends = settings
            .term_ends
            .as_deref()
            .unwrap_or("")
            .split(',')
            .map(str::trim)
            .filter(|text| !text.is_empty())
            .map(|text| {
                crate::api::money::parse_business_date(text)
                    .map_err(|message| anyhow::anyhow!("term end: {message}"))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let master_key_file =
            settings.master_key_file.unwrap_or_else(|| data_dir.join("master.key"));
        let env_key = std::env::var(crate::master_key::MASTER_KEY_ENV).ok();
        let (master_key, master_key_source) =
            crate::master_key::resolve(env_key.as_deref(), &master_key_file)?;
        let cluster = settings.cluster.map(ClusterConfig::resolve).transpose()?;
        // A node of a cell listens where the members' table says it does.
        let (terminal_listen, admin_listen) = match &cluster {
            Some(cluster) => {
                let me = cluster.me();
                for (given, listed, key) in [
                    (settings.terminal_listen, me.terminals, "terminal_listen"),
                    (settings.admin_listen, me.admin, "admin_listen"),
                ] {
                    anyhow::ensure!(
                        given.is_none_or(|given| given == listed),
                        "{key} differs from this node's entry in cluster.members ({listed})"
                    );
                }
                (me.terminals, me.admin)
            }
            None => (
                settings
                    .terminal_listen
                    .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 7700))),
                settings.admin_listen.unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 7780))),
            ),
        };
        let backup_keep = settings.backup_keep.unwrap_or(BACKUPS_KEPT_MIN);
        anyhow::ensure!(
            backup_keep >= BACKUPS_KEPT_MIN,
            "backup_keep must be at least {BACKUPS_KEPT_MIN} (15 days of backups)"
        );
        let backup = BackupConfig {
            dir: settings.backup_dir.unwrap_or_else(|| data_dir.join("backups")),
            offsite_dir: settings.backup_offsite_dir,
            keep: backup_keep,
            daily_at_minutes: match settings.backup_at.as_deref() {
                Some("off") => None,
                Some(text) => Some(cutover_minutes(text)?),
                None => Some(3 * 60),
            },
        };
        Ok(Self {
            backup,
            settlement_dir: settings.settlement_dir.unwrap_or_else(|| data_dir.join("settlements")),
            auto_settle: settings.auto_settle.unwrap_or(true),
            channel_adapters_dir: settings
                .channel_adapters_dir
                .unwrap_or_else(|| data_dir.join("channel-adapters")),
            workflows_dir: settings.workflows_dir.unwrap_or_else(|| data_dir.join("workflows")),
            term_ends,
            data_dir,
            terminal_listen,
            admin_listen,
            ledger: LedgerConfig {
                shards,
                sync: true,
                utc_offset_minutes,
                cutover_minutes: settings.cutover.as_deref().map_or(Ok(0), cutover_minutes)?,
                clock: Clock::System,
                meal_hours,
                master_key,
                checkpoint_interval_ms: settings
                    .checkpoint_interval_ms
                    .unwrap_or(defaults.checkpoint_interval_ms)
                    .clamp(1, 3_600_000),
                index_interval_ms: settings
                    .index_interval_ms
                    .unwrap_or(defaults.index_interval_ms)
                    .clamp(1, 3_600_000),
            },
            master_key_source,
            front_door,
            terminal_offline_after: secs(settings.terminal_offline_after_secs.unwrap_or(120)),
            auth,
            metrics_token: settings.metrics_token,
            notice_webhook: settings.notice_webhook,
            log_json: settings.log_json.unwrap_or(false),
            demo: settings.demo.unwrap_or(false),
            demo_cards,
            cluster,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flag_beats_the_file_and_the_file_beats_the_default() {
        let file: Settings =
            toml::from_str("token_ttl_secs = 60\nshards = 3\ncutover = \"02:30\"").expect("toml");
        let flags = Settings { shards: Some(4), ..Settings::default() };
        let config = Config::resolve(file.overlaid_with(flags)).expect("valid");
        assert_eq!(config.ledger.shards, 4);
        assert_eq!(config.auth.token_ttl, Duration::from_secs(60));
        assert_eq!(config.ledger.cutover_minutes, 150);
        assert_eq!(config.auth.login_failures_max, 5);
    }

    #[test]
    fn an_unknown_key_or_a_bad_value_is_refused() {
        assert!(toml::from_str::<Settings>("no_such_key = 1").is_err());
        assert!(toml::from_str::<Settings>("shards = \"two\"").is_err());
        let bad = |settings: Settings| Config::resolve(settings).is_err();
        assert!(bad(Settings { shards: Some(0), ..Settings::default() }));
        assert!(bad(Settings { cutover: Some("25:00".into()), ..Settings::default() }));
        assert!(bad(Settings { cutover: Some("2:00".into()), ..Settings::default() }));
        assert!(bad(Settings { token_ttl_secs: Some(0), ..Settings::default() }));
        assert!(bad(Settings { metrics_token: Some("short".into()), ..Settings::default() }));
        assert!(bad(Settings { backup_keep: Some(14), ..Settings::default() }));
        assert!(bad(Settings { backup_at: Some("3am".into()), ..Settings::default() }));
    }
}
