//! The PostgreSQL backend (`[state] url = "postgres://…"` in the home's `config.toml`): the
//! same nine operations as sled, on one table `kv (tree, key, value)` — each operation one
//! statement, so one transaction — with counters as 8-byte big-endian values in tree `meta`,
//! exactly as sled keeps them (so `slipctl state migrate` copies trees as they are).
//!
//! The store's interface is synchronous (sled is), while `tokio-postgres` is async: the client
//! lives on a thread of its own with a small runtime, and each call is sent there and waited
//! for. That works from any caller (a tokio worker, a plain thread, a test) and lets concurrent
//! callers' statements be pipelined on the one connection. One connection per database URL
//! per process.
//!
//! The schema is versioned (`slipway_schema`); migrations run at first connection, and a
//! database whose schema is newer than this binary knows is refused, naming both versions.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, mpsc};
use std::time::Duration;

use tokio_postgres::types::ToSql;

use crate::error::{CtlError, Result};
use crate::state::backend::{Backend, store_err};
use crate::state::home::Database;

/// The schema this binary writes: each entry takes the database from version i to i + 1.
const MIGRATIONS: &[&str] = &["CREATE TABLE kv (
        tree  text  NOT NULL,
        key   bytea NOT NULL,
        value bytea NOT NULL,
        PRIMARY KEY (tree, key)
    )"];

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

type Job = Box<dyn FnOnce(Arc<tokio_postgres::Client>, &tokio::runtime::Handle) + Send>;

/// One PostgreSQL database, reached through a connection served by its own thread, made
/// again by the next statement once it ended (the server restarted, the network broke): a
/// statement in flight when it ends fails, with why.
pub struct Postgres {
    db: Database,
    link: Mutex<Link>,
    /// The URL without its password, for messages.
    shown: String,
}

/// One live connection: where its statements go, and whether it has ended.
struct Link {
    jobs: tokio::sync::mpsc::UnboundedSender<Job>,
    closed: Arc<std::sync::atomic::AtomicBool>,
}

/// The URL with its password replaced by `***`.
pub fn shown(url: &str) -> String {
    slipway_common::redact::redact(url).into_owned()
}

fn connections() -> &'static Mutex<HashMap<Database, Arc<Postgres>>> {
    static OPEN: OnceLock<Mutex<HashMap<Database, Arc<Postgres>>>> = OnceLock::new();
    OPEN.get_or_init(Default::default)
}

/// TLS to the database, when `[state] ca_file` names the CA of its certificate: required, the
/// server's certificate verified against that CA and the URL's host, through the one rustls.
fn tls_for(db: &Database) -> Result<Option<tokio_postgres_rustls::MakeRustlsConnect>> {
    let Some(path) = &db.ca_file else { return Ok(None) };
    let pem = std::fs::read_to_string(path).map_err(|e| {
        CtlError::bad(format!("[state] ca_file {}: {e}", path.display()))
            .fix("name the PEM file of the CA that signed the database server's certificate")
    })?;
    let mut config = (*slipway_common::tls::https_client_config(&pem)?).clone();
    config.alpn_protocols.clear(); // (PostgreSQL's handshake names no application protocol)
    Ok(Some(tokio_postgres_rustls::MakeRustlsConnect::new(config)))
}

impl Postgres {
    /// This process's handle on `db`, connected (and the schema migrated) the first time.
    pub fn open(db: &Database) -> Result<Arc<Postgres>> {
        let mut open = connections().lock().expect("postgres connections");
        if let Some(pg) = open.get(db) {
            return Ok(pg.clone());
        }
        let link = connect(db)?;
        let pg = Arc::new(Postgres { db: db.clone(), link: Mutex::new(link), shown: shown(&db.url) });
        pg.migrate()?;
        open.insert(db.clone(), pg.clone());
        Ok(pg)
    }
}

