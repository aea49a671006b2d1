//! The one route table: every path the relay serves, with its methods, the permission a
//! request needs, the `route` label of its metrics, and the endpoint that answers it.
//!
//! Routing, the `Allow` header of a 405, the methods of a CORS preflight, the metric label
//! and which paths a connection over the cap may still ask for are all read from
//! [`ROUTES`]; nothing else in the API lists paths. Order matters where patterns overlap:
//! the first route whose pattern and method fit serves (`GET /api/v1/topics/stats` is the
//! statistics, other methods on that path address a topic named `stats`, as upstream).
//!
//! Owns the table and the matching. What an endpoint does is its module's business; how a
//! permission is checked is `AuthCache`'s.

use std::borrow::Cow;

use crate::auth::Permission;
use crate::http::request::decode_path_segment;
use crate::http::Method;

/// Which paths a route serves.
#[derive(Debug)]
pub enum Pattern {
    /// Exactly this path.
    Exact(&'static str),
    /// `prefix` + one non-empty segment (no `/`, percent-decoded) + `suffix`.
    Param {
        prefix: &'static str,
        suffix: &'static str,
    },
    /// Every path starting with this: the family a path belongs to when nothing more
    /// precise does (its metric label, and a 404).
    Prefix(&'static str),
}

/// What a request must show before its endpoint runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Nothing (or the endpoint authenticates itself, as the WebSocket upgrade does).
    Public,
    /// Any valid token.
    Authenticated,
    /// A token holding the permission.
    Holding(Permission),
    /// `admin`, unless `server.metrics_public`.
    Scrape,
}

/// Who answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint {
    Health,
    Ready,
    Metrics,
    Publish,
    PublishBulk,
    Poll,
    CompatPoll,
    PollStats,
    Ack,
    WebSocket,
    Login,
    Refresh,
    Revoke,
    Logout,
    Me,
    Register,
    Users,
    UserStats,
    Sessions,
    PatchUser,
    DeleteUser,
    EndSession,
    CreateTopic,
    ListTopics,
    TopicStats,
    TopicDetail,
    UpdateTopic,
    DeleteTopic,
    TopicHistory,
    /// Any method the path's other routes do not take: 405, once `access` is shown.
    NotAllowed,
    /// 404: a path of a known family that no route serves.
    NotFound,
}

#[derive(Debug)]
pub struct Route {
    pub pattern: Pattern,
    /// The methods served; empty for [`Endpoint::NotAllowed`] and [`Endpoint::NotFound`],
    /// which take any method.
    pub methods: &'static [Method],
    pub access: Access,
    /// The `route` label of request metrics: a fixed set, so that scanners probing random
    /// paths cannot grow the metrics.
    pub label: &'static str,
    pub endpoint: Endpoint,
}

const GET: &[Method] = &[Method::Get];
const POST: &[Method] = &[Method::Post];
const ANY: &[Method] = &[];

const fn route(
    pattern: Pattern,
    methods: &'static [Method],
    access: Access,
    label: &'static str,
    endpoint: Endpoint,
) -> Route {
    Route {
        pattern,
        methods,
        access,
        label,
        endpoint,
    }
}

use Access::{Authenticated, Holding, Public, Scrape};
use Endpoint::*;
use Pattern::{Exact, Param, Prefix};
use Permission::{Admin, Read, Write};

/// Where the Topics API lives.
pub const TOPICS: &str = "/api/v1/topics";

