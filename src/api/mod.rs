//! The relay's API: what runs on each shard (`shard`), the HTTP request loop of a
//! connection, routing, and the handlers.
//!
//! A connection is served entirely on the shard that accepted it. Handlers validate
//! everything before doing any work, then reach the state other shards own only through
//! the shard's `on_*` helpers. The wire formats come from `http` and `ws`; this module owns
//! what the bytes mean.

mod account_nodes;
pub mod accounts;
mod ack;
pub mod compat_poll;
pub mod conn;
mod console;
mod cors;
pub mod error;
mod fields;
mod idempotency;
pub mod limits;
mod outbound;
mod poll;
pub mod publish;
mod quota;
pub mod routes;
pub mod shard;
mod shed;
mod sse;
mod stats;
mod subscriptions;
mod topics;
pub mod ws_command;
mod ws_session;

use std::borrow::Cow;
use std::io;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use crate::auth::{AuthError, Permission, Principal};
use crate::http::{encode, Limits, Method, Request, RequestDecoder, Response};
use crate::metrics;
use crate::rt::budget::Admission;
use crate::rt::{now_ms, TcpStream};
use crate::tls::Stream;
use crate::topic::owner::apply::Publisher;
use conn::{Conn, Event};
use error::ApiError;
use quota::QuotaKey;
use routes::{Access, Miss};
use shard::Shard;

/// Serves one accepted connection until it closes; a probe (a connection beyond the
/// connection cap) only for one health-check or metrics request, and one beyond the probes
/// not at all (503).
///
/// On a TLS listener the handshake comes after the connection and address limits: a
/// connection beyond them is closed without one (answering 503 would cost a handshake,
/// which is what the limits protect).
pub async fn serve(shard: Rc<Shard>, tcp: TcpStream, admission: Admission) {
    if let Admission::Shed = admission {
        return refuse(&shard, tcp, "the relay is at its connection limit").await;
    }
    let _ = tcp.set_nodelay(true);
    let _ = tcp.set_write_timeout(Some(shard.config.server.write_timeout));
    let per_ip = shard.config.limits.max_connections_per_ip;
    let _slot = match tcp.peer_addr() {
        Ok(peer) if per_ip > 0 => {
            match quota::acquire(&shard, QuotaKey::Ip(peer.ip()), per_ip).await {
                Some(slot) => Some(slot),
                None => {
                    return refuse(&shard, tcp, "this address holds too many connections").await
                }
            }
        }
        _ => None,
    };
    let probe = match admission {
        Admission::Probe(slot) => Some(slot),
        Admission::Serve | Admission::Shed => None,
    };
    let stream = match &shard.tls {
        None => Stream::Plain(tcp),
        Some(acceptor) => {
            let limit = if probe.is_some() {
                std::time::Duration::from_millis(PROBE_WAIT_MS)
            } else {
                shard.config.server.read_timeout
            };
            match conn::handshake(&shard, acceptor, tcp, limit).await {
                Some(stream) => stream,
                None => return,
            }
        }
    };
    let mut conn = Conn::new(shard, stream);
    // An I/O error here means the peer went away; there is nobody left to tell.
    let _ = http_loop(&mut conn, probe.is_some()).await;
}

/// How long a probe may take to send its request: a health checker sends it at once.
const PROBE_WAIT_MS: u64 = 1000;

fn over_capacity() -> ApiError {
    ApiError::new(
        503,
        "TOO_MANY_CONNECTIONS",
        "the relay is at its connection limit; retry later",
    )
    .with_header("Retry-After", "1")
}

/// Answers a connection over a connection limit with 503 and closes it (over TLS: closes it).
pub async fn refuse(shard: &Shard, mut stream: TcpStream, why: &str) {
    use futures_lite::AsyncWriteExt;
    if shard.tls.is_some() {
        return;
    }
    let err = ApiError::new(503, "TOO_MANY_CONNECTIONS", format!("{why}; retry later"))
        .with_header("Retry-After", "1");
    let mut out = Vec::new();
    encode(&err.into_response(), false, false, &mut out);
    let _ = stream.write_all(&out).await;
    let _ = stream.close().await;
}

/// What a route produced: a response, or a session to run on this connection (a
/// WebSocket, or a Server-Sent Events stream).
pub enum Outcome {
    Reply(Response),
    Upgrade(ws_session::Upgrade),
    Stream(sse::Stream),
}

impl From<Result<Response, ApiError>> for Outcome {
    fn from(result: Result<Response, ApiError>) -> Self {
        Outcome::Reply(result.unwrap_or_else(ApiError::into_response))
    }
}

