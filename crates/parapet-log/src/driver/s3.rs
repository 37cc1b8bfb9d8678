//! The storage driver of a log in an S3-compatible bucket (AWS S3, Garage, MinIO, …), through
//! `object_store`: one object per tlog-tiles path, at the same key (`checkpoint`,
//! `tile/0/x001/234`, `tile/entries/005.p/20`), so that the bucket, served over HTTP, is the
//! tlog-tiles read API (`parapet verify --url`).
//!
//! `write` starts the PUT and returns; `sync` waits for every PUT started since (an object is
//! durable once its PUT is answered). The staged checkpoint is held in memory and PUT by
//! `publish_checkpoint` after the tiles it covers, so a reader who follows the checkpoint finds
//! them. A full tile or bundle is written once: an existing one must hold the same bytes (a
//! re-write after a crash or takeover: nothing is written) and a different one is refused as an
//! alarm (two writers forked the log); the PUT carries `If-None-Match: *` for the race between
//! check and PUT, where the store honours it (Garage 2.5 does not: there the sequencer's
//! fencing keeps a second writer out).
//! Credentials come from `AWS_ACCESS_KEY_ID` and `AWS_SECRET_ACCESS_KEY` (and
//! `AWS_SESSION_TOKEN` if set).

use super::Driver;
use crate::blocking::BlockingRuntime;
use crate::sequencer::PendingSync;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};
use std::io;
use std::sync::Arc;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

/// Most requests in flight at once.
const MAX_IN_FLIGHT: usize = 64;

/// Where an S3 log lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Config {
    /// Bucket name.
    pub bucket: String,
    /// Endpoint URL of an S3-compatible store (e.g. `http://127.0.0.1:3900`); `None` for AWS.
    pub endpoint: Option<String>,
    /// Region (`us-east-1` unless the store says otherwise).
    pub region: String,
}

/// A log's files in an S3 bucket: the [`Driver`] of object storage.
pub struct S3Driver {
    store: Arc<AmazonS3>,
    location: String,
    rt: BlockingRuntime,
    limit: Arc<Semaphore>,
    /// PUTs and DELETEs started and not yet waited for.
    pending: Vec<JoinHandle<io::Result<()>>>,
    /// Whether `pending` holds DELETEs. Requests of one kind run concurrently; a write waits
    /// for the DELETEs before it, and a DELETE for the writes before it, so that none lands
    /// out of order on the same key.
    pending_removes: bool,
    staged: Option<Vec<u8>>,
    /// Full tiles that end past this many entries are written without the existence check
    /// (see [`S3Driver::sole_writer_from`]).
    sole_from: Option<u64>,
}

impl std::fmt::Debug for S3Driver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Driver")
            .field("location", &self.location)
            .finish_non_exhaustive()
    }
}

/// An `object_store` error as an I/O error, NotFound kept.
fn io_error(what: &str, e: object_store::Error) -> io::Error {
    let kind = match &e {
        object_store::Error::NotFound { .. } => io::ErrorKind::NotFound,
        object_store::Error::AlreadyExists { .. } | object_store::Error::Precondition { .. } => {
            io::ErrorKind::AlreadyExists
        }
        _ => io::ErrorKind::Other,
    };
    io::Error::new(kind, format!("{what}: {e}"))
}

/// Whether `path` is a full tile or bundle (written once), not a partial one or the checkpoint.
fn is_full_tile(path: &str) -> bool {
    path.starts_with("tile/") && !path.contains(".p/")
}

