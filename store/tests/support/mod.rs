//! What the account and audit tests share: a store on each backend, with a way around
//! it to its tables, and a macro that runs each case on each.
//!
//! SQLite is a temporary file; PostgreSQL (`TETHER_TEST_DATABASE_URL`, default the
//! local server's `test` database) a database of each test's own, dropped afterwards; a
//! missing PostgreSQL fails the tests. The cases that reach into the tables behind the
//! store's back (to look for secrets, or to tamper with the audit trail) run on the two
//! databases that have tables to reach, the others in memory too.

// Each test binary uses some of this.
#![allow(dead_code)]

use std::{path::PathBuf, time::Duration};

use store::Store;

/// A store to test, and a way around it to its tables.
pub struct Db {
    pub store: Store,
    raw: Raw,
}

enum Raw {
    /// The database file, and the folder to delete afterwards.
    Sqlite {
        path: PathBuf,
        dir: PathBuf,
    },
    /// The database's URL and name, to drop afterwards.
    Postgres {
        url: String,
        name: String,
    },
    Memory,
}

fn admin_url() -> String {
    std::env::var("TETHER_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| {
            panic!("PostgreSQL must be running at {url} for these tests (scripts/test.sh starts it): {e}")
        });
    tokio::spawn(connection);
    client
}

impl Db {
    pub async fn sqlite() -> Self {
        let dir = std::env::temp_dir().join(format!("tether-accounts-{:016x}", fastrand::u64(..)));
        let path = dir.join("telemetry.db");
        let store = Store::open(path.to_str().unwrap()).await.unwrap();
        Self {
            store,
            raw: Raw::Sqlite { path, dir },
        }
    }

    pub async fn postgres() -> Self {
        let admin = admin_url();
        let name = format!("tether_test_{:016x}", fastrand::u64(..));
        connect(&admin)
            .await
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .expect("the test user may create databases");
        let url = format!(
            "{}/{name}",
            admin.rsplit_once('/').expect("a database URL").0
        );
        let store = Store::open(&url).await.unwrap();
        assert_eq!(store.kind(), "postgres");
        Self {
            store,
            raw: Raw::Postgres { url, name },
        }
    }

    pub async fn memory() -> Self {
        let store = Store::open("memory").await.unwrap();
        assert_eq!(store.kind(), "sqlite");
        Self {
            store,
            raw: Raw::Memory,
        }
    }

    /// The URL another store opens to share this one's database.
    pub fn url(&self) -> String {
        match &self.raw {
            Raw::Sqlite { path, .. } => path.display().to_string(),
            Raw::Postgres { url, .. } => url.clone(),
            Raw::Memory => panic!("a memory store cannot be opened twice"),
        }
    }

    /// Runs SQL on the tables directly, as someone with access to the database would.
    pub async fn tamper(&self, sql: &str) {
        match &self.raw {
            Raw::Sqlite { path, .. } => {
                let db = rusqlite::Connection::open(path).unwrap();
                db.busy_timeout(Duration::from_secs(5)).unwrap();
                db.execute_batch(sql).unwrap();
            }
            Raw::Postgres { url, .. } => connect(url).await.batch_execute(sql).await.unwrap(),
            Raw::Memory => panic!("a memory store has no tables to reach"),
        }
    }

    /// The one text value a query gives.
    pub async fn scalar(&self, sql: &str) -> String {
        match &self.raw {
            Raw::Sqlite { path, .. } => rusqlite::Connection::open(path)
                .unwrap()
                .query_row(sql, [], |row| row.get(0))
                .unwrap(),
            Raw::Postgres { url, .. } => {
                connect(url).await.query_one(sql, &[]).await.unwrap().get(0)
            }
            Raw::Memory => panic!("a memory store has no tables to reach"),
        }
    }

    /// Every value in every table, as text, one row a line.
    pub async fn dump(&self) -> String {
        let mut all = String::new();
        match &self.raw {
            Raw::Sqlite { path, .. } => {
                let db = rusqlite::Connection::open(path).unwrap();
                let tables: Vec<String> = db
                    .prepare("SELECT name FROM sqlite_master WHERE type = 'table'")
                    .unwrap()
                    .query_map([], |row| row.get(0))
                    .unwrap()
                    .collect::<Result<_, _>>()
                    .unwrap();
                for table in tables {
                    let mut statement = db.prepare(&format!("SELECT * FROM {table}")).unwrap();
                    let columns = statement.column_count();
                    let mut rows = statement.query([]).unwrap();
                    while let Some(row) = rows.next().unwrap() {
                        for column in 0..columns {
                            let value: rusqlite::types::Value = row.get(column).unwrap();
                            all.push_str(&format!("{value:?} "));
                        }
                        all.push('\n');
                    }
                }
            }
            Raw::Postgres { url, .. } => {
                let client = connect(url).await;
                let tables = client
                    .query(
                        "SELECT table_name::text FROM information_schema.tables
                         WHERE table_schema = 'public'",
                        &[],
                    )
                    .await
                    .unwrap();
                for table in tables {
                    let table: String = table.get(0);
                    let sql = format!("SELECT t::text FROM {table} t");
                    for row in client.query(&sql, &[]).await.unwrap() {
                        all.push_str(row.get::<_, &str>(0));
                        all.push('\n');
                    }
                }
            }
            Raw::Memory => panic!("a memory store has no tables to reach"),
        }
        all
    }
}

impl Drop for Db {
    fn drop(&mut self) {
        match &self.raw {
            Raw::Sqlite { dir, .. } => {
                let _ = std::fs::remove_dir_all(dir);
            }
            Raw::Postgres { name, .. } => {
                let (admin, name) = (admin_url(), name.clone());
                // A runtime of its own: Drop cannot await, and the test's is shutting down.
                let _ = std::thread::spawn(move || {
                    tokio::runtime::Runtime::new().unwrap().block_on(async {
                        if let Ok((client, connection)) =
                            tokio_postgres::connect(&admin, tokio_postgres::NoTls).await
                        {
                            tokio::spawn(connection);
                            let _ = client
                                .batch_execute(&format!(
                                    "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                                ))
                                .await;
                        }
                    })
                })
                .join();
            }
            Raw::Memory => {}
        }
    }
}

/// One test per case and backend: the cases for every store, then those that reach
/// around the store into its tables (not possible in memory). Several worker threads,
/// so that tasks spawned by a case really run at once.
macro_rules! cases {
    (everywhere: [$($case:ident),* $(,)?], on_disk: [$($raw:ident),* $(,)?]) => {
        cases!(@on sqlite: $($case,)* $($raw,)*);
        cases!(@on postgres: $($case,)* $($raw,)*);
        cases!(@on memory: $($case,)*);
    };
    (@on $backend:ident: $($case:ident,)*) => {
        mod $backend {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $case() {
                    super::$case(&crate::support::Db::$backend().await).await;
                }
            )*
        }
    };
}
