//! TLS to PostgreSQL: a PostgreSQL 15 cluster that accepts only TLS on 127.0.0.1
//! (`hostssl` with SCRAM-SHA-256, `hostnossl ... reject`), with a server certificate from a
//! self-signed test CA that the `openssl` CLI makes; connections through the library with
//! each `sslmode`, a client certificate, CRLs, and a whole backup through the binary with
//! `PGPASSWORD`.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use synapse_backup::pg::client;

use crate::harness::{self, code, run_ok, stderr, PgCluster, RepoTarget, Scratch, TestConfig};

const PASSWORD: &str = "Tls-s3cret-PW";

/// Test certificates, made with the `openssl` CLI.
struct Pki {
    dir: PathBuf,
    ca: PathBuf,
    other_ca: PathBuf,
    server_crt: PathBuf,
    server_key: PathBuf,
    client_crt: PathBuf,
    client_key: PathBuf,
    crl_empty: PathBuf,
    crl_revoked: PathBuf,
}

fn openssl(dir: &Path, args: &[&str]) {
    run_ok(Command::new("openssl").current_dir(dir).args(args));
}

fn ec_req(dir: &Path, key: &str, subj: &str, out: &str, extra: &[&str]) {
    let mut args = vec![
        "req",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-keyout",
        key,
        "-out",
        out,
        "-subj",
        subj,
    ];
    args.extend_from_slice(extra);
    openssl(dir, &args);
}

fn sign(dir: &Path, csr: &str, serial: &str, ext: &str, out: &str) {
    let ext_file = format!("{out}.ext");
    std::fs::write(dir.join(&ext_file), ext).unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            csr,
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-set_serial",
            serial,
            "-days",
            "30",
            "-out",
            out,
            "-extfile",
            &ext_file,
        ],
    );
}

impl Pki {
    fn make(dir: &Path) -> Pki {
        assert!(
            Command::new("openssl").arg("version").output().is_ok(),
            "the openssl CLI is needed: apt-get install openssl"
        );
        let ca_ext = [
            "-x509",
            "-days",
            "30",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ];
        ec_req(dir, "ca.key", "/CN=synapse test CA", "ca.crt", &ca_ext);
        ec_req(
            dir,
            "other-ca.key",
            "/CN=unrelated CA",
            "other-ca.crt",
            &ca_ext,
        );
        ec_req(dir, "server.key", "/CN=localhost", "server.csr", &[]);
        sign(
            dir,
            "server.csr",
            "1001",
            "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n",
            "server.crt",
        );
        ec_req(dir, "client.key", "/CN=certuser", "client.csr", &[]);
        sign(
            dir,
            "client.csr",
            "1002",
            "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=clientAuth\n",
            "client.crt",
        );
        std::fs::set_permissions(
            dir.join("client.key"),
            std::fs::Permissions::from_mode(0o600),
        )
        .unwrap();
        // CRLs: one that revokes nothing, one that revokes the server's certificate.
        std::fs::write(dir.join("index.txt"), "").unwrap();
        std::fs::write(dir.join("crlnumber"), "1000\n").unwrap();
        let d = dir.display();
        std::fs::write(
            dir.join("ca.cnf"),
            format!(
                "[ca]\ndefault_ca = ca_default\n[ca_default]\ndatabase = {d}/index.txt\ncrlnumber = {d}/crlnumber\n\
                 certificate = {d}/ca.crt\nprivate_key = {d}/ca.key\ndefault_md = sha256\ndefault_crl_days = 30\n"
            ),
        )
        .unwrap();
        openssl(
            dir,
            &["ca", "-config", "ca.cnf", "-gencrl", "-out", "empty.crl"],
        );
        openssl(dir, &["ca", "-config", "ca.cnf", "-revoke", "server.crt"]);
        openssl(
            dir,
            &["ca", "-config", "ca.cnf", "-gencrl", "-out", "revoked.crl"],
        );
        Pki {
            dir: dir.to_path_buf(),
            ca: dir.join("ca.crt"),
            other_ca: dir.join("other-ca.crt"),
            server_crt: dir.join("server.crt"),
            server_key: dir.join("server.key"),
            client_crt: dir.join("client.crt"),
            client_key: dir.join("client.key"),
            crl_empty: dir.join("empty.crl"),
            crl_revoked: dir.join("revoked.crl"),
        }
    }
}

