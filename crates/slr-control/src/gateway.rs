//! Gateway tables (F12): the next-level gateways a router may choose from.
//!
//! A router's children (lower routers, or host servers at the site level) are listed in a
//! gateway table: where to tunnel to (`address`), which virtual subnets each may serve
//! (`subnets`, also what the parent accepts in its reports), a static `cost` and free-form
//! `labels` for the operator's cost function. The table comes either from the daemon's own
//! configuration (a static list; [`GatewayEntry`] deserializes from TOML as well) or from a
//! **network configuration site** over HTTPS ([`GatewayFetcher`], [`serve_gateway_site`]).
//!
//! # JSON schema
//!
//! ```json
//! {
//!   "version": 7,
//!   "children": [
//!     {"name": "as1", "address": "10.200.3.2", "subnets": ["10.99.0.0/16"],
//!      "cost": 10.0, "labels": {"region": "east"}}
//!   ]
//! }
//! ```
//!
//! | key | type | meaning |
//! |---|---|---|
//! | `version` | integer >= 0, required | the table's version, set by the operator (informative: a change of content is a change) |
//! | `children` | array, required | the gateways, possibly empty |
//! | `children[].name` | string, required | the node name: its certificate's dNSName; lowercase DNS labels (`site-a`), unique in the table |
//! | `children[].address` | IPv4 address string, required | the gateway's underlay address (tunnel destination); not 0.0.0.0, broadcast or multicast |
//! | `children[].subnets` | array of `"a.b.c.d/len"`, required, non-empty | the virtual subnets it may serve; host bits must be zero |
//! | `children[].cost` | number >= 0 and finite, default 1.0 | the static cost of choosing it |
//! | `children[].labels` | object of string to string, default `{}` | free-form attributes (`region`, ...) |
//!
//! Unknown keys are refused (a typo is an error, not a silent default). In TOML the same entry
//! is a `[[children]]` table with the same keys.
//!
//! # Fetching
//!
//! [`GatewayFetcher`] fetches `https://ADDR:PORT/gateways.json` every refresh period, verifying
//! the site's certificate against the operator CA and the configured server name. It keeps the
//! **last good table** whenever the site is unreachable (`fetch_errors_unreachable`: no HTTP
//! response) or serves anything but a valid table (`fetch_errors_invalid`: a status other than
//! 200, an oversized body, invalid JSON or an invalid table), and publishes a new table on a
//! `watch` channel only when its content changed.

use std::collections::{BTreeMap, HashSet};
use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full, Limited};
use hyper_util::rt::{TokioIo, TokioTimer};
use rustls::pki_types::ServerName;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tracing::{debug, info, warn};

use crate::pki::{is_valid_node_name, Identity};
use crate::subnet::Subnet;
use crate::ControlError;

/// One gateway: a child router or host server this router may choose.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayEntry {
    /// The node name (its certificate's dNSName).
    pub name: String,
    /// The underlay address to tunnel to.
    pub address: Ipv4Addr,
    /// The virtual subnets it may serve.
    pub subnets: Vec<Subnet>,
    /// The static cost of choosing it (>= 0, finite).
    #[serde(default = "default_cost")]
    pub cost: f64,
    /// Free-form attributes for the cost function.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

fn default_cost() -> f64 {
    1.0
}

/// A validated gateway table.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayTable {
    /// The operator's version of the table.
    pub version: u64,
    /// The gateways.
    pub children: Vec<GatewayEntry>,
}

