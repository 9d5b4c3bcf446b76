//! Backups of the store: RocksDB's backup engine, online and consistent across every
//! column family (shards, control, balances, index, audit, workflows), since the
//! backup copies the write-ahead log beside the tables rather than flushing each
//! family on its own. Each backup is kept in the backup directory and mirrored to the
//! offsite directory; the newest `keep` are kept (at least 15 days, the card centre's
//! rule). `serve` backs up once a day by itself; `onecard backup` lists, verifies and
//! restores.
//!
//! The backup directory holds RocksDB's layout: `shared/` (table files, shared
//! between backups), `private/<id>/` and `meta/<id>` (what a backup is). The mirror
//! copies the immutable files first and each backup's `meta` last, so an offsite copy
//! cut short never lists a backup it does not hold whole.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use onecard_engine::{BusinessDate, Ledger, LedgerConfig, VerifyReport};
use prometheus::{Gauge, IntCounterVec, Opts};
use rocksdb::backup::{BackupEngine, BackupEngineOptions, RestoreOptions};
use rocksdb::{DB, Env};
use serde::Serialize;

/// The fewest daily backups `keep` may be set to: the card centre keeps 15 days.
pub const BACKUPS_KEPT_MIN: usize = 15;

/// How often `serve` looks whether today's backup is due.
const SCHEDULE_CHECK_INTERVAL: Duration = Duration::from_secs(30);

/// Where backups go and how many stay.
#[derive(Debug, Clone)]
pub struct BackupConfig {
    /// The backup directory.
    pub dir: PathBuf,
    /// The second copy, on another disk or machine's mount.
    pub offsite_dir: Option<PathBuf>,
    /// Backups kept; older ones are purged after each new one.
    pub keep: usize,
    /// Local minutes after midnight of the daily backup; `None`: no daily backup.
    pub daily_at_minutes: Option<u32>,
}

/// One backup, as `backup list` and the API show it.
#[derive(Debug, Clone, Serialize)]
pub struct BackupInfo {
    /// Its id, counting up from 1.
    pub id: u32,
    /// When it was taken, unix seconds.
    pub timestamp_s: i64,
    /// Bytes it holds (shared files counted once per backup).
    pub size_bytes: u64,
    /// Files it names.
    pub files: u32,
    /// Whether the offsite directory holds it whole.
    pub offsite: bool,
}

/// A backup's time as the card centre reads it: local `YYYY-MM-DD HH:MM:SS`.
#[must_use]
pub fn time_text(timestamp_s: i64, utc_offset_minutes: i32) -> String {
    let local_s = timestamp_s + i64::from(utc_offset_minutes) * 60;
    let days = local_s.div_euclid(86_400);
    let seconds = local_s.rem_euclid(86_400);
    let date = BusinessDate::from_unix_days(days);
    format!("{date} {:02}:{:02}:{:02}", seconds / 3600, seconds / 60 % 60, seconds % 60)
}

fn engine(dir: &Path) -> anyhow::Result<BackupEngine> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("creating the backup directory {}", dir.display()))?;
    let env = Env::new().context("the RocksDB environment")?;
    BackupEngine::open(&BackupEngineOptions::new(dir)?, &env)
        .with_context(|| format!("opening the backups in {}", dir.display()))
}

/// The backups in `dir`, oldest first; `offsite` is checked against `offsite_dir`.
///
/// # Errors
/// If the directory cannot be read as a backup directory.
pub fn list(dir: &Path, offsite_dir: Option<&Path>) -> anyhow::Result<Vec<BackupInfo>> {
    let engine = engine(dir)?;
    let mut backups: Vec<BackupInfo> = engine
        .get_backup_info()
        .into_iter()
        .map(|info| BackupInfo {
            id: info.backup_id,
            timestamp_s: info.timestamp,
            size_bytes: info.size,
            files: info.num_files,
            offsite: offsite_dir.is_some_and(|offsite| {
                offsite.join("meta").join(info.backup_id.to_string()).exists()
            }),
        })
        .collect();
    backups.sort_by_key(|b| b.id);
    Ok(backups)
}

/// Takes a backup of the open store, purges all but the newest `keep`, and mirrors
/// the directory offsite.
///
/// # Errors
/// If RocksDB cannot back up or purge, or the mirror fails (the backup itself is
/// then kept, and the next mirror copies it).
pub fn create(db: &DB, config: &BackupConfig) -> anyhow::Result<BackupInfo> {
    let mut engine = engine(&config.dir)?;
    // No flush: the backup copies the live write-ahead log, so every column family is
    // taken at one moment, whatever each one's memtable holds.
    engine.create_new_backup_flush(db, false).context("taking the backup")?;
    engine.purge_old_backups(config.keep).context("purging old backups")?;
    drop(engine);
    if let Some(offsite) = &config.offsite_dir {
        mirror(&config.dir, offsite, config.keep)
            .with_context(|| format!("copying the backups to {}", offsite.display()))?;
    }
    list(&config.dir, config.offsite_dir.as_deref())?
        .pop()
        .context("the backup just taken is not listed")
}