/// A new connection to `db`, on a thread of its own.
fn connect(db: &Database) -> Result<Link> {
    {
        let shown = shown(&db.url);
        let mut config: tokio_postgres::Config = db.url.parse().map_err(|e| {
            CtlError::bad(format!("[state] url {shown} is not a PostgreSQL URL: {e}"))
                .fix("write postgres://USER:PASSWORD@HOST:PORT/DATABASE in the home's config.toml")
        })?;
        let tls = tls_for(db)?;
        if tls.is_some() {
            config.ssl_mode(tokio_postgres::config::SslMode::Require);
        }
        let (ready_tx, ready_rx) = mpsc::channel::<Result<()>>();
        let (jobs_tx, mut jobs_rx) = tokio::sync::mpsc::unbounded_channel::<Job>();
        let what = shown.clone();
        let closed = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let ended = closed.clone();
        std::thread::Builder::new()
            .name("slipway-postgres".into())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                    Ok(rt) => rt,
                    Err(e) => return drop(ready_tx.send(Err(store_err(format!("postgres runtime: {e}"))))),
                };
                let connected = runtime.block_on(async {
                    let mut config = config;
                    config.connect_timeout(CONNECT_TIMEOUT);
                    match tls {
                        Some(tls) => connect_with(&config, tls, ended).await,
                        None => connect_with(&config, tokio_postgres::NoTls, ended).await,
                    }
                });
                let client = match connected {
                    Ok(client) => Arc::new(client),
                    Err(e) => {
                        let why = match std::error::Error::source(&e) {
                            Some(source) => format!("{e}: {source}"),
                            None => e.to_string(),
                        };
                        let err = CtlError::failed(format!("cannot reach PostgreSQL at {what}: {why}"))
                            .fix("check that the server runs and [state] url in the home's config.toml");
                        return drop(ready_tx.send(Err(err)));
                    }
                };
                let _ = ready_tx.send(Ok(()));
                let handle = runtime.handle().clone();
                // Each job spawns its statement on this runtime; the loop ends with the process.
                runtime.block_on(async move {
                    while let Some(job) = jobs_rx.recv().await {
                        job(client.clone(), &handle);
                    }
                });
            })
            .map_err(|e| store_err(format!("postgres thread: {e}")))?;
        ready_rx.recv().map_err(|_| store_err("the PostgreSQL thread ended"))??;
        Ok(Link { jobs: jobs_tx, closed })
    }
}

/// A connection of its own that holds the leader's session advisory lock: never made again
/// behind the caller's back (the lock goes with the session), so its loss is seen as such.
pub struct LockSession {
    link: Link,
    shown: String,
}

impl LockSession {
    pub fn connect(db: &Database) -> Result<LockSession> {
        let link = connect(db)?;
        let session = LockSession { link, shown: shown(&db.url) };
        // Named, so an operator finds the leader's session in pg_stat_activity.
        session.run(|c| async move { c.batch_execute("SET application_name = 'slipway-leader'").await })?;
        Ok(session)
    }

    fn run<T, F, Fut>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(Arc<tokio_postgres::Client>) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = std::result::Result<T, tokio_postgres::Error>> + Send + 'static,
    {
        if self.alive().is_err() {
            return Err(store_err(format!("the leader's session with {} ended", self.shown)));
        }
        let (tx, rx) = mpsc::channel();
        let job: Job = Box::new(move |client, handle| {
            handle.spawn(async move {
                let _ = tx.send(f(client).await);
            });
        });
        self.link.jobs.send(job).map_err(|_| store_err(format!("the session with {} is gone", self.shown)))?;
        let answer = rx
            .recv_timeout(CONNECT_TIMEOUT)
            .map_err(|_| store_err(format!("the session with {} did not answer", self.shown)))?;
        answer.map_err(|e| store_err(format!("PostgreSQL at {}: {e}", self.shown)))
    }

    /// Take the lock `key` if free: `true` when this session holds it now.
    pub fn try_lock(&self, key: i64) -> Result<bool> {
        self.run(move |c| async move {
            c.query_one("SELECT pg_try_advisory_lock($1)", &[&key]).await.map(|r| r.get::<_, bool>(0))
        })
    }

    /// Whether the session is still there (it answers a statement).
    pub fn check(&self) -> Result<()> {
        self.run(|c| async move { c.batch_execute("SELECT 1").await })
    }

    /// The session has not ended (no round trip).
    pub fn alive(&self) -> Result<()> {
        if self.link.closed.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(store_err(format!("the leader's session with {} ended", self.shown)));
        }
        Ok(())
    }
}

impl Postgres {
    /// Run `f` with the client on the connection's thread and wait for its result.
    fn run<T, F, Fut>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(Arc<tokio_postgres::Client>) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = std::result::Result<T, tokio_postgres::Error>> + Send + 'static,
    {
        let (tx, rx) = mpsc::channel();
        let job: Job = Box::new(move |client, handle| {
            handle.spawn(async move {
                let _ = tx.send(f(client).await);
            });
        });
        let jobs = {
            let mut link = self.link.lock().expect("postgres link");
            if link.closed.load(std::sync::atomic::Ordering::SeqCst) {
                *link = connect(&self.db)?;
            }
            link.jobs.clone()
        };
        jobs.send(job).map_err(|_| store_err(format!("the connection to {} is gone", self.shown)))?;
        let answer = rx.recv().map_err(|_| store_err(format!("the connection to {} is gone", self.shown)))?;
        answer.map_err(|e| store_err(format!("PostgreSQL at {}: {e}", self.shown)))
    }

