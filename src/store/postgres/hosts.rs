//! Connection strings that name several servers, as libpq reads them:
//! `postgres://u@h1:5432,h2:5433/db?target_session_attrs=read-write`, or
//! the key/value form `host=h1,h2 port=5432,5433 dbname=db`. sqlx takes one
//! host per `PgConnectOptions`, so the string is split here into one
//! single-host URL per server (everything else carried to each, percent
//! encoding untouched) and sqlx parses each of those itself.

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};

/// Which server a connection may be kept on (`target_session_attrs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionAttrs {
    Any,
    ReadWrite,
    ReadOnly,
    Primary,
    Standby,
    PreferStandby,
}

impl SessionAttrs {
    fn parse(s: &str) -> Result<Self, HostsError> {
        Ok(match s {
            "any" => Self::Any,
            "read-write" => Self::ReadWrite,
            "read-only" => Self::ReadOnly,
            "primary" => Self::Primary,
            "standby" => Self::Standby,
            "prefer-standby" => Self::PreferStandby,
            other => return Err(HostsError::SessionAttrs(other.to_owned())),
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Any => "any",
            Self::ReadWrite => "read-write",
            Self::ReadOnly => "read-only",
            Self::Primary => "primary",
            Self::Standby => "standby",
            Self::PreferStandby => "prefer-standby",
        }
    }
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum HostsError {
    #[error("target_session_attrs {0:?} is not one of any, read-write, read-only, primary, standby, prefer-standby")]
    SessionAttrs(String),
    #[error("{ports} ports for {hosts} hosts: give one port for all, or one per host")]
    Ports { hosts: usize, ports: usize },
    #[error("a host of the database URL is empty or malformed")]
    Host,
    #[error("the key/value connection string is malformed near {0:?}")]
    KeyValue(String),
}

/// A connection string split per server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Targets {
    /// One single-host `postgres://` URL per server, in the order given.
    pub urls: Vec<String>,
    pub attrs: SessionAttrs,
}

impl Targets {
    /// One server and no condition on it: used exactly as before this
    /// module existed, with no probing.
    pub fn is_plain(&self) -> bool {
        self.urls.len() == 1 && self.attrs == SessionAttrs::Any
    }
}

pub fn parse(s: &str) -> Result<Targets, HostsError> {
    let s = s.trim();
    if s.starts_with("postgres://") || s.starts_with("postgresql://") { parse_url(s) } else { parse_key_value(s) }
}

fn parse_url(s: &str) -> Result<Targets, HostsError> {
    let (scheme, rest) = s.split_once("://").ok_or(HostsError::Host)?;
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let (path, query) = match tail.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (tail, None),
    };
    let (userinfo, hostlist) = match authority.rsplit_once('@') {
        Some((u, h)) => (Some(u), h),
        None => (None, authority),
    };
    let mut attrs = SessionAttrs::Any;
    let mut params = Vec::new();
    for pair in query.unwrap_or_default().split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("target_session_attrs", v)) => attrs = SessionAttrs::parse(v)?,
            _ => params.push(pair),
        }
    }
    // A single host (or none: the local socket) with no condition is
    // passed on as written.
    if !hostlist.contains(',') && attrs == SessionAttrs::Any {
        return Ok(Targets { urls: vec![s.to_owned()], attrs });
    }
    let query = if params.is_empty() { String::new() } else { format!("?{}", params.join("&")) };
    let user = userinfo.map(|u| format!("{u}@")).unwrap_or_default();
    let urls = hostlist
        .split(',')
        .map(|host| {
            let (name, port) = split_host_port(host)?;
            let port = port.map(|p| format!(":{p}")).unwrap_or_default();
            Ok(format!("{scheme}://{user}{name}{port}{path}{query}"))
        })
        .collect::<Result<_, HostsError>>()?;
    Ok(Targets { urls, attrs })
}

/// `h`, `h:5432`, `[::1]`, `[::1]:5432`.
fn split_host_port(host: &str) -> Result<(&str, Option<&str>), HostsError> {
    let (name, port) = if host.starts_with('[') {
        let close = host.find(']').ok_or(HostsError::Host)?;
        let (name, after) = host.split_at(close + 1);
        match after {
            "" => (name, None),
            p => (name, Some(p.strip_prefix(':').ok_or(HostsError::Host)?)),
        }
    } else {
        match host.split_once(':') {
            Some((n, p)) => (n, Some(p)),
            None => (host, None),
        }
    };
    let port = port.filter(|p| !p.is_empty());
    if name.is_empty() || port.is_some_and(|p| p.parse::<u16>().is_err()) {
        return Err(HostsError::Host);
    }
    Ok((name, port))
}