/// Every file under `root`, as paths relative to it.
fn files_under(root: &Path) -> anyhow::Result<BTreeSet<PathBuf>> {
    let mut out = BTreeSet::new();
    let mut pending = vec![PathBuf::new()];
    while let Some(relative) = pending.pop() {
        let dir = root.join(&relative);
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => continue,
            Err(error) => return Err(error).with_context(|| format!("reading {}", dir.display())),
        };
        for entry in entries {
            let entry = entry?;
            let path = relative.join(entry.file_name());
            if entry.file_type()?.is_dir() {
                pending.push(path);
            } else {
                out.insert(path);
            }
        }
    }
    Ok(out)
}

fn is_meta(relative: &Path) -> bool {
    relative.starts_with("meta")
}

/// Copies into `to` every file of `from` it lacks (through a temporary name, synced),
/// each backup's `meta` last; then the offsite copy keeps its newest `keep` by its own
/// backup engine. It never deletes a file because `from` lacks it: a backup directory
/// replaced by an empty one (a restore, a new disk) must not empty the offsite copy.
/// A backup id offsite that names a different backup (the ids started again) is
/// refused: that directory needs an offsite directory of its own.
fn mirror(from: &Path, to: &Path, keep: usize) -> anyhow::Result<()> {
    let wanted = files_under(from)?;
    let held = files_under(to)?;
    for relative in wanted.iter().filter(|p| is_meta(p) && held.contains(*p)) {
        if std::fs::read(from.join(relative))? != std::fs::read(to.join(relative))? {
            anyhow::bail!(
                "{} already holds a different backup {}: the backup directory {} started \
                 again; give it its own offsite directory",
                to.display(),
                relative.display(),
                from.display()
            );
        }
    }
    let copy_order =
        wanted.iter().filter(|p| !is_meta(p)).chain(wanted.iter().filter(|p| is_meta(p)));
    for relative in copy_order {
        // Files never change once written, and a `meta` file held is the same one.
        if held.contains(relative) {
            continue;
        }
        let (source, target) = (from.join(relative), to.join(relative));
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let partial = target.with_extension("partial");
        std::fs::copy(&source, &partial)
            .with_context(|| format!("copying {}", source.display()))?;
        std::fs::File::open(&partial)?.sync_all()?;
        std::fs::rename(&partial, &target)?;
    }
    engine(to)?.purge_old_backups(keep).context("purging old offsite backups")?;
    Ok(())
}

/// Restores backup `id` (the newest when `None`) from `dir` into `to`, which must not
/// exist or be empty.
///
/// # Errors
/// If `to` holds anything, the backup does not exist, or RocksDB cannot restore it.
pub fn restore(dir: &Path, id: Option<u32>, to: &Path) -> anyhow::Result<u32> {
    if to.exists() {
        let mut entries =
            std::fs::read_dir(to).with_context(|| format!("reading {}", to.display()))?;
        anyhow::ensure!(
            entries.next().is_none(),
            "{} is not empty; restore into a new directory",
            to.display()
        );
    }
    let backups = list(dir, None)?;
    let id = match id {
        Some(id) => backups.iter().find(|b| b.id == id).map(|b| b.id),
        None => backups.last().map(|b| b.id),
    }
    .with_context(|| match id {
        Some(id) => format!("no backup {id} in {}", dir.display()),
        None => format!("no backups in {}", dir.display()),
    })?;
    let mut engine = engine(dir)?;
    engine
        .restore_from_backup(to, to, &RestoreOptions::default(), id)
        .with_context(|| format!("restoring backup {id} into {}", to.display()))?;
    Ok(id)
}

/// Checks backup `id`'s files against its record, restores it into a temporary
/// directory beside the backups, and proves the ledger's invariants on it.
///
/// # Errors
/// If the backup is damaged or missing, or cannot be restored or opened.
pub fn verify(
    dir: &Path,
    id: Option<u32>,
    ledger: &LedgerConfig,
) -> anyhow::Result<(u32, VerifyReport)> {
    // Beside the backup directory, not in it: a mirror must not copy it offsite.
    let scratch = PathBuf::from(format!("{}.verify-{}", dir.display(), std::process::id()));
    if scratch.exists() {
        std::fs::remove_dir_all(&scratch)?;
    }
    let result = (|| {
        let id = restore(dir, id, &scratch)?;
        engine(dir)?.verify_backup(id).with_context(|| format!("backup {id}'s files"))?;
        Ok((id, verify_restored(&scratch, ledger)?))
    })();
    let _ = std::fs::remove_dir_all(&scratch);
    result
}

