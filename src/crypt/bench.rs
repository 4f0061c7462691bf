//! Throughput of the encrypting writer and the decrypting reader against a plain copy, on
//! gzip-like (incompressible) data. Run by `bench/crypt.sh`, one mode per process so that each
//! peak RSS is its own:
//!
//! `SYNAPSE_CRYPT_BENCH=copy|encrypt|read|decrypt cargo test --lib crypt::bench -- --ignored --nocapture`
//!
//! - `copy`: 1 MiB buffers from the source to a sink; `encrypt`: the same through
//!   [`EncryptingWriter`];
//! - `read`: a plain file read back; `decrypt`: the encrypted file read through
//!   [`DecryptingReader`]. Both files are written first, untimed, and read from the page cache,
//!   so the figures are CPU cost, not disk speed.

use std::io::{self, BufReader, Read, Write};
use std::time::Instant;

use super::{init, open, DecryptingReader, EncryptingWriter, OperatorIdentity};

const BUF: usize = 1 << 20;

/// Cycles a 16 MiB block of pseudo-random bytes up to `len`.
struct Source {
    block: Vec<u8>,
    pos: usize,
    left: u64,
}

impl Source {
    fn new(len: u64) -> Self {
        let mut x: u64 = 0x2545_F491_4F6C_DD1D;
        let block = (0..(16usize << 20) / 8)
            .flat_map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x.to_le_bytes()
            })
            .collect();
        Source {
            block,
            pos: 0,
            left: len,
        }
    }
}

impl Read for Source {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let n = out
            .len()
            .min(self.block.len() - self.pos)
            .min(usize::try_from(self.left).unwrap_or(usize::MAX));
        out[..n].copy_from_slice(&self.block[self.pos..self.pos + n]);
        self.pos = (self.pos + n) % self.block.len();
        self.left -= n as u64;
        Ok(n)
    }
}

fn pump(mut from: impl Read, to: &mut impl Write) -> u64 {
    let mut buf = vec![0u8; BUF];
    let mut total = 0;
    loop {
        let n = from.read(&mut buf).expect("bench read");
        if n == 0 {
            return total;
        }
        to.write_all(&buf[..n]).expect("bench write");
        total += n as u64;
    }
}

fn vm_hwm_kib() -> String {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .map(|l| l.trim_start_matches("VmHWM:").trim().to_string())
        })
        .unwrap_or_else(|| "?".into())
}

#[test]
#[ignore = "benchmark: run by bench/crypt.sh"]
fn crypt_throughput() {
    let mode = std::env::var("SYNAPSE_CRYPT_BENCH").unwrap_or_else(|_| "copy".into());
    let len: u64 = std::env::var("SYNAPSE_CRYPT_BENCH_BYTES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1 << 30);
    let key = age::x25519::Identity::generate();
    let operator = OperatorIdentity::from_text(
        "bench.key",
        age::secrecy::ExposeSecret::expose_secret(&key.to_string()),
    )
    .expect("generated key parses");
    let keyring = init(&operator.recipients(), chrono::Utc::now()).expect("init");
    let secret = open(&keyring.sealed, &operator).expect("open");
    let to = keyring.public.current_recipient();
    let dir = tempfile::tempdir_in("/var/tmp").expect("tempdir");
    let file = dir.path().join("object");

    // Made before any clock starts: generating the block is not what is measured.
    let source = Source::new(len);
    let (bytes, seconds) = match mode.as_str() {
        "copy" => {
            let start = Instant::now();
            let n = pump(source, &mut io::sink());
            (n, start.elapsed().as_secs_f64())
        }
        "encrypt" => {
            let start = Instant::now();
            let mut w = EncryptingWriter::new(to, io::sink()).expect("encrypt");
            let n = pump(source, &mut w);
            w.finish().expect("finish");
            (n, start.elapsed().as_secs_f64())
        }
        "read" | "decrypt" => {
            let mut out = io::BufWriter::new(std::fs::File::create(&file).expect("create"));
            if mode == "read" {
                pump(source, &mut out);
            } else {
                let mut w = EncryptingWriter::new(to, &mut out).expect("encrypt");
                pump(source, &mut w);
                w.finish().expect("finish");
            }
            out.flush().expect("flush");
            drop(out);
            let input = BufReader::with_capacity(BUF, std::fs::File::open(&file).expect("open"));
            let start = Instant::now();
            let n = if mode == "read" {
                pump(input, &mut io::sink())
            } else {
                let r = DecryptingReader::new(input, &secret, "bench").expect("header");
                pump(r, &mut io::sink())
            };
            (n, start.elapsed().as_secs_f64())
        }
        other => panic!("SYNAPSE_CRYPT_BENCH={other}: use copy, encrypt, read or decrypt"),
    };
    assert_eq!(bytes, len);
    println!(
        "crypt-bench mode={mode} bytes={bytes} seconds={seconds:.3} MiB/s={:.0} VmHWM={}",
        bytes as f64 / seconds / f64::from(1u32 << 20),
        vm_hwm_kib()
    );
}