/// Why a gateway table was refused.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum GatewayError {
    /// Not valid JSON, a missing or unknown key, or a value of the wrong type or syntax (bad
    /// address, bad subnet); the message has the line and column.
    #[error("gateway table: {0}")]
    Syntax(String),
    /// Two entries have the same name.
    #[error("gateway table: duplicate gateway name {0:?}")]
    DuplicateName(String),
    /// A name is not a valid node name.
    #[error(
        "gateway table: invalid gateway name {0:?}: expected lowercase DNS labels of [a-z0-9-]"
    )]
    InvalidName(String),
    /// An address that cannot be a gateway.
    #[error("gateway table: gateway {name:?}: address {address} is not a unicast address")]
    BadAddress {
        /// The gateway.
        name: String,
        /// The address.
        address: Ipv4Addr,
    },
    /// A gateway without subnets.
    #[error("gateway table: gateway {0:?} has no subnets")]
    NoSubnets(String),
    /// A negative or non-finite cost.
    #[error("gateway table: gateway {name:?}: cost {cost} must be finite and >= 0")]
    BadCost {
        /// The gateway.
        name: String,
        /// The cost.
        cost: f64,
    },
    /// An empty label key.
    #[error("gateway table: gateway {0:?} has an empty label key")]
    EmptyLabel(String),
}

impl GatewayTable {
    /// Parses and validates a table in the JSON schema of this module.
    pub fn from_json(text: &[u8]) -> Result<Self, GatewayError> {
        let table: GatewayTable =
            serde_json::from_slice(text).map_err(|e| GatewayError::Syntax(e.to_string()))?;
        table.validate()?;
        Ok(table)
    }

    /// A validated table of `children` (e.g. the static list of the daemon's configuration).
    pub fn from_entries(version: u64, children: Vec<GatewayEntry>) -> Result<Self, GatewayError> {
        let table = GatewayTable { version, children };
        table.validate()?;
        Ok(table)
    }

    /// Checks what the types do not: unique valid names, unicast addresses, at least one
    /// subnet, finite non-negative costs, non-empty label keys.
    pub fn validate(&self) -> Result<(), GatewayError> {
        let mut names = HashSet::new();
        for entry in &self.children {
            entry.validate()?;
            if !names.insert(entry.name.as_str()) {
                return Err(GatewayError::DuplicateName(entry.name.clone()));
            }
        }
        Ok(())
    }

    /// The entry named `name`.
    pub fn get(&self, name: &str) -> Option<&GatewayEntry> {
        self.children.iter().find(|e| e.name == name)
    }

    /// The table as JSON (in the schema of this module).
    pub fn to_json(&self) -> String {
        // Serializing these types cannot fail: string keys, finite numbers.
        serde_json::to_string_pretty(self).unwrap_or_default()
    }
}

impl GatewayEntry {
    /// Checks one entry (see [`GatewayTable::validate`]).
    pub fn validate(&self) -> Result<(), GatewayError> {
        if !is_valid_node_name(&self.name) {
            return Err(GatewayError::InvalidName(self.name.clone()));
        }
        let a = self.address;
        if a.is_unspecified() || a.is_broadcast() || a.is_multicast() {
            return Err(GatewayError::BadAddress {
                name: self.name.clone(),
                address: a,
            });
        }
        if self.subnets.is_empty() {
            return Err(GatewayError::NoSubnets(self.name.clone()));
        }
        if !self.cost.is_finite() || self.cost < 0.0 {
            return Err(GatewayError::BadCost {
                name: self.name.clone(),
                cost: self.cost,
            });
        }
        if self.labels.keys().any(String::is_empty) {
            return Err(GatewayError::EmptyLabel(self.name.clone()));
        }
        Ok(())
    }
}

/// Settings of a [`GatewayFetcher`].
#[derive(Clone, Debug)]
pub struct FetcherConfig {
    /// The site's address.
    pub addr: SocketAddr,
    /// The site's certificate name (dNSName), checked against the operator CA.
    pub server_name: String,
    /// The path to fetch. Default `/gateways.json`.
    pub path: String,
    /// Time between fetches. Default 30 s.
    pub refresh: Duration,
    /// Time allowed for one fetch. Default 5 s.
    pub timeout: Duration,
    /// Largest accepted table, in bytes. Default 4 MiB.
    pub max_body_bytes: usize,
}

