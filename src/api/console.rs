//! The relay's own web pages: the console at `GET /console` and the browser client module
//! at `GET /client.js`, both kept in `src/api/console/` and embedded in the binary.
//!
//! Owns only serving the two files with their content types and cache and security
//! headers. The console's data come from `GET /api/v1/stats` and its live tail from the
//! client module, through the ordinary endpoints; nothing here reads relay state.

use crate::http::Response;

const CONSOLE_HTML: &str = include_str!("console/console.html");
const CLIENT_JS: &str = include_str!("console/client.js");

/// The console loads nothing from elsewhere (it works offline) and is framed by nobody.
/// Its one script is inline, its chart an inline SVG.
const CONSOLE_POLICY: &str = "default-src 'none'; script-src 'self' 'unsafe-inline'; \
     style-src 'unsafe-inline'; img-src data:; connect-src 'self'; form-action 'self'; \
     base-uri 'none'; frame-ancestors 'none'";

/// `GET /console`: always fetched afresh, so a relay upgrade shows at once.
pub fn page() -> Response {
    Response {
        status: 200,
        headers: vec![
            ("Cache-Control", "no-cache".to_owned()),
            ("Content-Security-Policy", CONSOLE_POLICY.to_owned()),
            ("X-Content-Type-Options", "nosniff".to_owned()),
            ("Referrer-Policy", "no-referrer".to_owned()),
        ],
        body: CONSOLE_HTML.as_bytes().to_vec(),
        content_type: Some("text/html; charset=utf-8"),
    }
}

/// `GET /client.js`: an ES module (browsers insist on a JavaScript type for modules),
/// cached for a day.
pub fn client_module() -> Response {
    Response {
        status: 200,
        headers: vec![
            ("Cache-Control", "public, max-age=86400".to_owned()),
            ("X-Content-Type-Options", "nosniff".to_owned()),
        ],
        body: CLIENT_JS.as_bytes().to_vec(),
        content_type: Some("text/javascript; charset=utf-8"),
    }
}