/// The request loop; a `probe` connection gets [`PROBE_WAIT_MS`] for one request, which is
/// served only if [`routes::serves_probes`].
async fn http_loop(conn: &mut Conn, probe: bool) -> io::Result<()> {
    let cfg = &conn.shard.config;
    let limits = Limits {
        max_header_bytes: cfg.limits.max_header_bytes,
        max_headers: cfg.limits.max_headers,
        max_body_bytes: cfg.limits.max_body_bytes,
    };
    let (read_timeout, idle_timeout) = if probe {
        (PROBE_WAIT_MS, PROBE_WAIT_MS)
    } else {
        (
            cfg.server.read_timeout.as_millis() as u64,
            cfg.server.idle_timeout.as_millis() as u64,
        )
    };
    let mut decoder = RequestDecoder::new(limits);
    let mut auth = AuthCache::default();
    let mut out = Vec::new();
    let mut request_started = false;
    let mut continue_sent = false;
    loop {
        match decoder.decode(conn.rbuf.filled()) {
            Ok(Some((req, used))) => {
                conn.rbuf.consume(used);
                conn.ctl.clear_deadline();
                request_started = false;
                continue_sent = false;
                let keep_alive = req.keep_alive && !conn.ctl.closing() && !probe;
                let head_only = req.method == Method::Head;
                let label = routes::label(req.path());
                let started = Instant::now();
                let cors = cors::allow_origin(&conn.shard.config.server.allowed_origins, &req);
                let outcome = if probe && !routes::serves_probes(req.path()) {
                    Outcome::Reply(over_capacity().into_response())
                } else {
                    match cors::preflight(&conn.shard.config.server.allowed_origins, &req) {
                        Some(resp) => Outcome::Reply(resp),
                        None => route(conn, req, &mut auth).await,
                    }
                };
                let metrics = &conn.shard.metrics;
                match outcome {
                    Outcome::Reply(mut resp) => {
                        if let Some(origin) = cors {
                            resp = resp
                                .with_header("Access-Control-Allow-Origin", origin)
                                .with_header("Access-Control-Expose-Headers", cors::EXPOSE_HEADERS)
                                .with_header("Vary", "Origin");
                        }
                        metrics.count_request(label, resp.status);
                        if matches!(
                            (label, resp.status),
                            ("publish", 201) | ("publish_bulk", 207)
                        ) {
                            let micros = started.elapsed().as_micros() as u64;
                            metrics.publish_latency.borrow_mut().record(micros);
                        }
                        encode(&resp, head_only, keep_alive, &mut out)
                    }
                    Outcome::Upgrade(upgrade) => {
                        metrics.count_request(label, 101);
                        if !out.is_empty() {
                            conn.write_all(&out).await?;
                        }
                        return ws_session::run(conn, upgrade).await;
                    }
                    Outcome::Stream(stream) => {
                        metrics.count_request(label, 200);
                        if !out.is_empty() {
                            conn.write_all(&out).await?;
                        }
                        return sse::run(conn, stream).await;
                    }
                }
                if !keep_alive {
                    conn.write_all(&out).await?;
                    return Ok(());
                }
                continue;
            }
            Ok(None) => {}
            Err(e) => {
                encode(&ApiError::from(e).into_response(), false, false, &mut out);
                conn.write_all(&out).await?;
                conn.linger().await;
                return Ok(());
            }
        }
        if decoder.expects_continue() && !continue_sent {
            continue_sent = true;
            out.extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
        }
        if !out.is_empty() {
            conn.write_all(&out).await?;
            out.clear();
        }
        if conn.rbuf.is_empty() && !decoder.in_body() {
            if conn.ctl.closing() {
                return Ok(());
            }
            conn.ctl.set_deadline(now_ms() + idle_timeout);
        } else if !request_started {
            request_started = true;
            conn.ctl.set_deadline(now_ms() + read_timeout);
        }
        match conn.read_or_wake().await? {
            Event::Data => {}
            Event::Eof => return Ok(()),
            Event::Woken => {
                if conn.ctl.take_timeout() {
                    // A probe that sent no request in time is simply closed: lingering would
                    // keep its slot from the next health check.
                    if request_started && !probe {
                        let err = ApiError::new(
                            408,
                            "REQUEST_TIMEOUT",
                            "the request was not received in time",
                        );
                        encode(&err.into_response(), false, false, &mut out);
                        conn.write_all(&out).await?;
                        conn.linger().await;
                    }
                    return Ok(());
                }
            }
        }
    }
}