impl FetcherConfig {
    /// The defaults for the site `server_name` at `addr`.
    pub fn new(addr: SocketAddr, server_name: &str) -> Self {
        FetcherConfig {
            addr,
            server_name: server_name.to_owned(),
            path: "/gateways.json".to_owned(),
            refresh: Duration::from_secs(30),
            timeout: Duration::from_secs(5),
            max_body_bytes: 4 << 20,
        }
    }
}

/// Counters of a [`GatewayFetcher`].
#[derive(Debug, Default)]
pub struct FetcherCounters {
    fetches_ok: AtomicU64,
    fetch_errors_unreachable: AtomicU64,
    fetch_errors_invalid: AtomicU64,
    changes: AtomicU64,
}

impl FetcherCounters {
    /// Fetches that returned a valid table (changed or not).
    pub fn fetches_ok(&self) -> u64 {
        self.fetches_ok.load(Ordering::Relaxed)
    }

    /// Fetches that got no HTTP response (connect, TLS, timeout).
    pub fn fetch_errors_unreachable(&self) -> u64 {
        self.fetch_errors_unreachable.load(Ordering::Relaxed)
    }

    /// Fetches that got a response that is not a valid table.
    pub fn fetch_errors_invalid(&self) -> u64 {
        self.fetch_errors_invalid.load(Ordering::Relaxed)
    }

    /// Times a fetched table differed from the previous one.
    pub fn changes(&self) -> u64 {
        self.changes.load(Ordering::Relaxed)
    }
}

/// Why a fetch failed (the last good table is kept).
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum FetchError {
    /// No HTTP response: connection, TLS or timeout.
    #[error("gateway site unreachable: {0}")]
    Unreachable(String),
    /// A response that is not a valid table.
    #[error("gateway site served an invalid table: {0}")]
    Invalid(String),
}

/// Fetches the gateway table from a network configuration site over HTTPS, keeping the last
/// good one. The daemon subscribes to [`GatewayFetcher::subscribe`] and spawns
/// [`GatewayFetcher::run`].
pub struct GatewayFetcher {
    config: FetcherConfig,
    server_name: ServerName<'static>,
    tls: Arc<rustls::ClientConfig>,
    counters: Arc<FetcherCounters>,
    table: watch::Sender<Option<Arc<GatewayTable>>>,
}