impl S3Driver {
    /// A driver for the bucket of `config`, with the credentials of the environment
    /// (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, optionally `AWS_SESSION_TOKEN`).
    pub fn new(config: &S3Config) -> io::Result<S3Driver> {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let (Some(key_id), Some(secret)) = (var("AWS_ACCESS_KEY_ID"), var("AWS_SECRET_ACCESS_KEY"))
        else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "no S3 credentials for bucket {}: set AWS_ACCESS_KEY_ID and \
                     AWS_SECRET_ACCESS_KEY",
                    config.bucket
                ),
            ));
        };
        let mut b = AmazonS3Builder::new()
            .with_bucket_name(&config.bucket)
            .with_region(&config.region)
            .with_access_key_id(key_id)
            .with_secret_access_key(secret);
        if let Some(t) = var("AWS_SESSION_TOKEN") {
            b = b.with_token(t);
        }
        let location = match &config.endpoint {
            Some(e) => {
                b = b
                    .with_endpoint(e)
                    .with_allow_http(e.starts_with("http://"))
                    .with_virtual_hosted_style_request(false);
                format!("s3://{} at {e}", config.bucket)
            }
            None => format!("s3://{}", config.bucket),
        };
        let store = b.build().map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("S3 bucket {}: {e}", config.bucket),
            )
        })?;
        let rt = BlockingRuntime::new("parapet-s3", 2)?;
        Ok(S3Driver {
            store: Arc::new(store),
            location,
            rt,
            limit: Arc::new(Semaphore::new(MAX_IN_FLIGHT)),
            pending: Vec::new(),
            pending_removes: false,
            staged: None,
            sole_from: None,
        })
    }

    /// Declares that no one else can have written a full tile ending past `size` entries: the
    /// caller is the only writer of the tree beyond `size` (the fleet's integrator, fenced by
    /// generation, past the tree state committed when it took over). Such tiles are PUT without
    /// the existence check (one GET fewer per full tile); the PUT still carries
    /// `If-None-Match: *`, and tiles up to `size` are still checked.
    pub fn sole_writer_from(&mut self, size: u64) {
        self.sole_from = Some(size);
    }

    /// Whether full tile `path` ends past the size given to [`S3Driver::sole_writer_from`].
    fn is_fresh(&self, path: &str) -> bool {
        let Some(size) = self.sole_from else {
            return false;
        };
        let Some(rest) = path.strip_prefix("tile/") else {
            return false;
        };
        let Some((level, index)) = rest.split_once('/') else {
            return false;
        };
        // Entries a tile of this level spans: 256 per level above the entries.
        let span_bits = match level {
            "entries" => 8u32,
            l => match l.parse::<u32>() {
                Ok(l) if l < 7 => 8 * (l + 1),
                _ => return false,
            },
        };
        let digits: String = index.chars().filter(char::is_ascii_digit).collect();
        let Ok(n) = digits.parse::<u64>() else {
            return false;
        };
        n.checked_add(1)
            .and_then(|e| e.checked_shl(span_bits))
            .is_some_and(|end| end > size)
    }

    fn block_on<F>(&self, fut: F) -> io::Result<F::Output>
    where
        F: std::future::Future + Send,
        F::Output: Send,
    {
        self.rt.block_on(fut)
    }

    /// Starts `task` on the runtime, at most [`MAX_IN_FLIGHT`] at once; `sync` waits for it.
    fn start(
        &mut self,
        task: impl std::future::Future<Output = io::Result<()>> + Send + 'static,
    ) -> io::Result<()> {
        let limit = self.limit.clone();
        let h = self.rt.handle()?.spawn(async move {
            let _permit = limit
                .acquire_owned()
                .await
                .map_err(|_| io::Error::other("S3 driver closed"))?;
            task.await
        });
        self.pending.push(h);
        Ok(())
    }

    /// Waits for every request started so far; the first error, if any.
    fn wait_pending(&mut self) -> io::Result<()> {
        let handles = std::mem::take(&mut self.pending);
        self.pending_removes = false;
        if handles.is_empty() {
            return Ok(());
        }
        let results = self.block_on(async move {
            let mut out = Vec::with_capacity(handles.len());
            for h in handles {
                out.push(h.await);
            }
            out
        })?;
        let mut first = Ok(());
        for r in results {
            let r = r.unwrap_or_else(|e| Err(io::Error::other(format!("S3 request task: {e}"))));
            if first.is_ok() {
                first = r;
            }
        }
        first
    }
}

/// The object at `key`, or `None`.
async fn get_opt(
    store: &AmazonS3,
    key: &ObjectPath,
    what: &str,
) -> io::Result<Option<bytes::Bytes>> {
    match store.get(key).await {
        Ok(g) => g.bytes().await.map(Some).map_err(|e| io_error(what, e)),
        Err(object_store::Error::NotFound { .. }) => Ok(None),
        Err(e) => Err(io_error(what, e)),
    }
}

/// Compares a full tile found in the store with the bytes to be written: the same bytes are a
/// re-write after a crash or takeover (nothing to do); different ones are an alarm.
fn same_or_alarm(location: &str, path: &str, existing: &[u8], data: &[u8]) -> io::Result<()> {
    if existing == data {
        return Ok(());
    }
    tracing::error!(
        "{location}: full tile {path} already exists with different bytes: two writers forked \
         the log; refusing to overwrite it"
    );
    Err(io::Error::new(
        io::ErrorKind::AlreadyExists,
        format!(
            "{location}: ALARM: full tile {path} already exists with different bytes ({} bytes \
             stored, {} to write): two writers forked the log; it was not overwritten. Stop \
             every writer of this log and investigate",
            existing.len(),
            data.len()
        ),
    ))
}