/// A cluster that takes TCP connections on 127.0.0.1 only, and only over TLS.
struct TlsCluster {
    pg: PgCluster,
    log: PathBuf,
    running: bool,
}

impl TlsCluster {
    /// `extra` goes into postgresql.conf (e.g. archiving).
    fn init(scratch: &Scratch, pki: &Pki, extra: &str) -> TlsCluster {
        // The server's files, readable by postgres only.
        let server_dir = scratch.subdir("server-tls");
        for (from, to) in [
            (&pki.server_crt, "server.crt"),
            (&pki.server_key, "server.key"),
            (&pki.ca, "ca.crt"),
        ] {
            std::fs::copy(from, server_dir.join(to)).unwrap();
        }
        std::fs::set_permissions(
            server_dir.join("server.key"),
            std::fs::Permissions::from_mode(0o600),
        )
        .unwrap();
        harness::give_to_postgres(&server_dir);

        let mut pg = PgCluster::init(scratch.path(), "");
        // A TCP port nothing listens on now (the harness's port is for its unix socket).
        pg.port = std::net::TcpListener::bind(("127.0.0.1", 0))
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let sd = server_dir.display();
        harness::append_conf(
            &pg.pgdata,
            &format!(
                "port = {}\nssl = on\nssl_cert_file = '{sd}/server.crt'\nssl_key_file = '{sd}/server.key'\n\
                 ssl_ca_file = '{sd}/ca.crt'\npassword_encryption = 'scram-sha-256'\n{extra}\n",
                pg.port
            ),
        );
        std::fs::write(
            pg.pgdata.join("pg_hba.conf"),
            "local all all trust\n\
             hostssl all certuser 127.0.0.1/32 cert\n\
             hostssl all all 127.0.0.1/32 scram-sha-256\n\
             hostnossl all all 127.0.0.1/32 reject\n",
        )
        .unwrap();
        harness::give_to_postgres(&pg.pgdata);
        TlsCluster {
            pg,
            log: scratch.path().join("pg.log"),
            running: false,
        }
    }

