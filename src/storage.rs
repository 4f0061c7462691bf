//! The object store behind a prefix. Knows nothing about PostgreSQL.
//!
//! Local storage is written here, not through object_store's `LocalFileSystem` (which
//! creates files and directories with the process umask and does not fsync): see `local`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context};
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{
    BackoffConfig, ClientOptions, GetOptions, GetRange, ObjectStore, ObjectStoreExt, PutMode,
    PutOptions, PutPayload, RetryConfig, UpdateVersion, WriteMultipart,
};

use crate::config::{RepositoryConfig, S3Credentials};
use crate::error::Failure;

mod local;

/// Whether opening a local repository may create its root directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Read-only commands: a missing root is an error naming the URL (exit 3).
    Existing,
    /// Commands that write: a missing root is created, mode 0700.
    Create,
}

/// Outcome of a create-only put.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Put {
    Stored,
    AlreadyExists,
}

/// How long a conditional update of a local object waits for another one of the same key.
const MUTEX_WAIT: Duration = Duration::from_secs(10);

/// An object as read, with the version a conditional update compares against.
#[derive(Debug, Clone)]
pub struct Versioned {
    pub bytes: Bytes,
    version: UpdateVersion,
}

/// One listed object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Key relative to the storage prefix.
    pub key: String,
    pub size: u64,
    pub last_modified: chrono::DateTime<chrono::Utc>,
}

#[derive(Clone)]
pub struct Storage {
    store: Arc<dyn ObjectStore>,
    prefix: Path,
    /// Set for local storage: the directory the store's root maps to, for fsync.
    local_root: Option<PathBuf>,
}

impl std::fmt::Debug for Storage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Storage({}/{})", self.store, self.prefix)
    }
}

impl Storage {
    /// Open the repository's store, creating a missing local root (0700).
    pub fn open(cfg: &RepositoryConfig) -> anyhow::Result<Self> {
        Self::open_with(cfg, Access::Create)
    }

    /// Open the repository's store. For S3, credentials come from the environment (or the
    /// configured 0600 file) and are never logged. A missing local root is created (0700)
    /// only with [`Access::Create`].
    pub fn open_with(cfg: &RepositoryConfig, access: Access) -> anyhow::Result<Self> {
        let url = &cfg.url;
        match url.scheme() {
            "file" => {
                let root = url
                    .to_file_path()
                    .map_err(|()| anyhow!("repository url {url}: not a local path"))?;
                if !root.exists() {
                    if access == Access::Existing {
                        return Err(Failure::NotFound(format!(
                            "no repository at {url}: {} does not exist; check `url` in the config \
                             (only wal-push, backup, expire and check create a repository)",
                            root.display()
                        ))
                        .into());
                    }
                    local::make_private_dirs(&root).with_context(|| {
                        format!("create repository directory {}", root.display())
                    })?;
                }
                let store = LocalFileSystem::new_with_prefix(&root)
                    .with_context(|| format!("open repository directory {}", root.display()))?;
                Ok(Storage { store: Arc::new(store), prefix: Path::default(), local_root: Some(root) })
            }
            "s3" => {
                let bucket = url
                    .host_str()
                    .filter(|b| !b.is_empty())
                    .ok_or_else(|| anyhow!("repository url {url}: no bucket (expected s3://bucket/prefix)"))?;
                let creds = S3Credentials::load(cfg)?;
                let retry = RetryConfig {
                    backoff: BackoffConfig {
                        init_backoff: Duration::from_millis(100),
                        max_backoff: Duration::from_secs(2),
                        base: 2.0,
                    },
                    max_retries: cfg.retries,
                    retry_timeout: Duration::from_secs(cfg.timeout_seconds),
                };
                // with_client_options replaces allow_http, so set it inside the options.
                let options = ClientOptions::new()
                    .with_allow_http(cfg.allow_http)
                    .with_timeout(Duration::from_secs(cfg.timeout_seconds))
                    .with_connect_timeout(Duration::from_secs(5));
                let mut builder = AmazonS3Builder::new()
                    .with_bucket_name(bucket)
                    .with_region(cfg.region.clone())
                    .with_access_key_id(creds.access_key_id)
                    .with_secret_access_key(creds.secret_access_key)
                    .with_virtual_hosted_style_request(false)
                    .with_client_options(options)
                    .with_retry(retry);
                if let Some(token) = creds.session_token {
                    builder = builder.with_token(token);
                }
                if let Some(endpoint) = &cfg.endpoint {
                    builder = builder.with_endpoint(endpoint);
                }
                let store = builder.build().context("configure the S3 client")?;
                let prefix = Path::from(url.path().trim_matches('/'));
                Ok(Storage { store: Arc::new(store), prefix, local_root: None })
            }
            other => Err(crate::error::usage(format!(
                "repository url {url}: unsupported scheme {other:?} (use file:///path or s3://bucket/prefix)"
            ))),
        }
    }

