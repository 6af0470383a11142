//! An in-process stand-in for Neo4j's HTTP **Query API v2**, for the `/populate` tests.
//!
//! No Neo4j server can run here, so this answers `POST /db/neo4j/query/v2` for exactly
//! the two Cypher statements edgesync sends (one page of a user's nodes, one page of a
//! user's relationships), over HTTP/1.1 on 127.0.0.1 (axum on hyper, on a tokio runtime
//! of its own), one request per connection (`connection: close`).
//!
//! The statements are the stand-in's own copies ([`NODES_STATEMENT`], [`RELS_STATEMENT`]),
//! deliberately not imported from the product: a change to the product's Cypher must
//! break the tests until the stand-in is consciously updated. They are recognised after
//! collapsing runs of whitespace to one space; anything else is a `SyntaxError`.
//!
//! Data lives in one store for all tenants, indexed per tenant (the nodes whose
//! `user_id` property is that tenant's id, and the relationships that start at them),
//! sorted by element id, so a page is a binary search and a short scan.
//!
//! Faults ([`Fault`]) and delays are planned per user (the `user_id` query parameter),
//! so tests for different users running in parallel do not see each other's.

use axum::body::Body;
use axum::extract;
use axum::http::header::{HeaderName, HeaderValue, CONNECTION, CONTENT_LENGTH, CONTENT_TYPE};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde_json::{json, Map, Value};
use std::cmp::Ordering as CmpOrdering;
use std::collections::{HashMap, HashSet};
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use crate::background::Background;

/// The stand-in's copy of the statement that reads one page of a user's nodes.
pub const NODES_STATEMENT: &str = "
MATCH (n)
WHERE n[$tenant] = $user_id
  AND ($after IS NULL OR elementId(n) > $after)
  AND ($since IS NULL OR n[$changed] IS NULL OR n[$changed] > $since)
RETURN elementId(n) AS id, labels(n) AS labels, properties(n) AS properties
ORDER BY id
LIMIT $limit
";

/// The stand-in's copy of the statement that reads one page of a user's relationships.
pub const RELS_STATEMENT: &str = "
MATCH (a)-[r]->(b)
WHERE a[$tenant] = $user_id AND b[$tenant] = $user_id
  AND ($after IS NULL OR elementId(r) > $after)
  AND ($since IS NULL OR r[$changed] IS NULL OR r[$changed] > $since)
RETURN elementId(r) AS id, type(r) AS type, properties(r) AS properties,
       labels(a) AS from_labels, properties(a) AS from_properties,
       labels(b) AS to_labels, properties(b) AS to_properties
ORDER BY id
LIMIT $limit
";

/// The only database the stand-in serves.
pub const DATABASE: &str = "neo4j";

/// The property the store indexes tenants by (a node belongs to the tenant it names).
pub const TENANT_PROPERTY: &str = "user_id";

const NODE_FIELDS: [&str; 3] = ["id", "labels", "properties"];
const REL_FIELDS: [&str; 7] =
    ["id", "type", "properties", "from_labels", "from_properties", "to_labels", "to_properties"];
/// The parameters both statements use, in the order a `ParameterMissing` message lists them.
const PARAMETERS: [&str; 6] = ["tenant", "user_id", "after", "since", "changed", "limit"];
const MAX_BODY: usize = 16 << 20;

#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    pub element_id: String,
    pub labels: Vec<String>,
    pub properties: Map<String, Value>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Rel {
    pub element_id: String,
    pub rel_type: String,
    /// The start node's element id.
    pub start: String,
    /// The end node's element id.
    pub end: String,
    pub properties: Map<String, Value>,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Graph {
    pub nodes: Vec<Node>,
    pub rels: Vec<Rel>,
}

/// A planned fault for one user's query requests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fault {
    /// The HTTP status to answer with (429, 401, 410, 5xx, ...).
    pub status: u16,
    /// How many requests get it.
    pub times: usize,
    /// How many requests to let through normally first.
    pub after: usize,
    /// Seconds, sent as a `Retry-After` header when set.
    pub retry_after: Option<u64>,
}

/// The stand-in server. Stops listening when the last `Arc` is dropped.
pub struct Neo4jStandin {
    addr: SocketAddr,
    inner: Arc<Inner>,
    /// The server's runtime, stopped when the last `Arc` is dropped.
    _server: Background,
}

struct Inner {
    /// `user:password`, what a Basic `Authorization` header must decode to.
    credentials: String,
    bearer: Mutex<Option<String>>,
    store: Mutex<Store>,
    users: Mutex<HashMap<String, UserState>>,
    bookmarks: AtomicU64,
    log: bool,
}

#[derive(Default)]
struct UserState {
    fault: Option<FaultPlan>,
    delay_ms: u64,
    requests: usize,
    faulted: usize,
}

struct FaultPlan {
    fault: Fault,
    passed: usize,
    given: usize,
}

/// Lock a mutex even if a previous holder panicked (a failing test must not take the
/// stand-in down for the others).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Neo4jStandin {
    /// Start serving on 127.0.0.1:`port` (0 picks a free port, see [`Neo4jStandin::port`])
    /// on a tokio runtime in a background thread; `user` and `password` are the Basic
    /// auth credentials.
    pub fn start(port: u16, user: &str, password: &str) -> std::io::Result<Arc<Neo4jStandin>> {
        let listener = TcpListener::bind(("127.0.0.1", port))?;
        let inner = Arc::new(Inner {
            credentials: format!("{user}:{password}"),
            bearer: Mutex::new(None),
            store: Mutex::new(Store::default()),
            users: Mutex::new(HashMap::new()),
            bookmarks: AtomicU64::new(0),
            log: std::env::var_os("NEO4J_STANDIN_LOG").is_some_and(|v| !v.is_empty() && v != "0"),
        });
        let app = axum::Router::new().fallback(serve_one).with_state(inner.clone());
        let name = format!("neo4j-standin-{}", listener.local_addr()?.port());
        let server = Background::start(&name, listener, move |l| async move {
            let _ = axum::serve(l, app).await;
        })?;
        Ok(Arc::new(Neo4jStandin { addr: server.addr, inner, _server: server }))
    }

    /// The port it listens on (useful after `start(0, ..)`).
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// `http://127.0.0.1:<port>`, the base URL (what a Neo4j URI setting points to).
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The full query endpoint, `http://127.0.0.1:<port>/db/neo4j/query/v2`.
    pub fn query_url(&self) -> String {
        format!("{}/db/{DATABASE}/query/v2", self.url())
    }

    /// Also accept `Authorization: Bearer <token>` (None: only Basic, the default).
    pub fn accept_bearer(&self, token: Option<&str>) {
        *lock(&self.inner.bearer) = token.map(str::to_owned);
    }

    /// Replace every node and relationship whose tenant property (`user_id`) equals
    /// `user_id` with `graph` (the graph's nodes carry that property themselves).
    pub fn put_graph(&self, user_id: &str, graph: Graph) {
        let mut store = lock(&self.inner.store);
        store.tenants.remove(user_id);
        store.insert(user_id, graph);
    }

    /// The current graph of that tenant (a clone), nodes and relationships in element id order.
    pub fn graph(&self, user_id: &str) -> Graph {
        lock(&self.inner.store).tenants.get(user_id).map(|t| t.graph.clone()).unwrap_or_default()
    }

    /// Mutate that tenant's graph in place (under the store's lock; the index is rebuilt after).
    pub fn update_graph(&self, user_id: &str, f: impl FnOnce(&mut Graph)) {
        let mut store = lock(&self.inner.store);
        let mut graph = store.tenants.remove(user_id).map(|t| t.graph).unwrap_or_default();
        f(&mut graph);
        store.insert(user_id, graph);
    }

    /// Plan a fault for requests whose `user_id` parameter equals `user_id`. Replaces any
    /// earlier plan for that user; its `after` counts requests from now on.
    pub fn fail(&self, user_id: &str, fault: Fault) {
        lock(&self.inner.users).entry(user_id.to_owned()).or_default().fault =
            Some(FaultPlan { fault, passed: 0, given: 0 });
    }

    pub fn clear_faults(&self, user_id: &str) {
        if let Some(u) = lock(&self.inner.users).get_mut(user_id) {
            u.fault = None;
        }
    }

    /// Delay every answer for this user by `ms` (0 = none), to hold a call open. The
    /// answer is computed when the request arrives and sent after the delay.
    pub fn delay(&self, user_id: &str, ms: u64) {
        lock(&self.inner.users).entry(user_id.to_owned()).or_default().delay_ms = ms;
    }

    /// Query requests received for this user: every authenticated request to the query
    /// endpoint whose body parsed and whose `user_id` parameter is this id, faulted or not.
    pub fn requests(&self, user_id: &str) -> usize {
        lock(&self.inner.users).get(user_id).map_or(0, |u| u.requests)
    }

    /// Faulted answers sent for this user so far.
    pub fn faulted(&self, user_id: &str) -> usize {
        lock(&self.inner.users).get(user_id).map_or(0, |u| u.faulted)
    }
}

