//! gzip + SHA-256 in one streaming pass. The SHA-256 of the *uncompressed* content travels in
//! the gzip header's comment field, so one GET verifies an object and plain `gunzip` still
//! reads it.

use std::fmt;
use std::io::{Read, Write};
use std::str::FromStr;

use anyhow::{bail, Context};
use flate2::{Compression, GzBuilder};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256 as Hasher};

/// The SHA-256 of some uncompressed content; lowercase hex.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Sha256(pub [u8; 32]);

impl Sha256 {
    pub fn of(data: &[u8]) -> Self {
        Sha256(Hasher::digest(data).into())
    }
}

impl fmt::Display for Sha256 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for Sha256 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for Sha256 {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> anyhow::Result<Self> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).with_context(|| format!("not a SHA-256: {s:?}"))?;
        Ok(Sha256(out))
    }
}

impl Serialize for Sha256 {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Sha256 {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// A writer adapter that hashes everything passing through it.
pub struct HashingWriter<W> {
    inner: W,
    hasher: Hasher,
    bytes: u64,
}

impl<W: Write> HashingWriter<W> {
    pub fn new(inner: W) -> Self {
        HashingWriter {
            inner,
            hasher: Hasher::new(),
            bytes: 0,
        }
    }
    pub fn finish(self) -> (W, Sha256, u64) {
        (
            self.inner,
            Sha256(self.hasher.finalize().into()),
            self.bytes,
        )
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// What the gzip comment of an archived file says about its content.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectHeader {
    pub sha256: Sha256,
    pub size: u64,
    /// Extra facts about the content (e.g. commit timestamps of a WAL segment).
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

/// Compress `reader` at `level`, hashing the uncompressed bytes as they pass, and put the
/// header (with the digest) into the gzip comment. Because the comment comes first in a
/// gzip stream, the content is hashed in a first pass over `data` held in memory.
pub fn compress(
    data: &[u8],
    level: u32,
    extra: serde_json::Map<String, serde_json::Value>,
) -> (Vec<u8>, ObjectHeader) {
    let header = ObjectHeader {
        sha256: Sha256::of(data),
        size: data.len() as u64,
        extra,
    };
    let comment = serde_json::to_vec(&header).expect("header serializes");
    let mut out = Vec::with_capacity(data.len() / 3 + 1024);
    let mut gz = GzBuilder::new()
        .comment(comment)
        .write(&mut out, Compression::new(level));
    gz.write_all(data).expect("writing to a Vec cannot fail");
    gz.finish().expect("writing to a Vec cannot fail");
    (out, header)
}

/// Compress `reader` (whose content the caller already hashed into `header`) as a list of
/// 1 MiB chunks — no buffer ever holds the whole input or over-allocates for the output.
/// Returns the chunks and the SHA-256 of what was actually read, so the caller can check
/// that the input did not change since it was hashed.
pub fn compress_stream(
    mut reader: impl Read,
    header: &ObjectHeader,
    level: u32,
) -> std::io::Result<(Vec<bytes::Bytes>, Sha256)> {
    let comment = serde_json::to_vec(header).expect("header serializes");
    let sink = ChunkWriter::default();
    let mut gz = GzBuilder::new()
        .comment(comment)
        .write(HashingWriter::new(sink), Compression::new(level));
    let mut hasher = Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        hasher.update(&buf[..n]);
        gz.write_all(&buf[..n])?;
    }
    let (sink, _, _) = gz.finish()?.finish();
    Ok((sink.finish(), Sha256(hasher.finalize().into())))
}

/// Collects written bytes into 1 MiB `Bytes` chunks (one allocation size for compressed and
/// encrypted objects alike, so a freed chunk is reused by the next).
#[derive(Default)]
pub(crate) struct ChunkWriter {
    chunks: Vec<bytes::Bytes>,
    current: Vec<u8>,
}

impl ChunkWriter {
    const CHUNK: usize = 1 << 20;
    pub(crate) fn finish(mut self) -> Vec<bytes::Bytes> {
        if !self.current.is_empty() {
            self.chunks
                .push(bytes::Bytes::from(std::mem::take(&mut self.current)));
        }
        self.chunks
    }
}

impl Write for ChunkWriter {
    fn write(&mut self, mut data: &[u8]) -> std::io::Result<usize> {
        let n = data.len();
        while !data.is_empty() {
            if self.current.capacity() == 0 {
                self.current.reserve_exact(Self::CHUNK);
            }
            let room = Self::CHUNK - self.current.len();
            let take = room.min(data.len());
            self.current.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.current.len() == Self::CHUNK {
                self.chunks
                    .push(bytes::Bytes::from(std::mem::take(&mut self.current)));
            }
        }
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Read the header from the start of a compressed object (a few hundred bytes suffice).
pub fn read_header(object: &[u8], name: &str) -> anyhow::Result<ObjectHeader> {
    serde_json::from_slice(&read_comment(object, name)?)
        .with_context(|| format!("{name}: unreadable checksum header in gzip comment"))
}

/// The raw gzip comment of a stored object (the header JSON, exactly as stored: its signature
/// covers these bytes).
pub fn read_comment(object: &[u8], name: &str) -> anyhow::Result<Vec<u8>> {
    let gz = flate2::read::GzDecoder::new(object);
    gz.header()
        .and_then(|h| h.comment())
        .map(<[u8]>::to_vec)
        .with_context(|| format!("{name}: not a synapse-backup object (no gzip header comment)"))
}

/// Put `comment` in place of the gzip comment of the object whose first chunk is `first`;
/// the compressed data and trailer are untouched (they do not cover the header). Returns the
/// new header and where the old one ended in `first`.
pub fn replace_comment(first: &[u8], comment: &[u8]) -> anyhow::Result<(Vec<u8>, usize)> {
    const FHCRC: u8 = 2;
    const FEXTRA: u8 = 4;
    const FNAME: u8 = 8;
    const FCOMMENT: u8 = 16;
    let bad = || anyhow::anyhow!("not a gzip object with a header this program wrote");
    if first.len() < 10 || first[..3] != [0x1f, 0x8b, 8] || first[3] & FHCRC != 0 {
        return Err(bad());
    }
    if comment.contains(&0) {
        bail!("a gzip comment cannot hold a NUL byte");
    }
    let flags = first[3];
    let mut pos = 10;
    if flags & FEXTRA != 0 {
        let len = first.get(pos..pos + 2).ok_or_else(bad)?;
        pos += 2 + usize::from(u16::from_le_bytes([len[0], len[1]]));
    }
    // Past the NUL that ends a zero-terminated field starting at `at`.
    let past_field = |at: usize| {
        first
            .get(at..)
            .and_then(|r| r.iter().position(|&b| b == 0))
            .map(|n| at + n + 1)
            .ok_or_else(bad)
    };
    if flags & FNAME != 0 {
        pos = past_field(pos)?;
    }
    let kept = pos;
    if flags & FCOMMENT != 0 {
        pos = past_field(pos)?;
    }
    if pos > first.len() {
        return Err(bad());
    }
    let mut header = Vec::with_capacity(kept + comment.len() + 1);
    header.extend_from_slice(&first[..kept]);
    header[3] = flags | FCOMMENT;
    header.extend_from_slice(comment);
    header.push(0);
    Ok((header, pos))
}

/// Decompress an archived object and check it against the SHA-256 and size in its header.
/// A mismatch is an error naming the object.
pub fn decompress_verified(object: &[u8], name: &str) -> anyhow::Result<(Vec<u8>, ObjectHeader)> {
    let header = read_header(object, name)?;
    let mut out = Vec::with_capacity(header.size.min(1 << 30) as usize);
    flate2::read::GzDecoder::new(object)
        .read_to_end(&mut out)
        .with_context(|| format!("{name}: corrupt object: gzip data does not decode"))?;
    let actual = Sha256::of(&out);
    if actual != header.sha256 || out.len() as u64 != header.size {
        bail!(
            "{name}: corrupt object: content has SHA-256 {actual} and {} bytes, header says {} and {} bytes",
            out.len(),
            header.sha256,
            header.size
        );
    }
    Ok((out, header))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_verifies() {
        let data = b"hello wal".repeat(1000);
        let mut extra = serde_json::Map::new();
        extra.insert("k".into(), 1.into());
        let (gz, header) = compress(&data, 6, extra);
        assert_eq!(header.sha256, Sha256::of(&data));
        let (back, h2) = decompress_verified(&gz, "obj").unwrap();
        assert_eq!(back, data);
        assert_eq!(h2, header);
        assert_eq!(
            read_header(&gz[..200.min(gz.len())], "obj").unwrap(),
            header
        );
        // plain gunzip semantics: a standard decoder reads it
        let mut plain = Vec::new();
        flate2::read::MultiGzDecoder::new(&gz[..])
            .read_to_end(&mut plain)
            .unwrap();
        assert_eq!(plain, data);
    }

    #[test]
    fn streamed_compression_equals_the_content() {
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        let header = ObjectHeader {
            sha256: Sha256::of(&data),
            size: data.len() as u64,
            extra: Default::default(),
        };
        let (chunks, read_sha) = compress_stream(&data[..], &header, 6).unwrap();
        assert_eq!(read_sha, header.sha256);
        assert!(chunks.iter().all(|c| c.len() <= 1 << 20));
        let object: Vec<u8> = chunks.concat();
        let (back, h) = decompress_verified(&object, "x").unwrap();
        assert_eq!(back, data);
        assert_eq!(h, header);
    }

    #[test]
    fn corruption_names_the_object() {
        let data = vec![7u8; 100_000];
        let (mut gz, _) = compress(&data, 6, Default::default());
        let n = gz.len();
        gz[n - 20] ^= 0xFF;
        let err = decompress_verified(&gz, "X.gz").unwrap_err();
        assert!(format!("{err:#}").contains("X.gz"), "{err:#}");
        assert!(decompress_verified(b"not gzip", "k").is_err());
    }

    #[test]
    fn a_replaced_comment_keeps_the_content() {
        let data = b"some wal".repeat(500);
        let (gz, _) = compress(&data, 6, Default::default());
        let (header, end) = replace_comment(&gz, br#"{"new":1}"#).unwrap();
        let object = [header, gz[end..].to_vec()].concat();
        assert_eq!(read_comment(&object, "x").unwrap(), br#"{"new":1}"#);
        let mut plain = Vec::new();
        flate2::read::GzDecoder::new(&object[..])
            .read_to_end(&mut plain)
            .unwrap();
        assert_eq!(plain, data);
        assert!(replace_comment(b"not gzip at all", b"{}").is_err());
        assert!(replace_comment(&gz, b"a\0b").is_err());
    }

    #[test]
    fn sha_hex_round_trips() {
        let s = Sha256::of(b"abc");
        assert_eq!(
            s.to_string(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(s.to_string().parse::<Sha256>().unwrap(), s);
    }
}
