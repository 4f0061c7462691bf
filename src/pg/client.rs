//! The database session a backup holds open, and the queries the tool needs. Returns our own
//! types, never `Row`. Passwords follow libpq's conventions (`PGPASSWORD`, the 0600 password
//! file), which tokio-postgres does not read by itself.

use std::time::Duration;

use anyhow::{bail, Context};
use chrono::{DateTime, Utc};
use tokio_postgres::config::{Host, LoadBalanceHosts, TargetSessionAttrs};
use tokio_postgres::Client;

use super::{Lsn, SystemId, TimelineId};

/// What the server says about itself.
#[derive(Debug, Clone)]
pub struct ServerInfo {
    pub system_id: SystemId,
    pub version_num: u32,
    pub wal_segment_size: u32,
    pub data_checksums: bool,
    pub in_recovery: bool,
    pub timeline: TimelineId,
    pub data_directory: String,
    /// `pg_postmaster_start_time()`.
    pub postmaster_started: DateTime<Utc>,
}

impl ServerInfo {
    pub fn major(&self) -> u32 {
        self.version_num / 10_000
    }
}

/// The result of the stop call.
#[derive(Debug, Clone)]
pub struct BackupStop {
    pub lsn: Lsn,
    pub label: String,
    pub tablespace_map: Option<String>,
}

/// `pg_stat_archiver` as numbers (see [`Session::archiver_stats`]).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ArchiverStats {
    pub archived_count: u64,
    /// Unix seconds.
    pub last_archived_time: Option<f64>,
    pub failed_count: u64,
    /// Unix seconds.
    pub last_failed_time: Option<f64>,
    /// `pg_current_wal_lsn()` in bytes; `None` on a standby.
    pub wal_position_bytes: Option<f64>,
}

/// WAL waiting for the archiver (see [`Session::archive_backlog`]).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ArchiveBacklog {
    pub ready_files: u64,
    /// Segment files count their segment size; `.history` and `.backup` files count 0.
    pub ready_bytes: u64,
    pub oldest_ready_age_seconds: f64,
}

pub struct Session {
    client: Client,
    task: tokio::task::JoinHandle<()>,
    major: u32,
    endpoint: String,
}

/// The kind of server a session must reach among the hosts of a connection string.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerRole {
    /// A read-write session (`target_session_attrs=read-write`): the primary.
    Primary,
    /// A read-only session on a server in recovery: a standby.
    Standby,
}

impl ServerRole {
    fn session_attrs(self) -> TargetSessionAttrs {
        match self {
            ServerRole::Primary => TargetSessionAttrs::ReadWrite,
            ServerRole::Standby => TargetSessionAttrs::ReadOnly,
        }
    }

    /// For messages: "a primary (read-write)".
    pub fn describe(self) -> &'static str {
        match self {
            ServerRole::Primary => "a primary (read-write)",
            ServerRole::Standby => "a standby (in recovery)",
        }
    }
}

/// Connect with a libpq-style connection string; never prints the password. TLS follows
/// libpq's `sslmode`/`sslrootcert`/`sslcert`/`sslkey` (see [`super::tls`]). Several hosts
/// (`host=a,b port=5432,5433`) are tried in order, each with its own `.pgpass` line, and the
/// string's `target_session_attrs` (`any`, `read-write`, `read-only`) picks among them.
pub async fn connect(conninfo: &str) -> anyhow::Result<Session> {
    open(conninfo, None).await
}

/// Like [`connect`], but the session must be on a server of `role`, whatever the string's
/// `target_session_attrs` says.
pub async fn connect_to(conninfo: &str, role: ServerRole) -> anyhow::Result<Session> {
    open(conninfo, Some(role)).await
}