pub const ROUTES: &[Route] = &[
    route(
        Exact("/health"),
        &[Method::Get, Method::Head],
        Public,
        "health",
        Health,
    ),
    route(
        Exact("/ready"),
        &[Method::Get, Method::Head],
        Public,
        "ready",
        Ready,
    ),
    route(Exact("/metrics"), GET, Scrape, "metrics", Metrics),
    route(
        Exact("/api/v1/messages"),
        POST,
        Holding(Write),
        "publish",
        Publish,
    ),
    route(
        Exact("/api/v1/messages/bulk"),
        POST,
        Holding(Write),
        "publish_bulk",
        PublishBulk,
    ),
    route(Exact("/api/v1/poll"), GET, Holding(Read), "poll", Poll),
    route(
        Exact("/messages/poll"),
        POST,
        Holding(Read),
        "poll_compat",
        CompatPoll,
    ),
    route(
        Exact("/messages/poll/stats"),
        GET,
        Holding(Read),
        "poll_stats",
        PollStats,
    ),
    route(Exact("/api/v1/ack"), POST, Holding(Read), "ack", Ack),
    route(Exact("/ws"), GET, Public, "ws", WebSocket),
    // The original relay's account API.
    route(Exact("/auth/login"), POST, Public, "auth", Login),
    route(Exact("/auth/token/refresh"), POST, Public, "auth", Refresh),
    route(Exact("/auth/token/revoke"), POST, Public, "auth", Revoke),
    route(Exact("/auth/logout"), POST, Authenticated, "auth", Logout),
    route(Exact("/auth/me"), GET, Authenticated, "auth", Me),
    route(
        Exact("/auth/register"),
        POST,
        Holding(Admin),
        "auth",
        Register,
    ),
    route(Exact("/auth/users"), GET, Holding(Admin), "auth", Users),
    route(
        Exact("/auth/users/stats"),
        GET,
        Holding(Admin),
        "auth",
        UserStats,
    ),
    route(
        Exact("/auth/sessions"),
        GET,
        Authenticated,
        "auth",
        Sessions,
    ),
    route(USER, &[Method::Patch], Holding(Admin), "auth", PatchUser),
    route(USER, &[Method::Delete], Holding(Admin), "auth", DeleteUser),
    route(USER, ANY, Holding(Admin), "auth", NotAllowed),
    route(
        SESSION,
        &[Method::Delete],
        Authenticated,
        "auth",
        EndSession,
    ),
    route(SESSION, ANY, Authenticated, "auth", NotAllowed),
    route(Prefix("/auth/"), ANY, Public, "auth", NotFound),
    // The original relay's Topics API. A record's owner may see or change it without
    // `read`: checked once the record is found.
    route(
        Exact("/api/v1/topics/stats"),
        GET,
        Holding(Admin),
        "topics",
        TopicStats,
    ),
    route(
        Exact(TOPICS),
        &[Method::Get],
        Authenticated,
        "topics",
        ListTopics,
    ),
    route(Exact(TOPICS), POST, Holding(Write), "topics", CreateTopic),
    route(TOPIC, GET, Authenticated, "topics", TopicDetail),
    route(TOPIC, &[Method::Put], Authenticated, "topics", UpdateTopic),
    route(
        TOPIC,
        &[Method::Delete],
        Authenticated,
        "topics",
        DeleteTopic,
    ),
    route(TOPIC_MESSAGES, GET, Holding(Read), "topics", TopicHistory),
    route(Prefix(TOPICS), ANY, Public, "topics", NotFound),
];

const USER: Pattern = Param {
    prefix: "/auth/users/",
    suffix: "",
};
const SESSION: Pattern = Param {
    prefix: "/auth/sessions/",
    suffix: "",
};
const TOPIC: Pattern = Param {
    prefix: "/api/v1/topics/",
    suffix: "",
};
const TOPIC_MESSAGES: Pattern = Param {
    prefix: "/api/v1/topics/",
    suffix: "/messages",
};

impl Pattern {
    /// `None` when `path` is not this pattern's; else the decoded parameter, if it has one.
    fn matches<'a>(&self, path: &'a str) -> Option<Option<Cow<'a, str>>> {
        match self {
            Exact(p) => (path == *p).then_some(None),
            Prefix(p) => path.starts_with(p).then_some(None),
            Param { prefix, suffix } => {
                let segment = path.strip_prefix(prefix)?.strip_suffix(suffix)?;
                (!segment.is_empty() && !segment.contains('/'))
                    .then(|| Some(decode_path_segment(segment)))
            }
        }
    }
}

/// The route that serves a request, and its path parameter.
pub struct Found<'a> {
    pub route: &'static Route,
    pub param: Option<Cow<'a, str>>,
}

impl Found<'_> {
    /// The path parameter (a user ID, a session, a topic name); empty for routes without.
    pub fn param(&self) -> &str {
        self.param.as_deref().unwrap_or_default()
    }
}

/// Why no route serves a request.
#[derive(Debug, PartialEq, Eq)]
pub enum Miss {
    NotFound,
    /// The path is served, but not with this method: what it takes, for `Allow`.
    NotAllowed(String),
}

/// The route for `method` on `path`.
pub fn find(path: &str, method: Method) -> Result<Found<'_>, Miss> {
    let mut known = false;
    for route in ROUTES {
        let Some(param) = route.pattern.matches(path) else {
            continue;
        };
        let served = route.methods.contains(&method);
        match route.endpoint {
            NotFound if !known => return Err(Miss::NotFound),
            NotFound => break,
            NotAllowed if !served => return Ok(Found { route, param }),
            _ if served => return Ok(Found { route, param }),
            _ => known = true,
        }
    }
    match allow(path) {
        Some(methods) => Err(Miss::NotAllowed(methods)),
        None => Err(Miss::NotFound),
    }
}

