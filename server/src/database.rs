//! Which store the key service keeps its state in (specs/key-service.md §5, issue 25):
//! `--database` / `VEIL_DATABASE`. Absent or `sqlite`: the embedded SQLite file `veil.db` in
//! the data directory (the default). `postgres://…` or `postgresql://…`: a PostgreSQL
//! database, which replicas of the key service may share.

use std::fmt;
use std::sync::Arc;

use veil_keys::KdsError;
use veil_keys::store::{PostgresStore, SqliteStore, Store};

/// The key service's store.
#[derive(Clone, Default, PartialEq, Eq)]
pub enum Database {
    /// `veil.db` in the data directory.
    #[default]
    Sqlite,
    /// A PostgreSQL URL.
    Postgres(String),
}

impl Database {
    /// Parse a `--database` value.
    ///
    /// # Errors
    /// A message naming the accepted forms when `s` is neither.
    pub fn parse(s: &str) -> Result<Self, String> {
        if s.is_empty() || s.eq_ignore_ascii_case("sqlite") {
            Ok(Self::Sqlite)
        } else if s.starts_with("postgres://") || s.starts_with("postgresql://") {
            Ok(Self::Postgres(s.to_owned()))
        } else {
            Err("expected `sqlite` or a `postgres://` URL".to_owned())
        }
    }

    /// Open a PostgreSQL store, verifying its TLS certificate against `ca_file`'s
    /// certificates if given (else the system's roots); `None` for SQLite, which the caller
    /// opens in the data directory once it is private (KDS-SEC-02).
    pub(crate) fn open_shared(
        &self,
        ca_file: Option<&std::path::Path>,
        connections: usize,
    ) -> Option<Result<Arc<dyn Store>, crate::ServerError>> {
        match self {
            Self::Sqlite => None,
            Self::Postgres(url) => Some((|| {
                let ca = ca_file
                    .map(|p| {
                        std::fs::read(p).map_err(|source| crate::ServerError::Io {
                            what: format!("read the PostgreSQL CA file {}", p.display()),
                            source,
                        })
                    })
                    .transpose()?;
                let store = PostgresStore::open_with(url, ca.as_deref(), connections)?;
                Ok(Arc::new(store) as Arc<dyn Store>)
            })()),
        }
    }

    /// The embedded store at `path`.
    pub(crate) fn open_sqlite(path: &std::path::Path) -> Result<Arc<dyn Store>, KdsError> {
        Ok(Arc::new(SqliteStore::open(path)?))
    }
}

/// Never prints a URL: it may hold a password.
impl fmt::Debug for Database {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Sqlite => f.write_str("Sqlite"),
            Self::Postgres(_) => f.write_str("Postgres(..)"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_is_the_default_and_postgres_urls_select_postgres() {
        assert_eq!(Database::default(), Database::Sqlite);
        assert_eq!(Database::parse("sqlite"), Ok(Database::Sqlite));
        assert_eq!(Database::parse(""), Ok(Database::Sqlite));
        for url in ["postgres://u@h/db", "postgresql://u:secret@h:5432/db"] {
            let db = Database::parse(url).unwrap();
            assert_eq!(db, Database::Postgres(url.to_owned()));
            assert!(!format!("{db:?}").contains("secret"));
        }
        assert!(Database::parse("mysql://h/db").is_err());
        assert!(Database::parse("/var/lib/veil.db").is_err());
    }
}