async fn open(conninfo: &str, role: Option<ServerRole>) -> anyhow::Result<Session> {
    let split = super::conninfo::split_conninfo(conninfo)?;
    let mut config: tokio_postgres::Config = split
        .rest
        .parse()
        .map_err(|e| crate::error::usage(format!("bad connection string: {e}")))?;
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(Duration::from_secs(10));
    }
    if config.get_user().is_none() {
        config.user(std::env::var("PGUSER").unwrap_or_else(|_| "postgres".into()));
    }
    if config.get_hosts().is_empty() && config.get_hostaddrs().is_empty() {
        config.host_path("/var/run/postgresql");
    }
    if let Some(role) = role {
        config.target_session_attrs(role.session_attrs());
    }
    let target = describe(&config);
    let endpoints = endpoints(&config)
        .map_err(|e| crate::error::usage(format!("bad connection string: {e}")))?;
    let tls = TlsChoice::prepare(&split.tls, &endpoints)
        .with_context(|| format!("connect to PostgreSQL at {target}"))?;
    let mut failures = Vec::new();
    for endpoint in endpoints {
        match open_endpoint(&endpoint, &tls, role).await {
            Ok(session) => return Ok(session),
            Err(e) => failures.push((endpoint.label, e)),
        }
    }
    Err(no_server(
        failures,
        &target,
        role,
        config.get_target_session_attrs(),
    ))
}

/// The error when no host gave a session: a single host's error as it is, else each host
/// with why it was passed over.
fn no_server(
    mut failures: Vec<(String, anyhow::Error)>,
    target: &str,
    role: Option<ServerRole>,
    attrs: TargetSessionAttrs,
) -> anyhow::Error {
    if failures.len() == 1 {
        if let Some((_, e)) = failures.pop() {
            return e.context(format!("connect to PostgreSQL at {target}"));
        }
    }
    let wanted = match (role, attrs) {
        (Some(r), _) => format!(" that is {}", r.describe()),
        (None, TargetSessionAttrs::ReadWrite) => " that allows writes".to_string(),
        (None, TargetSessionAttrs::ReadOnly) => " that is read-only".to_string(),
        (None, _) => String::new(),
    };
    let tried: Vec<String> = failures
        .iter()
        .map(|(label, e)| format!("{label}: {e:#}"))
        .collect();
    anyhow::anyhow!(
        "connect to PostgreSQL: no server{wanted} among the {} hosts tried ({})",
        failures.len(),
        tried.join("; ")
    )
}

/// One host of the connection string, with the settings that apply to it alone.
struct Endpoint {
    config: tokio_postgres::Config,
    label: String,
    tcp: bool,
}

/// The hosts of `config`, each as a single-host configuration (libpq: one port for all, or
/// one per host), in the order to try them (`load_balance_hosts=random` rotates the list).
fn endpoints(config: &tokio_postgres::Config) -> Result<Vec<Endpoint>, String> {
    let hosts = config.get_hosts();
    let addrs = config.get_hostaddrs();
    let n = hosts.len().max(addrs.len());
    if !hosts.is_empty() && !addrs.is_empty() && hosts.len() != addrs.len() {
        return Err(format!(
            "{} hosts but {} hostaddrs",
            hosts.len(),
            addrs.len()
        ));
    }
    let ports = config.get_ports();
    if ports.len() > 1 && ports.len() != n {
        return Err(format!("{n} hosts but {} ports", ports.len()));
    }
    let mut list: Vec<Endpoint> = (0..n)
        .map(|i| {
            let single = single_host(config, i);
            Endpoint {
                label: describe(&single),
                tcp: !single.get_hostaddrs().is_empty()
                    || single.get_hosts().iter().any(|h| matches!(h, Host::Tcp(_))),
                config: single,
            }
        })
        .collect();
    if config.get_load_balance_hosts() == LoadBalanceHosts::Random && n > 1 {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos() as usize);
        list.rotate_left(nanos % n);
    }
    Ok(list)
}

