//! `verify`'s scratch instance reaches nothing but its own files (issue 13 item 1; review
//! F1, F10, F13): not the running primary through its unix socket, not the Docker socket, not
//! the verifier's credentials or config file, and a library shipped inside a forged backup
//! never runs. The scratch files are private whatever the verifier's umask.

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use synapse_backup::codec::Sha256;
use synapse_backup::repo::manifest::{self, DirEntry, FileEntry};

use crate::harness::{
    self, code, give_to_postgres, stderr, PgCluster, Scratch, TestConfig, BIN, PG_BIN,
};
use crate::verify::{
    add_verify_config, assert_scratch_clean, check, checks, docker_ready, verify, Fixture,
};

/// A cluster archiving into a local repository, one backup and a later commit archived; the
/// test adds the `[verify]` settings (probes need the cluster's socket).
fn setup(tag: &str) -> Fixture {
    Fixture::build(tag, |_| {}, |_| {})
}

/// Whether the primary has a table named `name`.
fn primary_has_table(pg: &PgCluster, name: &str) -> bool {
    pg.psql(&format!(
        "select count(*) from pg_class where relname = '{name}'"
    )) != "0"
}

/// `COPY … FROM PROGRAM` runs a shell command as the scratch server's OS user, inside it.
const CSV: &str = r"with (format csv, delimiter E'\x01', quote E'\x02')";

#[tokio::test(flavor = "multi_thread")]
async fn verify_probes_reach_neither_the_primary_nor_docker_nor_credentials() {
    if harness::skip("verify_probes_reach_neither_the_primary_nor_docker_nor_credentials") {
        return;
    }
    let scratch_tmp = Scratch::new("sandbox-secrets");
    // A password file named by PGPASSFILE, outside $HOME, readable by the instance's user.
    let pgpass = scratch_tmp.path().join("pgpass");
    std::fs::write(&pgpass, "*:*:*:*:SENTINEL_PGPASSFILE\n").unwrap();
    std::fs::set_permissions(&pgpass, std::fs::Permissions::from_mode(0o600)).unwrap();
    give_to_postgres(&pgpass);

    let mut s = setup("sandbox-probe");
    s.cfg
        .append("\n# SENTINEL_CONFIG: the config file may hold connection passwords\n");
    let sock = s.pg.socket_dir.display().to_string();
    let port = s.pg.port;
    // psql through the primary's socket, as the instance's OS user (peer/trust auth).
    let reach = format!(
        "create temp table reach(line text); copy reach from program \
         'test -x {PG_BIN}/psql && echo has-psql; {PG_BIN}/psql -X -h {sock} -p {port} -U postgres -d postgres -Atc \"select 4242*1000\" 2>&1; echo end' {CSV}; \
         select count(*) filter (where line = 'has-psql') || ' psql, ' || count(*) filter (where line = '4242000') || ' reached, ' \
         || count(*) filter (where line ~ 'connection to server on socket .* failed') || ' refused' from reach"
    );
    let visible = format!(
        "create temp table vis(line text); copy vis from program \
         'for f in /var/run/docker.sock /run/docker.sock {pgpass} {config} {sock}; do test -e \"$f\" && echo \"visible $f\"; done; \
          cat {pgpass} {config} 2>/dev/null; echo end' {CSV}; \
         select coalesce(string_agg(line, ' | '), 'none') from vis where line ~ '(visible|SENTINEL)'",
        pgpass = pgpass.display(),
        config = s.cfg.path.display(),
    );
    add_verify_config(
        &s.cfg,
        &s.base,
        &[
            (
                "the primary's socket is unreachable",
                &reach,
                "1 psql, 0 reached, 1 refused",
            ),
            ("no socket or credential is visible", &visible, "none"),
        ],
    );

    let mut runtimes = vec!["namespace"];
    if docker_ready("verify_probes_reach_neither_the_primary_nor_docker_nor_credentials") {
        runtimes.push("docker");
    }
    let pgpass_env = pgpass.display().to_string();
    // First as the `postgres` OS user, as the agent runs it (the namespace runtime then nests
    // user namespaces), into a scratch base that user owns; then as root with each runtime.
    let base = s.scratch.subdir("verify-scratch");
    let as_postgres = harness::as_postgres(BIN)
        .arg("--config")
        .arg(&s.cfg.path)
        .args(["verify", "--json", "--runtime", "namespace"])
        .env("PGPASSFILE", &pgpass)
        .current_dir(s.scratch.path())
        .output()
        .unwrap();
    let report = serde_json::from_slice(&as_postgres.stdout).ok();
    assert_verified("namespace as postgres", &as_postgres, report);
    assert_scratch_clean(&base);
    for runtime in runtimes {
        let (out, report) = verify(
            &s.cfg,
            &["--runtime", runtime],
            &[("PGPASSFILE", pgpass_env.as_str())],
        );
        assert_verified(runtime, &out, report);
        assert_scratch_clean(&s.base);
    }
    s.pg.stop();
    drop(s);
}

