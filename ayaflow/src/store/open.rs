//! Opening a database (writer or reader), its connection settings, and noticing that the
//! file was replaced.

use super::*;

/// Which file a path pointed to when we opened it, to notice removal or replacement.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct FileId {
    pub(super) dev: u64,
    pub(super) ino: u64,
}

impl FileId {
    pub(super) fn of(path: &Path) -> Option<FileId> {
        fs::metadata(path).ok().map(|m| FileId {
            dev: m.dev(),
            ino: m.ino(),
        })
    }
}

/// Connection settings shared by writers and readers.
pub(super) fn configure(conn: &Connection, path: &Path) -> Result<(), StoreError> {
    conn.busy_timeout(BUSY_TIMEOUT)
        .map_err(|e| StoreError::sqlite(path, "setting the busy timeout", e))?;
    // Each combination of history filters is its own statement; keep them all prepared.
    conn.set_prepared_statement_cache_capacity(256);
    // `rarray(?)`: binds a list of ids as one parameter.
    rusqlite::vtab::array::load_module(conn)
        .map_err(|e| StoreError::sqlite(path, "registering the rarray module", e))?;
    Ok(())
}

impl Store {
    /// Opens (creating if needed) the database at `path` for writing: WAL journal,
    /// `synchronous=NORMAL`, [`BUSY_TIMEOUT`], and the schema migrated to
    /// [`SCHEMA_VERSION`].
    ///
    /// Fails with [`StoreError::NewerSchema`] if a newer ayaFlow wrote the file.
    pub fn open(path: impl AsRef<Path>) -> Result<Store, StoreError> {
        let path = path.as_ref().to_owned();
        // No SQLITE_OPEN_URI: the path is a file name, never interpreted as `file:` URI.
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let mut conn =
            Connection::open_with_flags(&path, flags).map_err(|source| StoreError::Open {
                path: path.clone(),
                source,
            })?;
        configure(&conn, &path)?;
        let mode: String = conn
            .pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))
            .map_err(|e| StoreError::sqlite(&path, "switching to WAL", e))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StoreError::NotWal { path, mode });
        }
        // In WAL mode NORMAL syncs at checkpoints only: commits survive a crash of the process
        // (the WAL is in the OS page cache), only a power loss can undo the latest ones.
        // https://www.sqlite.org/pragma.html#pragma_synchronous
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(|e| StoreError::sqlite(&path, "setting synchronous=NORMAL", e))?;
        conn.pragma_update(None, "journal_size_limit", JOURNAL_SIZE_LIMIT_BYTES)
            .map_err(|e| StoreError::sqlite(&path, "setting journal_size_limit", e))?;
        conn.pragma_update(None, "wal_autocheckpoint", WAL_AUTOCHECKPOINT_PAGES)
            .map_err(|e| StoreError::sqlite(&path, "setting wal_autocheckpoint", e))?;
        conn.pragma_update(None, "cache_size", -WRITER_CACHE_KIB)
            .map_err(|e| StoreError::sqlite(&path, "setting cache_size", e))?;
        schema::migrate(&mut conn, &path)?;
        // Only the writer needs the keys' ids.
        let tuples = TupleIds::load(&conn, &path);
        Store::finish(conn, path, tuples)
    }

    /// Opens an existing database for reading only (API readers). WAL lets it read while the
    /// writer writes; it sees each committed transaction whole.
    ///
    /// Fails if the file does not exist or its schema is not [`SCHEMA_VERSION`]
    /// (start the agent once to create or migrate it).
    pub fn open_read_only(path: impl AsRef<Path>) -> Result<Store, StoreError> {
        let path = path.as_ref().to_owned();
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn =
            Connection::open_with_flags(&path, flags).map_err(|source| StoreError::Open {
                path: path.clone(),
                source,
            })?;
        configure(&conn, &path)?;
        let found = schema::user_version(&conn, &path)?;
        if found > schema::SCHEMA_VERSION {
            return Err(StoreError::NewerSchema {
                path,
                found,
                supported: schema::SCHEMA_VERSION,
            });
        }
        if found != schema::SCHEMA_VERSION {
            return Err(StoreError::SchemaMismatch {
                path,
                found,
                expected: schema::SCHEMA_VERSION,
            });
        }
        // A reader (one per history request) inserts nothing: no map of keys to read.
        Store::finish(conn, path, TupleIds::default())
    }

    pub(super) fn finish(
        conn: Connection,
        path: PathBuf,
        tuples: TupleIds,
    ) -> Result<Store, StoreError> {
        let default_max_pages = conn
            .pragma_query_value(None, "max_page_count", |r| r.get(0))
            .map_err(|e| StoreError::sqlite(&path, "reading max_page_count", e))?;
        Ok(Store {
            file_id: FileId::of(&path),
            conn,
            path,
            default_max_pages,
            tuples,
            undecodable_blocks: 0,
        })
    }

    /// The path this store was opened with.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Returns true if and only if the file at [`Store::path`] is gone or is no longer the file
    /// this store opened (removed, or replaced by another file).
    ///
    /// SQLite keeps writing into an unlinked file without any error in WAL mode, so the writer
    /// asks this before writing and reopens the path when it returns true.
    pub fn is_replaced(&self) -> bool {
        FileId::of(&self.path) != self.file_id
    }

    /// Copies every committed transaction from the WAL into the database file and truncates
    /// the WAL to zero bytes. Returns true if and only if it completed; readers still using
    /// old WAL frames make it stop early (after [`BUSY_TIMEOUT`]).
    ///
    /// The writer calls it before letting go of a file that was removed or replaced, so the
    /// `-wal` left at the path is empty and cannot be replayed into whatever file is there now
    /// (<https://www.sqlite.org/howtocorrupt.html#unlink>).
    pub fn checkpoint(&mut self) -> Result<bool, StoreError> {
        let busy: i64 = self
            .conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| r.get(0))
            .map_err(|e| StoreError::sqlite(&self.path, "checkpointing the WAL", e))?;
        Ok(busy == 0)
    }

    /// Caps the database file at about `max_bytes` (rounded up to whole pages), or removes the
    /// cap with `None`. Writes that would grow the file past the cap fail as
    /// [`ErrorKind::Full`], exactly like a full disk; pages freed by retention are reused.
    ///
    /// SQLite never shrinks the cap below the file's current size, so a tiny cap means "no
    /// growth from now on". The cap lasts as long as this connection.
    pub fn set_max_bytes(&mut self, max_bytes: Option<u64>) -> Result<(), StoreError> {
        let pages = match max_bytes {
            None => self.default_max_pages,
            Some(bytes) => {
                let page_size: i64 = self
                    .conn
                    .pragma_query_value(None, "page_size", |r| r.get(0))
                    .map_err(|e| StoreError::sqlite(&self.path, "reading page_size", e))?;
                let page_size = u64::try_from(page_size).unwrap_or(4096).max(1);
                i64::try_from(bytes.div_ceil(page_size))
                    .unwrap_or(i64::MAX)
                    .clamp(1, self.default_max_pages)
            }
        };
        self.conn
            .pragma_update_and_check(None, "max_page_count", pages, |r| r.get::<_, i64>(0))
            .map_err(|e| StoreError::sqlite(&self.path, "setting max_page_count", e))?;
        Ok(())
    }
}
