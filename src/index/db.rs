//! One face for the two databases the index can live in: SQLite, a file beside the node's storage
//! (the default), or PostgreSQL, shared by several nodes. The index's SQL is written once, in the
//! dialect both accept (`?1` parameters, `ON CONFLICT`, `RETURNING`, a `rowid` column that
//! PostgreSQL's schema declares), and values cross as [`Value`]s, so a statement cannot mean one
//! thing on one database and another on the other.
//!
//! PostgreSQL is reached through `tokio-postgres`, each connection driven by a small runtime on a
//! thread of its own: the index is synchronous by design (its combining writer runs a batch on
//! the caller's thread), and one writer connection per node is what makes group commit work; a
//! pool would split the batches. The async client is what lets writes nobody waits for
//! ([`Db::defer`]) travel with the next request in one round trip (pipelining).

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use futures_util::future::join;
use tokio_postgres::types::{to_sql_checked, IsNull, ToSql, Type};
use tokio_postgres::{Client, Statement};
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::config::ClientTls;

/// A database error: the statement failed, or the connection is gone.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error(transparent)]
    Sqlite(#[from] rusqlite::Error),
    /// Not a `source`: the driver's own text may carry a DETAIL line with the values of a row
    /// (original UIDs), and error chains are printed whole at the edges.
    #[error("{}", postgres_message(.0))]
    Postgres(tokio_postgres::Error),
    /// A column did not hold what the code reads it as.
    #[error("column {column}: expected {expected}, found {found}")]
    Type { column: usize, expected: &'static str, found: String },
    #[error("the query returned no row")]
    NoRow,
    /// The connection's thread is gone.
    #[error("PostgreSQL connection: {0}")]
    Gone(String),
    /// The batch's commit failed: each of its callers is told so.
    #[error("the commit failed: {0}")]
    Commit(String),
}

impl From<tokio_postgres::Error> for DbError {
    fn from(e: tokio_postgres::Error) -> Self {
        DbError::Postgres(e)
    }
}

/// PostgreSQL's code and message, never its DETAIL (which can quote a row's values), rather than
/// tokio-postgres's `db error`; the client's own errors with their causes.
fn postgres_message(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("PostgreSQL: {}: {}", db.code().code(), db.message()),
        None => {
            let mut text = format!("PostgreSQL: {e}");
            // The causes say what to fix (an unknown issuer, a refused connection, a server
            // without TLS), but for a connection string's syntax: those quote its pieces, which
            // can be a password's.
            let syntax = e.to_string() == "invalid connection string";
            let mut cause = std::error::Error::source(e).filter(|_| !syntax);
            while let Some(c) = cause {
                text.push_str(&format!(": {c}"));
                cause = c.source();
            }
            text
        }
    }
}

/// A value written or read: the four kinds the index stores.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    Null,
    Int(i64),
    Text(String),
    Bytes(Vec<u8>),
}

macro_rules! from_int {
    ($($t:ty),*) => {$(
        impl From<$t> for Value {
            fn from(v: $t) -> Value {
                Value::Int(v as i64)
            }
        }
    )*};
}
from_int!(i64, i32, u32, u64, usize);

impl From<bool> for Value {
    fn from(v: bool) -> Value {
        Value::Int(v as i64)
    }
}
impl From<&str> for Value {
    fn from(v: &str) -> Value {
        Value::Text(v.to_string())
    }
}
impl From<String> for Value {
    fn from(v: String) -> Value {
        Value::Text(v)
    }
}
impl From<&String> for Value {
    fn from(v: &String) -> Value {
        Value::Text(v.clone())
    }
}
impl From<&Vec<u8>> for Value {
    fn from(v: &Vec<u8>) -> Value {
        Value::Bytes(v.clone())
    }
}
impl<T: Into<Value> + Clone> From<&Option<T>> for Value {
    fn from(v: &Option<T>) -> Value {
        v.clone().map_or(Value::Null, Into::into)
    }
}
impl<T: Into<Value>> From<Option<T>> for Value {
    fn from(v: Option<T>) -> Value {
        v.map_or(Value::Null, Into::into)
    }
}
impl From<&i64> for Value {
    fn from(v: &i64) -> Value {
        Value::Int(*v)
    }
}

