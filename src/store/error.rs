//! The store's errors: what went wrong, while doing what, and (for the errors that come
//! from the machine rather than from crawlq) what an operator should do about it.

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database {path}: could not create its directory: {source}")]
    CreateDir {
        path: String,
        source: std::io::Error,
    },
    #[error("database {path}: could not read the file's metadata: {source}")]
    Inspect {
        path: String,
        source: std::io::Error,
    },
    #[error("database {path}: could not open: {source}{}", advice(.source))]
    Open { path: String, source: sqlx::Error },
    #[error("database {path}: could not apply migrations: {source}{}", migrate_advice(.source))]
    Migrate {
        path: String,
        source: sqlx::migrate::MigrateError,
    },
    #[error("database error while {doing}: {source}{}", advice(.source))]
    Query {
        doing: &'static str,
        source: sqlx::Error,
    },
    #[error(
        "database {database} {what} while the daemon was using it; stopping, since its \
         writes would go to a file nobody can see (restart the daemon to open the database \
         again)"
    )]
    Gone {
        database: String,
        what: &'static str,
    },
    #[error(
        "database {database} does not exist (the daemon creates it when it starts; is the \
         path right?)"
    )]
    Missing { database: String },
    #[error(
        "database {database} is in use by another running daemon ({holder}, which holds \
         {lock}). Two daemons on one database would each apply the rate limits, doubling \
         the load on every host, so this one will not start. Stop the other one first."
    )]
    InUse {
        database: String,
        lock: String,
        holder: String,
    },
    #[error("could not lock {lock}: {reason}")]
    Lock { lock: String, reason: String },
}

/// What an operator should do about a database error, for the errors that come from the
/// machine rather than from crawlq (SQLite's own messages say what, not why).
fn advice(error: &sqlx::Error) -> &'static str {
    let code = error
        .as_database_error()
        .and_then(|e| e.code())
        .and_then(|code| code.parse::<i32>().ok());
    // Extended result codes carry the primary code in their low byte.
    match code.map(|code| code & 0xff) {
        Some(5 | 6) => {
            " (another connection held the database locked for longer than \
             database.busy_timeout_ms: is a client keeping a transaction open?)"
        }
        Some(8) => {
            " (the daemon's user cannot write the database: check the permissions of the \
             file, its -wal and -shm files and its directory, and that the file system is \
             not mounted read-only)"
        }
        Some(10) => {
            " (a read or write of the disk failed: is the disk full, or the file over a \
             quota or file size limit? Free space and the daemon resumes by itself)"
        }
        Some(11 | 26) => {
            " (the file is damaged or not a database: run PRAGMA integrity_check and \
             restore a backup)"
        }
        Some(13) => " (the disk is full: free space and the daemon resumes by itself)",
        Some(14) => {
            " (the file or its directory cannot be opened: deleted, moved, or its \
             permissions changed?)"
        }
        _ => "",
    }
}

fn migrate_advice(error: &sqlx::migrate::MigrateError) -> &'static str {
    match error {
        sqlx::migrate::MigrateError::Execute(e)
        | sqlx::migrate::MigrateError::ExecuteMigration(e, _) => advice(e),
        _ => "",
    }
}

/// `.doing("claiming jobs")`: a query's error, with what the store was doing.
pub(super) trait Doing<T> {
    fn doing(self, doing: &'static str) -> Result<T, StoreError>;
}

impl<T> Doing<T> for Result<T, sqlx::Error> {
    fn doing(self, doing: &'static str) -> Result<T, StoreError> {
        self.map_err(|source| StoreError::Query { doing, source })
    }
}