/// Finds the request's route in [`routes::ROUTES`], checks what it must show, and runs its
/// endpoint.
async fn route(conn: &mut Conn, req: Request, auth: &mut AuthCache) -> Outcome {
    use routes::Endpoint::*;
    let shard = Rc::clone(&conn.shard);
    let (route, param) = match routes::find(req.path(), req.method) {
        Ok(found) => (found.route, found.param.map(Cow::into_owned)),
        Err(Miss::NotFound) => return Outcome::from(Err(ApiError::not_found(req.path()))),
        Err(Miss::NotAllowed(allow)) => {
            return Outcome::from(Err(ApiError::method_not_allowed(allow)))
        }
    };
    // Before the token check and the body parse: a refusal must cost far less than a
    // publish, or refusing would not shed anything.
    if matches!(route.endpoint, Publish | PublishBulk) {
        if let Err(e) = shed::admit_request(&shard, conn.read_at) {
            return Outcome::from(Err(e));
        }
    }
    let principal = match authorize(&shard, &req, auth, route.access) {
        Ok(principal) => principal,
        Err(e) => return Outcome::from(Err(e)),
    };
    let who = || {
        principal
            .clone()
            .ok_or_else(|| ApiError::from(AuthError::Missing))
    };
    let param = param.as_deref().unwrap_or_default();
    let peer = || conn.stream.tcp().peer_addr().ok().map(|a| a.ip());
    let result = match route.endpoint {
        Health => Ok(Response::json(200, br#"{"status":"ok"}"#.to_vec())),
        Ready => Ok(ready(&shard)),
        Metrics => Ok(metrics_text(&shard).await),
        Stats => stats::stats(&shard, &req).await,
        Console => Ok(console::page()),
        ClientModule => Ok(console::client_module()),
        Publish | PublishBulk => match who() {
            Ok(principal) => {
                let publisher = auth.publisher(&principal);
                let read_at = conn.read_at;
                if route.endpoint == Publish {
                    publish::single(&shard, &conn.ctl, &principal, publisher, req, read_at).await
                } else {
                    publish::bulk(&shard, &conn.ctl, &principal, publisher, req, read_at).await
                }
            }
            Err(e) => Err(e),
        },
        Poll => match who() {
            Ok(principal) => poll::poll(conn, &principal, &req).await,
            Err(e) => Err(e),
        },
        CompatPoll => match who() {
            Ok(principal) => compat_poll::poll(conn, &principal, &req.body).await,
            Err(e) => Err(e),
        },
        PollStats => Ok(compat_poll::stats(&shard).await),
        Ack => match who() {
            Ok(principal) => ack::http_ack(&shard, &principal, &req.body).await,
            Err(e) => Err(e),
        },
        WebSocket => {
            return match ws_session::upgrade(&shard, &req).await {
                Ok(upgrade) => Outcome::Upgrade(upgrade),
                Err(e) => Outcome::from(Err(e)),
            }
        }
        EventStream => {
            return match sse::open(conn, &req).await {
                Ok(stream) => Outcome::Stream(stream),
                Err(e) => Outcome::from(Err(e)),
            }
        }
        Login => accounts::login(&shard, peer(), &req.body).await,
        Refresh => accounts::refresh(&shard, peer(), &req.body).await,
        Revoke => accounts::revoke(&shard, &req.body).await,
        Register => accounts::register(&shard, &req.body).await,
        Users => accounts::list_users(&shard).await,
        UserStats => accounts::user_stats(&shard),
        PatchUser => accounts::patch_user(&shard, param, &req.body).await,
        Logout | Me | Sessions | DeleteUser | EndSession => match who() {
            Ok(principal) => match route.endpoint {
                Logout => accounts::logout(&shard, &principal).await,
                Me => accounts::me(&shard, &principal).await,
                Sessions => accounts::sessions(&shard, &principal).await,
                DeleteUser => accounts::delete_user(&shard, &principal, param).await,
                _ => accounts::end_session(&shard, &principal, param).await,
            },
            Err(e) => Err(e),
        },
        TopicStats => topics::stats(&shard).await,
        CreateTopic | ListTopics | TopicDetail | UpdateTopic | DeleteTopic | TopicHistory => {
            match who() {
                Ok(principal) => match route.endpoint {
                    CreateTopic => topics::create(&shard, &principal, &req.body).await,
                    ListTopics => topics::list(&shard, &principal).await,
                    TopicDetail => topics::detail(&shard, &principal, param).await,
                    UpdateTopic => topics::update(&shard, &principal, param, &req.body).await,
                    DeleteTopic => topics::delete(&shard, &principal, param).await,
                    _ => topics::history(&shard, &principal, param, &req).await,
                },
                Err(e) => Err(e),
            }
        }
        NotAllowed => Err(ApiError::method_not_allowed(
            routes::allow(req.path()).unwrap_or_default(),
        )),
        NotFound => Err(ApiError::not_found(req.path())),
    };
    result.into()
}

/// What a request shows for `access`: its principal (`None` when nothing is asked).
fn authorize(
    shard: &Shard,
    req: &Request,
    auth: &mut AuthCache,
    access: Access,
) -> Result<Option<Rc<Principal>>, ApiError> {
    let needed = match access {
        Access::Public => return Ok(None),
        Access::Scrape if shard.config.server.metrics_public => return Ok(None),
        Access::Authenticated => return auth.authenticated(shard, req).map(Some),
        Access::Scrape => Permission::Admin,
        Access::Holding(permission) => permission,
    };
    auth.principal(shard, req, needed).map(Some)
}

/// `GET /metrics`: every shard's metrics, merged, in the Prometheus text format.
async fn metrics_text(shard: &Rc<Shard>) -> Response {
    let text = metrics::render(&shard.scrape_all().await, shard.store.is_persistent());
    Response {
        status: 200,
        headers: Vec::new(),
        body: text.into_bytes(),
        content_type: Some("text/plain; version=0.0.4; charset=utf-8"),
    }
}

fn ready(shard: &Shard) -> Response {
    if shard.is_shutting_down() {
        return ApiError::new(503, "SHUTTING_DOWN", "the relay is shutting down").into_response();
    }
    match shard.readiness() {
        Ok(()) => Response::json(
            200,
            format!(r#"{{"status":"ready","shards":{}}}"#, shard.count()).into_bytes(),
        ),
        Err(failing) => ApiError::new(503, "NOT_READY", failing).into_response(),
    }
}

/// Verifies a token and checks it against account state.
fn verify_token(shard: &Shard, token: &str) -> Result<Rc<Principal>, ApiError> {
    admitted(shard, Rc::new(shard.auth.verify(token)?))
}

/// A verified token's principal as account state has it now (see
/// [`crate::account::Replica::admit`]): refused when its token was logged out or its
/// account is gone or inactive; otherwise with its account's current permissions, and the
/// very same principal when they did not change.
fn admitted(shard: &Shard, principal: Rc<Principal>) -> Result<Rc<Principal>, ApiError> {
    match shard.accounts.replica().admit(&principal, now_ms())? {
        None => Ok(principal),
        Some(current) => Ok(Rc::new(Principal {
            permissions: current,
            ..Principal::clone(&principal)
        })),
    }
}

/// Extracts the bearer token of a request from the `Authorization` header.
fn bearer(req: &Request) -> Option<&str> {
    let value = req.header("authorization")?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// Remembers the last verified token of a keep-alive connection, so a producer that sends
/// the same token on every request pays for signature verification once.
#[derive(Default)]
struct AuthCache {
    token: String,
    principal: Option<Rc<Principal>>,
    /// The cached principal as a publisher, made on its first publish.
    publisher: Option<Arc<Publisher>>,
}

impl AuthCache {
    /// The request's principal, which must hold `needed`.
    fn principal(
        &mut self,
        shard: &Shard,
        req: &Request,
        needed: Permission,
    ) -> Result<Rc<Principal>, ApiError> {
        let principal = self.authenticated(shard, req)?;
        principal.require(needed)?;
        Ok(principal)
    }

    /// Who publishes with the cached token (its subject, and its account's username when it
    /// has one), shared by every publish on this connection.
    fn publisher(&mut self, principal: &Principal) -> Arc<Publisher> {
        let publisher = self.publisher.get_or_insert_with(|| {
            Arc::new(Publisher {
                subject: principal.subject.as_str().into(),
                name: principal
                    .username
                    .as_deref()
                    .unwrap_or(&principal.subject)
                    .into(),
            })
        });
        Arc::clone(publisher)
    }

    /// Any valid token, checked against account state (deny-list, account active) on every
    /// request: a logout or deactivation applies to connections already open.
    fn authenticated(&mut self, shard: &Shard, req: &Request) -> Result<Rc<Principal>, ApiError> {
        let token = bearer(req).ok_or(AuthError::Missing)?;
        let cached = match &self.principal {
            Some(p) if self.token == token && p.expires_at.saturating_mul(1000) > now_ms() => {
                Rc::clone(p)
            }
            _ => {
                self.principal = None;
                self.publisher = None;
                let p = Rc::new(shard.auth.verify(token)?);
                self.token.clear();
                self.token.push_str(token);
                self.principal = Some(Rc::clone(&p));
                p
            }
        };
        admitted(shard, cached)
    }
}