/// Host number `i` of `config` with every other setting kept (tokio-postgres has no way to
/// remove hosts, so the configuration is rebuilt). The password comes from the string,
/// `PGPASSWORD` or the password file line of this host.
fn single_host(config: &tokio_postgres::Config, i: usize) -> tokio_postgres::Config {
    let mut c = tokio_postgres::Config::new();
    if let Some(v) = config.get_user() {
        c.user(v);
    }
    if let Some(v) = config.get_dbname() {
        c.dbname(v);
    }
    if let Some(v) = config.get_options() {
        c.options(v);
    }
    if let Some(v) = config.get_application_name() {
        c.application_name(v);
    }
    if let Some(v) = config.get_connect_timeout() {
        c.connect_timeout(*v);
    }
    if let Some(v) = config.get_tcp_user_timeout() {
        c.tcp_user_timeout(*v);
    }
    if let Some(v) = config.get_keepalives_interval() {
        c.keepalives_interval(v);
    }
    if let Some(v) = config.get_keepalives_retries() {
        c.keepalives_retries(v);
    }
    c.ssl_mode(config.get_ssl_mode())
        .ssl_negotiation(config.get_ssl_negotiation())
        .keepalives(config.get_keepalives())
        .keepalives_idle(config.get_keepalives_idle())
        .target_session_attrs(config.get_target_session_attrs())
        .channel_binding(config.get_channel_binding())
        .load_balance_hosts(config.get_load_balance_hosts());
    match config.get_hosts().get(i) {
        Some(Host::Tcp(h)) => {
            c.host(h);
        }
        Some(Host::Unix(p)) => {
            c.host_path(p);
        }
        None => {}
    }
    if let Some(a) = config.get_hostaddrs().get(i) {
        c.hostaddr(*a);
    }
    let ports = config.get_ports();
    if let Some(p) = ports.get(i).or(ports.first()) {
        c.port(*p);
    }
    match config.get_password() {
        Some(pw) => {
            c.password(pw);
        }
        None => {
            if let Some(pw) = password_for(&c) {
                c.password(pw);
            }
        }
    }
    c
}

/// TLS for the TCP hosts, none for unix sockets (PostgreSQL does not do TLS there, and
/// libpq ignores `sslmode` for them).
struct TlsChoice {
    tcp: Option<super::tls::TlsSetup>,
    socket: super::tls::TlsSetup,
}

impl TlsChoice {
    fn prepare(opts: &super::tls::TlsOptions, endpoints: &[Endpoint]) -> anyhow::Result<Self> {
        let opts = opts.clone().with_env(|v| std::env::var(v).ok());
        let home = std::env::var_os("HOME").map(std::path::PathBuf::from);
        let tcp = if endpoints.iter().any(|e| e.tcp) {
            Some(super::tls::TlsSetup::prepare(&opts, home.as_deref(), true)?)
        } else {
            None
        };
        let socket = super::tls::TlsSetup::prepare(&opts, home.as_deref(), false)?;
        Ok(TlsChoice { tcp, socket })
    }

    fn for_endpoint(&self, endpoint: &Endpoint) -> &super::tls::TlsSetup {
        match &self.tcp {
            Some(tls) if endpoint.tcp => tls,
            _ => &self.socket,
        }
    }
}

