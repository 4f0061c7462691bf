//! libpq connection strings (key/value or URI form): parsed once here, with libpq's TLS keys
//! taken out (tokio-postgres rejects them; [`super::tls`] uses them).

use super::tls::{TlsOptions, SLOTS};
use crate::error::usage;

/// The connection string as tokio-postgres reads it (the TLS keys taken out).
pub fn parse(conninfo: &str) -> anyhow::Result<tokio_postgres::Config> {
    split_conninfo(conninfo)?
        .rest
        .parse::<tokio_postgres::Config>()
        .map_err(|e| anyhow::anyhow!("bad connection string: {e}"))
}

/// The user and database of a connection string (defaults: postgres, and the user's name).
pub fn user_and_dbname(conninfo: &str) -> (String, String) {
    let parsed = parse(conninfo).ok();
    let user = parsed
        .as_ref()
        .and_then(|c| c.get_user().map(str::to_string))
        .unwrap_or_else(|| "postgres".into());
    let db = parsed
        .as_ref()
        .and_then(|c| c.get_dbname().map(str::to_string))
        .unwrap_or_else(|| user.clone());
    (user, db)
}

/// A connection string with the TLS keys taken out.
#[derive(Debug)]
pub struct SplitConninfo {
    /// What tokio-postgres parses: the same form (key/value or URI) without our keys.
    pub rest: String,
    pub tls: TlsOptions,
}

/// Take libpq's TLS keys out of a connection string. Errors are usage errors and never quote
/// a value.
pub fn split_conninfo(conninfo: &str) -> anyhow::Result<SplitConninfo> {
    if conninfo.starts_with("postgresql://") || conninfo.starts_with("postgres://") {
        return split_uri(conninfo);
    }
    let mut tls = TlsOptions::default();
    let mut rest = Vec::new();
    for (key, value) in parse_keyvalue(conninfo)? {
        if !tls.take(&key, &value)? {
            rest.push(format!("{key}={}", quote(&value)));
        }
    }
    Ok(SplitConninfo {
        rest: rest.join(" "),
        tls,
    })
}

/// A value quoted for a key/value connection string.
fn quote(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('\'');
    for c in value.chars() {
        if c == '\'' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('\'');
    out
}

/// libpq's key/value syntax (`conninfo_parse`): `key = value` pairs separated by white space;
/// a value is either a run of non-space characters or single-quoted, and in both a backslash
/// takes the next character literally. Keys are not checked here.
pub fn parse_keyvalue(s: &str) -> anyhow::Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    let mut it = s.chars().peekable();
    let skip_ws = |it: &mut std::iter::Peekable<std::str::Chars<'_>>| {
        while it.next_if(|c| c.is_whitespace()).is_some() {}
    };
    loop {
        skip_ws(&mut it);
        if it.peek().is_none() {
            break;
        }
        let mut key = String::new();
        while let Some(c) = it.next_if(|c| *c != '=' && !c.is_whitespace()) {
            key.push(c);
        }
        skip_ws(&mut it);
        if it.next() != Some('=') {
            // The word could be a stray secret: name its position, not its text.
            return Err(usage(format!(
                "bad connection string: missing \"=\" after keyword number {}",
                out.len() + 1
            )));
        }
        if key.is_empty() {
            return Err(usage("bad connection string: \"=\" without a keyword"));
        }
        skip_ws(&mut it);
        let mut value = String::new();
        if it.next_if_eq(&'\'').is_some() {
            loop {
                match it.next() {
                    None => {
                        return Err(usage(format!(
                            "bad connection string: unterminated quoted value for \"{key}\""
                        )))
                    }
                    Some('\\') => value.extend(it.next()),
                    Some('\'') => break,
                    Some(c) => value.push(c),
                }
            }
        } else {
            while let Some(c) = it.next_if(|c| !c.is_whitespace()) {
                if c == '\\' {
                    value.extend(it.next());
                } else {
                    value.push(c);
                }
            }
        }
        out.push((key, value));
    }
    Ok(out)
}