    /// Start listening on 127.0.0.1 (the harness's `start` keeps clusters off TCP), then set
    /// the password over the unix socket.
    fn start(&mut self) {
        let opts = format!(
            "-c port={} -c unix_socket_directories='{}' -c listen_addresses=127.0.0.1",
            self.pg.port,
            self.pg.socket_dir.display()
        );
        let out = harness::as_postgres(format!("{}/pg_ctl", harness::PG_BIN))
            .args(["-w", "-t", "120", "-D"])
            .arg(&self.pg.pgdata)
            .arg("-l")
            .arg(&self.log)
            .args(["-o", &opts, "start"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "pg_ctl start failed: {}\nlog:\n{}",
            stderr(&out),
            self.pg.log_text()
        );
        self.running = true;
        self.pg
            .psql(&format!("alter user postgres password '{PASSWORD}'"));
        self.pg.psql("create role certuser login superuser");
    }

    /// A TCP connection string without TLS settings or password.
    fn tcp(&self, host: &str) -> String {
        format!(
            "host={host} port={} user=postgres dbname=postgres connect_timeout=10",
            self.pg.port
        )
    }
}

impl Drop for TlsCluster {
    fn drop(&mut self) {
        if self.running {
            harness::pg_ctl_stop(&self.pg.pgdata, "immediate");
        }
    }
}

/// Connect and read the server's identity; the error as `{:#}` text.
async fn try_connect(conninfo: &str) -> Result<u32, String> {
    match client::connect(conninfo).await {
        Ok(session) => {
            let info = session.server_info().await.map_err(|e| format!("{e:#}"));
            session.close().await;
            info.map(|i| i.major())
        }
        Err(e) => {
            let text = format!("{e:#}");
            let debug = format!("{e:?}");
            assert!(
                !text.contains(PASSWORD) && !debug.contains(PASSWORD),
                "the password leaked into an error: {text}\n{debug}"
            );
            Err(text)
        }
    }
}

async fn connects(conninfo: &str) {
    let major = try_connect(conninfo)
        .await
        .unwrap_or_else(|e| panic!("{conninfo}: {e}"));
    assert_eq!(major, 15);
}

async fn fails(conninfo: &str, wants: &[&str]) -> String {
    let err = match try_connect(conninfo).await {
        Ok(_) => panic!("{conninfo}: connected, but should have failed"),
        Err(e) => e,
    };
    for w in wants {
        assert!(err.contains(w), "{conninfo}: error lacks {w:?}: {err}");
    }
    err
}

#[tokio::test(flavor = "multi_thread")]
async fn tls_connections_follow_libpq_sslmode() {
    if harness::skip("tls_connections_follow_libpq_sslmode") {
        return;
    }
    let scratch = Scratch::new("tls");
    let pki = Pki::make(&scratch.subdir("pki"));
    let mut pg = TlsCluster::init(&scratch, &pki, "");
    pg.start();
    let ca = pki.ca.display();
    let other = pki.other_ca.display();
    let local = format!("{} password={PASSWORD}", pg.tcp("localhost"));
    let ip = format!("{} password={PASSWORD}", pg.tcp("127.0.0.1"));
    let port = pg.pg.port;

    // verify-full: the right CA, by name and by IP address (the certificate has both).
    connects(&format!("{local} sslmode=verify-full sslrootcert={ca}")).await;
    connects(&format!("{ip} sslmode=verify-full sslrootcert='{ca}'")).await;
    // The wrong CA: a certificate error that names the host, the port and the CA file.
    let err = fails(
        &format!("{ip} sslmode=verify-full sslrootcert={other}"),
        &[
            "connect to PostgreSQL at 127.0.0.1 port",
            &port.to_string(),
            "TLS: certificate verify failed",
            "not signed by a CA in",
            "other-ca.crt",
        ],
    )
    .await;
    assert!(!err.contains(PASSWORD));
    fails(
        &format!("{ip} sslmode=verify-ca sslrootcert={other}"),
        &["certificate verify failed"],
    )
    .await;
    // libpq: `require` with a root certificate checks the chain.
    fails(
        &format!("{ip} sslmode=require sslrootcert={other}"),
        &["certificate verify failed"],
    )
    .await;

    // A name the certificate does not carry: verify-full refuses, verify-ca does not look.
    let other_name = format!(
        "host=db.invalid hostaddr=127.0.0.1 port={port} user=postgres dbname=postgres password={PASSWORD}"
    );
    fails(
        &format!("{other_name} sslmode=verify-full sslrootcert={ca}"),
        &["certificate verify failed", "does not name the host"],
    )
    .await;
    connects(&format!("{other_name} sslmode=verify-ca sslrootcert={ca}")).await;

    // require / prefer (and the default, prefer) without a CA: encrypted, not verified.
    // pg_hba rejects plain connections, so connecting proves TLS was used.
    connects(&format!("{ip} sslmode=require")).await;
    connects(&format!("{other_name} sslmode=require")).await;
    connects(&format!("{ip} sslmode=prefer")).await;
    connects(&ip).await;
    // Protocol versions (rustls does TLS 1.2 and 1.3) and SNI are honoured.
    connects(&format!(
        "{local} sslmode=verify-full sslrootcert={ca} ssl_min_protocol_version=TLSv1.3"
    ))
    .await;
    connects(&format!(
        "{local} sslmode=verify-full sslrootcert={ca} ssl_max_protocol_version=TLSv1.2 sslsni=0"
    ))
    .await;
    // disable: pg_hba's hostnossl line rejects it.
    fails(
        &format!("{ip} sslmode=disable"),
        &["pg_hba.conf rejects connection", "no encryption"],
    )
    .await;
    // verify-* without a CA file: a clear error before connecting.
    fails(
        &format!(
            "{ip} sslmode=verify-full sslrootcert={}/missing.crt",
            pki.dir.display()
        ),
        &["missing.crt\" does not exist"],
    )
    .await;
    // A wrong password over TLS: the server's error, and never the password.
    fails(
        &format!(
            "{} password=wrong-{PASSWORD} sslmode=verify-full sslrootcert={ca}",
            pg.tcp("localhost")
        ),
        &["password authentication failed"],
    )
    .await;

    // URI form, with the TLS keys as query parameters.
    connects(&format!(
        "postgresql://postgres:{PASSWORD}@localhost:{port}/postgres?sslmode=verify-full&sslrootcert={ca}&connect_timeout=10"
    ))
    .await;

    // CRLs: an empty one passes, one that revokes the server's certificate does not.
    connects(&format!(
        "{local} sslmode=verify-full sslrootcert={ca} sslcrl={}",
        pki.crl_empty.display()
    ))
    .await;
    fails(
        &format!(
            "{local} sslmode=verify-full sslrootcert={ca} sslcrl={}",
            pki.crl_revoked.display()
        ),
        &["certificate verify failed", "revoked"],
    )
    .await;

    // Client certificate (pg_hba `cert` for certuser): no password at all.
    let certuser = format!(
        "host=localhost port={port} user=certuser dbname=postgres sslmode=verify-full sslrootcert={ca}"
    );
    connects(&format!(
        "{certuser} sslcert={} sslkey={}",
        pki.client_crt.display(),
        pki.client_key.display()
    ))
    .await;
    // A key that others can read is refused, like libpq does.
    let open_key = pki.dir.join("client-open.key");
    std::fs::copy(&pki.client_key, &open_key).unwrap();
    std::fs::set_permissions(&open_key, std::fs::Permissions::from_mode(0o644)).unwrap();
    fails(
        &format!(
            "{certuser} sslcert={} sslkey={}",
            pki.client_crt.display(),
            open_key.display()
        ),
        &["has group or world access", "client-open.key"],
    )
    .await;

    // The unix socket: no TLS there, so the TLS keys do not matter (as with libpq).
    connects(&format!(
        "{} sslmode=verify-full sslrootcert=/nonexistent/ca.crt",
        pg.pg.connection()
    ))
    .await;
}

/// A whole backup through the binary over verify-full TLS, the password from `PGPASSWORD`.
#[tokio::test(flavor = "multi_thread")]
async fn backup_over_tls_with_pgpassword() {
    if harness::skip("backup_over_tls_with_pgpassword") {
        return;
    }
    let scratch = Scratch::new("tls-backup");
    let pki = Pki::make(&scratch.subdir("pki"));
    let repo = RepoTarget::Local(scratch.subdir("repo"));
    // The config (and so archive_command) needs the port, which init picks.
    let mut pg = TlsCluster::init(&scratch, &pki, "");
    let conninfo = format!(
        "{} sslmode=verify-full sslrootcert={}",
        pg.tcp("localhost"),
        pki.ca.display()
    );
    let cfg = TestConfig::write(
        scratch.path(),
        &repo,
        "core",
        &pg.pg.pgdata,
        &conninfo,
        "[archive]\npush_parallelism = 2\n",
    );
    harness::append_conf(
        &pg.pg.pgdata,
        &format!(
            "archive_mode = on\narchive_command = '{} --config {} wal-push %p'\narchive_timeout = 0\n",
            harness::BIN,
            cfg.path.display()
        ),
    );
    pg.start();

    let out = cfg
        .command(&["backup"])
        .env("PGPASSWORD", PASSWORD)
        .output()
        .unwrap();
    assert_eq!(
        code(&out),
        0,
        "backup over TLS failed: {}\nlog:\n{}",
        stderr(&out),
        harness::tail(&pg.pg.log_text(), 30)
    );
    let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(!id.is_empty());

    // A wrong password: the server refuses, and the password is not printed.
    let wrong = format!("wrong-{PASSWORD}");
    let out = cfg
        .command(&["backup"])
        .env("PGPASSWORD", &wrong)
        .output()
        .unwrap();
    assert_ne!(code(&out), 0);
    let err = stderr(&out);
    assert!(err.contains("password authentication failed"), "{err}");
    assert!(!err.contains(&wrong) && !err.contains(PASSWORD), "{err}");
}