    /// Bring the schema to this binary's version, in one transaction; refuse a newer one.
    fn migrate(&self) -> Result<()> {
        let known = MIGRATIONS.len() as i32;
        let found = self.run(move |c| async move {
            c.batch_execute("CREATE TABLE IF NOT EXISTS slipway_schema (version integer NOT NULL)").await?;
            let rows = c.query("SELECT version FROM slipway_schema", &[]).await?;
            Ok(rows.first().map(|r| r.get::<_, i32>(0)).unwrap_or(0))
        })?;
        if found > known {
            return Err(CtlError::failed(format!(
                "the database at {} has schema version {found}, newer than this slipctl's {known}",
                self.shown
            ))
            .fix("run the slipctl that wrote it (or a newer one); this one would not understand its records"));
        }
        if found == known {
            return Ok(());
        }
        self.run(move |c| async move {
            let mut sql = String::from("BEGIN; LOCK TABLE slipway_schema IN EXCLUSIVE MODE;");
            for (i, step) in MIGRATIONS.iter().enumerate().skip(found as usize) {
                sql.push_str(step);
                sql.push(';');
                sql.push_str(&format!("DELETE FROM slipway_schema; INSERT INTO slipway_schema VALUES ({});", i + 1));
            }
            sql.push_str("COMMIT;");
            c.batch_execute(&sql).await
        })
    }

    fn rows(&self, sql: &'static str, params: Vec<Box<dyn ToSql + Send + Sync>>) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        self.run(move |c| async move {
            let refs: Vec<&(dyn ToSql + Sync)> = params.iter().map(|p| &**p as &(dyn ToSql + Sync)).collect();
            let rows = c.query(sql, &refs).await?;
            Ok(rows.iter().map(|r| (r.get::<_, Vec<u8>>(0), r.get::<_, Vec<u8>>(1))).collect())
        })
    }

    fn value(&self, sql: &'static str, params: Vec<Box<dyn ToSql + Send + Sync>>) -> Result<Option<Vec<u8>>> {
        self.run(move |c| async move {
            let refs: Vec<&(dyn ToSql + Sync)> = params.iter().map(|p| &**p as &(dyn ToSql + Sync)).collect();
            Ok(c.query_opt(sql, &refs).await?.map(|r| r.get::<_, Vec<u8>>(0)))
        })
    }

    fn changed(&self, sql: &'static str, params: Vec<Box<dyn ToSql + Send + Sync>>) -> Result<u64> {
        self.run(move |c| async move {
            let refs: Vec<&(dyn ToSql + Sync)> = params.iter().map(|p| &**p as &(dyn ToSql + Sync)).collect();
            c.execute(sql, &refs).await
        })
    }
}

/// Connect, and drive the connection on this runtime until it ends.
async fn connect_with<T>(
    config: &tokio_postgres::Config,
    tls: T,
    closed: Arc<std::sync::atomic::AtomicBool>,
) -> std::result::Result<tokio_postgres::Client, tokio_postgres::Error>
where
    T: tokio_postgres::tls::MakeTlsConnect<tokio_postgres::Socket>,
    T::Stream: Send + 'static,
{
    let (client, connection) = config.connect(tls).await?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::error!("the PostgreSQL connection ended: {e}");
        }
        closed.store(true, std::sync::atomic::Ordering::SeqCst);
    });
    Ok(client)
}

fn b<T: ToSql + Send + Sync + 'static>(v: T) -> Box<dyn ToSql + Send + Sync> {
    Box::new(v)
}

/// `prefix`'s upper bound for a range scan: the smallest key greater than every key that
/// starts with it (`None`: no bound, the prefix is all 0xff or empty).
fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

impl Backend for Postgres {
    fn get(&self, tree: &str, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.value("SELECT value FROM kv WHERE tree = $1 AND key = $2", vec![b(tree.to_owned()), b(key.to_vec())])
    }

    fn put(&self, tree: &str, key: &[u8], value: &[u8]) -> Result<Option<Vec<u8>>> {
        // (The previous value, read in the same statement.)
        self.value(
            "WITH old AS (SELECT value FROM kv WHERE tree = $1 AND key = $2 FOR UPDATE), \
             up AS (INSERT INTO kv (tree, key, value) VALUES ($1, $2, $3) \
                    ON CONFLICT (tree, key) DO UPDATE SET value = EXCLUDED.value) \
             SELECT value FROM old",
            vec![b(tree.to_owned()), b(key.to_vec()), b(value.to_vec())],
        )
    }

    fn remove(&self, tree: &str, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.value(
            "DELETE FROM kv WHERE tree = $1 AND key = $2 RETURNING value",
            vec![b(tree.to_owned()), b(key.to_vec())],
        )
    }