    /// An in-memory store, for unit tests.
    pub fn in_memory() -> Self {
        Storage {
            store: Arc::new(object_store::memory::InMemory::new()),
            prefix: Path::default(),
            local_root: None,
        }
    }

    /// The same store under a sub-prefix (e.g. one cluster's repository).
    pub fn scoped(&self, sub: &str) -> Self {
        Storage {
            prefix: self.path(sub),
            ..self.clone()
        }
    }

    fn path(&self, key: &str) -> Path {
        let mut p = self.prefix.clone();
        for part in key.split('/').filter(|s| !s.is_empty()) {
            p = p.join(part);
        }
        p
    }

    fn relative(&self, path: &Path) -> String {
        let full = path.as_ref();
        let prefix = self.prefix.as_ref();
        if prefix.is_empty() {
            full.to_string()
        } else {
            full.strip_prefix(prefix)
                .unwrap_or(full)
                .trim_start_matches('/')
                .to_string()
        }
    }

    /// Store `data` under `key` unless something is already there. Durable on return.
    pub async fn put_if_absent(
        &self,
        key: &str,
        data: impl Into<PutPayload>,
    ) -> anyhow::Result<Put> {
        if let Some(file) = self.local_file(key) {
            return self.local_put(key, file, data.into(), true).await;
        }
        let opts = PutOptions {
            mode: PutMode::Create,
            ..Default::default()
        };
        match self
            .store
            .put_opts(&self.path(key), data.into(), opts)
            .await
        {
            Ok(_) => Ok(Put::Stored),
            Err(object_store::Error::AlreadyExists { .. }) => Ok(Put::AlreadyExists),
            Err(e) => Err(e).with_context(|| format!("store {key}")),
        }
    }

    /// Store `data` under `key`, replacing what is there. Durable on return.
    pub async fn put(&self, key: &str, data: impl Into<PutPayload>) -> anyhow::Result<()> {
        if let Some(file) = self.local_file(key) {
            return self
                .local_put(key, file, data.into(), false)
                .await
                .map(|_| ());
        }
        self.store
            .put(&self.path(key), data.into())
            .await
            .with_context(|| format!("store {key}"))?;
        Ok(())
    }