impl std::fmt::Debug for GatewayFetcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewayFetcher")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl GatewayFetcher {
    /// A fetcher trusting the operator CA of `identity` (whose certificate it presents if the
    /// site asks), with no table yet.
    pub fn new(identity: &Identity, config: FetcherConfig) -> Result<Self, ControlError> {
        let server_name = ServerName::try_from(config.server_name.clone())
            .map_err(|_| ControlError::InvalidName(config.server_name.clone()))?;
        Ok(GatewayFetcher {
            tls: crate::tls::client_config(identity, b"http/1.1")?,
            server_name,
            config,
            counters: Arc::default(),
            table: watch::channel(None).0,
        })
    }

    /// Starts from `table` (e.g. a cached copy) until the first good fetch.
    pub fn with_initial_table(self, table: GatewayTable) -> Self {
        self.table.send_replace(Some(Arc::new(table)));
        self
    }

    /// A receiver of the current table; it sees a change whenever the content changes.
    pub fn subscribe(&self) -> watch::Receiver<Option<Arc<GatewayTable>>> {
        self.table.subscribe()
    }

    /// The last good table, if any.
    pub fn table(&self) -> Option<Arc<GatewayTable>> {
        self.table.borrow().clone()
    }

    /// The counters.
    pub fn counters(&self) -> Arc<FetcherCounters> {
        self.counters.clone()
    }

    /// Fetches now; on success publishes the table if it changed and returns whether it did.
    /// On failure counts, logs and keeps the last good table.
    pub async fn fetch_once(&self) -> Result<bool, FetchError> {
        let result = match tokio::time::timeout(self.config.timeout, self.fetch()).await {
            Err(_) => Err(FetchError::Unreachable(format!(
                "no answer within {:?}",
                self.config.timeout
            ))),
            Ok(result) => result,
        }
        .and_then(|body| {
            GatewayTable::from_json(&body).map_err(|e| FetchError::Invalid(e.to_string()))
        });
        match result {
            Ok(table) => {
                self.counters.fetches_ok.fetch_add(1, Ordering::Relaxed);
                let version = table.version;
                let changed = self.table.send_if_modified(|current| {
                    if current.as_deref() == Some(&table) {
                        return false;
                    }
                    if let Some(old) = current.as_deref() {
                        if table.version < old.version {
                            warn!(
                                old = old.version,
                                new = table.version,
                                "gateway table version went down"
                            );
                        }
                    }
                    *current = Some(Arc::new(table));
                    true
                });
                if changed {
                    self.counters.changes.fetch_add(1, Ordering::Relaxed);
                    info!(site = %self.config.addr, version, "new gateway table");
                } else {
                    debug!(site = %self.config.addr, version, "gateway table unchanged");
                }
                Ok(changed)
            }
            Err(e) => {
                let counter = match e {
                    FetchError::Unreachable(_) => &self.counters.fetch_errors_unreachable,
                    FetchError::Invalid(_) => &self.counters.fetch_errors_invalid,
                };
                counter.fetch_add(1, Ordering::Relaxed);
                warn!(site = %self.config.addr, error = %e, "gateway table fetch failed; keeping the last good table");
                Err(e)
            }
        }
    }

    /// Fetches at once, then every refresh period, until `shutdown` completes.
    pub async fn run(&self, shutdown: impl Future<Output = ()>) {
        let mut ticks = tokio::time::interval(self.config.refresh.max(Duration::from_millis(10)));
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let fetch_forever = async {
            loop {
                ticks.tick().await;
                let _ = self.fetch_once().await;
            }
        };
        tokio::select! {
            _ = shutdown => {}
            _ = fetch_forever => {}
        }
    }

    async fn fetch(&self) -> Result<Bytes, FetchError> {
        let unreachable =
            |what: &str, e: &dyn std::fmt::Display| FetchError::Unreachable(format!("{what}: {e}"));
        let tcp = TcpStream::connect(self.config.addr)
            .await
            .map_err(|e| unreachable("connect", &e))?;
        let _ = tcp.set_nodelay(true);
        let tls = tokio_rustls::TlsConnector::from(self.tls.clone())
            .connect(self.server_name.clone(), tcp)
            .await
            .map_err(|e| unreachable("TLS", &e))?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| unreachable("HTTP", &e))?;
        let connection = tokio::spawn(connection);
        let _abort = AbortOnDrop(connection);
        let request = http::Request::get(self.config.path.as_str())
            .header(http::header::HOST, self.config.server_name.as_str())
            .body(Empty::<Bytes>::new())
            .map_err(|e| FetchError::Invalid(format!("bad request path: {e}")))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| unreachable("HTTP", &e))?;
        if response.status() != http::StatusCode::OK {
            return Err(FetchError::Invalid(format!(
                "HTTP status {}",
                response.status()
            )));
        }
        let body = Limited::new(response.into_body(), self.config.max_body_bytes)
            .collect()
            .await
            .map_err(|e| {
                if e.is::<http_body_util::LengthLimitError>() {
                    FetchError::Invalid(format!("body over {} bytes", self.config.max_body_bytes))
                } else {
                    FetchError::Unreachable(format!("reading the body: {e}"))
                }
            })?;
        Ok(body.to_bytes())
    }
}

/// Aborts a task when dropped.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Largest gateway file the site serves.
const MAX_SITE_FILE: u64 = 4 << 20;