// ---------------------------------------------------------------------------------------
// The store

/// One tenant's graph, sorted by element id, with its nodes' positions by element id and
/// each node's and relationship's JSON, serialised on first use (a page of 1,000 rows is
/// mostly serialisation, slow in the unoptimised test build; a node's JSON serves both
/// statements, and the cache lives until the tenant's next change).
#[derive(Default)]
struct Tenant {
    graph: Graph,
    node_index: HashMap<String, usize>,
    /// `<labels>,<properties>` of node i.
    node_json: Vec<OnceLock<Vec<u8>>>,
    /// `<id>,<type>,<properties>` of relationship i.
    rel_json: Vec<OnceLock<Vec<u8>>>,
}

impl Tenant {
    fn new(mut graph: Graph) -> Tenant {
        // Stable sort, then of equal element ids keep the last one given.
        graph.nodes.sort_by(|a, b| a.element_id.cmp(&b.element_id));
        graph.nodes.dedup_by(|later, kept| {
            let same = later.element_id == kept.element_id;
            if same {
                std::mem::swap(later, kept);
            }
            same
        });
        graph.rels.sort_by(|a, b| a.element_id.cmp(&b.element_id));
        graph.rels.dedup_by(|later, kept| {
            let same = later.element_id == kept.element_id;
            if same {
                std::mem::swap(later, kept);
            }
            same
        });
        let node_index = graph.nodes.iter().enumerate().map(|(i, n)| (n.element_id.clone(), i)).collect();
        let node_json = graph.nodes.iter().map(|_| OnceLock::new()).collect();
        let rel_json = graph.rels.iter().map(|_| OnceLock::new()).collect();
        Tenant { graph, node_index, node_json, rel_json }
    }

    fn node(&self, element_id: &str) -> Option<usize> {
        self.node_index.get(element_id).copied()
    }

    fn node_json(&self, i: usize) -> &[u8] {
        self.node_json[i].get_or_init(|| {
            let n = &self.graph.nodes[i];
            let mut out = serde_json::to_vec(&n.labels).unwrap_or_default();
            out.push(b',');
            out.extend_from_slice(&serde_json::to_vec(&n.properties).unwrap_or_default());
            out
        })
    }

    fn rel_json(&self, i: usize) -> &[u8] {
        self.rel_json[i].get_or_init(|| {
            let r = &self.graph.rels[i];
            serde_json::to_vec(&(&r.element_id, &r.rel_type, &r.properties))
                .map(|mut v| {
                    // The tuple's array without its brackets.
                    v.pop();
                    v.remove(0);
                    v
                })
                .unwrap_or_default()
        })
    }
}

/// All tenants' graphs. Invariant: every node whose `user_id` property is the string `u`
/// is in `tenants[u]`; a relationship is with its start node. A node without a string
/// `user_id` stays with the graph it was put in (no query by `user_id` matches it).
#[derive(Default)]
struct Store {
    tenants: HashMap<String, Tenant>,
}

impl Store {
    /// Add `graph` (given for `owner`, whose own tenant has just been removed): each node
    /// goes to the tenant its `user_id` names, each relationship to its start node's.
    fn insert(&mut self, owner: &str, graph: Graph) {
        let tenant_of =
            |n: &Node| n.properties.get(TENANT_PROPERTY).and_then(Value::as_str).unwrap_or(owner).to_owned();
        let mut node_tenant: HashMap<&str, String> = HashMap::new();
        for n in &graph.nodes {
            node_tenant.insert(&n.element_id, tenant_of(n));
        }
        let mut parts: HashMap<String, Graph> = HashMap::new();
        parts.entry(owner.to_owned()).or_default();
        for r in &graph.rels {
            let t = match node_tenant.get(r.start.as_str()) {
                Some(t) => t.clone(),
                None => self
                    .tenants
                    .iter()
                    .find(|(_, t)| t.node_index.contains_key(&r.start))
                    .map_or_else(|| owner.to_owned(), |(k, _)| k.clone()),
            };
            parts.entry(t).or_default().rels.push(r.clone());
        }
        drop(node_tenant);
        for n in graph.nodes {
            let t = tenant_of(&n);
            parts.entry(t).or_default().nodes.push(n);
        }
        for (t, part) in parts {
            let merged = match self.tenants.remove(&t) {
                Some(existing) => {
                    let mut g = existing.graph;
                    g.nodes.extend(part.nodes);
                    g.rels.extend(part.rels);
                    g
                }
                None => part,
            };
            self.tenants.insert(t, Tenant::new(merged));
        }
    }
}

// ---------------------------------------------------------------------------------------
// Cypher semantics for the two statements

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Statement {
    Nodes,
    Rels,
}

fn collapse_whitespace(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn recognise(statement: &str) -> Option<Statement> {
    let s = collapse_whitespace(statement);
    if s == collapse_whitespace(NODES_STATEMENT) {
        Some(Statement::Nodes)
    } else if s == collapse_whitespace(RELS_STATEMENT) {
        Some(Statement::Rels)
    } else {
        None
    }
}

struct Query {
    statement: Statement,
    /// `None` when `$tenant` is null (`n[null]` is null: nothing matches).
    tenant: Option<String>,
    user_id: Value,
    after: Value,
    since: Value,
    /// `None` when `$changed` is null (`n[null]` is null: the `IS NULL` branch holds).
    changed: Option<String>,
    limit: usize,
}

/// Cypher `=`: null when either side is null.
fn cypher_eq(a: Option<&Value>, b: &Value) -> Option<bool> {
    let a = a.filter(|a| !a.is_null())?;
    if b.is_null() {
        return None;
    }
    match (a, b) {
        (Value::Number(_), Value::Number(_)) => Some(cypher_cmp(a, b) == Some(CmpOrdering::Equal)),
        _ => Some(a == b),
    }
}

/// Cypher ordering comparison: numbers numerically, strings by code point, booleans
/// false < true; anything else (different types, null, lists, maps) is null.
fn cypher_cmp(a: &Value, b: &Value) -> Option<CmpOrdering> {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            if let (Some(x), Some(y)) = (x.as_i64(), y.as_i64()) {
                Some(x.cmp(&y))
            } else if let (Some(x), Some(y)) = (x.as_u64(), y.as_u64()) {
                Some(x.cmp(&y))
            } else {
                x.as_f64()?.partial_cmp(&y.as_f64()?)
            }
        }
        (Value::String(x), Value::String(y)) => Some(x.cmp(y)),
        (Value::Bool(x), Value::Bool(y)) => Some(x.cmp(y)),
        _ => None,
    }
}

