//! `StoreError`: everything that can go wrong between ayaFlow and its SQLite file.
//!
//! Each message names the database path and says what to do about it, because these errors end
//! up in the agent's log and in API responses read by whoever runs the agent. [`StoreError::kind`]
//! sorts an error into the four classes the storage writer retries on and labels its metrics
//! with (`full`, `locked`, `io`, `other`).

use std::path::PathBuf;

use rusqlite::ErrorCode;

/// A failure of the history database. See the module docs for how messages are phrased.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite could not open (or create) the file at all.
    #[error(
        "cannot open the database {}: {source}; check the directory exists and is writable, \
         or choose another file with --db-path",
        path.display()
    )]
    Open {
        path: PathBuf,
        source: rusqlite::Error,
    },

    /// The file was opened but SQLite refused to switch it to WAL, which the agent needs so the
    /// API can read while the writer writes (network filesystems often cannot).
    #[error(
        "the database {} stays in journal mode {mode:?} instead of WAL; keep it on a local \
         filesystem (not NFS/SMB) or choose another file with --db-path",
        path.display()
    )]
    NotWal { path: PathBuf, mode: String },

    /// The file was written by a newer ayaFlow; this one does not know its tables.
    #[error(
        "the database {} has schema version {found}, newer than version {supported} that this \
         ayaflow understands; upgrade ayaflow or choose another file with --db-path",
        path.display()
    )]
    NewerSchema {
        path: PathBuf,
        found: i64,
        supported: i64,
    },

    /// A read-only reader found a file that the agent has not created or migrated yet.
    #[error(
        "the database {} has schema version {found}, not version {expected}; start the agent \
         once on this file so it creates or migrates the tables",
        path.display()
    )]
    SchemaMismatch {
        path: PathBuf,
        found: i64,
        expected: i64,
    },

    /// The filesystem (or the size cap set with `max_page_count`) has no room left.
    #[error(
        "{operation} on {} failed, the disk is full: {source}; free space on the filesystem \
         holding {} or lower data_retention",
        path.display(),
        path.display()
    )]
    Full {
        path: PathBuf,
        operation: &'static str,
        source: rusqlite::Error,
    },

    /// Another connection holds the write lock for longer than the busy timeout.
    #[error(
        "{operation} on {} failed, the database is locked: {source}; another process holds {}: \
         stop it or use --db-path",
        path.display(),
        path.display()
    )]
    Locked {
        path: PathBuf,
        operation: &'static str,
        source: rusqlite::Error,
    },

    /// The operating system failed a read or write, or the file became unwritable.
    #[error(
        "{operation} on {} failed with an I/O error: {source}; check the disk and the file's \
         permissions (the writer reopens the file if it was removed)",
        path.display()
    )]
    Io {
        path: PathBuf,
        operation: &'static str,
        source: rusqlite::Error,
    },

    /// Any other SQLite failure (corrupt file, bug).
    #[error(
        "{operation} on {} failed: {source}; if the file is damaged, move it aside and restart \
         the agent (it creates a new one)",
        path.display()
    )]
    Sqlite {
        path: PathBuf,
        operation: &'static str,
        source: rusqlite::Error,
    },

    /// The operating system refused to start the storage writer's thread.
    #[error(
        "cannot start the storage writer thread for {}: {source}; the system is out of threads \
         or memory, raise the process limits (ulimit -u) or free memory",
        path.display()
    )]
    WriterThread {
        path: PathBuf,
        source: std::io::Error,
    },

    /// A block of raw rows (`packet_blocks`) does not decode: damaged, or not written by this
    /// ayaflow.
    #[error(
        "the block of raw rows starting at id {id} in {} is damaged: {detail}; if the file was \
         not written by this ayaflow choose another with --db-path, otherwise move it aside and \
         restart the agent (it creates a new one)",
        path.display()
    )]
    BadBlock {
        path: PathBuf,
        id: i64,
        detail: String,
    },

    /// A stored row holds a value this version never writes.
    #[error(
        "row {id} of {} holds {detail}; the file was not written by this ayaflow, choose another \
         file with --db-path",
        path.display()
    )]
    BadRow {
        path: PathBuf,
        id: i64,
        detail: String,
    },
}

/// The class of a [`StoreError`]: how the writer reacts to it and the `kind` label of the
/// `write_errors` metric.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// No space left (disk full or size cap): retried, retention may free pages.
    Full,
    /// Another connection holds the lock: retried.
    Locked,
    /// Operating-system I/O failure or an unusable file: retried after reopening the file.
    Io,
    /// Everything else.
    Other,
}

impl ErrorKind {
    /// Every kind, in counter order.
    pub const ALL: [ErrorKind; 4] = [
        ErrorKind::Full,
        ErrorKind::Locked,
        ErrorKind::Io,
        ErrorKind::Other,
    ];