/// Everything but unreserved characters, for a value placed in a URL.
const COMPONENT: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');

/// `key = value` pairs, values bare or single-quoted with `\'` and `\\`.
fn key_values(s: &str) -> Result<Vec<(String, String)>, HostsError> {
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.peek().is_none() {
            return Ok(out);
        }
        let mut key = String::new();
        while let Some(c) = chars.next_if(|c| *c != '=' && !c.is_whitespace()) {
            key.push(c);
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.next() != Some('=') || key.is_empty() {
            return Err(HostsError::KeyValue(key));
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let mut value = String::new();
        if chars.next_if_eq(&'\'').is_some() {
            loop {
                match chars.next() {
                    Some('\\') => value.push(chars.next().ok_or_else(|| HostsError::KeyValue(key.clone()))?),
                    Some('\'') => break,
                    Some(c) => value.push(c),
                    None => return Err(HostsError::KeyValue(key)),
                }
            }
        } else {
            while let Some(c) = chars.next_if(|c| !c.is_whitespace()) {
                value.push(c);
            }
        }
        out.push((key, value));
    }
}

fn parse_key_value(s: &str) -> Result<Targets, HostsError> {
    let enc = |v: &str| utf8_percent_encode(v, COMPONENT).to_string();
    let (mut hosts, mut ports, mut user, mut password, mut db) = (None, None, None, None, None);
    let mut attrs = SessionAttrs::Any;
    let mut params = Vec::new();
    for (k, v) in key_values(s)? {
        match k.as_str() {
            "host" | "hostaddr" => hosts = Some(v),
            "port" => ports = Some(v),
            "user" => user = Some(v),
            "password" => password = Some(v),
            "dbname" => db = Some(v),
            "target_session_attrs" => attrs = SessionAttrs::parse(&v)?,
            _ => params.push(format!("{}={}", enc(&k), enc(&v))),
        }
    }
    let hosts: Vec<String> = hosts.unwrap_or_default().split(',').map(str::to_owned).collect();
    let ports: Vec<&str> = ports.as_deref().map(|p| p.split(',').collect()).unwrap_or_default();
    if ports.len() > 1 && ports.len() != hosts.len() {
        return Err(HostsError::Ports { hosts: hosts.len(), ports: ports.len() });
    }
    // For a socket folder everything goes in the query, as sqlx reads it:
    // a URL has no user or port without a host.
    let socket_params: String = [("user", &user), ("password", &password)]
        .iter()
        .filter_map(|(k, v)| v.as_ref().map(|v| format!("&{k}={}", enc(v))))
        .collect();
    let userinfo = match (user, password) {
        (Some(u), Some(p)) => format!("{}:{}@", enc(&u), enc(&p)),
        (Some(u), None) => format!("{}@", enc(&u)),
        (None, Some(p)) => format!(":{}@", enc(&p)),
        (None, None) => String::new(),
    };
    let path = db.map(|d| format!("/{}", enc(&d))).unwrap_or_default();
    let query = if params.is_empty() { String::new() } else { format!("?{}", params.join("&")) };
    let urls = hosts
        .iter()
        .enumerate()
        .map(|(i, h)| {
            let port = ports.get(i).or(ports.first()).filter(|p| !p.is_empty());
            if port.is_some_and(|p| p.parse::<u16>().is_err()) {
                return Err(HostsError::Ports { hosts: hosts.len(), ports: ports.len() });
            }
            if h.starts_with('/') {
                let sep = if query.is_empty() { '?' } else { '&' };
                let port = port.map(|p| format!("&port={p}")).unwrap_or_default();
                return Ok(format!("postgres://{path}{query}{sep}host={}{port}{socket_params}", enc(h)));
            }
            let port = port.map(|p| format!(":{p}")).unwrap_or_default();
            let h = if h.contains(':') { format!("[{h}]") } else { h.clone() };
            Ok(format!("postgres://{userinfo}{h}{port}{path}{query}"))
        })
        .collect::<Result<_, HostsError>>()?;
    Ok(Targets { urls, attrs })
}

#[cfg(test)]
mod tests {
    use super::*;
    use sqlx::postgres::PgConnectOptions;

    fn opts(url: &str) -> PgConnectOptions {
        url.parse().unwrap()
    }

    #[test]
    fn a_single_host_url_is_passed_on_as_written() {
        for url in [
            "postgres://u:p%40ss@db.example:6432/usersvc?sslmode=disable",
            "postgresql://localhost/db",
            "postgres:///db?host=/run/postgresql",
        ] {
            let t = parse(url).unwrap();
            assert_eq!(t.urls, vec![url.to_owned()]);
            assert!(t.is_plain());
        }
    }

    #[test]
    fn hosts_with_ports_of_their_own_share_everything_else() {
        let t = parse("postgres://me:s%2Fcr%40t@h1:5432,h2:5433,h3/usersvc?sslmode=disable&target_session_attrs=read-write&application_name=x")
            .unwrap();
        assert_eq!(t.attrs, SessionAttrs::ReadWrite);
        assert_eq!(
            t.urls,
            [
                "postgres://me:s%2Fcr%40t@h1:5432/usersvc?sslmode=disable&application_name=x",
                "postgres://me:s%2Fcr%40t@h2:5433/usersvc?sslmode=disable&application_name=x",
                "postgres://me:s%2Fcr%40t@h3/usersvc?sslmode=disable&application_name=x",
            ]
        );
        let o = opts(&t.urls[1]);
        assert_eq!(
            (o.get_host(), o.get_port(), o.get_username(), o.get_database()),
            ("h2", 5433, "me", Some("usersvc"))
        );
        assert_eq!(opts(&t.urls[2]).get_port(), 5432);
    }

    #[test]
    fn ipv6_hosts_and_a_condition_on_one_host() {
        let t = parse("postgres://u@[::1]:5433,[fe80::1]/db?target_session_attrs=primary").unwrap();
        assert_eq!(t.urls, ["postgres://u@[::1]:5433/db", "postgres://u@[fe80::1]/db"]);
        assert_eq!(t.attrs, SessionAttrs::Primary);
        let t = parse("postgres://u@h:1/db?target_session_attrs=prefer-standby").unwrap();
        assert!(!t.is_plain());
        assert_eq!(t.urls, ["postgres://u@h:1/db"]);
        for (s, a) in
            [("any", SessionAttrs::Any), ("read-only", SessionAttrs::ReadOnly), ("standby", SessionAttrs::Standby)]
        {
            assert_eq!(parse(&format!("postgres://h1,h2/d?target_session_attrs={s}")).unwrap().attrs, a);
        }
    }

    #[test]
    fn malformed_urls_are_refused() {
        assert!(matches!(parse("postgres://h1,h2/d?target_session_attrs=rw"), Err(HostsError::SessionAttrs(_))));
        assert_eq!(parse("postgres://h1,,h2/d"), Err(HostsError::Host));
        assert_eq!(parse("postgres://h1:port,h2/d"), Err(HostsError::Host));
        assert_eq!(parse("postgres://[::1,h2/d"), Err(HostsError::Host));
    }

    #[test]
    fn key_value_form() {
        let t = parse("host=a,b port=5432,5433 dbname=usersvc user=me password='it''s' sslmode = disable target_session_attrs=read-write")
            .map(|t| t.attrs);
        // '' is no escape in libpq: the quoted value ends at the second quote.
        assert!(t.is_err());
        let t = parse(r"host=a,b port=5432,5433 dbname=usersvc user=me password='it\'s a /secret' sslmode = disable target_session_attrs=read-write")
            .unwrap();
        assert_eq!(t.attrs, SessionAttrs::ReadWrite);
        assert_eq!(
            t.urls,
            [
                "postgres://me:it%27s%20a%20%2Fsecret@a:5432/usersvc?sslmode=disable",
                "postgres://me:it%27s%20a%20%2Fsecret@b:5433/usersvc?sslmode=disable",
            ]
        );
        let o = opts(&t.urls[1]);
        assert_eq!((o.get_host(), o.get_port(), o.get_database()), ("b", 5433, Some("usersvc")));
        // One port for every host; IPv6 bracketed.
        let t = parse("host=a,::1 port=6000 dbname=d").unwrap();
        assert_eq!(t.urls, ["postgres://a:6000/d", "postgres://[::1]:6000/d"]);
        assert_eq!(parse("host=a,b,c port=1,2 dbname=d"), Err(HostsError::Ports { hosts: 3, ports: 2 }));
        assert!(matches!(parse("host=a dbname"), Err(HostsError::KeyValue(_))));
        // A socket folder.
        let t = parse("host=/run/postgresql port=5433 user=me dbname=d").unwrap();
        let o = opts(&t.urls[0]);
        assert_eq!(
            (o.get_socket(), o.get_port(), o.get_database(), o.get_username()),
            (Some(&"/run/postgresql".into()), 5433, Some("d"), "me")
        );
    }
}