impl Query {
    /// `x[$tenant] = $user_id` is true.
    fn in_tenant(&self, props: &Map<String, Value>) -> bool {
        self.tenant.as_ref().is_some_and(|k| cypher_eq(props.get(k), &self.user_id) == Some(true))
    }

    /// `$since IS NULL OR x[$changed] IS NULL OR x[$changed] > $since` is true.
    fn changed_since(&self, props: &Map<String, Value>) -> bool {
        if self.since.is_null() {
            return true;
        }
        match self.changed.as_ref().and_then(|k| props.get(k)).filter(|v| !v.is_null()) {
            None => true,
            Some(v) => cypher_cmp(v, &self.since) == Some(CmpOrdering::Greater),
        }
    }

    /// Where to start scanning a list sorted by element id for `elementId(x) > $after`;
    /// `None` when nothing can match (`$after` neither null nor a string).
    fn start<T>(&self, sorted: &[T], id: impl Fn(&T) -> &str) -> Option<usize> {
        match &self.after {
            Value::Null => Some(0),
            Value::String(after) => Some(sorted.partition_point(|x| id(x) <= after.as_str())),
            _ => None,
        }
    }

    /// The answer's `data` (`fields` and `values`), serialised.
    fn run<'s>(&self, store: &'s Store) -> Vec<u8> {
        // All nodes with the string user_id `u` are in tenants[u]; any other tenant
        // property or user_id type scans every tenant.
        let fast = self.tenant.as_deref() == Some(TENANT_PROPERTY) && self.user_id.is_string();
        let tenants: Vec<&'s Tenant> = if fast {
            store.tenants.get(self.user_id.as_str().unwrap_or_default()).into_iter().collect()
        } else {
            store.tenants.values().collect()
        };
        // A node: its tenant and its index there. In the fast path a node missing from
        // the user's tenant is not the user's.
        let find_node = |home: &'s Tenant, id: &str| -> Option<(&'s Tenant, usize)> {
            match home.node(id) {
                Some(i) => Some((home, i)),
                None if fast => None,
                None => store.tenants.values().find_map(|t| Some((t, t.node(id)?))),
            }
        };
        let mut out = br#"{"fields":"#.to_vec();
        match self.statement {
            Statement::Nodes => {
                let mut hits: Vec<(&str, &Tenant, usize)> = Vec::new();
                for t in &tenants {
                    let Some(start) = self.start(&t.graph.nodes, |n| &n.element_id) else { continue };
                    hits.extend(
                        (start..t.graph.nodes.len())
                            .map(|i| (&t.graph.nodes[i], i))
                            .filter(|(n, _)| self.in_tenant(&n.properties) && self.changed_since(&n.properties))
                            .take(self.limit)
                            .map(|(n, i)| (n.element_id.as_str(), *t, i)),
                    );
                }
                if tenants.len() > 1 {
                    hits.sort_by(|a, b| a.0.cmp(b.0));
                    hits.truncate(self.limit);
                }
                out.extend_from_slice(&serde_json::to_vec(&NODE_FIELDS).unwrap_or_default());
                out.extend_from_slice(br#","values":["#);
                for (k, (id, t, i)) in hits.into_iter().enumerate() {
                    out.extend_from_slice(if k == 0 { b"[" } else { b",[" });
                    out.extend_from_slice(&serde_json::to_vec(id).unwrap_or_default());
                    out.push(b',');
                    out.extend_from_slice(t.node_json(i));
                    out.push(b']');
                }
            }
            Statement::Rels => {
                type Hit<'a> = (&'a str, &'a Tenant, usize, (&'a Tenant, usize), (&'a Tenant, usize));
                let mut hits: Vec<Hit> = Vec::new();
                for t in &tenants {
                    let Some(start) = self.start(&t.graph.rels, |r| &r.element_id) else { continue };
                    hits.extend(
                        (start..t.graph.rels.len())
                            .filter_map(|i| {
                                let r = &t.graph.rels[i];
                                let a = find_node(t, &r.start)?;
                                let b = find_node(t, &r.end)?;
                                (self.in_tenant(&a.0.graph.nodes[a.1].properties)
                                    && self.in_tenant(&b.0.graph.nodes[b.1].properties)
                                    && self.changed_since(&r.properties))
                                .then_some((r.element_id.as_str(), *t, i, a, b))
                            })
                            .take(self.limit),
                    );
                }
                if tenants.len() > 1 {
                    hits.sort_by(|x, y| x.0.cmp(y.0));
                    hits.truncate(self.limit);
                }
                out.extend_from_slice(&serde_json::to_vec(&REL_FIELDS).unwrap_or_default());
                out.extend_from_slice(br#","values":["#);
                for (k, (_, t, i, (ta, a), (tb, b))) in hits.into_iter().enumerate() {
                    out.extend_from_slice(if k == 0 { b"[" } else { b",[" });
                    out.extend_from_slice(t.rel_json(i));
                    out.push(b',');
                    out.extend_from_slice(ta.node_json(a));
                    out.push(b',');
                    out.extend_from_slice(tb.node_json(b));
                    out.push(b']');
                }
            }
        }
        out.extend_from_slice(b"]}");
        out
    }
}

// ---------------------------------------------------------------------------------------
// Requests and answers

struct Request {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

struct Reply {
    status: u16,
    headers: Vec<(&'static str, String)>,
    /// Serialised JSON.
    body: Vec<u8>,
    delay_ms: u64,
}

impl Reply {
    fn error(status: u16, code: &str, message: impl Into<String>) -> Reply {
        Reply {
            status,
            headers: Vec::new(),
            body: json!({"errors": [{"code": code, "message": message.into()}]}).to_string().into_bytes(),
            delay_ms: 0,
        }
    }

    fn unauthorized() -> Reply {
        let mut r = Reply::error(
            401,
            "Neo.ClientError.Security.Unauthorized",
            "The client is unauthorized due to authentication failure.",
        );
        r.headers.push(("www-authenticate", "Basic realm=\"Neo4j\"".into()));
        r
    }

    fn invalid(message: impl Into<String>) -> Reply {
        Reply::error(400, "Neo.ClientError.Request.Invalid", message)
    }