    /// The object and its version (ETag), for a later `replace_if_unchanged`.
    pub async fn get_versioned(&self, key: &str) -> anyhow::Result<Option<Versioned>> {
        match self.store.get(&self.path(key)).await {
            Ok(r) => {
                let version = UpdateVersion {
                    e_tag: r.meta.e_tag.clone(),
                    version: r.meta.version.clone(),
                };
                let bytes = r.bytes().await.with_context(|| format!("read {key}"))?;
                Ok(Some(Versioned { bytes, version }))
            }
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e).with_context(|| format!("read {key}")),
        }
    }

    /// Replace an object only if it is still what `expected` read (compare-and-swap): the
    /// new version, `None` when it changed or is gone. S3 and memory: a conditional PUT (`If-Match` on the ETag).
    /// Local files (object_store has no conditional update there): under the key's
    /// [`local_mutex`](Self::local_mutex), compare the content and rename the new one into place.
    pub async fn replace_if_unchanged(
        &self,
        key: &str,
        data: Bytes,
        expected: &Versioned,
    ) -> anyhow::Result<Option<Versioned>> {
        if let Some(mutex) = self.local_mutex(key).await? {
            if self.get(key).await?.as_ref() != Some(&expected.bytes) {
                return Ok(None);
            }
            self.put(key, data.clone()).await?;
            drop(mutex);
            let version = UpdateVersion {
                e_tag: None,
                version: None,
            };
            return Ok(Some(Versioned {
                bytes: data,
                version,
            }));
        }
        let opts = PutOptions {
            mode: PutMode::Update(expected.version.clone()),
            ..Default::default()
        };
        match self
            .store
            .put_opts(&self.path(key), PutPayload::from(data.clone()), opts)
            .await
        {
            Ok(r) => {
                let version = UpdateVersion {
                    e_tag: r.e_tag,
                    version: r.version,
                };
                Ok(Some(Versioned {
                    bytes: data,
                    version,
                }))
            }
            Err(object_store::Error::Precondition { .. })
            | Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e).with_context(|| format!("replace {key} if unchanged")),
        }
    }

    /// Delete an object only if it is still what `expected` read; `false` when it changed.
    /// Atomic on local files (under the key's mutex); on S3, which has no conditional delete
    /// in object_store, a read-compare-delete: callers make sure nobody may legitimately
    /// replace the object in that instant (the lock deletes only a lock with time left).
    pub async fn delete_if_unchanged(
        &self,
        key: &str,
        expected: &Versioned,
    ) -> anyhow::Result<bool> {
        let _mutex = self.local_mutex(key).await?;
        match self.get_versioned(key).await? {
            Some(now) if now.bytes == expected.bytes => {
                self.delete(key).await?;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    /// Local stores only: an exclusive `flock` on `KEY#0` beside the object (a name object_store
    /// never lists nor uses), serializing the conditional updates of one key. The kernel drops
    /// it when its holder dies, so a killed process never leaves it behind. `None` elsewhere.
    async fn local_mutex(&self, key: &str) -> anyhow::Result<Option<std::fs::File>> {
        let Some(root) = self.local_root.clone() else {
            return Ok(None);
        };
        let rel = PathBuf::from(format!("{}#0", self.path(key).as_ref()));
        let path = root.join(&rel);
        let file = tokio::task::spawn_blocking(move || -> std::io::Result<std::fs::File> {
            let file = match std::fs::File::open(&path) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    if let Some(dir) = path.parent() {
                        local::make_private_dirs(dir)?;
                    }
                    std::os::unix::fs::OpenOptionsExt::mode(
                        std::fs::OpenOptions::new()
                            .write(true)
                            .create(true)
                            .truncate(false),
                        0o600,
                    )
                    .open(&path)?;
                    match_owner(&root, &rel)?;
                    // Read-only is enough to lock, and works for every user.
                    std::fs::File::open(&path)?
                }
                other => other?,
            };
            Ok(file)
        })
        .await
        .expect("open task does not panic")
        .with_context(|| format!("open the mutex of {key}"))?;
        // Bounded: a holder stopped inside its critical section must not hang everyone.
        let deadline = tokio::time::Instant::now() + MUTEX_WAIT;
        loop {
            match file.try_lock() {
                Ok(()) => return Ok(Some(file)),
                Err(std::fs::TryLockError::WouldBlock)
                    if tokio::time::Instant::now() < deadline =>
                {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Err(std::fs::TryLockError::WouldBlock) => anyhow::bail!(
                    "{key} is being changed by another process that does not progress (stopped?) — \
                     its mutex {key}#0 stayed locked for {} s; try again",
                    MUTEX_WAIT.as_secs()
                ),
                Err(std::fs::TryLockError::Error(e)) => {
                    return Err(e).with_context(|| format!("lock {key} for a conditional update"))
                }
            }
        }
    }

    /// A streaming multipart upload for large objects (backup parts).
    pub async fn writer(&self, key: &str) -> anyhow::Result<ObjectWriter> {
        if let Some(file) = self.local_file(key) {
            let upload = tokio::task::spawn_blocking(move || local::LocalUpload::start(file))
                .await
                .expect("open task does not panic")
                .with_context(|| format!("start upload of {key}"))?;
            return Ok(ObjectWriter {
                inner: Upload::Local(upload),
                key: key.to_string(),
                storage: self.clone(),
            });
        }
        let upload = self
            .store
            .put_multipart(&self.path(key))
            .await
            .with_context(|| format!("start upload of {key}"))?;
        Ok(ObjectWriter {
            inner: Upload::Remote(WriteMultipart::new_with_chunk_size(upload, 16 << 20)),
            key: key.to_string(),
            storage: self.clone(),
        })
    }

    /// The whole object, or `None` when it does not exist.
    pub async fn get(&self, key: &str) -> anyhow::Result<Option<Bytes>> {
        match self.store.get(&self.path(key)).await {
            Ok(r) => Ok(Some(
                r.bytes().await.with_context(|| format!("read {key}"))?,
            )),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e).with_context(|| format!("read {key}")),
        }
    }

    /// An object as a stream of chunks (for large parts), or `None` when it does not exist.
    pub async fn get_stream(
        &self,
        key: &str,
    ) -> anyhow::Result<Option<futures::stream::BoxStream<'static, anyhow::Result<Bytes>>>> {
        match self.store.get(&self.path(key)).await {
            Ok(r) => {
                let key = key.to_string();
                Ok(Some(
                    r.into_stream()
                        .map(move |c| c.with_context(|| format!("read {key}")))
                        .boxed(),
                ))
            }
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e).with_context(|| format!("read {key}")),
        }
    }

    /// The first `len` bytes of an object (or all of it, if shorter).
    pub async fn get_head_bytes(&self, key: &str, len: u64) -> anyhow::Result<Option<Bytes>> {
        let opts = GetOptions {
            range: Some(GetRange::Bounded(0..len)),
            ..Default::default()
        };
        match self.store.get_opts(&self.path(key), opts).await {
            Ok(r) => Ok(Some(
                r.bytes().await.with_context(|| format!("read {key}"))?,
            )),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            // A range of an empty object is refused (local: "Requested range was invalid",
            // S3: 416): the object is there and empty, which the caller names as such.
            Err(e) => match self.store.head(&self.path(key)).await {
                Ok(meta) if meta.size == 0 => Ok(Some(Bytes::new())),
                _ => Err(e).with_context(|| format!("read {key}")),
            },
        }
    }

    /// Every object under `prefix`, sorted by key.
    pub async fn list(&self, prefix: &str) -> anyhow::Result<Vec<Entry>> {
        let base = self.path(prefix);
        let mut out: Vec<Entry> = self
            .store
            .list(Some(&base))
            .map_ok(|m| Entry {
                key: self.relative(&m.location),
                size: m.size,
                last_modified: m.last_modified,
            })
            .try_collect()
            .await
            .with_context(|| format!("list {prefix}"))?;
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    /// Delete an object; deleting a missing one is fine.
    pub async fn delete(&self, key: &str) -> anyhow::Result<()> {
        match self.store.delete(&self.path(key)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(e).with_context(|| format!("delete {key}")),
        }
    }

    /// Remove the local directory that held `key` if it is now empty (nothing for remote
    /// stores, which have no directories). Never the store's root.
    pub fn remove_empty_dir(&self, key: &str) {
        let Some(file) = self.local_file(key) else {
            return;
        };
        if let Some(dir) = file.parent() {
            if self.local_root.as_deref() != Some(dir) {
                let _ = std::fs::remove_dir(dir);
            }
        }
    }

    /// Delete many objects in batches (bulk delete where the store has it).
    pub async fn delete_many(&self, keys: Vec<String>) -> anyhow::Result<()> {
        let paths: Vec<_> = keys.iter().map(|k| Ok(self.path(k))).collect();
        let paths = futures::stream::iter(paths).boxed();
        let results: Vec<_> = self.store.delete_stream(paths).collect().await;
        for r in results {
            match r {
                Ok(_) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(e).context("delete objects"),
            }
        }
        Ok(())
    }

    /// For local storage, the file that holds `key`, so that a large object can be read with
    /// plain file I/O (the object_store stream reads local files 8 KiB per blocking task).
    /// `None` for remote stores.
    pub fn local_file(&self, key: &str) -> Option<PathBuf> {
        let root = self.local_root.as_ref()?;
        Some(root.join(self.path(key).as_ref()))
    }

    /// A local put, 0600 from the first byte whatever the umask (object_store's
    /// `LocalFileSystem` creates its staging file with the process umask): written to a
    /// staging file, fsynced, then renamed (or hard-linked, for a create-only put) into place.
    async fn local_put(
        &self,
        key: &str,
        file: PathBuf,
        data: PutPayload,
        create_only: bool,
    ) -> anyhow::Result<Put> {
        let put = tokio::task::spawn_blocking(move || local::put(&file, &data, create_only))
            .await
            .expect("put task does not panic")
            .with_context(|| format!("store {key}"))?;
        if put == Put::Stored {
            self.match_owner_local(key).await?;
        }
        Ok(put)
    }

    /// As root, hand a new local object (and the directories above it) to the repository
    /// directory's owner; see [`match_owner`].
    async fn match_owner_local(&self, key: &str) -> anyhow::Result<()> {
        let Some(root) = self.local_root.clone() else {
            return Ok(());
        };
        let rel = PathBuf::from(self.path(key).as_ref());
        tokio::task::spawn_blocking(move || match_owner(&root, &rel))
            .await
            .expect("chown task does not panic")
            .with_context(|| format!("chown {key}"))
    }
}