/// A session on one host, if it answers and is of the `role` asked for.
async fn open_endpoint(
    endpoint: &Endpoint,
    tls: &TlsChoice,
    role: Option<ServerRole>,
) -> anyhow::Result<Session> {
    let tls = tls.for_endpoint(endpoint);
    let mut config = endpoint.config.clone();
    config.ssl_mode(tls.tokio_postgres_mode());
    let label = &endpoint.label;
    tracing::debug!("connecting to PostgreSQL at {label} ({})", tls.summary());
    let (client, connection) = match connect_with(&config, tls, label).await {
        Ok(c) => c,
        Err(f) if f.tls_handshake && tls.falls_back_to_plain() => {
            // allow/prefer: like libpq, a failed handshake is retried without TLS.
            tracing::debug!("{:#}; retrying without TLS", f.err);
            config.ssl_mode(tokio_postgres::config::SslMode::Disable);
            connect_with(&config, tls, label).await.map_err(|f| f.err)?
        }
        Err(f) => return Err(f.err),
    };
    let task = tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!("database connection closed: {e}");
        }
    });
    let row = client
        .query_one(
            "select current_setting('server_version_num')::int, pg_is_in_recovery()",
            &[],
        )
        .await
        .context("read server_version_num")?;
    let session = Session {
        client,
        task,
        major: row.get::<_, i32>(0) as u32 / 10_000,
        endpoint: label.clone(),
    };
    let in_recovery: bool = row.get(1);
    if role == Some(ServerRole::Standby) && !in_recovery {
        // Read-only but not in recovery: a primary with default_transaction_read_only = on.
        session.close().await;
        bail!("read-only, but not a standby (not in recovery)");
    }
    Ok(session)
}

type PgConnection = tokio_postgres::Connection<
    tokio_postgres::Socket,
    <tokio_postgres_rustls::MakeRustlsConnect as tokio_postgres::tls::MakeTlsConnect<
        tokio_postgres::Socket,
    >>::Stream,
>;

/// A failed connection attempt: the error to report, and whether the TLS handshake failed.
struct ConnectFailure {
    err: anyhow::Error,
    tls_handshake: bool,
}

/// One connection attempt to one host. A failed TLS handshake gets a message that says what
/// was wrong (e.g. with the server's certificate) in place of the library's; a server of the
/// wrong kind for `target_session_attrs` says which kind it is; never the password.
async fn connect_with(
    config: &tokio_postgres::Config,
    tls: &super::tls::TlsSetup,
    target: &str,
) -> Result<(Client, PgConnection), ConnectFailure> {
    let e = match config.connect(tls.connector.clone()).await {
        Ok(c) => return Ok(c),
        Err(e) => e,
    };
    let (err, tls_handshake) = match tls.explain(&e) {
        Some(msg) => {
            tracing::debug!("TLS handshake with PostgreSQL at {target} failed: {e}");
            (anyhow::anyhow!(msg), true)
        }
        None => match wrong_kind(&e, config.get_target_session_attrs()) {
            Some(msg) => (anyhow::anyhow!(msg), false),
            None => (anyhow::Error::new(e), false),
        },
    };
    Err(ConnectFailure { err, tls_handshake })
}

/// tokio-postgres refuses a server that does not fit `target_session_attrs` with a
/// permission-denied I/O error; say what the server is instead.
fn wrong_kind(e: &tokio_postgres::Error, attrs: TargetSessionAttrs) -> Option<&'static str> {
    let io = std::error::Error::source(e)?.downcast_ref::<std::io::Error>()?;
    if io.kind() != std::io::ErrorKind::PermissionDenied {
        return None;
    }
    match attrs {
        TargetSessionAttrs::ReadWrite => {
            Some("read-only (a standby, or default_transaction_read_only = on), not a primary")
        }
        TargetSessionAttrs::ReadOnly => Some("read-write (a primary), not a standby"),
        _ => None,
    }
}

fn describe(config: &tokio_postgres::Config) -> String {
    let mut hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .map(|h| match h {
            Host::Tcp(s) => s.clone(),
            Host::Unix(p) => p.display().to_string(),
        })
        .collect();
    if hosts.is_empty() {
        hosts = config
            .get_hostaddrs()
            .iter()
            .map(|a| a.to_string())
            .collect();
    }
    let ports: Vec<String> = config.get_ports().iter().map(u16::to_string).collect();
    format!(
        "{} port {}",
        hosts.join(","),
        if ports.is_empty() {
            "5432".into()
        } else {
            ports.join(",")
        }
    )
}

