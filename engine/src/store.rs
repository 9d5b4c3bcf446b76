//! The RocksDB store under the engine.
//!
//! One database per node, in the data directory. Its column families are the engine's
//! keyspaces; this module opens them and records the store's format version, so that a
//! binary never reads a store laid out by an incompatible one.

use std::path::{Path, PathBuf};

use rocksdb::{ColumnFamilyDescriptor, DB, Options};

/// The store layout this build reads and writes.
pub const FORMAT_VERSION: u32 = 1;

/// Column family of node-wide metadata: format version, configuration fingerprints.
pub const CF_META: &str = "meta";

const KEY_FORMAT_VERSION: &[u8] = b"format_version";

/// Why the store cannot be opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    /// RocksDB refused: the directory is locked by another process, unreadable, or
    /// corrupt.
    #[error("cannot open the store in {path}: {source}")]
    Rocks {
        /// The data directory.
        path: PathBuf,
        /// What RocksDB said.
        source: rocksdb::Error,
    },
    /// The store was written by a build with another layout.
    #[error("the store in {path} has format version {found}; this build reads {FORMAT_VERSION}")]
    FormatVersion {
        /// The data directory.
        path: PathBuf,
        /// The version recorded in the store.
        found: u32,
    },
    /// The recorded format version is not a 4-byte integer.
    #[error("the store in {path} has an unreadable format version")]
    CorruptMeta {
        /// The data directory.
        path: PathBuf,
    },
}

/// An open store.
pub struct Store {
    db: DB,
    path: PathBuf,
}

impl Store {
    /// Opens the store in `path`, creating it if the directory is empty.
    ///
    /// # Errors
    /// [`OpenError`] if RocksDB cannot open it or it has another format version.
    pub fn open(path: &Path) -> Result<Self, OpenError> {
        let rocks = |source| OpenError::Rocks { path: path.to_owned(), source };
        let mut options = Options::default();
        options.create_if_missing(true);
        options.create_missing_column_families(true);
        options.set_paranoid_checks(true);
        let families = [ColumnFamilyDescriptor::new(CF_META, Options::default())];
        let db = DB::open_cf_descriptors(&options, path, families).map_err(rocks)?;
        let meta = db.cf_handle(CF_META).expect("opened with the meta column family");
        match db.get_cf(&meta, KEY_FORMAT_VERSION).map_err(rocks)? {
            None => {
                let mut write = rocksdb::WriteOptions::default();
                write.set_sync(true);
                db.put_cf_opt(&meta, KEY_FORMAT_VERSION, FORMAT_VERSION.to_be_bytes(), &write)
                    .map_err(rocks)?;
            }
            Some(bytes) => {
                let found = <[u8; 4]>::try_from(bytes.as_slice())
                    .map(u32::from_be_bytes)
                    .map_err(|_| OpenError::CorruptMeta { path: path.to_owned() })?;
                if found != FORMAT_VERSION {
                    return Err(OpenError::FormatVersion { path: path.to_owned(), found });
                }
            }
        }
        Ok(Self { db, path: path.to_owned() })
    }

    /// The data directory.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The underlying database, for the engine's keyspaces.
    #[must_use]
    pub const fn db(&self) -> &DB {
        &self.db
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("onecard-store-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn a_new_store_records_its_format_and_reopens() {
        let dir = temp_dir("reopen");
        drop(Store::open(&dir).expect("creates"));
        let store = Store::open(&dir).expect("reopens");
        let meta = store.db().cf_handle(CF_META).expect("meta");
        let version = store.db().get_cf(&meta, KEY_FORMAT_VERSION).expect("reads");
        assert_eq!(version.as_deref(), Some(&FORMAT_VERSION.to_be_bytes()[..]));
        drop(store);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_store_of_another_format_is_refused() {
        let dir = temp_dir("format");
        {
            let store = Store::open(&dir).expect("creates");
            let meta = store.db().cf_handle(CF_META).expect("meta");
            store.db().put_cf(&meta, KEY_FORMAT_VERSION, 99u32.to_be_bytes()).expect("writes");
        }
        let error = Store::open(&dir).err().expect("refused");
        assert!(matches!(error, OpenError::FormatVersion { found: 99, .. }), "{error}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_store_open_in_another_handle_is_refused_not_shared() {
        let dir = temp_dir("lock");
        let _first = Store::open(&dir).expect("creates");
        let error = Store::open(&dir).err().expect("locked");
        assert!(matches!(error, OpenError::Rocks { .. }), "{error}");
        drop(_first);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
