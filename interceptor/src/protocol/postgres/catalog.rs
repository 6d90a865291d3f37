//! Where result columns come from: a table OID and attribute number → `schema.table.column`.
//!
//! Why this exists: masking rules name table columns (`customers.email`), while a result only
//! says "table 16384, column 3". The gateway asks the catalog over a connection of its own
//! (never the agent's, whose protocol state it must not disturb), logged in with the target's
//! credentials, and caches the answers per target and database. DDL that passes through the
//! gateway clears the cache; entries also expire after [`TTL`], for DDL done elsewhere.
//!
//! Without credentials (passthrough targets) there is no such connection: columns stay
//! unresolved and masking falls back to matching rules by column name, which masks more,
//! never less.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use bytes::BytesMut;
use tokio::io::AsyncWriteExt as _;

use super::{codec, startup, BoxIo, PgError};
use crate::{
    target::{Credentials, Target},
    tls,
};

/// How long a resolved name is trusted without having seen DDL.
pub const TTL: Duration = Duration::from_secs(60);
/// Bound on cached columns per database; the cache is emptied when full.
const MAX_ENTRIES: usize = 100_000;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A column of some table: its OID and attribute number.
pub type ColumnKey = (u32, i16);

/// What the cache knows about a column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Known {
    /// `schema.table.column`.
    Name(Arc<str>),
    /// The catalog has no such column (dropped since, or a system column).
    Absent,
    /// Never asked, or the answer expired.
    Unknown,
}

struct Cache {
    names: HashMap<ColumnKey, Option<Arc<str>>>,
    /// Function name → every function of that name (in any schema) is IMMUTABLE or STABLE.
    functions: HashMap<String, bool>,
    since: Instant,
}

/// The catalog of one database of one target.
pub struct Catalog {
    cache: Mutex<Cache>,
    /// The gateway's own session, opened on first use and reused.
    conn: tokio::sync::Mutex<Option<(BoxIo, BytesMut)>>,
}

/// Every catalog a gateway has consulted.
#[derive(Default)]
pub struct Catalogs {
    by_database: Mutex<HashMap<(String, String), Arc<Catalog>>>,
}

impl Catalogs {
    pub fn get(&self, target: &str, database: &str) -> Arc<Catalog> {
        self.by_database
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry((target.to_owned(), database.to_owned()))
            .or_insert_with(|| {
                Arc::new(Catalog {
                    cache: Mutex::new(Cache {
                        names: HashMap::new(),
                        functions: HashMap::new(),
                        since: Instant::now(),
                    }),
                    conn: tokio::sync::Mutex::new(None),
                })
            })
            .clone()
    }
}

/// How to reach the database a catalog describes.
pub struct Upstream<'a> {
    pub target: &'a Target,
    pub addr: SocketAddr,
    pub tls: &'a tls::Upstream,
    pub database: &'a str,
}

impl Catalog {
    fn cache(&self) -> std::sync::MutexGuard<'_, Cache> {
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if cache.since.elapsed() > TTL {
            cache.names.clear();
            cache.functions.clear();
            cache.since = Instant::now();
        }
        cache
    }

    pub fn known(&self, key: ColumnKey) -> Known {
        match self.cache().names.get(&key) {
            Some(Some(name)) => Known::Name(name.clone()),
            Some(None) => Known::Absent,
            None => Known::Unknown,
        }
    }

    /// Forgets every name (after DDL).
    pub fn invalidate(&self) {
        let mut cache = self.cache();
        cache.names.clear();
        cache.functions.clear();
        cache.since = Instant::now();
    }

    /// Whether every function called `name` (in any schema, so a shadowing one counts) is
    /// IMMUTABLE or STABLE, asking the server for names the cache does not know. Names the
    /// catalog has no function for are `false`.
    pub async fn side_effect_free(
        &self,
        upstream: &Upstream<'_>,
        names: &[String],
    ) -> Result<Vec<(String, bool)>, PgError> {
        let missing: Vec<&String> = {
            let cache = self.cache();
            names
                .iter()
                .filter(|n| !cache.functions.contains_key(*n))
                .collect()
        };
        if !missing.is_empty() {
            // Only names that can be written as a standard string literal (the session's
            // standard_conforming_strings is pinned on: a doubled quote is the only escape).
            let literals: Vec<String> = missing
                .iter()
                .filter(|n| !n.contains('\0'))
                .map(|n| format!("'{}'", n.replace('\'', "''")))
                .collect();
            if !literals.is_empty() {
                let sql = format!(
                    "SELECT p.proname, bool_and(p.provolatile IN ('i', 's'))::text \
                     FROM pg_catalog.pg_proc p WHERE p.proname IN ({}) GROUP BY 1",
                    literals.join(", ")
                );
                let rows = self.rows(upstream, &sql).await?;
                let mut cache = self.cache();
                if cache.functions.len() + missing.len() > MAX_ENTRIES {
                    cache.functions.clear();
                }
                for n in &missing {
                    cache.functions.insert((*n).clone(), false);
                }
                for row in rows {
                    if let [Some(name), Some(safe)] = row.as_slice() {
                        cache.functions.insert(name.clone(), safe == "true");
                    }
                }
            }
        }
        let cache = self.cache();
        Ok(names
            .iter()
            .map(|n| (n.clone(), cache.functions.get(n).copied().unwrap_or(false)))
            .collect())
    }

    /// Runs one catalog query on the gateway's own session (opened on first use).
    async fn rows(
        &self,
        upstream: &Upstream<'_>,
        sql: &str,
    ) -> Result<Vec<Vec<Option<String>>>, PgError> {
        let mut conn = self.conn.lock().await;
        let (io, buf) = match conn.as_mut() {
            Some(c) => c,
            None => conn.insert(connect(upstream).await?),
        };
        let result = simple_query(io, buf, sql, upstream.target.max_message_bytes).await;
        if result.is_err() {
            // The next lookup starts over with a new connection.
            *conn = None;
        }
        result
    }

    /// Looks up the columns the cache does not know yet.
    pub async fn resolve(
        &self,
        upstream: &Upstream<'_>,
        keys: &[ColumnKey],
    ) -> Result<(), PgError> {
        let missing: Vec<ColumnKey> = keys
            .iter()
            .copied()
            .filter(|k| k.0 != 0 && self.known(*k) == Known::Unknown)
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        let mut conn = self.conn.lock().await;
        let (io, buf) = match conn.as_mut() {
            Some(c) => c,
            None => conn.insert(connect(upstream).await?),
        };
        match query(io, buf, &missing, upstream.target.max_message_bytes).await {
            Ok(found) => {
                let mut cache = self.cache();
                if cache.names.len() + missing.len() > MAX_ENTRIES {
                    cache.names.clear();
                }
                for key in missing {
                    let name = found.get(&key).cloned();
                    cache.names.insert(key, name);
                }
                Ok(())
            }
            Err(e) => {
                // The next lookup starts over with a new connection.
                *conn = None;
                Err(e)
            }
        }
    }
}