/// The parameters of a statement: `args![a, b]`.
macro_rules! args {
    ($($v:expr),* $(,)?) => { &[$($crate::index::db::Value::from($v)),*][..] };
}
pub(crate) use args;

impl rusqlite::ToSql for Value {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        use rusqlite::types::{ToSqlOutput, ValueRef};
        Ok(ToSqlOutput::Borrowed(match self {
            Value::Null => ValueRef::Null,
            Value::Int(i) => ValueRef::Integer(*i),
            Value::Text(s) => ValueRef::Text(s.as_bytes()),
            Value::Bytes(b) => ValueRef::Blob(b),
        }))
    }
}

/// A value goes out as the type PostgreSQL inferred for its parameter: an integer into an `INT4`
/// or a `BOOLEAN`, a number into a text column as its digits, digits into a number.
impl ToSql for Value {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut bytes::BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        match (self, ty) {
            (Value::Null, _) => Ok(IsNull::Yes),
            (Value::Int(i), &Type::BOOL) => (*i != 0).to_sql(ty, out),
            (Value::Int(i), &Type::INT2) => i16::try_from(*i)?.to_sql(ty, out),
            (Value::Int(i), &Type::INT4) => i32::try_from(*i)?.to_sql(ty, out),
            (Value::Int(i), &Type::INT8) => i.to_sql(ty, out),
            (Value::Int(i), _) => i.to_string().as_str().to_sql(ty, out),
            // PostgreSQL infers one type per parameter: one used as text and as a number may
            // be asked for as either.
            (Value::Text(s), &Type::INT2 | &Type::INT4 | &Type::INT8) => {
                Value::Int(s.trim().parse()?).to_sql(ty, out)
            }
            (Value::Text(s), _) => s.as_str().to_sql(ty, out),
            (Value::Bytes(b), _) => b.as_slice().to_sql(ty, out),
        }
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    to_sql_checked!();
}

/// One row of a result.
#[derive(Debug, Clone)]
pub struct Row(Vec<Value>);

impl Row {
    pub fn into_values(self) -> Vec<Value> {
        self.0
    }

    pub fn get<T: FromValue>(&self, column: usize) -> Result<T, DbError> {
        let v = self.0.get(column).unwrap_or(&Value::Null);
        T::from_value(v).ok_or_else(|| DbError::Type {
            column,
            expected: std::any::type_name::<T>(),
            found: format!("{v:?}").chars().take(40).collect(),
        })
    }
}

/// What a [`Value`] can be read as.
pub trait FromValue: Sized {
    fn from_value(v: &Value) -> Option<Self>;
}

impl FromValue for i64 {
    fn from_value(v: &Value) -> Option<i64> {
        match v {
            Value::Int(i) => Some(*i),
            Value::Text(s) => s.parse().ok(),
            _ => None,
        }
    }
}
impl FromValue for u64 {
    fn from_value(v: &Value) -> Option<u64> {
        i64::from_value(v).and_then(|i| u64::try_from(i).ok())
    }
}
impl FromValue for u32 {
    fn from_value(v: &Value) -> Option<u32> {
        i64::from_value(v).and_then(|i| u32::try_from(i).ok())
    }
}
impl FromValue for bool {
    fn from_value(v: &Value) -> Option<bool> {
        i64::from_value(v).map(|i| i != 0)
    }
}
impl FromValue for String {
    fn from_value(v: &Value) -> Option<String> {
        match v {
            Value::Text(s) => Some(s.clone()),
            _ => None,
        }
    }
}
impl FromValue for Vec<u8> {
    fn from_value(v: &Value) -> Option<Vec<u8>> {
        match v {
            Value::Bytes(b) => Some(b.clone()),
            Value::Text(s) => Some(s.clone().into_bytes()),
            _ => None,
        }
    }
}
impl<T: FromValue> FromValue for Option<T> {
    fn from_value(v: &Value) -> Option<Option<T>> {
        match v {
            Value::Null => Some(None),
            v => T::from_value(v).map(Some),
        }
    }
}

