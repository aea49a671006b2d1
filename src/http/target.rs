//! The request target and the `Host` field (RFC 9112 §3.2 and §3.2.2, RFC 3986 §3.2.2):
//! which forms of target a request may use, which path an absolute-form target names, and
//! what a valid `Host` value is.
//!
//! Owns these syntax rules only. The decoder (`request`) applies them to every head; nothing
//! here knows routes, and nothing compares a host with a list of names (the relay serves
//! whatever host it is asked for).

/// The path (not percent-decoded) and raw query a request target names: an origin-form
/// target (`/path?query`) as it is, an absolute-form one (`http://host:port/path?query`,
/// which a server must accept) by its path and query, `*` for `OPTIONS` (asterisk-form).
/// Anything else, including authority-form (only for CONNECT, which the relay does not
/// serve), is refused with the reason.
pub fn path_and_query(
    target: &str,
    is_options: bool,
) -> Result<(&str, Option<&str>), &'static str> {
    if target == "*" {
        return if is_options {
            Ok(("*", None))
        } else {
            Err("the target `*` is only for OPTIONS")
        };
    }
    let origin = if target.starts_with('/') {
        target
    } else {
        absolute_form_rest(target)?
    };
    let (path, query) = match origin.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (origin, None),
    };
    Ok((if path.is_empty() { "/" } else { path }, query))
}

/// What follows the authority of an `http` or `https` URI (an empty path included).
fn absolute_form_rest(target: &str) -> Result<&str, &'static str> {
    let (scheme, rest) = target.split_once("://").ok_or(
        "the request target must be a path (origin-form) or an http(s) URI (absolute-form)",
    )?;
    if !scheme.eq_ignore_ascii_case("http") && !scheme.eq_ignore_ascii_case("https") {
        return Err("an absolute-form target must be an http or https URI");
    }
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, after) = rest.split_at(end);
    // RFC 9110 §4.2.1: an http(s) URI without a host is invalid; a recipient should treat
    // user info as an error (§4.2.4).
    if authority.is_empty() || authority.contains('@') || !valid_host(authority) {
        return Err("the authority of an absolute-form target must be host[:port]");
    }
    Ok(after)
}

/// Whether `value` is a valid `Host` field value: empty, or `uri-host [ ":" port ]` where
/// the host is a registered name or IPv4 address (unreserved characters, sub-delims and
/// percent escapes) or a bracketed IP literal, and the port is digits.
pub fn valid_host(value: &str) -> bool {
    let (host, port) = match value.strip_prefix('[') {
        Some(literal) => match literal.split_once(']') {
            Some((address, rest)) if valid_ip_literal(address) => ("", rest),
            _ => return false,
        },
        None => match value.rsplit_once(':') {
            Some((host, _)) => (host, &value[host.len()..]),
            None => (value, ""),
        },
    };
    let port_ok = port.is_empty()
        || port
            .strip_prefix(':')
            .is_some_and(|digits| digits.bytes().all(|b| b.is_ascii_digit()));
    port_ok && valid_reg_name(host)
}

/// `*( unreserved / pct-encoded / sub-delims )`.
fn valid_reg_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        match b {
            b'%' => {
                let hex = |j: usize| bytes.get(j).is_some_and(u8::is_ascii_hexdigit);
                if !hex(i + 1) || !hex(i + 2) {
                    return false;
                }
                i += 3;
                continue;
            }
            b if b.is_ascii_alphanumeric() => {}
            b'-' | b'.' | b'_' | b'~' => {}
            b'!' | b'$' | b'&' | b'\'' | b'(' | b')' | b'*' | b'+' | b',' | b';' | b'=' => {}
            _ => return false,
        }
        i += 1;
    }
    true
}

/// The inside of `[...]`: an IPv6 address (hex digits, colons, a dotted IPv4 tail) or an
/// IPvFuture (`v<hex>.<unreserved / sub-delims / ":">`), checked for its alphabet.
fn valid_ip_literal(address: &str) -> bool {
    if let Some(future) = address.strip_prefix(['v', 'V']) {
        return match future.split_once('.') {
            Some((version, rest)) => {
                !version.is_empty()
                    && version.bytes().all(|b| b.is_ascii_hexdigit())
                    && !rest.is_empty()
                    && !rest.contains('%')
                    && rest.split(':').all(valid_reg_name)
            }
            None => false,
        };
    }
    address.bytes().filter(|&b| b == b':').count() >= 2
        && address
            .bytes()
            .all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_follow_rfc_3986() {
        for ok in [
            "",
            "relay.test",
            "relay.test:8080",
            "relay.test:",
            "127.0.0.1:80",
            "[::1]",
            "[::1]:8080",
            "[2001:db8::7]",
            "[::ffff:192.0.2.1]:1",
            "[v1.fe80::a+en1]",
            "a-b_c~d!e$f&g'h(i)j*k+l,m;n=o",
            "%41bc",
        ] {
            assert!(valid_host(ok), "{ok:?}");
        }
        for bad in [
            "a b",
            "a.test, b.test",
            "user@relay.test",
            "relay.test:http",
            "relay.test:80:80",
            "[::1",
            "[::1]x",
            "[relay.test]",
            "[v1.]",
            "a/b",
            "a%4",
            "a%zz",
            "tab\there",
            "é.test",
        ] {
            assert!(!valid_host(bad), "{bad:?}");
        }
    }

    #[test]
    fn targets_name_a_path_and_query() {
        fn ok(target: &str) -> (&str, Option<&str>) {
            path_and_query(target, false).unwrap()
        }
        assert_eq!(ok("/a/b?x=1"), ("/a/b", Some("x=1")));
        assert_eq!(ok("/"), ("/", None));
        assert_eq!(ok("http://relay.test/a?x=1"), ("/a", Some("x=1")));
        assert_eq!(ok("HTTPS://relay.test:8443/a"), ("/a", None));
        assert_eq!(ok("http://relay.test"), ("/", None));
        assert_eq!(ok("http://relay.test?x"), ("/", Some("x")));
        assert_eq!(ok("http://[::1]:80//a"), ("//a", None));
        assert_eq!(path_and_query("*", true).unwrap(), ("*", None));
        for bad in [
            "*",
            "a/b",
            "relay.test:80",
            "ftp://relay.test/a",
            "http:///a",
            "http://user@relay.test/a",
            "http://relay.test:x/a",
            "http:/a",
            "",
        ] {
            assert!(path_and_query(bad, false).is_err(), "{bad:?}");
        }
    }
}
