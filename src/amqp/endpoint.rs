//! A broker address ([`Endpoint`]): the URL as amiquip gets it (with a connection timeout
//! and heartbeat added) and as people may see it (user and password masked), plus the
//! masking of URLs and passwords in free text.

use std::path::PathBuf;
use std::time::Duration;
use url::Url;

/// Heartbeat asked for when the URL names none: a dead or frozen peer is noticed after two
/// missed heartbeats, i.e. in about 10 s (amiquip's own default would take 2 minutes).
pub(super) const DEFAULT_HEARTBEAT_SECS: u16 = 5;
/// A broker address: the URL amiquip gets and the masked one people see.
#[derive(Clone)]
pub struct Endpoint {
    /// The URL amiquip's options are read from (with the query we add).
    pub(super) url: String,
    masked: String,
    password: Option<String>,
    /// The connection timeout (`--connect-timeout`, or the URL's `connection_timeout`).
    pub(super) timeout: Duration,
    /// PEM file of a private CA to trust for amqps:// (`--ca-cert`).
    pub(super) ca_cert: Option<PathBuf>,
}

impl std::fmt::Debug for Endpoint {
    /// Only the masked URL: a `{:?}` of a config must not print the password either.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("url", &self.masked)
            .field("timeout", &self.timeout)
            .field("ca_cert", &self.ca_cert)
            .finish_non_exhaustive()
    }
}

/// The URL given is not usable (bad usage, exit 2).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BadUrl(pub String);

impl Endpoint {
    /// Parse `url`, replace its host with `host` when given, and add a connection timeout and
    /// heartbeat unless the URL sets them.
    pub fn parse(url: &str, host: Option<&str>, timeout: Duration) -> Result<Endpoint, BadUrl> {
        let masked_input = mask_input(url);
        if let Some(c) = credentials(url).and_then(|c| c.chars().find(|c| "/?#".contains(*c))) {
            // A raw `/`, `?` or `#` ends the authority: the URL parser would take part of the
            // password for the host, port or path, and show it in its errors.
            return Err(BadUrl(format!(
                "--url {masked_input}: the user or password holds a raw `{c}`; percent-encode \
                 it (`/` as %2F, `?` as %3F, `#` as %23, `%` as %25); an `@` in the vhost is \
                 written %40"
            )));
        }
        let mut parsed = Url::parse(url).map_err(|e| {
            BadUrl(format!(
                "--url {masked_input}: {e}; expected amqp://USER:PASS@HOST:PORT/VHOST \
                 (percent-encode `/ ? # %` in the password)"
            ))
        })?;
        let password = parsed.password().map(str::to_string);
        if !matches!(parsed.scheme(), "amqp" | "amqps") {
            return Err(BadUrl(format!(
                "--url {masked_input}: scheme must be amqp:// or amqps://"
            )));
        }
        if let Some(host) = host {
            parsed.set_host(Some(host)).map_err(|e| {
                BadUrl(format!("--rabbitmq-server {host}: not a valid host name ({e})"))
            })?;
        }
        let masked_input = mask_url(&parsed);
        let known = ["heartbeat", "channel_max", "connection_timeout", "auth_mechanism"];
        let keys: Vec<String> = parsed.query_pairs().map(|(k, _)| k.into_owned()).collect();
        if let Some(bad) = keys.iter().find(|k| !known.contains(&k.as_str())) {
            return Err(BadUrl(format!(
                "--url {masked_input}: query parameter `{bad}` is not supported; use heartbeat, \
                 channel_max, connection_timeout or auth_mechanism"
            )));
        }
        let mut timeout = timeout;
        {
            let mut q = parsed.query_pairs_mut();
            if !keys.iter().any(|k| k == "connection_timeout") {
                q.append_pair("connection_timeout", &timeout.as_millis().to_string());
            }
            if !keys.iter().any(|k| k == "heartbeat") {
                q.append_pair("heartbeat", &DEFAULT_HEARTBEAT_SECS.to_string());
            }
        }
        if let Some(ms) = parsed
            .query_pairs()
            .find(|(k, _)| k == "connection_timeout")
            .and_then(|(_, v)| v.parse::<u64>().ok())
        {
            timeout = Duration::from_millis(ms);
        }
        let masked = mask_url(&strip_query(&parsed));
        Ok(Endpoint { url: parsed.into(), masked, password, timeout, ca_cert: None })
    }