/// Where the index lives.
#[derive(Clone, PartialEq, Eq)]
pub enum Location {
    Sqlite(std::path::PathBuf),
    /// A PostgreSQL database, in `schema` (one per project); rows this node stored carry `node`.
    Postgres {
        url: String,
        schema: String,
        node: String,
        /// TLS to the server; `None`: plain TCP.
        tls: Option<ClientTls>,
    },
}

/// The connection string holds a password: never printed.
impl fmt::Debug for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::Sqlite(path) => write!(f, "Sqlite({})", path.display()),
            Location::Postgres { schema, node, .. } => write!(f, "Postgres(schema {schema}, node {node})"),
        }
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::Sqlite(path) => write!(f, "{}", path.display()),
            Location::Postgres { schema, .. } => write!(f, "PostgreSQL schema {schema}"),
        }
    }
}

impl Location {
    /// The id the index stamps on the rows this node stores: empty in a SQLite index, which is
    /// one node's alone.
    pub fn node(&self) -> &str {
        match self {
            Location::Sqlite(_) => "",
            Location::Postgres { node, .. } => node,
        }
    }
}

/// The most rows [`Db::defer_rows`] puts in one statement; each count of rows is a statement of
/// its own in the caches.
pub const ROWS_PER_INSERT: usize = 32;

/// A PostgreSQL connection, on a thread of its own: its client is driven by a small runtime of
/// its own, which must never be started inside the node's (an index opened in `serve`, a probe
/// run from an async task). Each request is handed to that thread and answered.
pub struct Pg {
    tasks: mpsc::Sender<Task>,
    /// The connection is gone (the server or the network closed it, or its thread ended): set by
    /// the connection's thread before it answers, so that asking costs no hand-off.
    closed: Arc<AtomicBool>,
    /// Writes that go out with the next request ([`Db::defer`]).
    deferred: Vec<Deferred>,
}

type Task = Box<dyn FnOnce(&mut Session) + Send>;

/// A write whose answer nobody waits for but the next request's.
struct Deferred {
    sql: String,
    args: Vec<Value>,
}

/// The connection and its prepared statements, so that a statement run again costs one round
/// trip, not two. Lives on the connection's thread.
struct Session {
    runtime: tokio::runtime::Runtime,
    /// `None` only while the session is dropped.
    client: Option<Client>,
    /// The connection's task, driven while a request is waited for (the runtime runs only then).
    connection: Option<tokio::task::JoinHandle<()>>,
    /// Why the server or the network ended the connection: the requests made after that are
    /// told only that it is closed.
    ended: Arc<std::sync::Mutex<Option<String>>>,
    statements: HashMap<String, Statement>,
    closed: Arc<AtomicBool>,
}

/// Polled once more with no client left, a connection ends as the protocol says (Terminate, and
/// TLS's close_notify) rather than by the socket closing under the server.
impl Drop for Session {
    fn drop(&mut self) {
        self.statements.clear();
        drop(self.client.take());
        if let Some(connection) = self.connection.take() {
            let _ = self.runtime.block_on(tokio::time::timeout(Duration::from_secs(1), connection));
        }
    }
}

/// Drive `connection` on `runtime`, keeping why it ended in `ended`.
fn drive(
    runtime: &tokio::runtime::Runtime,
    connection: impl std::future::Future<Output = Result<(), tokio_postgres::Error>> + Send + 'static,
    ended: Arc<std::sync::Mutex<Option<String>>>,
) -> tokio::task::JoinHandle<()> {
    runtime.spawn(async move {
        if let Err(e) = connection.await {
            if let Ok(mut ended) = ended.lock() {
                *ended = Some(postgres_message(&e));
            }
        }
    })
}