/// Opens the ledger restored into `dir` and proves its invariants.
///
/// # Errors
/// If the ledger cannot be opened or read.
pub fn verify_restored(dir: &Path, ledger: &LedgerConfig) -> anyhow::Result<VerifyReport> {
    let restored = Ledger::open(dir, ledger.clone())
        .with_context(|| format!("opening the restored ledger in {}", dir.display()))?;
    let report = restored.verify().context("reading the restored ledger");
    restored.close();
    report
}

/// The backup metrics.
struct BackupMetrics {
    outcomes: IntCounterVec,
    last_success_s: Gauge,
    duration_s: Gauge,
}

impl BackupMetrics {
    fn new(registry: &prometheus::Registry) -> Self {
        let outcomes = IntCounterVec::new(
            Opts::new("onecard_backups_total", "Backups taken by serve, by outcome (ok, failed)."),
            &["outcome"],
        )
        .expect("valid metric");
        for outcome in ["ok", "failed"] {
            outcomes.with_label_values(&[outcome]).reset();
        }
        let last_success_s = Gauge::new(
            "onecard_backup_last_success_timestamp_seconds",
            "When the newest backup in the backup directory was taken, unix seconds (0: none).",
        )
        .expect("valid metric");
        let duration_s =
            Gauge::new("onecard_backup_duration_seconds", "How long the last backup took.")
                .expect("valid metric");
        registry.register(Box::new(outcomes.clone())).expect("unique metric");
        registry.register(Box::new(last_success_s.clone())).expect("unique metric");
        registry.register(Box::new(duration_s.clone())).expect("unique metric");
        Self { outcomes, last_success_s, duration_s }
    }
}

/// Backups inside `serve`: the daily one and those asked for through the API, one at
/// a time.
pub struct Backups {
    ledger: Arc<Ledger>,
    config: BackupConfig,
    metrics: BackupMetrics,
    running: Mutex<()>,
    last: Mutex<Option<Attempt>>,
}

/// The last backup this process tried, as the console shows it.
#[derive(Debug, Clone)]
pub struct Attempt {
    /// When it ended, ms since the epoch.
    pub at_ms: u64,
    /// The backup it took, or why it failed.
    pub outcome: Result<u32, String>,
}

impl Backups {
    /// Registers the metrics and reads the newest backup's time, so a restart neither
    /// looks stale nor backs up twice in a day.
    #[must_use]
    pub fn new(ledger: Arc<Ledger>, config: BackupConfig) -> Self {
        let metrics = BackupMetrics::new(ledger.metrics().registry());
        match list(&config.dir, None) {
            #[allow(clippy::cast_precision_loss, reason = "unix seconds fit in an f64")]
            Ok(backups) => {
                let newest = backups.last().map_or(0, |b| b.timestamp_s);
                metrics.last_success_s.set(newest as f64);
            }
            Err(error) => tracing::warn!(error = format!("{error:#}"), "reading the backups"),
        }
        Self { ledger, config, metrics, running: Mutex::new(()), last: Mutex::new(None) }
    }

    /// Where backups go.
    #[must_use]
    pub const fn config(&self) -> &BackupConfig {
        &self.config
    }

