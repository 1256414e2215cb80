//! Error type of kabar-storage.

use std::path::{Path, PathBuf};

use thiserror::Error;

/// Everything that can go wrong opening or using a data directory or a
/// profile store. No variant carries secret material or message content.
#[derive(Debug, Error)]
pub enum StoreError {
    /// The passphrase does not unlock this data directory.
    #[error("wrong passphrase for this data directory")]
    WrongPassphrase,
    /// Another process (another kabar node) holds the profile database.
    #[error("{0} is in use by another kabar node; stop it first (`kabar node stop`)")]
    InUse(PathBuf),
    /// No data directory at the path (no header file).
    #[error("no Kabar data directory at {0}; create one with `kabar init`")]
    NoDataDir(PathBuf),
    /// A data directory already exists where one was to be created.
    #[error("a Kabar data directory already exists at {0}")]
    DataDirExists(PathBuf),
    /// The header file is unreadable, malformed or of an unknown version.
    #[error("data directory header {path} is invalid: {reason}")]
    BadHeader {
        /// Header path.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A profile name is empty, too long or has characters outside `[a-z0-9_-]`.
    #[error("invalid profile name {0:?}: use 1-32 characters a-z, 0-9, '-' or '_', starting with a letter")]
    InvalidProfileName(String),
    /// A profile of that name already exists.
    #[error("a profile named {0:?} already exists")]
    DuplicateProfile(String),
    /// No profile of that name.
    #[error("no profile named {0:?}")]
    UnknownProfile(String),
    /// The database was written by a newer Kabar (or is not ours).
    #[error("profile database has schema version {found}; this kabar supports up to {supported}: upgrade kabar")]
    UnsupportedSchema {
        /// Version in the file.
        found: u32,
        /// Newest version this build reads.
        supported: u32,
    },
    /// The database file is damaged (truncated, corrupted, or not a database).
    #[error("{}", corrupted_text(path, reason))]
    Corrupted {
        /// Database path (empty for in-memory stores).
        path: PathBuf,
        /// What redb or our checks found.
        reason: String,
    },
    /// A record failed authentication: it was modified, moved to another key
    /// or table, or belongs to another profile.
    #[error("record in table {table} failed authentication (tampered or from another profile)")]
    TamperedRecord {
        /// Table the record was read from.
        table: &'static str,
    },
    /// A record decrypted but did not decode.
    #[error("record in table {table} is malformed")]
    MalformedRecord {
        /// Table the record was read from.
        table: &'static str,
    },
    /// A value given to the store broke a rule (field too long, too many labels…).
    #[error("{0}")]
    Invalid(String),
    /// A business-only operation on a personal profile.
    #[error("profile {0:?} is a personal profile; this needs a business profile")]
    NotBusiness(String),
    /// No such record (contact, message, catalog item, label…).
    #[error("{0} not found")]
    NotFound(String),
    /// The one-time prekey was already used (or never existed).
    #[error("one-time prekey {0} already used")]
    PrekeyUsed(u32),
    /// The operating system's random source failed.
    #[error("random number generator failed")]
    Random,
    /// A file system error.
    #[error("{context}: {source}")]
    Io {
        /// What we were doing.
        context: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// Any other redb error (I/O during commit, …).
    #[error("database error: {0}")]
    Database(String),
}

fn corrupted_text(path: &Path, reason: &str) -> String {
    let file = if path.as_os_str().is_empty() { String::new() } else { format!(" {}", path.display()) };
    format!(
        "profile database{file} is damaged: {reason} (`kabar store check` reports what is damaged; recovery: docs/cli.md, \"Damaged profiles\")"
    )
}

impl StoreError {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        StoreError::Io { context: context.into(), source }
    }

    /// Whether this error says stored bytes are damaged: a database file
    /// (or its header) that does not verify, or a record that fails
    /// authentication or does not decode. The store, or the record, cannot
    /// be trusted; other errors (in use, wrong passphrase, I/O) say nothing
    /// about the bytes.
    pub fn is_damage(&self) -> bool {
        matches!(
            self,
            StoreError::Corrupted { .. }
                | StoreError::TamperedRecord { .. }
                | StoreError::MalformedRecord { .. }
                | StoreError::BadHeader { .. }
        )
    }

    /// Whether the database can no longer be used by this process: redb
    /// refuses every further transaction after an I/O error during a write
    /// (a full or failing disk) until the file is opened again.
    pub fn is_unusable(&self) -> bool {
        matches!(self, StoreError::Database(text) if text.starts_with("Previous I/O error"))
    }

    /// The same error, naming `path` if it is a [`StoreError::Corrupted`]
    /// that names no file (redb's errors do not know it).
    pub(crate) fn in_file(self, path: &Path) -> Self {
        match self {
            StoreError::Corrupted { path: p, reason } if p.as_os_str().is_empty() => {
                StoreError::Corrupted { path: path.to_path_buf(), reason }
            }
            other => other,
        }
    }
}

macro_rules! from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> Self {
                let text = e.to_string();
                if text.to_lowercase().contains("corrupt") {
                    StoreError::Corrupted { path: PathBuf::new(), reason: text }
                } else {
                    StoreError::Database(text)
                }
            }
        }
    )*};
}

from_redb!(
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    redb::CompactionError,
    redb::SetDurabilityError
);

#[cfg(test)]
mod tests {
    use super::*;

    /// redb refuses every transaction after an I/O error during a write: the
    /// node must see that as a profile that cannot go on (not as damage,
    /// not as a passing error), whichever redb error carries it.
    #[test]
    fn a_previous_io_error_is_unusable_not_damage() {
        let errors = [
            StoreError::from(redb::StorageError::PreviousIo),
            StoreError::from(redb::CommitError::Storage(redb::StorageError::PreviousIo)),
            StoreError::from(redb::TransactionError::Storage(redb::StorageError::PreviousIo)),
        ];
        for e in errors {
            assert!(e.is_unusable() && !e.is_damage(), "{e}");
        }
        let other = StoreError::from(redb::StorageError::Io(std::io::Error::other("disk full")));
        assert!(!other.is_unusable() && !other.is_damage(), "{other}");
    }
}