async fn connect(upstream: &Upstream<'_>) -> Result<(BoxIo, BytesMut), PgError> {
    let Some(creds) = upstream
        .target
        .credentials
        .as_ref()
        .and_then(Credentials::database)
    else {
        return Err(PgError::Unsupported(
            "no credentials for the catalog".to_owned(),
        ));
    };
    let tcp = tokio::time::timeout(
        CONNECT_TIMEOUT,
        tokio::net::TcpStream::connect(upstream.addr),
    )
    .await
    .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
    let mut io = startup::connect_upstream_tls(tcp, upstream.tls, upstream.addr).await?;
    let mut params = vec![
        ("user".to_owned(), creds.user.clone()),
        ("database".to_owned(), upstream.database.to_owned()),
        (
            "application_name".to_owned(),
            "interceptor catalog".to_owned(),
        ),
    ];
    super::reading::pin_startup(&mut params).map_err(|e| PgError::Unsupported(e.to_string()))?;
    let login = startup::login(&mut io, creds, &params, upstream.target.max_message_bytes).await?;
    Ok((io, login.server_buf))
}

/// One round trip: the names of `keys`, by key.
async fn query(
    io: &mut BoxIo,
    buf: &mut BytesMut,
    keys: &[ColumnKey],
    max: usize,
) -> Result<HashMap<ColumnKey, Arc<str>>, PgError> {
    use std::fmt::Write as _;
    // Only integers we formatted ourselves go into the text: nothing here comes from a client.
    let mut sql = String::from(
        "SELECT a.attrelid::int8, a.attnum::int4, n.nspname, c.relname, a.attname \
         FROM pg_catalog.pg_attribute a \
         JOIN pg_catalog.pg_class c ON c.oid = a.attrelid \
         JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
         WHERE NOT a.attisdropped AND (a.attrelid::int8, a.attnum::int4) IN (",
    );
    for (i, (table, attnum)) in keys.iter().enumerate() {
        let _ = write!(sql, "{}({table},{attnum})", if i > 0 { "," } else { "" });
    }
    sql.push(')');
    let mut found = HashMap::new();
    for row in simple_query(io, buf, &sql, max).await? {
        let [Some(table), Some(attnum), Some(schema), Some(rel), Some(col)] = row.as_slice() else {
            continue;
        };
        if let (Ok(table), Ok(attnum)) = (table.parse::<u32>(), attnum.parse::<i16>()) {
            found.insert((table, attnum), Arc::from(format!("{schema}.{rel}.{col}")));
        }
    }
    Ok(found)
}

/// One simple Query on the gateway's own session: its rows, as text.
async fn simple_query(
    io: &mut BoxIo,
    buf: &mut BytesMut,
    sql: &str,
    max: usize,
) -> Result<Vec<Vec<Option<String>>>, PgError> {
    let mut out = BytesMut::new();
    codec::backend::message(b'Q', |b| {
        b.extend_from_slice(sql.as_bytes());
        b.extend_from_slice(&[0]);
    })
    .encode(&mut out);
    io.write_all(&out).await?;
    io.flush().await?;

    let mut rows = Vec::new();
    let mut failed = None;
    let mut values = Vec::new();
    loop {
        let msg = codec::read_message(io, buf, max)
            .await
            .map_err(PgError::Server)?;
        match msg.tag {
            b'D' => {
                codec::backend::data_row(&msg.body, &mut values).map_err(PgError::Server)?;
                rows.push(
                    values
                        .iter()
                        .map(|v| {
                            v.clone()
                                .and_then(|r| msg.body.get(r))
                                .map(|b| String::from_utf8_lossy(b).into_owned())
                        })
                        .collect(),
                );
            }
            b'E' => {
                failed = backend_error(&msg.body);
            }
            b'Z' => break,
            _ => {}
        }
    }
    match failed {
        Some(e) => Err(PgError::Unsupported(format!("catalog lookup failed: {e}"))),
        None => Ok(rows),
    }
}

fn backend_error(body: &[u8]) -> Option<String> {
    let (_, message) = codec::backend::error_fields(body);
    Some(message.unwrap_or_else(|| "error".to_owned()))
}
