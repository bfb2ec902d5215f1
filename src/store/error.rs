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
        "database {database} has no crawlq tables (the daemon creates them when it starts, \
         as does crawlq migrate; is the URL right?)"
    )]
    NotSetUp { database: String },
    #[error(
        "database {database} is read-only (a standby server, or default_transaction_read_only \
         is on): point database.url at the primary"
    )]
    ReadOnly { database: String },
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
/// machine rather than from crawlq (the databases' own messages say what, not why).
fn advice(error: &sqlx::Error) -> &'static str {
    match error {
        sqlx::Error::Io(_) => {
            return " (the connection to the database server failed: is it running, and do \
                    the host, port and sslmode in database.url match it?)";
        }
        sqlx::Error::Tls(_) => {
            return " (TLS to the database server failed: with sslmode=verify-ca or \
                    verify-full, sslrootcert in database.url must name the CA that signed \
                    the server's certificate, and verify-full needs the host to be a name \
                    that certificate holds)";
        }
        sqlx::Error::PoolTimedOut => {
            return " (no connection to the database came free or could be opened in time: \
                    is the server up and reachable?)";
        }
        _ => {}
    }
    let Some(database_error) = error.as_database_error() else {
        return "";
    };
    if database_error
        .try_downcast_ref::<sqlx::postgres::PgDatabaseError>()
        .is_some()
    {
        return postgres_advice(database_error.code().as_deref().unwrap_or(""));
    }
    sqlite_advice(
        database_error
            .code()
            .and_then(|code| code.parse::<i32>().ok()),
    )
}

/// Advice by PostgreSQL's SQLSTATE.
fn postgres_advice(sqlstate: &str) -> &'static str {
    match sqlstate {
        "28P01" | "28000" => {
            " (the server refused the user or password in database.url, or pg_hba.conf \
             does not let it in from here)"
        }
        "3D000" => " (the database named in database.url does not exist: create it with createdb)",
        "42501" => {
            " (the user in database.url lacks a privilege crawlq needs: it must be able to \
             create tables in the database, or own crawlq's tables)"
        }
        "53100" => " (the server's disk is full: free space and the daemon resumes by itself)",
        "53300" => {
            " (the server has no connection slots left: raise max_connections or close \
             idle clients)"
        }
        "57P01" | "57P02" | "57P03" => {
            " (the server is shutting down or starting up; the daemon reconnects by itself)"
        }
        "40P01" | "40001" => " (two transactions collided; the daemon tries again by itself)",
        "55P03" => {
            " (another session held a lock on these rows for longer than \
             database.busy_timeout_ms: is a client keeping a transaction open?)"
        }
        _ => "",
    }
}

/// Advice by SQLite's result code.
fn sqlite_advice(code: Option<i32>) -> &'static str {
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