    fn fault(f: &Fault) -> Reply {
        let mut r = match f.status {
            429 => {
                Reply::error(429, "Neo.TransientError.Request.ResourceExhaustion", "Rate limit exceeded, retry later")
            }
            401 => Reply::unauthorized(),
            410 => Reply::error(410, "Neo.ClientError.Request.Invalid", "Gone"),
            s if s >= 500 => Reply::error(s, "Neo.DatabaseError.General.UnknownError", "An unknown error occurred."),
            s => Reply::error(s, "Neo.ClientError.Request.Invalid", reason(s)),
        };
        if let Some(secs) = f.retry_after {
            r.headers.push(("retry-after", secs.to_string()));
        }
        r
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        202 => "Accepted",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        410 => "Gone",
        413 => "Payload Too Large",
        415 => "Unsupported Media Type",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Status",
    }
}

enum ReadError {
    /// The connection broke inside the body.
    Gone,
    TooLarge,
}

/// The body, up to [`MAX_BODY`] bytes (a `Content-Length` over it is refused unread).
async fn read_body(body: Body, content_length: Option<u64>) -> Result<Vec<u8>, ReadError> {
    if content_length.is_some_and(|n| n > MAX_BODY as u64) {
        return Err(ReadError::TooLarge);
    }
    match Limited::new(body, MAX_BODY).collect().await {
        Ok(b) => Ok(b.to_bytes().to_vec()),
        Err(e) if e.is::<LengthLimitError>() => Err(ReadError::TooLarge),
        Err(_) => Err(ReadError::Gone),
    }
}

/// Every request: read it, [`answer`] it (on the blocking pool: it locks the store and
/// serialises pages), wait out the user's delay, and answer with `connection: close`.
async fn serve_one(
    extract::State(inner): extract::State<Arc<Inner>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let length = headers.get(CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.trim().parse::<u64>().ok());
    let reply = match read_body(body, length).await {
        Ok(body) => {
            let req = Request {
                method: method.to_string(),
                path: uri.path_and_query().map_or_else(|| uri.path().to_owned(), |p| p.as_str().to_owned()),
                headers: headers
                    .iter()
                    .map(|(k, v)| (k.as_str().to_owned(), String::from_utf8_lossy(v.as_bytes()).trim().to_owned()))
                    .collect(),
                body,
            };
            let i = inner.clone();
            let (req, reply) = tokio::task::spawn_blocking(move || {
                let reply = answer(&i, &req);
                (req, reply)
            })
            .await
            .expect("the stand-in's answer panicked");
            if inner.log {
                eprintln!("neo4j stand-in: {} {} -> {}", req.method, req.path, reply.status);
            }
            reply
        }
        Err(ReadError::TooLarge) => {
            Reply::error(413, "Neo.ClientError.Request.Invalid", format!("Request body larger than {MAX_BODY} bytes"))
        }
        // The client is gone: nothing will read this.
        Err(ReadError::Gone) => Reply::invalid("The request body could not be read"),
    };
    if reply.delay_ms > 0 {
        tokio::time::sleep(Duration::from_millis(reply.delay_ms)).await;
    }
    let status = StatusCode::from_u16(reply.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response =
        (status, [(CONTENT_TYPE, "application/json"), (CONNECTION, "close")], reply.body).into_response();
    for (k, v) in reply.headers {
        if let Ok(v) = HeaderValue::from_str(&v) {
            response.headers_mut().append(HeaderName::from_static(k), v);
        }
    }
    response
}

fn authorized(inner: &Inner, header: Option<&str>) -> bool {
    let Some((scheme, value)) = header.and_then(|h| h.trim().split_once(' ')) else { return false };
    let value = value.trim();
    if scheme.eq_ignore_ascii_case("basic") {
        base64::engine::general_purpose::STANDARD.decode(value).is_ok_and(|d| d == inner.credentials.as_bytes())
    } else if scheme.eq_ignore_ascii_case("bearer") {
        lock(&inner.bearer).as_deref().is_some_and(|t| t == value)
    } else {
        false
    }
}

fn answer(inner: &Inner, req: &Request) -> Reply {
    let path = req.path.split('?').next().unwrap_or("");
    let database = path
        .strip_prefix("/db/")
        .and_then(|p| p.strip_suffix("/query/v2"))
        .filter(|db| !db.is_empty() && !db.contains('/'));
    let Some(database) = database else {
        return Reply::error(
            404,
            "Neo.ClientError.Request.Invalid",
            format!("No such endpoint: {} {path}", req.method),
        );
    };
    if req.method != "POST" {
        let mut r = Reply::error(
            405,
            "Neo.ClientError.Request.Invalid",
            format!("Method {} is not allowed on {path}; use POST", req.method),
        );
        r.headers.push(("allow", "POST".into()));
        return r;
    }
    if !authorized(inner, req.header("authorization")) {
        return Reply::unauthorized();
    }
    if database != DATABASE {
        return Reply::error(
            404,
            "Neo.ClientError.Database.DatabaseNotFound",
            format!("Database does not exist. Database name: '{database}'."),
        );
    }
    let body: Value = match serde_json::from_slice(&req.body) {
        Ok(v) => v,
        Err(e) => return Reply::invalid(format!("Request body is not valid JSON: {e}")),
    };
    let Some(statement) = body.get("statement").and_then(Value::as_str) else {
        return Reply::invalid("Request body must be a JSON object with a string `statement`");
    };
    let empty = Map::new();
    let params = match body.get("parameters") {
        None | Some(Value::Null) => &empty,
        Some(Value::Object(p)) => p,
        Some(_) => return Reply::invalid("`parameters` must be a JSON object"),
    };

    // A well-formed, authenticated query: count it for its user, and fault or delay it.
    let mut delay_ms = 0;
    if let Some(user) = params.get("user_id").and_then(Value::as_str) {
        let mut users = lock(&inner.users);
        let u = users.entry(user.to_owned()).or_default();
        u.requests += 1;
        delay_ms = u.delay_ms;
        let mut fault = None;
        if let Some(plan) = &mut u.fault {
            if plan.passed < plan.fault.after {
                plan.passed += 1;
            } else if plan.given < plan.fault.times {
                plan.given += 1;
                fault = Some(plan.fault.clone());
            }
        }
        if let Some(f) = fault {
            u.faulted += 1;
            let mut r = Reply::fault(&f);
            r.delay_ms = delay_ms;
            return r;
        }
    }
    let mut reply = match query(statement, params) {
        Ok(q) => {
            let data = q.run(&lock(&inner.store));
            let bookmark = inner.bookmarks.fetch_add(1, Ordering::SeqCst) + 1;
            let mut body = br#"{"data":"#.to_vec();
            body.extend_from_slice(&data);
            body.extend_from_slice(format!(r#","bookmarks":["FB:standin-{bookmark}"]}}"#).as_bytes());
            Reply { status: 202, headers: Vec::new(), body, delay_ms: 0 }
        }
        Err(r) => r,
    };
    reply.delay_ms = delay_ms;
    reply
}

/// The statement and its parameters, checked as Neo4j would before running it.
fn query(statement: &str, params: &Map<String, Value>) -> Result<Query, Reply> {
    let Some(kind) = recognise(statement) else {
        return Err(Reply::error(
            400,
            "Neo.ClientError.Statement.SyntaxError",
            format!(
                "Invalid input: the Neo4j stand-in knows only edgesync's two statements (nodes, relationships); got: {}",
                collapse_whitespace(statement)
            ),
        ));
    };
    let missing: Vec<&str> = PARAMETERS.iter().copied().filter(|p| !params.contains_key(*p)).collect();
    if !missing.is_empty() {
        return Err(Reply::error(
            400,
            "Neo.ClientError.Statement.ParameterMissing",
            format!("Expected parameter(s): {}", missing.join(", ")),
        ));
    }
    let property_name = |name: &str| -> Result<Option<String>, Reply> {
        match &params[name] {
            Value::Null => Ok(None),
            Value::String(s) => Ok(Some(s.clone())),
            other => Err(Reply::error(
                400,
                "Neo.ClientError.Statement.TypeError",
                format!("Expected ${name} to be a String (a property name), but was: {other}"),
            )),
        }
    };
    let tenant = property_name("tenant")?;
    let changed = property_name("changed")?;
    let limit = match &params["limit"] {
        Value::Number(n) if n.as_u64().is_some() => n.as_u64().unwrap_or_default() as usize,
        other => {
            return Err(Reply::error(
                400,
                "Neo.ClientError.Statement.ArgumentError",
                format!("LIMIT: Invalid input. '{other}' is not a valid value. Must be a non-negative integer."),
            ))
        }
    };
    Ok(Query {
        statement: kind,
        tenant,
        user_id: params["user_id"].clone(),
        after: params["after"].clone(),
        since: params["since"].clone(),
        changed,
        limit,
    })
}

// ---------------------------------------------------------------------------------------
// The generator

/// Element ids handed out so far, for ids unique across every generated graph in the process.
static NEXT_ELEMENT: AtomicU64 = AtomicU64::new(1);

/// splitmix64.
fn next(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn below(state: &mut u64, n: usize) -> usize {
    (next(state) % n as u64) as usize
}

/// In [0, 1), rounded to 3 decimals.
fn unit(state: &mut u64) -> f64 {
    ((next(state) >> 11) as f64 / (1u64 << 53) as f64 * 1000.0).floor() / 1000.0
}

const REL_TYPES: [&str; 4] = ["KNOWS", "ATTENDED", "ABOUT", "RELATED_TO"];
const LOCATIONS: [&str; 5] = ["Room 1", "Berlin office", "Video call", "Café Central", "Home"];
/// The generated graphs' `updated_at` epoch: node i has `UPDATED_AT_BASE + i`, relationship j `UPDATED_AT_BASE + j`.
pub const UPDATED_AT_BASE: i64 = 1_700_000_000_000;

impl Graph {
    /// A deterministic graph for one user: `nodes` nodes and `rels` relationships, every
    /// value drawn from `seed` (the same seed gives the same graph, but for element ids,
    /// which are unique in the process and increase in creation order).
    ///
    /// Node i is, by `i % 20`: 0–7 `Person`, 8–12 `Concept`, 13–17 `Event`, 18
    /// `Person`+`Contact`, 19 `Draft` (a label the product does not map). Every node has
    /// `user_id` and `updated_at` = [`UPDATED_AT_BASE`] + i (epoch ms). Relationships are
    /// distinct (start, end, type) triples, no self loops.
    pub fn generate(user_id: &str, nodes: usize, rels: usize, seed: u64) -> Graph {
        let possible = nodes as u128 * nodes.saturating_sub(1) as u128 * REL_TYPES.len() as u128;
        assert!(
            rels as u128 <= possible,
            "Graph::generate: {rels} relationships asked of {nodes} nodes, but only {possible} distinct \
             (start, end, type) triples without self loops exist"
        );
        let base = NEXT_ELEMENT.fetch_add((nodes + rels) as u64, Ordering::SeqCst);
        let mut rng = seed;
        let mut graph = Graph { nodes: Vec::with_capacity(nodes), rels: Vec::with_capacity(rels) };
        for i in 0..nodes {
            let updated_at = UPDATED_AT_BASE + i as i64;
            let (labels, mut props): (Vec<&str>, Value) = match i % 20 {
                0..=7 | 18 => (
                    if i % 20 == 18 { vec!["Person", "Contact"] } else { vec!["Person"] },
                    json!({
                        "email": format!("person{i}@example.com"),
                        "name": format!("Person {i}"),
                        "score": below(&mut rng, 1_000) as f64 / 10.0,
                        "aliases": [format!("p{i}")],
                    }),
                ),
                8..=12 => (vec!["Concept"], json!({"name": format!("concept {i}"), "weight": below(&mut rng, 100)})),
                13..=17 => {
                    let year = 2025 + below(&mut rng, 2);
                    let month = 1 + below(&mut rng, 12);
                    let day = 1 + below(&mut rng, 28);
                    let hour = below(&mut rng, 23);
                    let minute = 15 * below(&mut rng, 4);
                    let at = |h: usize| format!("{year:04}-{month:02}-{day:02}T{h:02}:{minute:02}:00Z");
                    (
                        vec!["Event"],
                        json!({
                            "google_event_id": format!("gev{i}"),
                            "title": format!("Event {i}"),
                            "description": format!("Description of event {i}"),
                            "start_time": at(hour),
                            "end_time": at(hour + 1),
                            "all_day": below(&mut rng, 4) == 0,
                            "location": LOCATIONS[below(&mut rng, LOCATIONS.len())],
                            "id": format!("ev-{i}"),
                        }),
                    )
                }
                _ => (vec!["Draft"], json!({"text": format!("Draft {i}: {}", next(&mut rng) % 1_000_000)})),
            };
            props[TENANT_PROPERTY] = json!(user_id);
            props["updated_at"] = json!(updated_at);
            let Value::Object(properties) = props else { unreachable!() };
            graph.nodes.push(Node {
                element_id: format!("4:standin:{:010}", base + i as u64),
                labels: labels.into_iter().map(str::to_owned).collect(),
                properties,
            });
        }
        // Distinct triples: sample when they are few of the possible ones, else shuffle all.
        let mut triples: Vec<(usize, usize, usize)> = Vec::with_capacity(rels);
        if (rels as u128) * 2 <= possible {
            let mut seen = HashSet::with_capacity(rels);
            while triples.len() < rels {
                let a = below(&mut rng, nodes);
                let mut b = below(&mut rng, nodes - 1);
                if b >= a {
                    b += 1;
                }
                let t = (a, b, below(&mut rng, REL_TYPES.len()));
                if seen.insert(t) {
                    triples.push(t);
                }
            }
        } else {
            let mut all: Vec<(usize, usize, usize)> = (0..nodes)
                .flat_map(|a| (0..nodes).filter(move |&b| b != a).map(move |b| (a, b)))
                .flat_map(|(a, b)| (0..REL_TYPES.len()).map(move |t| (a, b, t)))
                .collect();
            for k in (1..all.len()).rev() {
                all.swap(k, below(&mut rng, k + 1));
            }
            all.truncate(rels);
            triples = all;
        }
        for (j, (a, b, t)) in triples.into_iter().enumerate() {
            let props = json!({
                "weight": unit(&mut rng),
                "updated_at": UPDATED_AT_BASE + j as i64,
                "since": "2025-01-01",
            });
            let Value::Object(properties) = props else { unreachable!() };
            graph.rels.push(Rel {
                element_id: format!("5:standin:{:010}", base + (nodes + j) as u64),
                rel_type: REL_TYPES[t].to_owned(),
                start: graph.nodes[a].element_id.clone(),
                end: graph.nodes[b].element_id.clone(),
                properties,
            });
        }
        graph
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpStream;
    use std::time::Instant;

    const USER: &str = "neo4j";
    const PASSWORD: &str = "s3cret";

    fn server() -> Arc<Neo4jStandin> {
        Neo4jStandin::start(0, USER, PASSWORD).expect("start the stand-in")
    }

    fn basic(user: &str, password: &str) -> String {
        format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}")))
    }

    struct Answer {
        status: u16,
        headers: Vec<(String, String)>,
        body: Value,
    }

    impl Answer {
        fn header(&self, name: &str) -> Option<&str> {
            self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
        }

        fn error_code(&self) -> &str {
            self.body["errors"][0]["code"].as_str().unwrap_or_default()
        }
    }

    /// A minimal HTTP/1.1 client: one request, read to the end (the server closes).
    fn http(port: u16, method: &str, path: &str, authorization: Option<&str>, body: &str) -> Answer {
        parse(&exchange(port, method, path, authorization, body))
    }

    /// The raw answer to one request.
    fn exchange(port: u16, method: &str, path: &str, authorization: Option<&str>, body: &str) -> Vec<u8> {
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\ncontent-type: application/json\r\n\
             accept: application/json\r\ncontent-length: {}\r\n",
            body.len()
        );
        if let Some(a) = authorization {
            req.push_str(&format!("Authorization: {a}\r\n"));
        }
        req.push_str("\r\n");
        req.push_str(body);
        s.write_all(req.as_bytes()).unwrap();
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).unwrap();
        raw
    }

    fn parse(raw: &[u8]) -> Answer {
        let split = raw.windows(4).position(|w| w == b"\r\n\r\n").expect("end of headers");
        let head = String::from_utf8(raw[..split].to_vec()).unwrap();
        let mut lines = head.split("\r\n");
        let status = lines.next().unwrap().split_whitespace().nth(1).unwrap().parse().unwrap();
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        let body_bytes = &raw[split + 4..];
        let len: usize = headers.iter().find(|(k, _)| k == "content-length").unwrap().1.parse().unwrap();
        assert_eq!(body_bytes.len(), len);
        Answer { status, headers, body: serde_json::from_slice(body_bytes).unwrap_or(Value::Null) }
    }

    fn post(s: &Neo4jStandin, statement: &str, parameters: Value) -> Answer {
        let body = json!({"statement": statement, "parameters": parameters, "includeCounters": false});
        http(s.port(), "POST", "/db/neo4j/query/v2", Some(&basic(USER, PASSWORD)), &body.to_string())
    }

    fn params(user_id: &str, after: Option<&str>, since: Value, limit: usize) -> Value {
        json!({"tenant": "user_id", "user_id": user_id, "after": after, "since": since,
               "changed": "updated_at", "limit": limit})
    }

    /// Every row of a statement for a user, page by page; also checks `fields` and the bookmark.
    fn pages(s: &Neo4jStandin, statement: &str, user_id: &str, since: Value, limit: usize) -> (Vec<Value>, usize) {
        let mut rows = Vec::new();
        let mut after: Option<String> = None;
        let mut calls = 0;
        loop {
            let a = post(s, statement, params(user_id, after.as_deref(), since.clone(), limit));
            calls += 1;
            assert_eq!(a.status, 202, "{}", a.body);
            assert_eq!(a.header("content-type"), Some("application/json"));
            assert!(a.body["bookmarks"][0].as_str().unwrap().starts_with("FB:standin-"));
            let values = a.body["data"]["values"].as_array().unwrap().clone();
            assert!(values.len() <= limit);
            if values.is_empty() {
                return (rows, calls);
            }
            after = Some(values.last().unwrap()[0].as_str().unwrap().to_owned());
            rows.extend(values);
        }
    }

    fn ids(rows: &[Value]) -> Vec<String> {
        rows.iter().map(|r| r[0].as_str().unwrap().to_owned()).collect()
    }

    #[test]
    fn paging_through_nodes_returns_each_of_the_users_nodes_once_in_order() {
        let s = server();
        let alice = Graph::generate("alice", 2_345, 0, 1);
        s.put_graph("alice", alice.clone());
        s.put_graph("bob", Graph::generate("bob", 500, 0, 2));
        let (rows, calls) = pages(&s, NODES_STATEMENT, "alice", Value::Null, 1_000);
        assert_eq!(calls, 4);
        let want: Vec<String> = alice.nodes.iter().map(|n| n.element_id.clone()).collect();
        assert_eq!(ids(&rows), want);
        let a = post(&s, NODES_STATEMENT, params("alice", None, Value::Null, 1));
        assert_eq!(a.body["data"]["fields"], json!(["id", "labels", "properties"]));
        let row = &a.body["data"]["values"][0];
        assert_eq!(row[1], json!(["Person"]));
        assert_eq!(row[2]["email"], "person0@example.com");
        assert_eq!(row[2]["user_id"], "alice");
        assert_eq!(row[2]["updated_at"], json!(UPDATED_AT_BASE));
        // A two-label node.
        let contact = rows.iter().find(|r| r[1] == json!(["Person", "Contact"])).unwrap();
        assert_eq!(contact[2]["name"], "Person 18");
        // Limit 0, an `after` past the end, an unknown user.
        assert_eq!(post(&s, NODES_STATEMENT, params("alice", None, Value::Null, 0)).body["data"]["values"], json!([]));
        let past = post(&s, NODES_STATEMENT, params("alice", Some("4:standin:9999999999"), Value::Null, 10));
        assert_eq!(past.body["data"]["values"], json!([]));
        assert_eq!(post(&s, NODES_STATEMENT, params("carol", None, Value::Null, 10)).body["data"]["values"], json!([]));
        assert_eq!(s.requests("alice"), 4 + 3);
    }

    #[test]
    fn since_keeps_newer_and_unstamped_nodes() {
        let s = server();
        let g = Graph::generate("dora", 100, 0, 3);
        let ids_all: Vec<String> = g.nodes.iter().map(|n| n.element_id.clone()).collect();
        s.put_graph("dora", g);
        s.update_graph("dora", |g| {
            g.nodes[0].properties.remove("updated_at"); // no stamp: IS NULL branch
            g.nodes[1].properties.insert("updated_at".into(), Value::Null); // null: IS NULL branch
            g.nodes[2].properties.insert("updated_at".into(), json!("2030-01-01")); // other type: null, dropped
            g.nodes[3].properties.insert("updated_at".into(), json!(UPDATED_AT_BASE as f64 + 95.5));
            // float
        });
        let since = json!(UPDATED_AT_BASE + 90);
        let (rows, _) = pages(&s, NODES_STATEMENT, "dora", since, 3);
        let mut want = vec![ids_all[0].clone(), ids_all[1].clone(), ids_all[3].clone()];
        want.extend(ids_all[91..].iter().cloned());
        assert_eq!(ids(&rows), want);
        // A float `since` compares with the integers numerically.
        let (rows, _) = pages(&s, NODES_STATEMENT, "dora", json!(UPDATED_AT_BASE as f64 + 98.5), 50);
        assert_eq!(ids(&rows), vec![ids_all[0].clone(), ids_all[1].clone(), ids_all[99].clone()]);
        // A string `since` against integer stamps: only the string and the unstamped ones.
        let (rows, _) = pages(&s, NODES_STATEMENT, "dora", json!("2029"), 50);
        assert_eq!(ids(&rows), vec![ids_all[0].clone(), ids_all[1].clone(), ids_all[2].clone()]);
        // `changed` null: n[null] IS NULL, every node.
        let mut p = params("dora", None, json!(UPDATED_AT_BASE + 90), 1_000);
        p["changed"] = Value::Null;
        assert_eq!(post(&s, NODES_STATEMENT, p).body["data"]["values"].as_array().unwrap().len(), 100);
    }

    #[test]
    fn relationships_only_within_the_tenant() {
        let s = server();
        let erin = Graph::generate("erin", 300, 1_200, 4);
        let frank = Graph::generate("frank", 50, 100, 5);
        s.put_graph("frank", frank.clone());
        s.put_graph("erin", erin.clone());
        // Cross-tenant edges both ways (not returned to either) and an edge to a node without a tenant.
        s.update_graph("erin", |g| {
            g.nodes.push(Node {
                element_id: "4:standin:orphan".into(),
                labels: vec!["Person".into()],
                properties: Map::new(),
            });
            for (k, (start, end)) in [
                (&erin.nodes[0].element_id, &frank.nodes[0].element_id),
                (&erin.nodes[1].element_id, &"4:standin:orphan".to_owned()),
            ]
            .into_iter()
            .enumerate()
            {
                g.rels.push(Rel {
                    element_id: format!("5:standin:x{k}"),
                    rel_type: "KNOWS".into(),
                    start: start.clone(),
                    end: end.clone(),
                    properties: Map::new(),
                });
            }
        });
        s.update_graph("frank", |g| {
            g.rels.push(Rel {
                element_id: "5:standin:x2".into(),
                rel_type: "KNOWS".into(),
                start: frank.nodes[1].element_id.clone(),
                end: erin.nodes[1].element_id.clone(),
                properties: Map::new(),
            })
        });
        let (rows, calls) = pages(&s, RELS_STATEMENT, "erin", Value::Null, 500);
        assert_eq!(calls, 4);
        let want: Vec<String> = erin.rels.iter().map(|r| r.element_id.clone()).collect();
        assert_eq!(ids(&rows), want);
        let a = post(&s, RELS_STATEMENT, params("erin", None, Value::Null, 1));
        assert_eq!(
            a.body["data"]["fields"],
            json!(["id", "type", "properties", "from_labels", "from_properties", "to_labels", "to_properties"])
        );
        let row = &a.body["data"]["values"][0];
        let r = &erin.rels[0];
        let (from, to) = (
            erin.nodes.iter().find(|n| n.element_id == r.start).unwrap(),
            erin.nodes.iter().find(|n| n.element_id == r.end).unwrap(),
        );
        assert_eq!(
            row,
            &json!([r.element_id, r.rel_type, r.properties, from.labels, from.properties, to.labels, to.properties])
        );
        let (rows, _) = pages(&s, RELS_STATEMENT, "frank", Value::Null, 1_000);
        assert_eq!(rows.len(), 100);
        // since on relationships.
        let (rows, _) = pages(&s, RELS_STATEMENT, "erin", json!(UPDATED_AT_BASE + 1_000), 1_000);
        assert_eq!(ids(&rows), want[1_001..].to_vec());
    }

    #[test]
    fn authentication_routing_and_malformed_requests() {
        let s = server();
        s.put_graph("gina", Graph::generate("gina", 10, 0, 6));
        let body =
            json!({"statement": NODES_STATEMENT, "parameters": params("gina", None, Value::Null, 5)}).to_string();
        let q = "/db/neo4j/query/v2";
        for auth in [None, Some(basic(USER, "wrong")), Some(basic("other", PASSWORD)), Some("Bearer t".into())] {
            let a = http(s.port(), "POST", q, auth.as_deref(), &body);
            assert_eq!(a.status, 401, "{auth:?}");
            assert_eq!(a.error_code(), "Neo.ClientError.Security.Unauthorized");
            assert_eq!(a.body["errors"][0]["message"], "The client is unauthorized due to authentication failure.");
        }
        assert_eq!(s.requests("gina"), 0);
        let ok = basic(USER, PASSWORD);
        // The scheme is case-insensitive.
        assert_eq!(http(s.port(), "POST", q, Some(&ok.replacen("Basic", "basic", 1)), &body).status, 202);
        assert_eq!(http(s.port(), "POST", q, Some(&ok), &body).status, 202);
        s.accept_bearer(Some("tok"));
        assert_eq!(http(s.port(), "POST", q, Some("Bearer tok"), &body).status, 202);
        let a = http(s.port(), "POST", "/db/other/query/v2", Some(&ok), &body);
        assert_eq!((a.status, a.error_code()), (404, "Neo.ClientError.Database.DatabaseNotFound"));
        let a = http(s.port(), "POST", "/db/neo4j/tx", Some(&ok), &body);
        assert_eq!(a.status, 404);
        assert!(a.body["errors"][0]["code"].is_string());
        assert_eq!(http(s.port(), "GET", "/", None, "").status, 404);
        let a = http(s.port(), "GET", q, Some(&ok), "");
        assert_eq!(a.status, 405);
        assert_eq!(a.header("allow"), Some("POST"));
        for bad in ["not json", "{}", r#"{"statement": 5}"#, r#"{"statement": "x", "parameters": []}"#] {
            let a = http(s.port(), "POST", q, Some(&ok), bad);
            assert_eq!((a.status, a.error_code()), (400, "Neo.ClientError.Request.Invalid"), "{bad}");
        }
        // Whitespace does not matter; the text does.
        let one_line = NODES_STATEMENT.split_whitespace().collect::<Vec<_>>().join("  ");
        assert_eq!(post(&s, &format!("\n\t{one_line} "), params("gina", None, Value::Null, 5)).status, 202);
        let a = post(&s, "MATCH (n) RETURN n", params("gina", None, Value::Null, 5));
        assert_eq!((a.status, a.error_code()), (400, "Neo.ClientError.Statement.SyntaxError"));
        let a = post(&s, &NODES_STATEMENT.replace("LIMIT $limit", "LIMIT $limit + 1"), json!({}));
        assert_eq!(a.error_code(), "Neo.ClientError.Statement.SyntaxError");
        // Bad parameter values.
        let mut p = params("gina", None, Value::Null, 5);
        p["limit"] = json!(-1);
        assert_eq!(post(&s, NODES_STATEMENT, p).error_code(), "Neo.ClientError.Statement.ArgumentError");
        let mut p = params("gina", None, Value::Null, 5);
        p["tenant"] = json!(3);
        assert_eq!(post(&s, NODES_STATEMENT, p).error_code(), "Neo.ClientError.Statement.TypeError");
    }

    #[test]
    fn missing_parameters_are_named() {
        let s = server();
        let mut p = params("hank", None, Value::Null, 5);
        p.as_object_mut().unwrap().remove("since");
        p.as_object_mut().unwrap().remove("limit");
        let a = post(&s, RELS_STATEMENT, p);
        assert_eq!((a.status, a.error_code()), (400, "Neo.ClientError.Statement.ParameterMissing"));
        assert_eq!(a.body["errors"][0]["message"], "Expected parameter(s): since, limit");
        let a = http(
            s.port(),
            "POST",
            "/db/neo4j/query/v2",
            Some(&basic(USER, PASSWORD)),
            &json!({"statement": NODES_STATEMENT}).to_string(),
        );
        assert_eq!(
            a.body["errors"][0]["message"],
            "Expected parameter(s): tenant, user_id, after, since, changed, limit"
        );
    }

    #[test]
    fn a_planned_fault_hits_only_its_user_after_the_given_successes() {
        let s = server();
        s.put_graph("ivan", Graph::generate("ivan", 20, 10, 7));
        s.put_graph("jane", Graph::generate("jane", 20, 10, 8));
        s.fail("ivan", Fault { status: 429, times: 1, after: 1, retry_after: Some(7) });
        let p = || params("ivan", None, Value::Null, 5);
        assert_eq!(post(&s, NODES_STATEMENT, p()).status, 202);
        assert_eq!(post(&s, NODES_STATEMENT, params("jane", None, Value::Null, 5)).status, 202);
        let a = post(&s, RELS_STATEMENT, p());
        assert_eq!(a.status, 429);
        assert_eq!(a.header("retry-after"), Some("7"));
        assert_eq!(a.error_code(), "Neo.TransientError.Request.ResourceExhaustion");
        assert_eq!(a.body["errors"][0]["message"], "Rate limit exceeded, retry later");
        assert_eq!(post(&s, RELS_STATEMENT, p()).status, 202);
        assert_eq!((s.requests("ivan"), s.faulted("ivan")), (3, 1));
        assert_eq!((s.requests("jane"), s.faulted("jane")), (1, 0));
        // Other statuses; a new plan replaces the old; clear_faults ends it.
        s.fail("ivan", Fault { status: 503, times: 5, after: 0, retry_after: None });
        let a = post(&s, NODES_STATEMENT, p());
        assert_eq!((a.status, a.error_code()), (503, "Neo.DatabaseError.General.UnknownError"));
        assert_eq!(a.header("retry-after"), None);
        s.clear_faults("ivan");
        assert_eq!(post(&s, NODES_STATEMENT, p()).status, 202);
        for (status, code) in [(401, "Neo.ClientError.Security.Unauthorized"), (410, "Neo.ClientError.Request.Invalid")]
        {
            s.fail("ivan", Fault { status, times: 1, after: 0, retry_after: None });
            let a = post(&s, NODES_STATEMENT, p());
            assert_eq!((a.status, a.error_code()), (status, code));
        }
        assert_eq!((s.requests("ivan"), s.faulted("ivan")), (7, 4));
    }

    #[test]
    fn a_delay_holds_the_answer() {
        let s = server();
        s.put_graph("kate", Graph::generate("kate", 5, 0, 9));
        s.delay("kate", 300);
        let t = Instant::now();
        assert_eq!(post(&s, NODES_STATEMENT, params("kate", None, Value::Null, 5)).status, 202);
        assert!(t.elapsed() >= Duration::from_millis(300));
        s.delay("kate", 0);
        assert_eq!(post(&s, NODES_STATEMENT, params("lena", None, Value::Null, 5)).status, 202);
    }

    #[test]
    fn put_graph_files_nodes_by_their_own_tenant() {
        let s = server();
        let mut g = Graph::generate("mia", 10, 5, 10);
        s.put_graph("mia", g.clone());
        assert_eq!(s.graph("mia"), g);
        // A node of another tenant given in mia's graph goes to that tenant.
        g.nodes[0].properties.insert("user_id".into(), json!("nils"));
        s.put_graph("mia", g.clone());
        assert_eq!(s.graph("mia").nodes.len(), 9);
        assert_eq!(s.graph("nils").nodes, vec![g.nodes[0].clone()]);
        // put_graph replaces.
        s.put_graph("mia", Graph::default());
        assert_eq!(s.graph("mia"), Graph::default());
        assert_eq!(s.graph("nils").nodes.len(), 1);
    }

    #[test]
    fn a_page_from_the_middle_of_a_large_graph_has_the_next_thousand() {
        let s = server();
        s.put_graph("olga", Graph::generate("olga", 30_000, 30_000, 11));
        s.put_graph("paul", Graph::generate("paul", 5_000, 5_000, 12));
        let g = s.graph("olga");
        for (statement, ids) in [
            (RELS_STATEMENT, g.rels.iter().map(|r| r.element_id.clone()).collect::<Vec<_>>()),
            (NODES_STATEMENT, g.nodes.iter().map(|n| n.element_id.clone()).collect()),
        ] {
            let mut sorted = ids.clone();
            sorted.sort();
            let a = post(&s, statement, params("olga", Some(&sorted[15_000]), Value::Null, 1_000));
            assert_eq!(a.status, 202);
            let got: Vec<&str> =
                a.body["data"]["values"].as_array().unwrap().iter().map(|row| row[0].as_str().unwrap()).collect();
            let want: Vec<&str> = sorted[15_001..16_001].iter().map(String::as_str).collect();
            assert_eq!(got, want);
        }
    }

    /// A node without its element id; a relationship with its endpoints' positions.
    type Shape = (Vec<String>, Map<String, Value>);
    type RelShape = (String, usize, usize, Map<String, Value>);

    #[test]
    fn generate_is_deterministic_distinct_and_well_formed() {
        let a = Graph::generate("quinn", 400, 2_000, 42);
        let b = Graph::generate("quinn", 400, 2_000, 42);
        let c = Graph::generate("quinn", 400, 2_000, 43);
        // Ids differ (unique in the process); everything else is the seed's.
        assert!(a.nodes.iter().zip(&b.nodes).all(|(x, y)| x.element_id < y.element_id));
        let strip = |g: &Graph| -> (Vec<Shape>, Vec<RelShape>) {
            let pos: HashMap<&str, usize> =
                g.nodes.iter().enumerate().map(|(i, n)| (n.element_id.as_str(), i)).collect();
            (
                g.nodes.iter().map(|n| (n.labels.clone(), n.properties.clone())).collect(),
                g.rels
                    .iter()
                    .map(|r| (r.rel_type.clone(), pos[r.start.as_str()], pos[r.end.as_str()], r.properties.clone()))
                    .collect(),
            )
        };
        assert_eq!(strip(&a), strip(&b));
        assert_ne!(strip(&a), strip(&c));
        // Ids sort in creation order and are unique.
        assert!(a.nodes.windows(2).all(|w| w[0].element_id < w[1].element_id));
        assert!(a.rels.windows(2).all(|w| w[0].element_id < w[1].element_id));
        // Distinct triples, no self loops.
        let triples: HashSet<(&str, &str, &str)> =
            a.rels.iter().map(|r| (r.start.as_str(), r.end.as_str(), r.rel_type.as_str())).collect();
        assert_eq!(triples.len(), 2_000);
        assert!(a.rels.iter().all(|r| r.start != r.end && REL_TYPES.contains(&r.rel_type.as_str())));
        // The mix and the unique keys.
        let count = |l: &[&str]| a.nodes.iter().filter(|n| n.labels == l).count();
        assert_eq!((count(&["Person"]), count(&["Concept"]), count(&["Event"])), (160, 100, 100));
        assert_eq!((count(&["Person", "Contact"]), count(&["Draft"])), (20, 20));
        for key in ["email", "name", "google_event_id"] {
            let values: Vec<&Value> = a.nodes.iter().filter_map(|n| n.properties.get(key)).collect();
            let unique: HashSet<String> = values.iter().map(|v| v.to_string()).collect();
            assert_eq!(unique.len(), values.len(), "{key}");
        }
        assert!(a.nodes.iter().all(|n| n.properties["user_id"] == "quinn" && n.properties["updated_at"].is_i64()));
        for e in a.nodes.iter().filter(|n| n.labels == ["Event"]) {
            let (start, end) =
                (e.properties["start_time"].as_str().unwrap(), e.properties["end_time"].as_str().unwrap());
            assert_eq!((start.len(), &start[..11], &start[13..]), (20, &end[..11], &end[13..]));
            let (h0, h1): (u32, u32) = (start[11..13].parse().unwrap(), end[11..13].parse().unwrap());
            assert_eq!(h0 + 1, h1);
        }
        // Every possible triple.
        assert_eq!(Graph::generate("r", 3, 24, 1).rels.len(), 24);
    }

    #[test]
    #[should_panic(expected = "only 24 distinct")]
    fn generate_refuses_impossible_relationship_counts() {
        Graph::generate("s", 3, 25, 1);
    }
}