/// Serves the gateway table in `file` at `https://LISTENER/gateways.json` with `identity`'s
/// certificate (no client certificate asked), until `shutdown` completes.
///
/// The file is read and validated on every request, so edits apply at once; if it is missing
/// or invalid the site answers 500 (and logs why), so fetchers keep their last good table.
/// Other paths get 404, other methods 405.
pub async fn serve_gateway_site(
    file: PathBuf,
    listener: TcpListener,
    identity: &Identity,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ControlError> {
    let acceptor = tokio_rustls::TlsAcceptor::from(crate::tls::https_server_config(identity)?);
    let file = Arc::new(file);
    let limit = Arc::new(Semaphore::new(256));
    let mut connections = tokio::task::JoinSet::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        while connections.try_join_next().is_some() {}
        let (tcp, addr) = tokio::select! {
            _ = &mut shutdown => return Ok(()),
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    warn!(error = %e, "gateway site: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            warn!(peer = %addr, "gateway site: too many connections");
            continue;
        };
        let acceptor = acceptor.clone();
        let file = file.clone();
        connections.spawn(async move {
            let _permit = permit;
            let tls =
                match tokio::time::timeout(Duration::from_secs(5), acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => tls,
                    Ok(Err(e)) => {
                        warn!(peer = %addr, error = %e, "gateway site: TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        warn!(peer = %addr, "gateway site: TLS handshake timed out");
                        return;
                    }
                };
            let service = hyper::service::service_fn(move |request| {
                let file = file.clone();
                async move { Ok::<_, std::convert::Infallible>(site_answer(&file, addr, request).await) }
            });
            let result = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(TokioIo::new(tls), service)
                .await;
            if let Err(e) = result {
                debug!(peer = %addr, error = %e, "gateway site: connection ended with an error");
            }
        });
    }
}

async fn site_answer<B>(
    file: &std::path::Path,
    peer: SocketAddr,
    request: http::Request<B>,
) -> http::Response<Full<Bytes>> {
    let answer = |status: http::StatusCode, body: Bytes| {
        let mut response = http::Response::new(Full::new(body));
        *response.status_mut() = status;
        response
    };
    if request.uri().path() != "/gateways.json" {
        return answer(
            http::StatusCode::NOT_FOUND,
            Bytes::from_static(b"not found\n"),
        );
    }
    if request.method() != http::Method::GET && request.method() != http::Method::HEAD {
        return answer(
            http::StatusCode::METHOD_NOT_ALLOWED,
            Bytes::from_static(b"method not allowed\n"),
        );
    }
    let content = match read_limited(file).await {
        Ok(content) => content,
        Err(e) => {
            warn!(file = %file.display(), %peer, error = %e, "gateway site: cannot read the table; answering 500");
            return answer(
                http::StatusCode::INTERNAL_SERVER_ERROR,
                Bytes::from_static(b"gateway table unavailable\n"),
            );
        }
    };
    if let Err(e) = GatewayTable::from_json(&content) {
        warn!(file = %file.display(), %peer, error = %e, "gateway site: invalid table; answering 500");
        return answer(
            http::StatusCode::INTERNAL_SERVER_ERROR,
            Bytes::from_static(b"gateway table invalid\n"),
        );
    }
    let mut response = answer(http::StatusCode::OK, Bytes::from(content));
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    response
}

async fn read_limited(file: &std::path::Path) -> std::io::Result<Vec<u8>> {
    use tokio::io::AsyncReadExt;
    let mut content = Vec::new();
    tokio::fs::File::open(file)
        .await?
        .take(MAX_SITE_FILE + 1)
        .read_to_end(&mut content)
        .await?;
    if content.len() as u64 > MAX_SITE_FILE {
        return Err(std::io::Error::other(format!(
            "larger than {MAX_SITE_FILE} bytes"
        )));
    }
    Ok(content)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"{"version": 3, "children": [
        {"name": "as1", "address": "10.200.3.2", "subnets": ["10.99.0.0/16"], "cost": 10.0,
         "labels": {"region": "east"}},
        {"name": "as2", "address": "10.200.4.2", "subnets": ["10.99.0.0/16", "10.98.0.0/24"]}
    ]}"#;

    #[test]
    fn parses_good_table() {
        let table = GatewayTable::from_json(GOOD.as_bytes()).unwrap();
        assert_eq!(table.version, 3);
        assert_eq!(table.children.len(), 2);
        assert_eq!(table.get("as1").unwrap().labels["region"], "east");
        assert_eq!(table.get("as2").unwrap().cost, 1.0);
        let again = GatewayTable::from_json(table.to_json().as_bytes()).unwrap();
        assert_eq!(again, table);
    }

    fn err(text: &str) -> GatewayError {
        GatewayTable::from_json(text.as_bytes()).unwrap_err()
    }

    fn one(entry: &str) -> String {
        format!(r#"{{"version": 1, "children": [{entry}]}}"#)
    }

    #[test]
    fn clear_errors() {
        let dup = r#"{"version": 1, "children": [
            {"name": "as1", "address": "10.0.0.1", "subnets": ["10.99.0.0/16"]},
            {"name": "as1", "address": "10.0.0.2", "subnets": ["10.99.0.0/16"]}]}"#;
        assert_eq!(err(dup), GatewayError::DuplicateName("as1".into()));

        let e = err(&one(
            r#"{"name": "as1", "address": "10.0.0.300", "subnets": ["10.99.0.0/16"]}"#,
        ));
        assert!(
            matches!(&e, GatewayError::Syntax(m) if m.contains("line 1")),
            "{e}"
        );

        let e = err(&one(
            r#"{"name": "as1", "address": "10.0.0.1", "subnets": ["10.99.0.1/16"]}"#,
        ));
        assert!(e.to_string().contains("host bits set"), "{e}");

        let e = err(&one(
            r#"{"name": "as1", "address": "10.0.0.1", "subnets": ["10.99.0.0/16"], "cost": -1}"#,
        ));
        assert_eq!(
            e,
            GatewayError::BadCost {
                name: "as1".into(),
                cost: -1.0
            }
        );

        let e = err(&one(
            r#"{"name": "as1", "address": "10.0.0.1", "subnets": ["10.99.0.0/16"], "weight": 1}"#,
        ));
        assert!(e.to_string().contains("unknown field `weight`"), "{e}");

        let e = err(r#"{"version": 1, "children": [], "extra": true}"#);
        assert!(e.to_string().contains("unknown field `extra`"), "{e}");

        let e = err(&one(
            r#"{"name": "As 1", "address": "10.0.0.1", "subnets": ["10.99.0.0/16"]}"#,
        ));
        assert_eq!(e, GatewayError::InvalidName("As 1".into()));

        let e = err(&one(
            r#"{"name": "as1", "address": "0.0.0.0", "subnets": ["10.99.0.0/16"]}"#,
        ));
        assert!(matches!(e, GatewayError::BadAddress { .. }), "{e}");

        let e = err(&one(
            r#"{"name": "as1", "address": "10.0.0.1", "subnets": []}"#,
        ));
        assert_eq!(e, GatewayError::NoSubnets("as1".into()));

        let e = err(&one(r#"{"name": "as1", "subnets": ["10.99.0.0/16"]}"#));
        assert!(e.to_string().contains("missing field `address`"), "{e}");

        let e = err("garbage");
        assert!(matches!(e, GatewayError::Syntax(_)), "{e}");
    }

    #[test]
    fn entries_from_toml() {
        #[derive(serde::Deserialize)]
        struct Config {
            children: Vec<GatewayEntry>,
        }
        let config: Config = toml::from_str(
            r#"
            [[children]]
            name = "h1"
            address = "10.200.2.11"
            subnets = ["10.99.0.0/24"]
            cost = 2.5
            labels = { rack = "r1" }
            "#,
        )
        .unwrap();
        let table = GatewayTable::from_entries(0, config.children).unwrap();
        assert_eq!(table.children[0].cost, 2.5);

        let nan: Result<Config, _> = toml::from_str(
            r#"
            [[children]]
            name = "h1"
            address = "10.200.2.11"
            subnets = ["10.99.0.0/24"]
            cost = nan
            "#,
        );
        let e = GatewayTable::from_entries(0, nan.unwrap().children).unwrap_err();
        assert!(matches!(e, GatewayError::BadCost { .. }), "{e}");
    }
}