/// Marks the connection closed when its thread ends, however it ends.
struct ClosedOnExit(Arc<AtomicBool>);

impl Drop for ClosedOnExit {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Release);
    }
}

/// How long a connection attempt, and data the server's host does not acknowledge, may take
/// before the database counts as unreachable: an instance then fails with 0xA700 rather than
/// waiting without end. (A server process that hangs while its host acknowledges is not bounded.)
const PG_TIMEOUT: Duration = Duration::from_secs(10);

impl Pg {
    fn connect(url: &str, schema: &str, tls: Option<&ClientTls>) -> Result<Pg, DbError> {
        let (tasks, inbox) = mpsc::channel::<Task>();
        let (ready, connected) = mpsc::sync_channel(1);
        let (url, schema, tls) = (url.to_string(), schema.to_string(), tls.cloned());
        let closed = Arc::new(AtomicBool::new(false));
        let flag = closed.clone();
        std::thread::Builder::new()
            .name("phi-postgres".into())
            .spawn(move || {
                let _closed_on_exit = ClosedOnExit(flag.clone());
                let mut session = match Session::connect(&url, &schema, tls, flag) {
                    Ok(session) => session,
                    Err(e) => {
                        let _ = ready.send(Err(e));
                        return;
                    }
                };
                let _ = ready.send(Ok(()));
                // Ends when the last sender (the `Pg`) is dropped.
                for task in inbox {
                    task(&mut session);
                }
            })
            .map_err(|e| DbError::Gone(format!("cannot start its thread: {e}")))?;
        connected.recv().map_err(|_| DbError::Gone("its thread stopped".into()))??;
        Ok(Pg { tasks, closed, deferred: Vec::new() })
    }

    /// Hand `f` to the connection's thread without waiting for it.
    fn spawn(&self, f: impl FnOnce(&mut Session) + Send + 'static) -> Result<(), DbError> {
        self.tasks.send(Box::new(f)).map_err(|_| DbError::Gone("its thread stopped".into()))
    }

    /// Run `f` on the connection's thread, with the writes deferred until now, and wait for its
    /// answer.
    fn run<T: Send + 'static>(
        &mut self,
        f: impl FnOnce(&mut Session, Vec<Deferred>) -> Result<T, DbError> + Send + 'static,
    ) -> Result<T, DbError> {
        let deferred = std::mem::take(&mut self.deferred);
        let (answer, answered) = mpsc::sync_channel(1);
        self.spawn(move |session| {
            let result = f(session, deferred);
            session.note_closed();
            let _ = answer.send(result);
        })?;
        answered.recv().map_err(|_| DbError::Gone("its thread stopped".into()))?
    }
}

