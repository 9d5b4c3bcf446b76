//! Where the master key that seals terminal keys comes from.
//!
//! In order: the `ONECARD_MASTER_KEY` environment variable (64 hex digits, for a
//! secrets manager that injects it), else `master_key_file` (default
//! `<data_dir>/master.key`). A missing file is created at the first start, 0600, with
//! a warning to keep a copy apart: the key is never in the store or its backups, so a
//! restore needs it. The key itself is never logged, printed or returned.

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use onecard_engine::sealing::MasterKey;

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

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("onecard-master-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
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