/// As root, give `root/rel` and the directories above it (below `root`) to `root`'s owner.
fn match_owner(root: &std::path::Path, rel: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    if !running_as_root() {
        return Ok(());
    }
    let owner = std::fs::metadata(root)?;
    if owner.uid() == 0 {
        return Ok(());
    }
    let mut path = root.to_path_buf();
    for part in rel.components() {
        path.push(part);
        let meta = std::fs::symlink_metadata(&path)?;
        if meta.uid() != owner.uid() || meta.gid() != owner.gid() {
            std::os::unix::fs::lchown(&path, Some(owner.uid()), Some(owner.gid()))?;
        }
    }
    Ok(())
}

fn running_as_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// A streaming upload. Nothing is visible under the key until `finish` returns.
pub struct ObjectWriter {
    inner: Upload,
    key: String,
    storage: Storage,
}

enum Upload {
    Remote(WriteMultipart),
    /// A local file, 0600 from its creation (see [`local::LocalUpload`]).
    Local(local::LocalUpload),
}

impl ObjectWriter {
    /// Queue bytes, waiting while too many parts are in flight (bounds memory).
    pub async fn write(&mut self, data: &[u8]) -> anyhow::Result<()> {
        match &mut self.inner {
            Upload::Remote(w) => {
                w.wait_for_capacity(2)
                    .await
                    .with_context(|| format!("upload {}", self.key))?;
                w.write(data);
            }
            Upload::Local(w) => w
                .write(data)
                .await
                .with_context(|| format!("upload {}", self.key))?,
        }
        Ok(())
    }

    pub async fn finish(self) -> anyhow::Result<()> {
        match self.inner {
            Upload::Remote(w) => {
                w.finish()
                    .await
                    .with_context(|| format!("complete upload of {}", self.key))?;
                Ok(())
            }
            Upload::Local(w) => {
                w.finish()
                    .await
                    .with_context(|| format!("complete upload of {}", self.key))?;
                self.storage.match_owner_local(&self.key).await
            }
        }
    }

    pub async fn abort(self) {
        match self.inner {
            Upload::Remote(w) => {
                let _ = w.abort().await;
            }
            Upload::Local(w) => w.abort().await,
        }
    }
}