impl Session {
    fn connect(
        url: &str,
        schema: &str,
        tls: Option<ClientTls>,
        closed: Arc<AtomicBool>,
    ) -> Result<Session, DbError> {
        let mut config: tokio_postgres::Config = url.parse()?;
        config
            .connect_timeout(PG_TIMEOUT)
            .keepalives(true)
            .keepalives_idle(Duration::from_secs(10))
            .tcp_user_timeout(PG_TIMEOUT)
            .application_name("dicom-anon-gateway");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| DbError::Gone(format!("cannot start its runtime: {e}")))?;
        let ended = Arc::new(std::sync::Mutex::new(None));
        let (client, connection) = match tls {
            None => {
                let (client, connection) = runtime.block_on(config.connect(tokio_postgres::NoTls))?;
                (client, drive(&runtime, connection, ended.clone()))
            }
            Some(tls) => {
                let rustls = crate::scp::tls_client_config("index.tls", &tls)
                    .map_err(|e| DbError::Gone(e.to_string()))?;
                // Required, not the URL's default "prefer": a server that offers no TLS is refused.
                config.ssl_mode(tokio_postgres::config::SslMode::Require);
                let connect = MakeRustlsConnect::new(rustls.as_ref().clone());
                let (client, connection) = runtime.block_on(config.connect(connect))?;
                (client, drive(&runtime, connection, ended.clone()))
            }
        };
        let mut session = Session {
            runtime,
            client: Some(client),
            connection: Some(connection),
            ended,
            statements: HashMap::new(),
            closed,
        };
        session.batch(
            Vec::new(),
            &format!(
                "CREATE SCHEMA IF NOT EXISTS {schema}; SET search_path TO {schema}; SET synchronous_commit TO on",
                schema = quote_ident(schema)
            ),
        )?;
        Ok(session)
    }

    fn client(&self) -> &Client {
        self.client.as_ref().expect("a session's client is taken only when it is dropped")
    }

    fn note_closed(&self) {
        self.closed.store(self.client().is_closed(), Ordering::Release);
    }

    /// `e`, or why the connection ended where `e` says only that it is closed.
    fn explain(&self, e: DbError) -> DbError {
        match &e {
            DbError::Postgres(pg) if pg.is_closed() => {
                match self.ended.lock().ok().and_then(|ended| ended.clone()) {
                    Some(why) => DbError::Gone(format!("closed ({why})")),
                    None => e,
                }
            }
            _ => e,
        }
    }

    fn statement(&mut self, sql: &str) -> Result<Statement, DbError> {
        if let Some(s) = self.statements.get(sql) {
            return Ok(s.clone());
        }
        let prepared = self.runtime.block_on(self.client().prepare(&dollar_parameters(sql)));
        let s = prepared.map_err(|e| self.explain(e.into()))?;
        self.statements.insert(sql.to_string(), s.clone());
        Ok(s)
    }

    /// The deferred writes, prepared (each statement once a session) so that they can be sent
    /// together.
    fn prepare(&mut self, deferred: Vec<Deferred>) -> Result<Vec<(Statement, Vec<Value>)>, DbError> {
        deferred.into_iter().map(|d| Ok((self.statement(&d.sql)?, d.args))).collect()
    }

    /// Run `request` with the deferred writes sent ahead of it, all at once: one round trip.
    /// The first failure is the answer (after a failed write PostgreSQL refuses the rest of the
    /// transaction, and the request's own error would only say so).
    fn pipelined<'s, T>(
        &'s mut self,
        deferred: Vec<Deferred>,
        request: impl FnOnce(
            &'s Client,
        ) -> std::pin::Pin<
            Box<dyn std::future::Future<Output = Result<T, tokio_postgres::Error>> + 's>,
        >,
    ) -> Result<T, DbError> {
        let writes = self.prepare(deferred)?;
        let client = self.client();
        let sent = in_order(writes.iter().map(|(s, args)| client.execute_raw(s, args.iter())));
        // `join` polls the writes first: requests leave in the order they are first polled.
        let (written, answer) = self.runtime.block_on(join(sent, request(client)));
        let first_failure = written.into_iter().find_map(Result::err);
        match first_failure.map_or(answer, Err) {
            Ok(answer) => Ok(answer),
            Err(e) => Err(self.explain(e.into())),
        }
    }

    fn execute(&mut self, deferred: Vec<Deferred>, sql: &str, args: Vec<Value>) -> Result<u64, DbError> {
        let s = self.statement(sql)?;
        self.pipelined(deferred, move |c| Box::pin(async move { c.execute_raw(&s, args.iter()).await }))
    }

    fn query(&mut self, deferred: Vec<Deferred>, sql: &str, args: Vec<Value>) -> Result<Vec<Row>, DbError> {
        let s = self.statement(sql)?;
        let rows =
            self.pipelined(deferred, move |c| Box::pin(async move { c.query(&s, &params(&args)).await }))?;
        rows.iter().map(pg_row).collect()
    }

    fn batch(&mut self, deferred: Vec<Deferred>, sql: &str) -> Result<(), DbError> {
        let sql = sql.to_string();
        self.pipelined(deferred, move |c| Box::pin(async move { c.batch_execute(&sql).await }))
    }

    /// Send each row into `out` as it arrives; stops when nobody reads any more.
    fn stream(
        &mut self,
        deferred: Vec<Deferred>,
        sql: &str,
        args: &[Value],
        out: &mpsc::SyncSender<Result<Row, DbError>>,
    ) -> Result<(), DbError> {
        use futures_util::StreamExt;
        let s = self.statement(sql)?;
        let rows =
            self.pipelined(deferred, |c| Box::pin(async move { c.query_raw(&s, args.iter()).await }))?;
        let mut rows = std::pin::pin!(rows);
        while let Some(r) = self.runtime.block_on(rows.next()) {
            if out.send(r.map_err(DbError::from).and_then(|r| pg_row(&r))).is_err() {
                break;
            }
        }
        Ok(())
    }
}