/// Every check of the report passed, the probe among them, and `verify` exited 0.
fn assert_verified(label: &str, out: &Output, report: Option<serde_json::Value>) {
    let list = checks(
        report
            .as_ref()
            .unwrap_or_else(|| panic!("{label}: no report: {}", stderr(out))),
    );
    for (name, ok, _, detail) in &list {
        assert!(ok, "{label}: {name}: {detail}");
    }
    assert_eq!(code(out), 0, "{label}: {}", stderr(out));
    assert!(check(&list, "probe \"the primary's socket is unreachable\"").1);
}

/// Build `evil.so` from C at test time: its constructor runs at `dlopen`, before PostgreSQL
/// looks for a magic block, and tries to (1) create `direct` itself, (2) leave `library-ran`
/// in its working directory (the scratch data directory), (3) create a table on the primary
/// and make the primary write `via_primary`, through the primary's socket.
fn build_evil_library(dir: &Path, pg: &PgCluster, direct: &Path, via_primary: &Path) -> Vec<u8> {
    let c = format!(
        r#"#include <stdio.h>
#include <stdlib.h>
__attribute__((constructor)) static void evil(void) {{
    FILE *f = fopen("{direct}", "w");
    if (f) {{ fputs("planted by a library in the backup\n", f); fclose(f); }}
    f = fopen("library-ran", "w");
    if (f) fclose(f);
    system("{psql} -X -h {sock} -p {port} -U postgres -d postgres -c \"create table pwned_by_verify(t text); copy (select 1) to '{via}'\" >/dev/null 2>&1");
}}
"#,
        direct = direct.display(),
        psql = format_args!("{PG_BIN}/psql"),
        sock = pg.socket_dir.display(),
        port = pg.port,
        via = via_primary.display(),
    );
    let src = dir.join("evil.c");
    let so = dir.join("evil.so");
    std::fs::write(&src, c).unwrap();
    let out = Command::new("gcc")
        .args(["-shared", "-fPIC", "-o"])
        .arg(&so)
        .arg(&src)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "this test builds a C library at run time and needs gcc: {e} (apt-get install gcc)"
            )
        });
    assert!(out.status.success(), "gcc failed: {}", stderr(&out));
    std::fs::read(&so).unwrap()
}