    /// Trust the CA certificate(s) in this PEM file for amqps:// connections.
    pub fn with_ca_cert(mut self, path: Option<PathBuf>) -> Endpoint {
        self.ca_cert = path;
        self
    }

    /// The URL with everything between `://` and the `@` (user and password) replaced by
    /// `****`, without the query.
    pub fn masked(&self) -> &str {
        &self.masked
    }

    /// `text` with the password and every URL's credentials masked.
    pub(super) fn scrub(&self, text: &str) -> String {
        mask_text(text, self.password.as_deref())
    }
}

fn strip_query(url: &Url) -> Url {
    let mut u = url.clone();
    u.set_query(None);
    u
}

/// What `****` replaces in a URL shown to people: user and password.
const MASK: &str = "****";

/// A parsed URL as people may see it: `amqp://****@host:port/vhost`.
fn mask_url(url: &Url) -> String {
    let mut u = url.clone();
    if !u.username().is_empty() || u.password().is_some() {
        let _ = u.set_password(None);
        let _ = u.set_username(MASK);
    }
    u.to_string()
}

/// Where the user and password of one URL as typed sit: from `://` (or the start, when the
/// scheme is missing) to its LAST `@`, wherever the URL parser would end the authority.
fn credentials_span(url: &str) -> Option<(usize, usize)> {
    let start = url.find("://").map_or(0, |i| i + 3);
    let at = url[start..].rfind('@')?;
    Some((start, start + at))
}

fn credentials(url: &str) -> Option<&str> {
    credentials_span(url).map(|(from, to)| &url[from..to])
}

/// One URL as typed (parsed or not), masked from `://` to its last `@`.
fn mask_input(url: &str) -> String {
    match credentials_span(url) {
        Some((from, to)) => format!("{}{MASK}{}", &url[..from], &url[to..]),
        None => url.to_string(),
    }
}

/// Replace the password (raw or percent-encoded) and the credentials of every URL in free
/// text. A URL there runs from its scheme to the next whitespace or the next `amqp://` /
/// `amqps://`; its credentials are everything between `://` and its last `@`.
pub(crate) fn mask_text(text: &str, password: Option<&str>) -> String {
    let mut out = text.to_string();
    if let Some(p) = password.filter(|p| !p.is_empty()) {
        out = out.replace(p, MASK);
        let decoded =
            url::form_urlencoded::parse(format!("x={}", p.replace('+', "%2B")).as_bytes())
                .next()
                .map(|(_, v)| v.into_owned());
        if let Some(d) = decoded.filter(|d| !d.is_empty()) {
            out = out.replace(&d, MASK);
        }
    }
    let mut result = String::with_capacity(out.len());
    let mut rest = out.as_str();
    while let Some(i) = rest.find("://") {
        let (head, tail) = rest.split_at(i + 3);
        result.push_str(head);
        let mut end = tail.find(char::is_whitespace).unwrap_or(tail.len());
        if let Some(next) = next_amqp_url(&tail[..end]) {
            end = next;
        }
        let token = &tail[..end];
        match token.rfind('@') {
            Some(at) => {
                result.push_str(MASK);
                result.push_str(&token[at..]);
            }
            None => result.push_str(token),
        }
        rest = &tail[end..];
    }
    result.push_str(rest);
    result
}