/// PUTs `data` at `path`. A full tile is written once: if the object exists it must hold the
/// same bytes (then nothing is written) or the write fails with an alarm; it is PUT with
/// `If-None-Match: *`, which closes the race between the check and the PUT on stores that
/// honour it (Garage 2.5 does not: there, the sequencer's fencing keeps a second writer out).
/// With `fresh`, a full tile is PUT without the check (no one else can have written it).
async fn put(
    store: Arc<AmazonS3>,
    location: String,
    path: String,
    data: Vec<u8>,
    fresh: bool,
) -> io::Result<()> {
    let key = ObjectPath::from(path.as_str());
    let full = is_full_tile(&path);
    let reading = format!("{location}: reading {path}");
    if full && !fresh {
        if let Some(existing) = get_opt(&store, &key, &reading).await? {
            return same_or_alarm(&location, &path, &existing, &data);
        }
    }
    let opts = PutOptions {
        mode: if full {
            PutMode::Create
        } else {
            PutMode::Overwrite
        },
        ..Default::default()
    };
    match store
        .put_opts(&key, PutPayload::from(data.clone()), opts)
        .await
    {
        Ok(_) => Ok(()),
        Err(
            object_store::Error::AlreadyExists { .. } | object_store::Error::Precondition { .. },
        ) if full => match get_opt(&store, &key, &reading).await? {
            Some(existing) => same_or_alarm(&location, &path, &existing, &data),
            None => Err(io::Error::other(format!(
                "{location}: writing {path}: the store refused it as existing, yet it is not there"
            ))),
        },
        Err(e) => Err(io_error(&format!("{location}: writing {path}"), e)),
    }
}

impl Driver for S3Driver {
    fn location(&self) -> String {
        self.location.clone()
    }

    fn read_into(&self, path: &str, buf: &mut Vec<u8>) -> io::Result<bool> {
        buf.clear();
        let store = self.store.clone();
        let key = ObjectPath::from(path);
        let r = self.block_on(async move {
            match store.get(&key).await {
                Ok(g) => g.bytes().await.map(Some),
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(e) => Err(e),
            }
        })?;
        match r {
            Ok(Some(b)) => {
                buf.extend_from_slice(&b);
                Ok(true)
            }
            Ok(None) => Ok(false),
            Err(e) => Err(io_error(&format!("{}: reading {path}", self.location), e)),
        }
    }

    fn write(&mut self, path: &str, data: &[u8]) -> io::Result<()> {
        if self.pending_removes {
            self.wait_pending()?;
        }
        let fresh = is_full_tile(path) && self.is_fresh(path);
        let task = put(
            self.store.clone(),
            self.location.clone(),
            path.to_string(),
            data.to_vec(),
            fresh,
        );
        self.start(task)
    }

    fn sync(&mut self) -> io::Result<()> {
        self.wait_pending()
    }

    fn stage_checkpoint(&mut self, data: &[u8]) -> io::Result<()> {
        self.staged = Some(data.to_vec());
        Ok(())
    }

    fn publish_checkpoint(&mut self) -> io::Result<()> {
        let Some(data) = self.staged.take() else {
            return Ok(());
        };
        self.wait_pending()?;
        let task = put(
            self.store.clone(),
            self.location.clone(),
            super::CHECKPOINT.to_string(),
            data,
            false,
        );
        self.block_on(task)?
    }

    fn sync_and_publish_later(&mut self) -> io::Result<Option<PendingSync>> {
        // Deletes land before anything written after this call (which waits on nothing).
        if self.pending_removes {
            self.wait_pending()?;
        }
        let handles = std::mem::take(&mut self.pending);
        self.pending_removes = false;
        let staged = self.staged.take();
        let (store, location) = (self.store.clone(), self.location.clone());
        let handle = self.rt.handle()?;
        Ok(Some(PendingSync::standalone(0, move || {
            handle.block_on(async move {
                let mut first = Ok(());
                for h in handles {
                    let r = h
                        .await
                        .unwrap_or_else(|e| Err(io::Error::other(format!("S3 request task: {e}"))));
                    if first.is_ok() {
                        first = r;
                    }
                }
                first?;
                match staged {
                    Some(data) => {
                        put(store, location, super::CHECKPOINT.to_string(), data, false).await
                    }
                    None => Ok(()),
                }
            })
        })))
    }

    fn remove(&mut self, path: &str) -> io::Result<()> {
        // A delete must not overtake a PUT in flight (of the same key, or of one under it).
        if !self.pending_removes && !self.pending.is_empty() {
            self.wait_pending()?;
        }
        let (store, location) = (self.store.clone(), self.location.clone());
        let path = path.to_string();
        self.pending_removes = true;
        self.start(async move {
            let key = ObjectPath::from(path.as_str());
            let mut keys = vec![key.clone()];
            // A partial tiles' "directory" (`….p`) is a prefix: list what is under it.
            if path.ends_with(".p") {
                let listed = store
                    .list_with_delimiter(Some(&key))
                    .await
                    .map_err(|e| io_error(&format!("{location}: listing {path}/"), e))?;
                keys.extend(listed.objects.into_iter().map(|o| o.location));
            }
            for k in keys {
                match store.delete(&k).await {
                    Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                    Err(e) => return Err(io_error(&format!("{location}: deleting {k}"), e)),
                }
            }
            Ok(())
        })
    }
}
