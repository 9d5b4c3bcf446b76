//! Where the master key that seals terminal keys comes from.
//!
//! In order: the `ONECARD_MASTER_KEY` environment variable (64 hex digits, for a
//! secrets manager that injects it), else `master_key_file` (default
//! `<data_dir>/master.key`). A missing file is created at the first start, 0600, with
//! a warning to keep a copy apart: the key is never in the store or its backups, so a
//! restore needs it. The key itself is never logged, printed or returned.
//!
//! `onecard master-key rotate` ([`rotate`]) seals every secret under a new key. It
//! writes the new key beside the file first (`<file>.new`), then the store in one
//! synced write, then keeps the old key as `<file>.retired-<unix seconds>` (backups
//! taken before the rotation still need it) and moves the new one into place. Run
//! again after an interruption, it finds `<file>.new`, asks the store which key it
//! opens with, and finishes or starts over.

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use onecard_engine::rekey;
use onecard_engine::sealing::MasterKey;
use onecard_engine::store::Store;

/// The environment variable that carries the key itself.
pub const MASTER_KEY_ENV: &str = "ONECARD_MASTER_KEY";

/// Where the key in force came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// `ONECARD_MASTER_KEY`.
    Environment,
    /// Read from this file.
    File(PathBuf),
    /// New: this file did not exist, and is written when a command first opens the
    /// ledger (`create_if_new`).
    New(PathBuf),
}

/// Resolves the master key from `env_value` (the variable's value, if set) or `file`.
///
/// # Errors
/// If the variable or the file holds something other than 64 hex digits, the file
/// cannot be read, or others may read it (its mode lets anyone beyond owner and group
/// in). The messages never repeat the key.
pub fn resolve(env_value: Option<&str>, file: &Path) -> anyhow::Result<(MasterKey, Source)> {
    if let Some(text) = env_value {
        let key = MasterKey::from_hex(text).context(MASTER_KEY_ENV)?;
        return Ok((key, Source::Environment));
    }
    match std::fs::metadata(file) {
        Ok(metadata) => {
            let mode = metadata.permissions().mode();
            anyhow::ensure!(
                mode & 0o007 == 0,
                "the master key file {} may be read by anyone (mode {:o}): chmod 600 it, or 640 \
                 with the service's group",
                file.display(),
                mode & 0o777
            );
            let text = std::fs::read_to_string(file)
                .with_context(|| format!("reading the master key file {}", file.display()))?;
            let key = MasterKey::from_hex(&text)
                .with_context(|| format!("the master key file {}", file.display()))?;
            Ok((key, Source::File(file.to_owned())))
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            Ok((MasterKey::generate()?, Source::New(file.to_owned())))
        }
        Err(error) => {
            Err(error).with_context(|| format!("reading the master key file {}", file.display()))
        }
    }
}

/// Writes a new key's file (0600, its directory created) before a command opens the
/// ledger with it; nothing for a key that was read. Returns the file written, which
/// the caller removes if the ledger then refuses the key.
///
/// # Errors
/// If the file cannot be written.
pub fn create_if_new(key: &MasterKey, source: &Source) -> anyhow::Result<Option<PathBuf>> {
    let Source::New(path) = source else { return Ok(None) };
    if let Some(dir) = path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    crate::demo::write_private(path, format!("{}\n", key.to_hex()).as_bytes())?;
    tracing::warn!(
        file = %path.display(),
        "created the master key that seals terminal keys; keep a copy apart from the data \
         directory and the backups: a restore cannot open its terminals without it"
    );
    Ok(Some(path.clone()))
}

/// What `rotate` did.
#[derive(Debug)]
pub struct Rotated {
    /// Terminal keys sealed under the new key; `None` when an interrupted rotation was
    /// found written and only its files were finished.
    pub terminal_keys: Option<usize>,
    /// Where the new key is now.
    pub new_key_file: PathBuf,
    /// Where the old key was kept, when it came from a file.
    pub retired_key_file: Option<PathBuf>,
}