    /// The last backup this process tried (daily or asked for), if any.
    #[must_use]
    pub fn last_attempt(&self) -> Option<Attempt> {
        self.last.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Takes a backup now (waiting for one already running), counted in the metrics.
    ///
    /// # Errors
    /// As [`create`].
    pub fn create(&self) -> anyhow::Result<BackupInfo> {
        let _one_at_a_time = self.running.lock().unwrap_or_else(PoisonError::into_inner);
        let started = Instant::now();
        let outcome = create(self.ledger.store().db(), &self.config);
        self.metrics.duration_s.set(started.elapsed().as_secs_f64());
        match &outcome {
            Ok(info) => {
                self.metrics.outcomes.with_label_values(&["ok"]).inc();
                #[allow(clippy::cast_precision_loss, reason = "unix seconds fit in an f64")]
                self.metrics.last_success_s.set(info.timestamp_s as f64);
                tracing::info!(id = info.id, size_bytes = info.size_bytes, "backup taken");
            }
            Err(error) => {
                self.metrics.outcomes.with_label_values(&["failed"]).inc();
                tracing::error!(error = format!("{error:#}"), "backup failed");
            }
        }
        let attempt = Attempt {
            at_ms: onecard_engine::date::now_ms(),
            outcome: outcome.as_ref().map(|info| info.id).map_err(|error| format!("{error:#}")),
        };
        *self.last.lock().unwrap_or_else(PoisonError::into_inner) = Some(attempt);
        outcome
    }

    /// Whether today's daily backup is due at `now_ms`: the time of day has come and
    /// the newest backup was taken before it.
    fn due(&self, now_ms: u64) -> bool {
        let Some(at_minutes) = self.config.daily_at_minutes else { return false };
        let offset_ms = i64::from(self.ledger.config().utc_offset_minutes) * 60_000;
        let local_ms = i64::try_from(now_ms).unwrap_or(i64::MAX) + offset_ms;
        let day_ms = 86_400_000;
        let slot_ms = local_ms.div_euclid(day_ms) * day_ms + i64::from(at_minutes) * 60_000;
        if local_ms < slot_ms {
            return false;
        }
        #[allow(clippy::cast_possible_truncation, reason = "unix seconds")]
        let last_s = self.metrics.last_success_s.get() as i64;
        last_s * 1000 + offset_ms < slot_ms
    }
}

/// Runs the daily backup until `shutdown` turns true. A failed backup is retried at
/// the next check after an hour.
pub async fn run(backups: Arc<Backups>, mut shutdown: tokio::sync::watch::Receiver<bool>) {
    let mut interval = tokio::time::interval(SCHEDULE_CHECK_INTERVAL);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            _ = shutdown.wait_for(|stop| *stop) => return,
        }
        if !backups.due(onecard_engine::date::now_ms()) {
            continue;
        }
        let job = Arc::clone(&backups);
        if !matches!(tokio::task::spawn_blocking(move || job.create()).await, Ok(Ok(_))) {
            tokio::select! {
                () = tokio::time::sleep(Duration::from_secs(3600)) => {}
                _ = shutdown.wait_for(|stop| *stop) => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_emptied_backup_directory_never_empties_the_offsite_copy() {
        let root = std::env::temp_dir().join(format!("onecard-mirror-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let store = onecard_engine::store::Store::open(&root.join("data"), 1).expect("opens");
        let mut config = BackupConfig {
            dir: root.join("backups"),
            offsite_dir: Some(root.join("offsite")),
            keep: BACKUPS_KEPT_MIN,
            daily_at_minutes: None,
        };
        create(store.db(), &config).expect("backs up");
        create(store.db(), &config).expect("backs up");
        // The backup directory is replaced by an empty one: its first backup is id 1
        // again, which offsite already holds as another backup.
        config.dir = root.join("backups-new");
        let meta = store.cf(onecard_engine::store::CF_META);
        store.db().put_cf(meta, b"later", b"1").expect("writes");
        let error = create(store.db(), &config).expect_err("refused");
        assert!(format!("{error:#}").contains("started again"), "{error:#}");
        let offsite = list(&root.join("offsite"), None).expect("lists");
        assert_eq!(offsite.iter().map(|b| b.id).collect::<Vec<_>>(), [1, 2], "nothing lost");
        drop(store);
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn the_newest_kept_backups_stay_here_and_offsite_and_the_newest_restores() {
        let root = std::env::temp_dir().join(format!("onecard-retention-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let store = onecard_engine::store::Store::open(&root.join("data"), 1).expect("opens");
        let config = BackupConfig {
            dir: root.join("backups"),
            offsite_dir: Some(root.join("offsite")),
            keep: BACKUPS_KEPT_MIN,
            daily_at_minutes: None,
        };
        for day in 1..=17u32 {
            let meta = store.cf(onecard_engine::store::CF_META);
            store.db().put_cf(meta, b"day", day.to_be_bytes()).expect("writes");
            assert_eq!(create(store.db(), &config).expect("backs up").id, day);
        }
        let kept = list(&config.dir, config.offsite_dir.as_deref()).expect("lists");
        assert_eq!(kept.iter().map(|b| b.id).collect::<Vec<_>>(), (3..=17).collect::<Vec<_>>());
        assert!(kept.iter().all(|b| b.offsite), "every kept backup is offsite too");
        let offsite = list(&root.join("offsite"), None).expect("lists the copy");
        assert_eq!(offsite.len(), BACKUPS_KEPT_MIN);
        drop(store);
        let restored = root.join("restored");
        assert_eq!(restore(&root.join("offsite"), Some(9), &restored).expect("restores"), 9);
        let store = onecard_engine::store::Store::open(&restored, 1).expect("opens the copy");
        let meta = store.cf(onecard_engine::store::CF_META);
        assert_eq!(
            store.db().get_cf(meta, b"day").expect("reads"),
            Some(9u32.to_be_bytes().to_vec())
        );
        assert!(restore(&config.dir, Some(1), &root.join("gone")).is_err(), "purged");
        drop(store);
        let _ = std::fs::remove_dir_all(&root);
    }
}