    fn compare_and_swap(&self, tree: &str, key: &[u8], old: Option<&[u8]>, new: Option<&[u8]>) -> Result<bool> {
        let (t, k) = (tree.to_owned(), key.to_vec());
        let n = match (old, new) {
            (None, Some(new)) => self.changed(
                "INSERT INTO kv (tree, key, value) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
                vec![b(t), b(k), b(new.to_vec())],
            )?,
            (Some(old), Some(new)) => self.changed(
                "UPDATE kv SET value = $4 WHERE tree = $1 AND key = $2 AND value = $3",
                vec![b(t), b(k), b(old.to_vec()), b(new.to_vec())],
            )?,
            (Some(old), None) => self.changed(
                "DELETE FROM kv WHERE tree = $1 AND key = $2 AND value = $3",
                vec![b(t), b(k), b(old.to_vec())],
            )?,
            (None, None) => {
                return Ok(self.get(tree, key)?.is_none());
            }
        };
        Ok(n == 1)
    }

    fn scan(&self, tree: &str, prefix: &[u8], reverse: bool) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let (t, from) = (tree.to_owned(), prefix.to_vec());
        match (prefix_end(prefix), reverse) {
            (Some(end), false) => self.rows(
                "SELECT key, value FROM kv WHERE tree = $1 AND key >= $2 AND key < $3 ORDER BY key",
                vec![b(t), b(from), b(end)],
            ),
            (Some(end), true) => self.rows(
                "SELECT key, value FROM kv WHERE tree = $1 AND key >= $2 AND key < $3 ORDER BY key DESC",
                vec![b(t), b(from), b(end)],
            ),
            (None, false) => {
                self.rows("SELECT key, value FROM kv WHERE tree = $1 AND key >= $2 ORDER BY key", vec![b(t), b(from)])
            }
            (None, true) => self
                .rows("SELECT key, value FROM kv WHERE tree = $1 AND key >= $2 ORDER BY key DESC", vec![b(t), b(from)]),
        }
    }

    fn scan_after(&self, tree: &str, prefix: &[u8], after: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let (t, after) = (tree.to_owned(), after.to_vec());
        let rows = match prefix_end(prefix) {
            Some(end) => self.rows(
                "SELECT key, value FROM kv WHERE tree = $1 AND key > $2 AND key < $3 ORDER BY key",
                vec![b(t), b(after), b(end)],
            )?,
            None => {
                self.rows("SELECT key, value FROM kv WHERE tree = $1 AND key > $2 ORDER BY key", vec![b(t), b(after)])?
            }
        };
        Ok(rows.into_iter().take_while(|(k, _)| k.starts_with(prefix)).collect())
    }

    fn last(&self, tree: &str, prefix: &[u8]) -> Result<Option<(Vec<u8>, Vec<u8>)>> {
        let (t, from) = (tree.to_owned(), prefix.to_vec());
        let rows = match prefix_end(prefix) {
            Some(end) => self.rows(
                "SELECT key, value FROM kv WHERE tree = $1 AND key >= $2 AND key < $3 ORDER BY key DESC LIMIT 1",
                vec![b(t), b(from), b(end)],
            )?,
            None => self.rows(
                "SELECT key, value FROM kv WHERE tree = $1 AND key >= $2 ORDER BY key DESC LIMIT 1",
                vec![b(t), b(from)],
            )?,
        };
        Ok(rows.into_iter().next())
    }

    fn increment(&self, name: &str) -> Result<u64> {
        let value = self.value(
            "INSERT INTO kv (tree, key, value) VALUES ('meta', $1, int8send(1)) \
             ON CONFLICT (tree, key) DO UPDATE \
             SET value = int8send(('x' || encode(kv.value, 'hex'))::bit(64)::bigint + 1) \
             RETURNING value",
            vec![b(name.as_bytes().to_vec())],
        )?;
        value
            .and_then(|v| v.try_into().ok())
            .map(u64::from_be_bytes)
            .ok_or_else(|| store_err(format!("counter {name}")))
    }

    fn flush(&self) -> Result<()> {
        // Every statement committed when it returned.
        Ok(())
    }

    fn tree_names(&self) -> Result<Vec<String>> {
        self.run(|c| async move {
            let rows = c.query("SELECT DISTINCT tree FROM kv ORDER BY tree", &[]).await?;
            Ok(rows.iter().map(|r| r.get::<_, String>(0)).collect())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::prefix_end;

    #[test]
    fn prefix_bounds() {
        assert_eq!(prefix_end(b"ab"), Some(b"ac".to_vec()));
        assert_eq!(prefix_end(b"a\xff"), Some(b"b".to_vec()));
        assert_eq!(prefix_end(b"\xff\xff"), None);
        assert_eq!(prefix_end(b""), None);
    }
}