/// URI form: the TLS keys are query parameters (percent-encoded, as libpq reads them).
fn split_uri(conninfo: &str) -> anyhow::Result<SplitConninfo> {
    // tokio-postgres takes everything up to the first '@' as credentials: look for the query
    // after it, so that a '?' in a password does not start one.
    let from = conninfo.find('@').map_or(0, |i| i + 1);
    let Some(q) = conninfo[from..].find('?').map(|i| i + from) else {
        return Ok(SplitConninfo {
            rest: conninfo.to_string(),
            tls: TlsOptions::default(),
        });
    };
    let (base, query) = (&conninfo[..q], &conninfo[q + 1..]);
    let mut tls = TlsOptions::default();
    let mut kept = Vec::new();
    for (n, param) in query.split('&').enumerate() {
        if param.is_empty() {
            continue;
        }
        let Some((key, value)) = param.split_once('=') else {
            return Err(usage(format!(
                "bad connection URI: query parameter number {} has no \"=\"",
                n + 1
            )));
        };
        let key = percent_decode(key).ok_or_else(|| {
            usage(format!(
                "bad connection URI: bad %-escape in query parameter number {}",
                n + 1
            ))
        })?;
        let consumed = match percent_decode(value) {
            Some(value) => tls.take(&key, &value)?,
            None if SLOTS.iter().any(|(k, _, _)| *k == key) => {
                return Err(usage(format!(
                    "bad connection URI: bad %-escape in the value of {key}"
                )))
            }
            None => false,
        };
        if !consumed {
            kept.push(param);
        }
    }
    let rest = if kept.is_empty() {
        base.to_string()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    Ok(SplitConninfo { rest, tls })
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            let hex = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// A connection string for messages, rebuilt from what it parses to (hosts, ports, user,
/// database) in its own form, so that no password — `password = X`, a quoted value, a URI's
/// `user:pw@` or `?password=` — is ever printed.
pub fn describe_conninfo(conninfo: &str) -> String {
    let parsed = split_conninfo(conninfo)
        .ok()
        .and_then(|split| split.rest.parse::<tokio_postgres::Config>().ok());
    let Some(config) = parsed else {
        return "(a connection string that does not parse)".into();
    };
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .map(|h| match h {
            tokio_postgres::config::Host::Tcp(s) => s.clone(),
            tokio_postgres::config::Host::Unix(p) => p.display().to_string(),
        })
        .collect();
    let ports: Vec<String> = config.get_ports().iter().map(u16::to_string).collect();
    if let Some((scheme, _)) = conninfo.split_once("://") {
        let hosts: Vec<String> = hosts
            .iter()
            .enumerate()
            .map(|(i, h)| {
                let h = h.replace('/', "%2F");
                match ports.get(i).or(ports.first()) {
                    Some(p) => format!("{h}:{p}"),
                    None => h,
                }
            })
            .collect();
        return format!(
            "{scheme}://{}/{}",
            hosts.join(","),
            config.get_dbname().unwrap_or_default()
        );
    }
    let mut parts = Vec::new();
    if !hosts.is_empty() {
        parts.push(format!("host={}", hosts.join(",")));
    }
    if !ports.is_empty() {
        parts.push(format!("port={}", ports.join(",")));
    }
    if let Some(user) = config.get_user() {
        parts.push(format!("user={user}"));
    }
    if let Some(db) = config.get_dbname() {
        parts.push(format!("dbname={db}"));
    }
    parts.join(" ")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn kv(s: &str) -> Vec<(String, String)> {
        parse_keyvalue(s).unwrap()
    }

    fn pairs(v: &[(&str, &str)]) -> Vec<(String, String)> {
        v.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn keyvalue_parses_like_libpq() {
        assert_eq!(
            kv("host=db port=5432"),
            pairs(&[("host", "db"), ("port", "5432")])
        );
        // White space around '=', none needed after a quoted value, empty quoted value.
        assert_eq!(
            kv("  host = db\tpassword='a b'dbname=x user=''  "),
            pairs(&[
                ("host", "db"),
                ("password", "a b"),
                ("dbname", "x"),
                ("user", "")
            ])
        );
        // Backslash escapes, quoted and not.
        assert_eq!(
            kv(r"password='it\'s \\ ok' user=a\ b x=c\'d"),
            pairs(&[("password", r"it's \ ok"), ("user", "a b"), ("x", "c'd")])
        );
        // An unquoted value ends at white space; '=' inside a value is fine.
        assert_eq!(kv("options=-c\\ a=b"), pairs(&[("options", "-c a=b")]));
        assert_eq!(kv(""), pairs(&[]));
        assert_eq!(kv("   "), pairs(&[]));
        // `key=` at the end: an empty value.
        assert_eq!(kv("user="), pairs(&[("user", "")]));
    }

    #[test]
    fn keyvalue_errors_never_quote_values() {
        let e = parse_keyvalue("host=db password='s3cr3t").unwrap_err();
        assert!(
            e.to_string()
                .contains("unterminated quoted value for \"password\""),
            "{e}"
        );
        assert!(!e.to_string().contains("s3cr3t"));
        let e = parse_keyvalue("host=db s3cr3t").unwrap_err();
        assert!(e.to_string().contains("missing \"=\""), "{e}");
        assert!(!e.to_string().contains("s3cr3t"));
        assert!(parse_keyvalue("=x").is_err());
        assert_eq!(
            crate::error::exit_code(&parse_keyvalue("a").unwrap_err()),
            crate::error::exit::USAGE
        );
    }

    #[test]
    fn split_takes_tls_keys_and_keeps_the_rest_parseable() {
        let s = split_conninfo(
            r"host=h port=5433 sslmode=verify-full sslrootcert='/etc/my ca.crt' password='p w\'q\\' sslcert=/c sslkey=/k sslcrl='' sslcompression=1 user=u",
        )
        .unwrap();
        assert_eq!(s.tls.sslmode.as_deref(), Some("verify-full"));
        assert_eq!(s.tls.sslrootcert.as_deref(), Some("/etc/my ca.crt"));
        assert_eq!(s.tls.sslcert.as_deref(), Some("/c"));
        assert_eq!(s.tls.sslkey.as_deref(), Some("/k"));
        assert_eq!(s.tls.sslcrl, None, "empty counts as unset");
        assert!(!s.rest.contains("ssl"), "{}", s.rest);
        let config: tokio_postgres::Config = s.rest.parse().unwrap();
        assert_eq!(config.get_password(), Some(&br"p w'q\"[..]));
        assert_eq!(config.get_user(), Some("u"));
        assert_eq!(config.get_ports(), &[5433]);
        assert_eq!(
            config.get_hosts(),
            &[tokio_postgres::config::Host::Tcp("h".into())]
        );
    }

    #[test]
    fn split_refuses_sslpassword_without_echoing_it() {
        let e = split_conninfo("host=h sslpassword=hunter2").unwrap_err();
        assert!(
            e.to_string().contains("sslpassword is not supported"),
            "{e}"
        );
        assert!(!e.to_string().contains("hunter2"));
    }

    #[test]
    fn split_uri_query_parameters() {
        let s = split_conninfo(
            "postgresql://u:p%3Fw@db.example:5433/app?connect_timeout=5&sslmode=verify-ca&sslrootcert=%2Ftmp%2Fca%20x.crt",
        )
        .unwrap();
        assert_eq!(s.tls.sslmode.as_deref(), Some("verify-ca"));
        assert_eq!(s.tls.sslrootcert.as_deref(), Some("/tmp/ca x.crt"));
        assert_eq!(
            s.rest,
            "postgresql://u:p%3Fw@db.example:5433/app?connect_timeout=5"
        );
        let config: tokio_postgres::Config = s.rest.parse().unwrap();
        assert_eq!(config.get_password(), Some(&b"p?w"[..]));

        // Only TLS keys: the '?' goes too. A '?' in the password is not the query.
        let s = split_conninfo("postgres://u:a?b@h/db?sslmode=require").unwrap();
        assert_eq!(s.rest, "postgres://u:a?b@h/db");
        assert_eq!(s.tls.sslmode.as_deref(), Some("require"));
        let s = split_conninfo("postgres://h/db").unwrap();
        assert_eq!(s.rest, "postgres://h/db");
        assert_eq!(s.tls, TlsOptions::default());
        assert!(split_conninfo("postgres://h/db?sslmode").is_err());
        assert!(split_conninfo("postgres://h/db?sslrootcert=%zz").is_err());
    }

    #[test]
    fn user_and_database() {
        assert_eq!(
            user_and_dbname("host=/run port=5432 user=app dbname=shop sslmode=disable"),
            ("app".into(), "shop".into())
        );
        assert_eq!(
            user_and_dbname("host=/run"),
            ("postgres".into(), "postgres".into())
        );
    }

    #[test]
    fn connection_descriptions_never_hold_a_password() {
        let cases = [
            (
                "host=/s port=5 user=u dbname=d password = SECRET1",
                "host=/s port=5 user=u dbname=d",
            ),
            (
                "host=/s password='SECRET2 one two' user=u",
                "host=/s user=u",
            ),
            (
                "postgresql://u:SECRET3@h1:5,h2:6/db?password=SECRET4",
                "postgresql://h1:5,h2:6/db",
            ),
            (
                "postgresql://u@%2Ftmp%2Fsock:5/db?password=SECRET5",
                "postgresql://%2Ftmp%2Fsock:5/db",
            ),
        ];
        for (conninfo, described) in cases {
            assert_eq!(describe_conninfo(conninfo), described, "{conninfo}");
        }
        assert!(!describe_conninfo("password='SECRET6").contains("SECRET"));
    }
}