/// Where the next `amqp://` or `amqps://` begins in `s` (ASCII case-insensitive).
pub(crate) fn next_amqp_url(s: &str) -> Option<usize> {
    let lower = s.to_ascii_lowercase();
    [lower.find("amqp://"), lower.find("amqps://")].into_iter().flatten().min()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(url: &str) -> Endpoint {
        Endpoint::parse(url, None, Duration::from_secs(5)).expect("valid url")
    }

    #[test]
    fn masks_from_the_scheme_to_the_last_at() {
        let e = ep("amqp://user:s3cret@host:5672/%2f");
        assert_eq!(e.masked(), "amqp://****@host:5672/%2f");
        assert!(!e.scrub("failed amqp://user:s3cret@host/ s3cret").contains("s3cret"));
        assert_eq!(mask_text("x amqp://a:b@h:1/v y", None), "x amqp://****@h:1/v y");
        assert_eq!(ep("amqp://u:x@y,z:w@h/%2f").masked(), "amqp://****@h/%2f");
        assert_eq!(ep("amqps://u:p%2Fq@h/%2f").masked(), "amqps://****@h/%2f");
        assert_eq!(ep("amqp://h:1/v").masked(), "amqp://h:1/v");
        assert!(!format!("{:?}", ep("amqp://u:s3cret@h/")).contains("s3cret"));
    }

    #[test]
    fn masks_urls_in_free_text_whatever_the_password_holds() {
        for (text, secret) in [
            ("--url amqp://u:SEC/RET@h:1/%2f: invalid port", "SEC"),
            ("at amqp://u:p?q@h/ and amqps://v:a,b@h2/", "p?q"),
            ("amqp://u:x@y@h/, amqp://v:QQ@h2", "x@y"),
            ("(amqp://u:p#q@h/)", "p#q"),
        ] {
            let masked = mask_text(text, None);
            assert!(!masked.contains(secret), "{text} -> {masked}");
            assert!(masked.contains("://****@h"), "{text} -> {masked}");
        }
        assert!(!mask_text("two@h2", None).contains("****"));
        assert_eq!(mask_input("guest:pw@host:5672"), "****@host:5672");
        assert_eq!(mask_input("amqp://u:SEC/RET@h:1/%2f"), "amqp://****@h:1/%2f");
    }

    #[test]
    fn a_raw_slash_question_mark_or_hash_in_the_password_is_refused_unshown() {
        for bad in ["amqp://u:SEC/RET@h/%2f", "amqp://u:p?q@h/", "amqp://u:123#45@h/"] {
            let err = Endpoint::parse(bad, None, Duration::from_secs(1)).expect_err(bad);
            assert!(err.0.contains("percent-encode") && err.0.contains("%2F"), "{}", err.0);
            for secret in ["SEC", "RET", "p?q", "123", "45"] {
                assert!(!err.0.contains(secret), "{}", err.0);
            }
        }
    }

    #[test]
    fn adds_timeout_and_heartbeat_unless_given() {
        let e = ep("amqp://guest:guest@localhost:5672/%2f");
        assert!(e.url.contains("connection_timeout=5000"), "{}", e.url);
        assert!(e.url.contains("heartbeat=5"), "{}", e.url);
        let e = ep("amqp://localhost/%2f?heartbeat=3&connection_timeout=700");
        assert_eq!(e.timeout, Duration::from_millis(700));
        assert!(!e.url.contains("heartbeat=5&"), "{}", e.url);
    }

    #[test]
    fn rabbitmq_server_replaces_the_host() {
        let e = Endpoint::parse(
            "amqp://u:p@localhost:5672/%2f",
            Some("rabbit"),
            Duration::from_secs(1),
        )
        .expect("valid");
        assert_eq!(e.masked(), "amqp://****@rabbit:5672/%2f");
    }

    #[test]
    fn rejects_bad_urls_without_echoing_the_password() {
        for bad in ["http://u:pw@h/", "amqp://u:pw@h/?foo=1", "not a url"] {
            let err = Endpoint::parse(bad, None, Duration::from_secs(1)).expect_err(bad);
            assert!(!err.0.contains(":pw@"), "{}", err.0);
        }
    }
}