    /// The metric label: `full`, `locked`, `io` or `other`.
    pub fn label(self) -> &'static str {
        match self {
            ErrorKind::Full => "full",
            ErrorKind::Locked => "locked",
            ErrorKind::Io => "io",
            ErrorKind::Other => "other",
        }
    }

    /// Position in [`ErrorKind::ALL`], for arrays of counters.
    pub(crate) fn index(self) -> usize {
        self as usize
    }

    /// Classifies a raw SQLite error.
    pub(crate) fn of_sqlite(e: &rusqlite::Error) -> ErrorKind {
        match e.sqlite_error_code() {
            Some(ErrorCode::DiskFull) => ErrorKind::Full,
            Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => ErrorKind::Locked,
            // READONLY covers SQLITE_READONLY_DBMOVED (file renamed or unlinked while open) and
            // permissions changed under us: reopening is the cure for both, as for I/O errors.
            Some(
                ErrorCode::SystemIoFailure
                | ErrorCode::CannotOpen
                | ErrorCode::ReadOnly
                | ErrorCode::PermissionDenied
                | ErrorCode::NoLargeFileSupport
                | ErrorCode::FileLockingProtocolFailed,
            ) => ErrorKind::Io,
            _ => ErrorKind::Other,
        }
    }
}

impl StoreError {
    /// Wraps a SQLite error from `operation` on `path` in the variant its class calls for.
    pub(crate) fn sqlite(
        path: impl Into<PathBuf>,
        operation: &'static str,
        source: rusqlite::Error,
    ) -> StoreError {
        let path = path.into();
        match ErrorKind::of_sqlite(&source) {
            ErrorKind::Full => StoreError::Full {
                path,
                operation,
                source,
            },
            ErrorKind::Locked => StoreError::Locked {
                path,
                operation,
                source,
            },
            ErrorKind::Io => StoreError::Io {
                path,
                operation,
                source,
            },
            ErrorKind::Other => StoreError::Sqlite {
                path,
                operation,
                source,
            },
        }
    }

    /// The class of this error, for retry decisions and metric labels.
    pub fn kind(&self) -> ErrorKind {
        match self {
            StoreError::Full { .. } => ErrorKind::Full,
            StoreError::Locked { .. } => ErrorKind::Locked,
            StoreError::Io { .. } => ErrorKind::Io,
            // An open that fails is usually a missing directory or a permission problem; the
            // writer treats it like any I/O failure and retries.
            StoreError::Open { source, .. } => match ErrorKind::of_sqlite(source) {
                ErrorKind::Other => ErrorKind::Io,
                k => k,
            },
            StoreError::NotWal { .. }
            | StoreError::NewerSchema { .. }
            | StoreError::SchemaMismatch { .. }
            | StoreError::Sqlite { .. }
            | StoreError::WriterThread { .. }
            | StoreError::BadRow { .. }
            | StoreError::BadBlock { .. } => ErrorKind::Other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(c: i32) -> rusqlite::Error {
        rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(c), None)
    }

    #[test]
    fn classifies_sqlite_codes() {
        assert_eq!(
            ErrorKind::of_sqlite(&code(rusqlite::ffi::SQLITE_FULL)),
            ErrorKind::Full
        );
        assert_eq!(
            ErrorKind::of_sqlite(&code(rusqlite::ffi::SQLITE_BUSY)),
            ErrorKind::Locked
        );
        assert_eq!(
            ErrorKind::of_sqlite(&code(rusqlite::ffi::SQLITE_LOCKED)),
            ErrorKind::Locked
        );
        assert_eq!(
            ErrorKind::of_sqlite(&code(rusqlite::ffi::SQLITE_IOERR)),
            ErrorKind::Io
        );
        assert_eq!(
            ErrorKind::of_sqlite(&code(rusqlite::ffi::SQLITE_READONLY_DBMOVED)),
            ErrorKind::Io
        );
        assert_eq!(
            ErrorKind::of_sqlite(&code(rusqlite::ffi::SQLITE_CORRUPT)),
            ErrorKind::Other
        );
        assert_eq!(
            ErrorKind::of_sqlite(&rusqlite::Error::InvalidQuery),
            ErrorKind::Other
        );
    }

    #[test]
    fn messages_name_the_path_and_the_fix() {
        let full = StoreError::sqlite(
            "/var/lib/ayaflow.db",
            "inserting rows",
            code(rusqlite::ffi::SQLITE_FULL),
        );
        assert_eq!(full.kind(), ErrorKind::Full);
        let msg = full.to_string();
        assert!(msg.contains("/var/lib/ayaflow.db"), "{msg}");
        assert!(msg.contains("lower data_retention"), "{msg}");

        let locked =
            StoreError::sqlite("/x.db", "inserting rows", code(rusqlite::ffi::SQLITE_BUSY));
        assert_eq!(locked.kind(), ErrorKind::Locked);
        assert!(
            locked
                .to_string()
                .contains("another process holds /x.db: stop it or use --db-path")
        );

        let open = StoreError::Open {
            path: "/nope/x.db".into(),
            source: code(rusqlite::ffi::SQLITE_CANTOPEN),
        };
        assert_eq!(open.kind(), ErrorKind::Io);
        assert!(
            open.to_string()
                .contains("check the directory exists and is writable")
        );
    }

    #[test]
    fn labels_are_distinct_and_indexed_in_order() {
        for (i, k) in ErrorKind::ALL.iter().enumerate() {
            assert_eq!(k.index(), i);
        }
        let labels: Vec<_> = ErrorKind::ALL.iter().map(|k| k.label()).collect();
        assert_eq!(labels, ["full", "locked", "io", "other"]);
    }
}