/// Forge backup `id` in the local repository `repo` as a bucket writer can: add
/// `pg_evil/evil.so` and library settings to its `postgresql.auto.conf`, in the part that holds
/// that file, and re-checksum the manifest exactly as `repo::manifest` does.
fn forge_backup(repo: &Path, id: &str, library: &[u8], settings: &str) {
    let dir = repo.join("core/backups").join(id);
    let manifest_path = dir.join("manifest.json");
    let mut m =
        manifest::from_checked_json(&std::fs::read(&manifest_path).unwrap(), "manifest").unwrap();
    let conf = m
        .files
        .iter()
        .position(|f| f.path == "postgresql.auto.conf")
        .expect("the backup has postgresql.auto.conf");
    let part = m.files[conf].part;
    let part_path = dir.join(&m.parts[part].key);
    let mut tar_bytes = Vec::new();
    flate2::read::MultiGzDecoder::new(std::fs::File::open(&part_path).unwrap())
        .read_to_end(&mut tar_bytes)
        .unwrap();
    let mut builder = tar::Builder::new(Vec::new());
    let mut new_conf = Vec::new();
    for entry in tar::Archive::new(&tar_bytes[..]).entries().unwrap() {
        let mut entry = entry.unwrap();
        let path = entry.path().unwrap().to_string_lossy().into_owned();
        let mut header = entry.header().clone();
        let mut data = Vec::new();
        entry.read_to_end(&mut data).unwrap();
        if path == "postgresql.auto.conf" {
            data.extend_from_slice(settings.as_bytes());
            new_conf = data.clone();
        }
        header.set_size(data.len() as u64);
        builder.append_data(&mut header, &path, &data[..]).unwrap();
    }
    let mut dir_header = tar::Header::new_gnu();
    dir_header.set_entry_type(tar::EntryType::Directory);
    dir_header.set_mode(0o700);
    dir_header.set_size(0);
    builder
        .append_data(&mut dir_header, "pg_evil", std::io::empty())
        .unwrap();
    let mut header = tar::Header::new_gnu();
    header.set_mode(0o600);
    header.set_size(library.len() as u64);
    builder
        .append_data(&mut header, "pg_evil/evil.so", library)
        .unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut gz, &builder.into_inner().unwrap()).unwrap();
    let stored = gz.finish().unwrap();
    std::fs::write(&part_path, &stored).unwrap();

    let old_size = m.files[conf].size;
    m.files[conf].size = new_conf.len() as u64;
    m.files[conf].sha256 = Sha256::of(&new_conf);
    let mtime = m.files[conf].mtime;
    m.files.push(FileEntry {
        path: "pg_evil/evil.so".into(),
        size: library.len() as u64,
        mode: 0o600,
        mtime,
        sha256: Sha256::of(library),
        part,
        stored: Default::default(),
    });
    m.directories.push(DirEntry {
        path: "pg_evil".into(),
        mode: 0o700,
    });
    let p = &mut m.parts[part];
    p.size = stored.len() as u64;
    p.sha256 = Sha256::of(&stored);
    p.original_size = p.original_size - old_size + new_conf.len() as u64 + library.len() as u64;
    std::fs::write(&manifest_path, manifest::to_checked_json(&m)).unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_library_in_a_forged_backup_never_runs_and_never_reaches_the_primary() {
    if harness::skip("a_library_in_a_forged_backup_never_runs_and_never_reaches_the_primary") {
        return;
    }
    let s = setup("sandbox-forged");
    add_verify_config(&s.cfg, &s.base, &[]);
    // Where the library tries to write: the test's own directory, owned by postgres.
    let planted = s.scratch.subdir("planted");
    let direct = planted.join("planted-by-library");
    let via_primary = planted.join("planted-via-primary");
    let lib = build_evil_library(s.scratch.path(), &s.pg, &direct, &via_primary);
    forge_backup(
        &s.repo,
        &s.id,
        &lib,
        "shared_preload_libraries = 'pg_evil/evil.so'\n\
         session_preload_libraries = 'pg_evil/evil.so'\n",
    );

    let (out, report) = verify(&s.cfg, &[], &[("SYNAPSE_VERIFY_KEEP", "1")]);
    let err = stderr(&out);
    let kept = kept_scratch(&s.base);
    assert!(
        !primary_has_table(&s.pg, "pwned_by_verify"),
        "the library in the backup created a table on the primary: {err}"
    );
    assert!(!via_primary.exists(), "the primary wrote {via_primary:?}");
    assert!(!direct.exists(), "the library wrote {direct:?}");
    assert!(
        !kept.join("data/library-ran").exists(),
        "the library in the backup was loaded by the scratch instance: {err}"
    );
    // With the library refused, the forged backup is otherwise a sound one.
    assert_eq!(code(&out), 0, "{err}");
    assert_eq!(report.unwrap()["ok"], true);
    drop(s);
}

/// The one scratch directory a `SYNAPSE_VERIFY_KEEP=1` run left in `base`.
fn kept_scratch(base: &Path) -> PathBuf {
    let kept = entries(base);
    assert_eq!(kept.len(), 1, "{kept:?}");
    kept.into_iter().next().unwrap()
}

/// The paths in `dir`.
fn entries(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.path())
        .collect()
}

/// `verify --json` under umask 022, as a shell or cron would run it, keeping the scratch dir.
fn verify_with_umask_022(cfg: &TestConfig) -> Output {
    Command::new("sh")
        .args(["-c", "umask 022 && exec \"$@\"", "sh", BIN, "--config"])
        .arg(&cfg.path)
        .args(["verify", "--json"])
        .env("SYNAPSE_VERIFY_KEEP", "1")
        .output()
        .unwrap()
}

fn mode(p: &Path) -> u32 {
    std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777
}

#[tokio::test(flavor = "multi_thread")]
async fn verify_scratch_files_are_private_under_umask_022() {
    if harness::skip("verify_scratch_files_are_private_under_umask_022") {
        return;
    }
    let s = setup("sandbox-modes");
    add_verify_config(&s.cfg, &s.base, &[]);
    let out = verify_with_umask_022(&s.cfg);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let root = kept_scratch(&s.base);
    let mut wrong = Vec::new();
    let mut expect = |p: PathBuf, want: u32| {
        let got = mode(&p);
        if got != want {
            wrong.push(format!("{} is {got:o}, not {want:o}", p.display()));
        }
    };
    for d in ["", "wal", "run", "ts", "data"] {
        expect(root.join(d), 0o700);
    }
    for f in ["server.log", "pg_hba.conf", "pg_ident.conf"] {
        expect(root.join(f), 0o600);
    }
    let staged: Vec<PathBuf> = entries(&root.join("wal"))
        .into_iter()
        .filter(|p| p.is_file())
        .collect();
    assert!(!staged.is_empty(), "no WAL staged in {}", root.display());
    for f in staged {
        expect(f, 0o600);
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
    drop(s);
}