/// Run `futures` to their end, each first polled in the order given: tokio-postgres sends a
/// request when it is first polled, so that is the order they reach the server (`join_all`
/// keeps it only up to 30 futures).
async fn in_order<F: std::future::Future>(futures: impl IntoIterator<Item = F>) -> Vec<F::Output> {
    use futures_util::future::{maybe_done, MaybeDone};
    use std::future::Future;
    let mut all: Vec<std::pin::Pin<Box<MaybeDone<F>>>> =
        futures.into_iter().map(|f| Box::pin(maybe_done(f))).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for f in &mut all {
            pending |= f.as_mut().poll(cx).is_pending();
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    all.iter_mut().map(|f| f.as_mut().take_output().expect("every future is done")).collect()
}

/// A statement's parameters as the client takes them.
fn params(args: &[Value]) -> Vec<&(dyn ToSql + Sync)> {
    args.iter().map(|a| a as _).collect()
}

/// `"name"`, with any `"` doubled: a schema name from the configuration is never SQL.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// `'text'`, with any `'` doubled.
pub fn quote_literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// `?1` becomes `$1`: the index's SQL holds no `?` but in parameters.
fn dollar_parameters(sql: &str) -> String {
    sql.replace('?', "$")
}

/// An open connection to either database.
pub enum Db {
    Sqlite(rusqlite::Connection),
    Postgres(Box<Pg>),
}

impl Db {
    /// A connection that only reads, beside the node's writer: SQLite read-only (WAL lets it
    /// read while the writer commits), or a PostgreSQL session of its own.
    pub fn reader(location: &Location) -> Result<Db, DbError> {
        match location {
            Location::Sqlite(path) => {
                use rusqlite::OpenFlags;
                let conn = rusqlite::Connection::open_with_flags(
                    path,
                    OpenFlags::SQLITE_OPEN_READ_ONLY
                        | OpenFlags::SQLITE_OPEN_NO_MUTEX
                        | OpenFlags::SQLITE_OPEN_URI,
                )?;
                conn.busy_timeout(Duration::from_secs(5))?;
                Ok(Db::Sqlite(conn))
            }
            Location::Postgres { url, schema, tls, .. } => Db::postgres(url, schema, tls.as_ref()),
        }
    }

    /// Run `f` on this connection to `location`, made again first if PostgreSQL is known to have
    /// closed it, and once more on a new session if `f` is what finds it closed (the server
    /// restarted since the last request, which only a request tells). `f` must be safe to run
    /// twice: a read, or the start of a transaction.
    pub fn reconnecting<T, E: From<DbError>>(
        &mut self,
        location: &Location,
        f: impl Fn(&mut Db) -> Result<T, E>,
    ) -> Result<T, E> {
        let Location::Postgres { url, schema, tls, .. } = location else { return f(self) };
        // Writes waiting to go out with the request would be sent twice, or lost with the
        // session: a request that carries them gets no second try.
        if matches!(self, Db::Postgres(pg) if !pg.deferred.is_empty()) {
            return f(self);
        }
        if self.is_closed() {
            *self = Db::postgres(url, schema, tls.as_ref())?;
        }
        match f(self) {
            Err(_) if self.is_closed() => {
                *self = Db::postgres(url, schema, tls.as_ref())?;
                f(self)
            }
            done => done,
        }
    }

    /// A session on the PostgreSQL database at `url`, in `schema` (made if missing).
    pub fn postgres(url: &str, schema: &str, tls: Option<&ClientTls>) -> Result<Db, DbError> {
        Ok(Db::Postgres(Box::new(Pg::connect(url, schema, tls)?)))
    }

    /// Run a statement; returns how many rows it changed.
    pub fn execute(&mut self, sql: &str, args: &[Value]) -> Result<usize, DbError> {
        match self {
            Db::Sqlite(c) => Ok(c.prepare_cached(sql)?.execute(rusqlite::params_from_iter(args))?),
            Db::Postgres(pg) => {
                let (sql, args) = (sql.to_string(), args.to_vec());
                Ok(pg.run(move |s, deferred| s.execute(deferred, &sql, args))? as usize)
            }
        }
    }

    /// A write whose answer nobody reads at once: run now on SQLite; on PostgreSQL sent with the
    /// connection's next request, in the same round trip, whose answer is then the first failure
    /// among them. Whoever defers a write makes a request or calls [`Db::flush`] before relying
    /// on it, or [`Db::discard`]s it.
    pub fn defer(&mut self, sql: &str, args: &[Value]) -> Result<(), DbError> {
        match self {
            Db::Sqlite(_) => self.execute(sql, args).map(drop),
            Db::Postgres(pg) => {
                pg.deferred.push(Deferred { sql: sql.to_string(), args: args.to_vec() });
                Ok(())
            }
        }
    }

    /// Send the deferred writes now and wait for their answer.
    pub fn flush(&mut self) -> Result<(), DbError> {
        match self {
            Db::Postgres(pg) if !pg.deferred.is_empty() => {
                pg.run(|s, deferred| s.pipelined(deferred, |_| Box::pin(async { Ok(()) })))
            }
            _ => Ok(()),
        }
    }

    /// Drop the deferred writes unsent (their job failed before them).
    pub fn discard(&mut self) {
        if let Db::Postgres(pg) = self {
            pg.deferred.clear();
        }
    }

    /// Insert rows of `width` values each (`values`, row after row) as `INSERT INTO {into}
    /// VALUES (...), (...) {tail}`, deferred ([`Db::defer`]), up to [`ROWS_PER_INSERT`] rows a
    /// statement: an instance's UID mappings cost no round trip of their own.
    pub fn defer_rows(
        &mut self,
        into: &str,
        tail: &str,
        width: usize,
        values: &[Value],
    ) -> Result<(), DbError> {
        for chunk in values.chunks(width * ROWS_PER_INSERT) {
            let rows: Vec<String> = (0..chunk.len() / width)
                .map(|r| {
                    let row: Vec<String> = (1..=width).map(|c| format!("?{}", r * width + c)).collect();
                    format!("({})", row.join(", "))
                })
                .collect();
            self.defer(&format!("INSERT INTO {into} VALUES {} {tail}", rows.join(", ")), chunk)?;
        }
        Ok(())
    }

    /// Run a query; returns every row.
    pub fn query(&mut self, sql: &str, args: &[Value]) -> Result<Vec<Row>, DbError> {
        match self {
            Db::Sqlite(c) => {
                let mut stmt = c.prepare_cached(sql)?;
                let width = stmt.column_count();
                let mut rows = stmt.query(rusqlite::params_from_iter(args))?;
                let mut out = Vec::new();
                while let Some(r) = rows.next()? {
                    out.push(Row((0..width).map(|i| sqlite_value(r, i)).collect::<Result<_, _>>()?));
                }
                Ok(out)
            }
            Db::Postgres(pg) => {
                let (sql, args) = (sql.to_string(), args.to_vec());
                pg.run(move |s, deferred| s.query(deferred, &sql, args))
            }
        }
    }

    /// Hand each row to `f` as it is read: an export of the whole audit trail is not held in
    /// memory at once.
    pub fn query_each<E: From<DbError>>(
        &mut self,
        sql: &str,
        args: &[Value],
        mut f: impl FnMut(Row) -> Result<(), E>,
    ) -> Result<(), E> {
        match self {
            Db::Sqlite(c) => {
                let mut stmt = c.prepare_cached(sql).map_err(DbError::from)?;
                let width = stmt.column_count();
                let mut rows = stmt.query(rusqlite::params_from_iter(args)).map_err(DbError::from)?;
                while let Some(r) = rows.next().map_err(DbError::from)? {
                    f(Row((0..width).map(|i| sqlite_value(r, i)).collect::<Result<_, _>>()?))?;
                }
                Ok(())
            }
            Db::Postgres(pg) => {
                let (into, rows) = mpsc::sync_channel(256);
                let (sql, args) = (sql.to_string(), args.to_vec());
                let deferred = std::mem::take(&mut pg.deferred);
                pg.spawn(move |s| {
                    let streamed = s.stream(deferred, &sql, &args, &into);
                    s.note_closed();
                    if let Err(e) = streamed {
                        let _ = into.send(Err(e));
                    }
                })?;
                for row in rows {
                    f(row?)?;
                }
                Ok(())
            }
        }
    }

    /// The first row, if any.
    pub fn query_opt(&mut self, sql: &str, args: &[Value]) -> Result<Option<Row>, DbError> {
        Ok(self.query(sql, args)?.into_iter().next())
    }

    /// The first row; [`DbError::NoRow`] when there is none.
    pub fn query_one(&mut self, sql: &str, args: &[Value]) -> Result<Row, DbError> {
        self.query_opt(sql, args)?.ok_or(DbError::NoRow)
    }

    /// Statements with no parameters and no result (transactions, schema), in one round trip.
    pub fn batch(&mut self, sql: &str) -> Result<(), DbError> {
        match self {
            Db::Sqlite(c) => Ok(c.execute_batch(sql)?),
            Db::Postgres(pg) => {
                let sql = sql.to_string();
                pg.run(move |s, deferred| s.batch(deferred, &sql))
            }
        }
    }

    /// A PostgreSQL connection that the server or the network closed: it must be made again.
    pub fn is_closed(&self) -> bool {
        match self {
            Db::Sqlite(_) => false,
            Db::Postgres(pg) => pg.closed.load(Ordering::Acquire),
        }
    }
}

fn sqlite_value(r: &rusqlite::Row<'_>, i: usize) -> Result<Value, DbError> {
    use rusqlite::types::ValueRef;
    Ok(match r.get_ref(i)? {
        ValueRef::Null => Value::Null,
        ValueRef::Integer(v) => Value::Int(v),
        ValueRef::Real(v) => Value::Int(v as i64),
        ValueRef::Text(t) => Value::Text(String::from_utf8_lossy(t).into_owned()),
        ValueRef::Blob(b) => Value::Bytes(b.to_vec()),
    })
}

fn pg_row(r: &tokio_postgres::Row) -> Result<Row, DbError> {
    let mut out = Vec::with_capacity(r.len());
    for (i, column) in r.columns().iter().enumerate() {
        let v = match *column.type_() {
            Type::INT2 => r.try_get::<_, Option<i16>>(i)?.map(|v| Value::Int(v.into())),
            Type::INT4 => r.try_get::<_, Option<i32>>(i)?.map(|v| Value::Int(v.into())),
            Type::INT8 => r.try_get::<_, Option<i64>>(i)?.map(Value::Int),
            Type::BOOL => r.try_get::<_, Option<bool>>(i)?.map(|v| Value::Int(v.into())),
            Type::BYTEA => r.try_get::<_, Option<Vec<u8>>>(i)?.map(Value::Bytes),
            _ => r.try_get::<_, Option<String>>(i)?.map(Value::Text),
        };
        out.push(v.unwrap_or(Value::Null));
    }
    Ok(Row(out))
}