/// `PGPASSWORD`, else the first matching line of the password file (`PGPASSFILE`, default
/// `~/.pgpass`), which libpq ignores unless it is 0600 — and so do we.
fn password_for(config: &tokio_postgres::Config) -> Option<Vec<u8>> {
    if let Ok(pw) = std::env::var("PGPASSWORD") {
        return Some(pw.into_bytes());
    }
    let path = std::env::var_os("PGPASSFILE")
        .map(std::path::PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| std::path::Path::new(&h).join(".pgpass")))?;
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(&path).ok()?;
    if meta.permissions().mode() & 0o077 != 0 {
        tracing::warn!(
            "password file {} is readable by others; ignoring it (chmod 600)",
            path.display()
        );
        return None;
    }
    let text = std::fs::read_to_string(&path).ok()?;
    let (host, port) = pgpass_host_port(config);
    let db = config.get_dbname().unwrap_or("postgres");
    let user = config.get_user().unwrap_or("postgres");
    pgpass_lookup(&text, &host, &port, db, user).map(String::into_bytes)
}

/// The host and port a password file line must match for the (first) host of `config`, as
/// libpq has them: the host name as written (a socket directory counts as `localhost`), else
/// the numeric `hostaddr`.
fn pgpass_host_port(config: &tokio_postgres::Config) -> (String, String) {
    let host = match (config.get_hosts().first(), config.get_hostaddrs().first()) {
        (Some(Host::Tcp(h)), _) => h.clone(),
        (None, Some(a)) => a.to_string(),
        _ => "localhost".into(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    (host, port.to_string())
}

/// One line of a .pgpass file: `host:port:database:user:password`, `*` matches anything,
/// `\:` and `\\` are escapes.
pub fn pgpass_lookup(text: &str, host: &str, port: &str, db: &str, user: &str) -> Option<String> {
    for line in text.lines() {
        if line.trim_start().starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let mut fields = Vec::new();
        let mut cur = String::new();
        let mut chars = line.chars();
        while let Some(c) = chars.next() {
            match c {
                '\\' => cur.extend(chars.next()),
                ':' if fields.len() < 4 => fields.push(std::mem::take(&mut cur)),
                c => cur.push(c),
            }
        }
        fields.push(cur);
        if fields.len() != 5 {
            continue;
        }
        let want = [host, port, db, user];
        if fields[..4]
            .iter()
            .zip(want)
            .all(|(f, w)| f == "*" || f == w)
        {
            return Some(fields[4].clone());
        }
    }
    None
}

impl Session {
    pub async fn server_info(&self) -> anyhow::Result<ServerInfo> {
        let row = self
            .client
            .query_one(
                "select (select system_identifier from pg_control_system())::text,
                        current_setting('server_version_num')::int,
                        (select setting::int from pg_settings where name = 'wal_segment_size'),
                        current_setting('data_checksums') = 'on',
                        pg_is_in_recovery(),
                        (select timeline_id from pg_control_checkpoint()),
                        current_setting('data_directory'),
                        (extract(epoch from pg_postmaster_start_time()) * 1000000)::int8",
                &[],
            )
            .await
            .context("read server identity")?;
        let sysid: String = row.get(0);
        let started: i64 = row.get(7);
        Ok(ServerInfo {
            system_id: SystemId(sysid.parse().context("system identifier")?),
            version_num: row.get::<_, i32>(1) as u32,
            wal_segment_size: row.get::<_, i32>(2) as u32,
            data_checksums: row.get(3),
            in_recovery: row.get(4),
            timeline: TimelineId(row.get::<_, i32>(5) as u32),
            data_directory: row.get(6),
            postmaster_started: DateTime::from_timestamp_micros(started)
                .context("pg_postmaster_start_time() out of range")?,
        })
    }

    /// The session's client, for queries of other modules of `pg` (catalog snapshots).
    pub(crate) fn client(&self) -> &Client {
        &self.client
    }

    /// The host this session is on, as `HOST port PORT`.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// `pg_current_wal_insert_lsn()` (primaries only).
    pub async fn current_wal_insert_lsn(&self) -> anyhow::Result<Lsn> {
        let lsn: String = self
            .client
            .query_one("select pg_current_wal_insert_lsn()::text", &[])
            .await
            .context("read the WAL insert position (pg_current_wal_insert_lsn)")?
            .get(0);
        lsn.parse().context("WAL insert LSN")
    }

    /// On a standby: `pg_control`'s minimum recovery point and its timeline.
    pub async fn min_recovery_point(&self) -> anyhow::Result<(Lsn, TimelineId)> {
        let row = self
            .client
            .query_one(
                "select min_recovery_end_lsn::text, min_recovery_end_timeline from pg_control_recovery()",
                &[],
            )
            .await
            .context("read the minimum recovery point (pg_control_recovery)")?;
        let lsn: String = row.get(0);
        Ok((
            lsn.parse().context("minimum recovery point")?,
            TimelineId(row.get::<_, i32>(1) as u32),
        ))
    }

    /// Tablespaces other than pg_default/pg_global: (oid, location).
    pub async fn tablespaces(&self) -> anyhow::Result<Vec<(u32, String)>> {
        let rows = self
            .client
            .query(
                "select oid::int8, pg_tablespace_location(oid) from pg_tablespace where spcname not in ('pg_default', 'pg_global')",
                &[],
            )
            .await
            .context("list tablespaces")?;
        Ok(rows
            .iter()
            .map(|r| (r.get::<_, i64>(0) as u32, r.get(1)))
            .collect())
    }

    /// Start a non-exclusive backup on this session; returns the start LSN.
    pub async fn backup_start(&self, label: &str, fast: bool) -> anyhow::Result<Lsn> {
        let sql = if self.major >= 15 {
            "select pg_backup_start($1, $2)::text"
        } else if self.major >= 13 {
            "select pg_start_backup($1, $2, false)::text"
        } else {
            bail!(
                "PostgreSQL {} is not supported (13 or newer needed)",
                self.major
            );
        };
        let lsn: String = self
            .client
            .query_one(sql, &[&label, &fast])
            .await
            .context("start the backup (pg_backup_start)")?
            .get(0);
        lsn.parse().context("backup start LSN")
    }

    /// Stop the backup started on this session. Does not wait for archiving: the caller
    /// waits for the WAL itself, with a bound.
    pub async fn backup_stop(&self) -> anyhow::Result<BackupStop> {
        let sql = if self.major >= 15 {
            "select lsn::text, labelfile, spcmapfile from pg_backup_stop(false)"
        } else {
            "select lsn::text, labelfile, spcmapfile from pg_stop_backup(false, false)"
        };
        let row = self
            .client
            .query_one(sql, &[])
            .await
            .context("stop the backup (pg_backup_stop)")?;
        let lsn: String = row.get(0);
        let map: Option<String> = row.get(2);
        Ok(BackupStop {
            lsn: lsn.parse().context("backup stop LSN")?,
            label: row.get(1),
            tablespace_map: map.filter(|m| !m.is_empty()),
        })
    }

    /// `pg_stat_archiver`: (last archived WAL, last archived time, failed count, last failed WAL).
    pub async fn archiver_status(&self) -> anyhow::Result<String> {
        let row = self
            .client
            .query_one(
                "select coalesce(last_archived_wal, '-'), coalesce(last_archived_time::text, '-'), failed_count::text, coalesce(last_failed_wal, '-'), coalesce(last_failed_time::text, '-') from pg_stat_archiver",
                &[],
            )
            .await
            .context("read pg_stat_archiver")?;
        Ok(format!(
            "last archived {} at {}; {} failures, last failed {} at {}",
            row.get::<_, String>(0),
            row.get::<_, String>(1),
            row.get::<_, String>(2),
            row.get::<_, String>(3),
            row.get::<_, String>(4)
        ))
    }

    /// `pg_stat_archiver` as numbers, plus the server's WAL write position (for the agent's
    /// metrics). Times are Unix seconds; `None` where PostgreSQL has none.
    pub async fn archiver_stats(&self) -> anyhow::Result<ArchiverStats> {
        let row = self
            .client
            .query_one(
                "select archived_count, extract(epoch from last_archived_time)::float8,
                        failed_count, extract(epoch from last_failed_time)::float8,
                        case when pg_is_in_recovery() then null
                             else pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::float8 end
                 from pg_stat_archiver",
                &[],
            )
            .await
            .context("read pg_stat_archiver")?;
        Ok(ArchiverStats {
            archived_count: row.get::<_, i64>(0).max(0) as u64,
            last_archived_time: row.get(1),
            failed_count: row.get::<_, i64>(2).max(0) as u64,
            last_failed_time: row.get(3),
            wal_position_bytes: row.get(4),
        })
    }

    /// WAL files PostgreSQL has not archived yet: the `.ready` files of
    /// `pg_wal/archive_status` (needs superuser or `pg_monitor`).
    pub async fn archive_backlog(&self) -> anyhow::Result<ArchiveBacklog> {
        let row = self
            .client
            .query_one(
                r"select count(*)::int8,
                        coalesce(sum(case when name ~ '^[0-9A-F]{24}\.ready$' then s.seg else 0 end), 0)::int8,
                        coalesce(extract(epoch from now() - min(modification)), 0)::float8
                 from pg_ls_archive_statusdir(),
                      (select setting::int8 as seg from pg_settings where name = 'wal_segment_size') s
                 where name like '%.ready'",
                &[],
            )
            .await
            .context("list pg_wal/archive_status (pg_ls_archive_statusdir)")?;
        Ok(ArchiveBacklog {
            ready_files: row.get::<_, i64>(0).max(0) as u64,
            ready_bytes: row.get::<_, i64>(1).max(0) as u64,
            oldest_ready_age_seconds: row.get::<_, f64>(2).max(0.0),
        })
    }

    /// During recovery: whether replay is paused (`pg_get_wal_replay_pause_state() = 'paused'`)
    /// and the last replayed LSN. Outside recovery: `(false, None)`.
    pub async fn replay_state(&self) -> anyhow::Result<(bool, Option<Lsn>)> {
        // Outside recovery the pause functions raise an error, hence the CASE.
        let sql = if self.major >= 14 {
            "select case when pg_is_in_recovery() then pg_get_wal_replay_pause_state() = 'paused' else false end,
                    pg_last_wal_replay_lsn()::text"
        } else {
            "select case when pg_is_in_recovery() then pg_is_wal_replay_paused() else false end,
                    pg_last_wal_replay_lsn()::text"
        };
        let row = self
            .client
            .query_one(sql, &[])
            .await
            .context("read the recovery state")?;
        let lsn: Option<String> = row.get(1);
        Ok((row.get(0), lsn.and_then(|l| l.parse().ok())))
    }

    /// `pg_switch_wal()`; returns the segment that was completed, or `None` when nothing
    /// had been written since the last switch.
    pub async fn switch_wal(&self) -> anyhow::Result<Option<super::WalSegmentName>> {
        let row = self
            .client
            .query_one("select pg_walfile_name(pg_switch_wal())", &[])
            .await
            .context("switch WAL (pg_switch_wal)")?;
        let name: String = row.get(0);
        Ok(Some(
            name.parse().context("segment name from pg_walfile_name")?,
        ))
    }

    pub async fn close(self) {
        drop(self.client);
        let _ = self.task.await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pgpass_matches_like_libpq() {
        let text = "# comment\nother:5432:*:postgres:nope\nlocalhost:5432:*:postgres:se\\:cret\n*:*:*:*:fallback\n";
        assert_eq!(
            pgpass_lookup(text, "localhost", "5432", "db", "postgres").as_deref(),
            Some("se:cret")
        );
        assert_eq!(
            pgpass_lookup(text, "h", "1", "d", "u").as_deref(),
            Some("fallback")
        );
        assert_eq!(pgpass_lookup("a:b:c:d\n", "a", "b", "c", "d"), None);
    }

    fn parse(s: &str) -> tokio_postgres::Config {
        s.parse().unwrap()
    }

    #[test]
    fn each_host_keeps_every_other_setting() {
        let common = "user=u password=p dbname=d options=-cx application_name=app sslmode=require \
                      connect_timeout=3 tcp_user_timeout=4 keepalives=0 keepalives_idle=5 \
                      keepalives_interval=6 keepalives_retries=7 target_session_attrs=read-write \
                      channel_binding=require";
        let multi = parse(&format!(
            "host=a,/sock port=1,2 hostaddr=127.0.0.1,127.0.0.2 {common}"
        ));
        assert_eq!(
            single_host(&multi, 0),
            parse(&format!("host=a port=1 hostaddr=127.0.0.1 {common}"))
        );
        assert_eq!(
            single_host(&multi, 1),
            parse(&format!("host=/sock port=2 hostaddr=127.0.0.2 {common}"))
        );
        // One port serves every host.
        let one_port = parse("host=a,b port=7 password=p");
        assert_eq!(single_host(&one_port, 1), parse("host=b port=7 password=p"));
    }

    #[test]
    fn each_host_has_its_own_password_file_line() {
        let multi = parse("host=/run/pg,db2,db3 hostaddr=127.0.0.1,127.0.0.2,127.0.0.3 port=1,2,3");
        let keys: Vec<(String, String)> = (0..3)
            .map(|i| pgpass_host_port(&single_host(&multi, i)))
            .collect();
        let want = [("localhost", "1"), ("db2", "2"), ("db3", "3")];
        assert_eq!(keys, want.map(|(h, p)| (h.to_string(), p.to_string())));
        assert_eq!(
            pgpass_host_port(&parse("hostaddr=10.0.0.9")),
            ("10.0.0.9".to_string(), "5432".to_string())
        );
    }

    #[test]
    fn endpoints_are_named_and_counted() {
        let list = endpoints(&parse("host=/a,db2 port=1,2 password=p")).unwrap();
        let labels: Vec<&str> = list.iter().map(|e| e.label.as_str()).collect();
        assert_eq!(labels, ["/a port 1", "db2 port 2"]);
        assert_eq!(
            list.iter().map(|e| e.tcp).collect::<Vec<_>>(),
            [false, true]
        );
        let by_addr = endpoints(&parse("hostaddr=10.0.0.1 password=p")).unwrap();
        assert_eq!(by_addr[0].label, "10.0.0.1 port 5432");
        assert!(by_addr[0].tcp);
        let err = endpoints(&parse("host=a,b,c port=1,2 password=p"))
            .err()
            .unwrap();
        assert_eq!(err, "3 hosts but 2 ports");
    }

    #[test]
    fn no_server_names_every_host_and_no_password() {
        let failures = vec![
            (
                "/a port 1".to_string(),
                anyhow::anyhow!("connection refused"),
            ),
            (
                "/b port 2".to_string(),
                anyhow::anyhow!("read-write (a primary), not a standby"),
            ),
        ];
        let msg = format!(
            "{:#}",
            no_server(
                failures,
                "/a,/b port 1,2",
                Some(ServerRole::Standby),
                TargetSessionAttrs::ReadOnly
            )
        );
        assert_eq!(
            msg,
            "connect to PostgreSQL: no server that is a standby (in recovery) among the 2 hosts tried \
             (/a port 1: connection refused; /b port 2: read-write (a primary), not a standby)"
        );
        let one = vec![("/a port 1".to_string(), anyhow::anyhow!("refused"))];
        let msg = format!(
            "{:#}",
            no_server(one, "/a port 1", None, TargetSessionAttrs::Any)
        );
        assert_eq!(msg, "connect to PostgreSQL at /a port 1: refused");
    }
}