/// `<file>` with `suffix` appended to its name.
fn beside(file: &Path, suffix: &str) -> PathBuf {
    let mut name = file.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// Seals every terminal key and the journal chain key of the store in `data_dir`
/// under a new master key (the server must be stopped). The old key is `old` from
/// `source`; the new key goes to `new_key_file`, which defaults to the old key's file
/// and must be given when the old key came from the environment.
///
/// # Errors
/// If there is no old key to rotate, the store cannot be opened (a server running on
/// it), the old key does not open every secret (nothing is written), or a file
/// cannot be written. The messages never carry a key.
pub fn rotate(
    data_dir: &Path,
    shards: usize,
    old: &MasterKey,
    source: &Source,
    new_key_file: Option<&Path>,
) -> anyhow::Result<Rotated> {
    let (target, old_file) = match (source, new_key_file) {
        // Interrupted after the old key was retired: the new one waits beside it.
        (Source::New(file), None) if beside(file, ".new").exists() => (file.clone(), None),
        (Source::New(file), _) => anyhow::bail!(
            "there is no master key to rotate: neither {MASTER_KEY_ENV} nor {} is there",
            file.display()
        ),
        (Source::Environment, None) => anyhow::bail!(
            "the master key comes from {MASTER_KEY_ENV}: give --new-key-file for the new \
             one, and put it in the secrets manager once the rotation is done"
        ),
        (Source::Environment, Some(new)) => (new.to_owned(), None),
        (Source::File(file), new) => {
            (new.map_or_else(|| file.clone(), Path::to_owned), Some(file.clone()))
        }
    };
    anyhow::ensure!(
        data_dir.join("CURRENT").is_file(),
        "there is no ledger in {}",
        data_dir.display()
    );
    let store = Store::open(data_dir, shards).with_context(|| {
        format!("opening the ledger in {} (stop `onecard serve` first)", data_dir.display())
    })?;
    let pending = beside(&target, ".new");
    if pending.exists() {
        let (new, _) = resolve(None, &pending)?;
        match rekey::opens_with(&store, &new) {
            Ok(()) => {
                drop(store);
                let retired = retire(old_file.as_deref(), &target)?;
                install(&pending, &target)?;
                return Ok(Rotated {
                    terminal_keys: None,
                    new_key_file: target,
                    retired_key_file: retired,
                });
            }
            // The key beside the file opens nothing here: an attempt that stopped
            // before the store's write. It is thrown away only once the key in force is
            // proven to open the store; otherwise both stay for the operator.
            Err(onecard_engine::LedgerError::Sealing(_)) => {
                rekey::opens_with(&store, old).with_context(|| {
                    format!(
                        "neither the master key in force nor {} opens this store; both are \
                         left as they are",
                        pending.display()
                    )
                })?;
                std::fs::remove_file(&pending)
                    .with_context(|| format!("removing {}", pending.display()))?;
            }
            Err(error) => {
                return Err(error).context(format!(
                    "checking {} against the store; both keys are left as they are",
                    pending.display()
                ));
            }
        }
    }
    rekey::opens_with(&store, old).context("the master key in force does not open this store")?;
    let new = MasterKey::generate()?;
    if let Some(dir) = pending.parent().filter(|dir| !dir.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    crate::demo::write_private(&pending, format!("{}\n", new.to_hex()).as_bytes())?;
    sync_dir(&pending)?;
    // A failed write may still have reached the store (a failed sync), so the new key
    // is kept whatever happens: running the rotation again finds out which key opens
    // the store, and finishes or starts over.
    let rotation = rekey::rotate(&store, old, &new).with_context(|| {
        format!(
            "sealing under the new master key; the write may or may not have reached the \
             store, so the new key is kept in {}: run the rotation again once the cause is \
             fixed",
            pending.display()
        )
    })?;
    drop(store);
    let retired = retire(old_file.as_deref(), &target)?;
    install(&pending, &target)?;
    Ok(Rotated {
        terminal_keys: Some(rotation.terminal_keys),
        new_key_file: target,
        retired_key_file: retired,
    })
}

/// Keeps the old key's file as `<file>.retired-<unix seconds>` when the new key is to
/// take its place; backups taken before the rotation open with it alone.
fn retire(old_file: Option<&Path>, target: &Path) -> anyhow::Result<Option<PathBuf>> {
    let Some(old_file) = old_file else { return Ok(None) };
    if old_file != target || !old_file.exists() {
        return Ok(Some(old_file.to_owned()).filter(|file| file.exists()));
    }
    let seconds = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs());
    // Never over an earlier retired key (two rotations in one second).
    let retired = (0u32..)
        .map(|n| match n {
            0 => beside(old_file, &format!(".retired-{seconds}")),
            n => beside(old_file, &format!(".retired-{seconds}-{n}")),
        })
        .find(|path| !path.exists())
        .expect("a free name");
    std::fs::rename(old_file, &retired)
        .with_context(|| format!("keeping the old key as {}", retired.display()))?;
    Ok(Some(retired))
}

/// Syncs the directory holding `file`, so that its entry survives a power cut.
fn sync_dir(file: &Path) -> anyhow::Result<()> {
    if let Some(dir) = file.parent().filter(|dir| !dir.as_os_str().is_empty()) {
        std::fs::File::open(dir)
            .and_then(|dir| dir.sync_all())
            .with_context(|| format!("syncing {}", dir.display()))?;
    }
    Ok(())
}

/// Moves the new key's file into place and syncs its directory.
fn install(pending: &Path, target: &Path) -> anyhow::Result<()> {
    std::fs::rename(pending, target)
        .with_context(|| format!("moving {} to {}", pending.display(), target.display()))?;
    sync_dir(target)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("onecard-master-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    /// A store with one merchant and terminal, sealed under a key kept in
    /// `<dir>/master.key`.
    fn sealed_store(name: &str) -> (PathBuf, PathBuf, MasterKey) {
        let dir = scratch(name);
        let data = dir.join("data");
        let key = MasterKey::generate().expect("random");
        let config = onecard_engine::LedgerConfig {
            shards: 1,
            sync: false,
            master_key: key.clone(),
            ..onecard_engine::LedgerConfig::default()
        };
        let ledger = onecard_engine::Ledger::open(&data, config).expect("opens");
        let rate = rust_decimal::Decimal::new(1, 2);
        let canteen = ledger
            .create_merchant("一食堂", onecard_engine::directory::MerchantCategory::Canteen, rate)
            .expect("merchant");
        let terminal_key = onecard_protocol::TerminalKey::new([9; 32]);
        ledger.create_terminal(canteen.id, &terminal_key).expect("terminal");
        ledger.close();
        let file = dir.join("master.key");
        crate::demo::write_private(&file, key.to_hex().as_bytes()).expect("writes");
        (data, file, key)
    }

    fn key_in(file: &Path) -> String {
        std::fs::read_to_string(file).expect("reads").trim().to_owned()
    }

    #[test]
    fn a_rotation_interrupted_anywhere_is_finished_or_started_over_by_running_it_again() {
        // Stopped after the store's write, before the files moved.
        let (data, file, old) = sealed_store("rotate-written");
        let new = MasterKey::generate().expect("random");
        {
            let store = Store::open(&data, 1).expect("opens");
            rekey::rotate(&store, &old, &new).expect("rotates");
        }
        crate::demo::write_private(&beside(&file, ".new"), new.to_hex().as_bytes()).expect("w");
        let source = Source::File(file.clone());
        let done = rotate(&data, 1, &old, &source, None).expect("finishes");
        assert_eq!(done.terminal_keys, None, "nothing sealed twice");
        assert_eq!(key_in(&file), new.to_hex());
        assert_eq!(key_in(done.retired_key_file.as_deref().expect("kept")), old.to_hex());
        assert!(!beside(&file, ".new").exists());

        // Stopped after the old key was retired, before the new one moved in: the
        // key file is missing, so the settings see a new key.
        let newer = MasterKey::generate().expect("random");
        {
            let store = Store::open(&data, 1).expect("opens");
            rekey::rotate(&store, &new, &newer).expect("rotates");
        }
        std::fs::rename(&file, beside(&file, ".retired-1")).expect("retires");
        crate::demo::write_private(&beside(&file, ".new"), newer.to_hex().as_bytes()).expect("w");
        let (fresh, source) = resolve(None, &file).expect("resolves");
        assert_eq!(source, Source::New(file.clone()));
        let done = rotate(&data, 1, &fresh, &source, None).expect("finishes");
        assert_eq!((done.terminal_keys, key_in(&file)), (None, newer.to_hex()));

        // Stopped before the store's write: the key beside the file opens nothing, so
        // the rotation starts over from the key in force.
        let stale = MasterKey::generate().expect("random");
        crate::demo::write_private(&beside(&file, ".new"), stale.to_hex().as_bytes()).expect("w");
        let source = Source::File(file.clone());
        let done = rotate(&data, 1, &newer, &source, None).expect("rotates");
        assert_eq!(done.terminal_keys, Some(1));
        let installed = key_in(&file);
        assert!(installed != stale.to_hex() && installed != newer.to_hex());
        let installed = MasterKey::from_hex(&installed).expect("a key");
        let store = Store::open(&data, 1).expect("opens");
        assert!(rekey::opens_with(&store, &installed).is_ok());
        assert!(rekey::opens_with(&store, &newer).is_err());
        drop(store);

        // The key in the environment: the new one needs a file of its own.
        let error = rotate(&data, 1, &installed, &Source::Environment, None).expect_err("where");
        assert!(error.to_string().contains("--new-key-file"), "{error}");
        let _ = std::fs::remove_dir_all(data.parent().expect("scratch"));
    }

    #[test]
    fn the_environment_beats_the_file_and_a_missing_file_is_created_once() {
        let dir = scratch("order");
        let file = dir.join("master.key");
        let (first, source) = resolve(None, &file).expect("new");
        assert_eq!(source, Source::New(file.clone()));
        assert_eq!(create_if_new(&first, &source).expect("writes"), Some(file.clone()));
        let mode = std::fs::metadata(&file).expect("exists").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let (again, source) = resolve(None, &file).expect("reads");
        assert_eq!((again.to_hex(), source), (first.to_hex(), Source::File(file.clone())));
        let other = MasterKey::generate().expect("random").to_hex();
        let (from_env, source) = resolve(Some(&other), &file).expect("env");
        assert_eq!((from_env.to_hex(), source), (other, Source::Environment));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_bad_key_or_a_world_readable_file_is_refused_without_echoing_the_key() {
        let dir = scratch("refused");
        std::fs::create_dir_all(&dir).expect("dir");
        let file = dir.join("master.key");
        let error = resolve(Some("not-a-key"), &file).expect_err("bad env").to_string();
        assert!(error.contains(MASTER_KEY_ENV) && !error.contains("not-a-key"), "{error}");
        let key = MasterKey::generate().expect("random").to_hex();
        std::fs::write(&file, &key).expect("writes");
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let error = format!("{:#}", resolve(None, &file).expect_err("world-readable"));
        assert!(error.contains("chmod 600") && !error.contains(&key), "{error}");
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o640)).expect("chmod");
        assert!(resolve(None, &file).is_ok(), "group-readable is the service's group");
        std::fs::write(&file, "short").expect("writes");
        let error = format!("{:#}", resolve(None, &file).expect_err("not a key"));
        assert!(error.contains("64 hex digits"), "{error}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