/// The methods served on `path` (`"GET, HEAD"`), `None` for a path no route serves.
pub fn allow(path: &str) -> Option<String> {
    const ORDER: [Method; 6] = [
        Method::Get,
        Method::Head,
        Method::Post,
        Method::Put,
        Method::Patch,
        Method::Delete,
    ];
    let served: Vec<Method> = ROUTES
        .iter()
        .filter(|r| r.pattern.matches(path).is_some())
        .flat_map(|r| r.methods.iter().copied())
        .collect();
    let names: Vec<&str> = ORDER
        .iter()
        .filter(|m| served.contains(m))
        .map(|m| m.as_str())
        .collect();
    (!names.is_empty()).then(|| names.join(", "))
}

/// The metric label of a request for `path`: its route's, its family's, else `other`.
pub fn label(path: &str) -> &'static str {
    ROUTES
        .iter()
        .find(|r| r.pattern.matches(path).is_some())
        .map_or("other", |r| r.label)
}

/// Whether a connection beyond the connection cap may still be served for `path`: what
/// operators watch a loaded relay with.
pub fn serves_probes(path: &str) -> bool {
    ROUTES
        .iter()
        .find(|r| r.pattern.matches(path).is_some())
        .is_some_and(|r| matches!(r.endpoint, Health | Ready | Metrics))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint(path: &str, method: Method) -> Result<(Endpoint, String), Miss> {
        find(path, method).map(|f| (f.route.endpoint, f.param().to_owned()))
    }

    #[test]
    fn paths_and_methods_find_their_endpoint() {
        let ok = |e: Endpoint, p: &str| Ok((e, p.to_owned()));
        assert_eq!(endpoint("/health", Method::Head), ok(Health, ""));
        assert_eq!(
            endpoint("/api/v1/topics/stats", Method::Get),
            ok(TopicStats, "")
        );
        assert_eq!(
            endpoint("/api/v1/topics/stats", Method::Delete),
            ok(DeleteTopic, "stats"),
            "other methods address a topic named stats"
        );
        assert_eq!(
            endpoint("/api/v1/topics/a%3Ab", Method::Get),
            ok(TopicDetail, "a:b")
        );
        assert_eq!(
            endpoint("/api/v1/topics/a%2Fb/messages", Method::Get),
            ok(TopicHistory, "a/b")
        );
        assert_eq!(
            endpoint("/auth/users/u1", Method::Patch),
            ok(PatchUser, "u1")
        );
        assert_eq!(
            endpoint("/auth/users/u1", Method::Get),
            ok(NotAllowed, "u1"),
            "authorised before it is refused"
        );
        for none in [
            "/api/v1/topicsx",
            "/api/v1/topics/",
            "/api/v1/topics//messages",
            "/api/v1/topics/a/b",
            "/api/v1/topics/a/messages/x",
            "/auth/nope",
            "/auth/users/",
            "/nope",
        ] {
            assert_eq!(
                endpoint(none, Method::Get).err(),
                Some(Miss::NotFound),
                "{none}"
            );
        }
    }

    #[test]
    fn allow_lists_what_a_path_takes_in_one_order() {
        let not_allowed = |path: &str, method| match find(path, method) {
            Err(Miss::NotAllowed(allow)) => allow,
            other => panic!("{path}: {:?}", other.map(|f| f.route.endpoint)),
        };
        assert_eq!(not_allowed("/health", Method::Post), "GET, HEAD");
        assert_eq!(not_allowed("/api/v1/messages", Method::Get), "POST");
        assert_eq!(not_allowed("/api/v1/topics", Method::Put), "GET, POST");
        assert_eq!(
            not_allowed("/api/v1/topics/stats", Method::Post),
            "GET, PUT, DELETE"
        );
        assert_eq!(
            not_allowed("/api/v1/topics/x/messages", Method::Post),
            "GET"
        );
        assert_eq!(not_allowed("/auth/login", Method::Get), "POST");
        assert_eq!(not_allowed("/metrics", Method::Head), "GET");
        assert_eq!(allow("/auth/users/u1").as_deref(), Some("PATCH, DELETE"));
        assert_eq!(allow("/auth/sessions/j1").as_deref(), Some("DELETE"));
        assert_eq!(allow("/nope"), None);
    }

    #[test]
    fn labels_are_a_fixed_set() {
        assert_eq!(label("/api/v1/messages"), "publish");
        assert_eq!(label("/auth/anything"), "auth");
        assert_eq!(label("/api/v1/topicsx"), "topics");
        assert_eq!(label("/random/scanner/probe"), "other");
        assert!(serves_probes("/metrics") && serves_probes("/ready"));
        assert!(!serves_probes("/api/v1/messages"));
    }
}
