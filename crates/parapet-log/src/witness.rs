//! A C2SP tlog-witness, without the HTTP: the `add-checkpoint` request body, the witness's
//! checks and answers, and its durable per-log state (the latest checkpoint it cosigned).
//!
//! The HTTP server (`parapet witness serve`) only maps [`Witness::add_checkpoint`] onto
//! `POST <prefix>/add-checkpoint`; the client side is in [`crate::witness_client`].

use crate::checkpoint::Checkpoint;
use crate::error::LogError;
use crate::hash::Hash;
use crate::note::{parse_note, valid_key_name, CosignatureSigner, NoteVerifier};
use crate::proof::verify_consistency;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

/// Most consistency proof lines a request may carry (tlog-witness).
pub const MAX_PROOF_LINES: usize = 63;

/// Content type of a 409 answer: the witness's latest cosigned size, in decimal, and a newline.
pub const SIZE_CONTENT_TYPE: &str = "text/x.tlog.size";

/// Largest `add-checkpoint` request body a witness reads (a checkpoint with a few signatures
/// and 63 proof lines is under 4 KiB).
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;

/// A parsed `add-checkpoint` request body: `old <size>\n`, the consistency proof (one base64
/// hash per line), an empty line, then the signed checkpoint note.
#[derive(Debug, Clone)]
pub struct AddCheckpoint<'a> {
    /// Size of the checkpoint the client believes the witness cosigned last.
    pub old: u64,
    /// RFC 6962 consistency proof from `old` to the checkpoint's size.
    pub proof: Vec<Hash>,
    /// The signed checkpoint note (possibly with several signatures).
    pub checkpoint: &'a [u8],
}

impl<'a> AddCheckpoint<'a> {
    /// Encodes a request body.
    pub fn encode(old: u64, proof: &[Hash], checkpoint: &[u8]) -> Vec<u8> {
        let mut b = format!("old {old}\n").into_bytes();
        for h in proof {
            b.extend_from_slice(B64.encode(h).as_bytes());
            b.push(b'\n');
        }
        b.push(b'\n');
        b.extend_from_slice(checkpoint);
        b
    }

    /// Parses a request body; the error says what is malformed (answer 400).
    pub fn parse(body: &'a [u8]) -> Result<AddCheckpoint<'a>, String> {
        let mut pos = 0usize;
        let next_line = |pos: &mut usize| -> Result<&'a [u8], String> {
            let rest = &body[*pos..];
            let n = memchr::memchr(b'\n', rest).ok_or("a line does not end in a newline")?;
            *pos += n + 1;
            Ok(&rest[..n])
        };
        let first = next_line(&mut pos)?;
        let old = std::str::from_utf8(first)
            .ok()
            .and_then(|l| l.strip_prefix("old "))
            .filter(|n| {
                !n.is_empty()
                    && n.bytes().all(|b| b.is_ascii_digit())
                    && (n.len() == 1 || !n.starts_with('0'))
            })
            .and_then(|n| n.parse::<u64>().ok())
            .ok_or("the first line is not `old <size>` (decimal, no leading zeros)")?;
        let mut proof = Vec::new();
        loop {
            let line = next_line(&mut pos)?;
            if line.is_empty() {
                break;
            }
            if proof.len() == MAX_PROOF_LINES {
                return Err(format!(
                    "more than {MAX_PROOF_LINES} consistency proof lines"
                ));
            }
            let raw = B64
                .decode(line)
                .map_err(|_| "a consistency proof line is not base64".to_string())?;
            let h: Hash = raw
                .try_into()
                .map_err(|_| "a consistency proof hash is not 32 bytes".to_string())?;
            proof.push(h);
        }
        Ok(AddCheckpoint {
            old,
            proof,
            checkpoint: &body[pos..],
        })
    }
}

/// Why a witness does not cosign; each maps to the HTTP status tlog-witness prescribes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// 400: the request is malformed, or its old size is larger than the checkpoint's.
    BadRequest(String),
    /// 403: no signature by a trusted key of the log verifies.
    Forbidden(String),
    /// 404: the checkpoint's origin is not a log this witness trusts.
    UnknownLog(String),
    /// 409: the old size is not the size the witness cosigned last (`size`), or the checkpoint
    /// has that size with another root hash.
    Conflict {
        /// The size of the latest checkpoint the witness cosigned for this log.
        size: u64,
        /// Why (for the witness's own log; the body is only the size).
        reason: String,
    },
    /// 422: the consistency proof does not verify.
    BadProof(String),
    /// 500: the witness could not store its state; nothing was cosigned.
    Internal(String),
}

impl Refusal {
    /// The HTTP status code.
    pub fn status(&self) -> u16 {
        match self {
            Refusal::BadRequest(_) => 400,
            Refusal::Forbidden(_) => 403,
            Refusal::UnknownLog(_) => 404,
            Refusal::Conflict { .. } => 409,
            Refusal::BadProof(_) => 422,
            Refusal::Internal(_) => 500,
        }
    }

    /// The response body (for 409, exactly `<size>\n`, of type [`SIZE_CONTENT_TYPE`]).
    pub fn body(&self) -> String {
        match self {
            Refusal::Conflict { size, .. } => format!("{size}\n"),
            Refusal::BadRequest(m)
            | Refusal::Forbidden(m)
            | Refusal::UnknownLog(m)
            | Refusal::BadProof(m)
            | Refusal::Internal(m) => format!("{m}\n"),
        }
    }

    /// The response's content type.
    pub fn content_type(&self) -> &'static str {
        match self {
            Refusal::Conflict { .. } => SIZE_CONTENT_TYPE,
            _ => "text/plain; charset=utf-8",
        }
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::Conflict { size, reason } => {
                write!(f, "409 conflict (witness at size {size}): {reason}")
            }
            r => write!(f, "{} {}", r.status(), r.body().trim_end()),
        }
    }
}

/// A witness: its key, the logs it trusts (by origin) and its state directory, which holds the
/// latest checkpoint it cosigned for each log. One process per state directory (it is locked).
#[derive(Debug)]
pub struct Witness {
    signer: CosignatureSigner,
    logs: HashMap<String, NoteVerifier>,
    state: PathBuf,
    /// Checking a request against the stored checkpoint and storing the new one happen under
    /// this lock, so two requests cannot roll the state back (tlog-witness's race).
    lock: parking_lot::Mutex<()>,
    _lock_file: fs::File,
}

impl Witness {
    /// Creates a witness key named `name` in `key_file` (mode 0600; refuses to overwrite) and
    /// returns its `cosignature/v1` verifier key.
    pub fn init_key(key_file: &Path, name: &str) -> Result<String, LogError> {
        if !valid_key_name(name) {
            return Err(LogError::malformed(
                "witness name",
                format!(
                    "{name:?} is not a valid key name: it must be non-empty, without spaces, '+' \
                     or newlines (e.g. witness.example.com/w1)"
                ),
            ));
        }
        let signer = CosignatureSigner::generate(name);
        crate::write_key_file(key_file, &signer.to_key_text())?;
        Ok(signer.verifier().to_key_text())
    }

    /// Reads a witness key file written by [`Witness::init_key`].
    pub fn read_key(key_file: &Path) -> Result<CosignatureSigner, LogError> {
        let text = fs::read_to_string(key_file).map_err(|e| LogError::BadSigningKey {
            path: key_file.display().to_string(),
            reason: format!("cannot read it: {e}"),
        })?;
        CosignatureSigner::parse(text.trim()).map_err(|reason| LogError::BadSigningKey {
            path: key_file.display().to_string(),
            reason: format!(
                "{reason} (expected PRIVATE+KEY+name+keyid+key, as written by `parapet witness init`)"
            ),
        })
    }

    /// Opens (creating it if needed) the state directory `state` for a witness with key
    /// `signer` that trusts `logs` (each log's verifier key; its name is the log's origin).
    /// Fails if another process holds the directory.
    pub fn open(
        signer: CosignatureSigner,
        logs: Vec<NoteVerifier>,
        state: &Path,
    ) -> Result<Witness, LogError> {
        let mut map = HashMap::new();
        for v in logs {
            if let Some(prev) = map.insert(v.name().to_string(), v.clone()) {
                if prev != v {
                    return Err(LogError::malformed(
                        "--log",
                        format!(
                            "two different keys for log {}: a witness trusts one key per origin",
                            v.name()
                        ),
                    ));
                }
            }
        }
        fs::create_dir_all(state).map_err(|e| {
            LogError::io(format!("creating state directory {}", state.display()), e)
        })?;
        let lock_path = state.join("lock");
        let lock_file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| LogError::io(format!("opening {}", lock_path.display()), e))?;
        // SAFETY: flock on a file descriptor we own.
        if unsafe { libc::flock(lock_file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            return Err(LogError::malformed(
                state.display().to_string(),
                "another witness process uses this state directory; stop it or choose another --state",
            ));
        }
        let w = Witness {
            signer,
            logs: map,
            state: state.to_path_buf(),
            lock: parking_lot::Mutex::new(()),
            _lock_file: lock_file,
        };
        // Refuse to start on a damaged state file rather than forget a log's history.
        for origin in w.logs.keys() {
            w.latest(origin)?;
        }
        Ok(w)
    }

    /// The witness's verifier key text.
    pub fn verifier_key(&self) -> String {
        self.signer.verifier().to_key_text()
    }

    /// The witness's name.
    pub fn name(&self) -> &str {
        self.signer.name()
    }

    fn state_file(&self, origin: &str) -> PathBuf {
        let h = Sha256::digest(origin.as_bytes());
        let hex: String = h[..16].iter().map(|b| format!("{b:02x}")).collect();
        self.state.join(format!("log-{hex}"))
    }

    /// The latest checkpoint this witness cosigned for log `origin`, if any.
    pub fn latest(&self, origin: &str) -> Result<Option<Checkpoint>, LogError> {
        let p = self.state_file(origin);
        let note = match fs::read(&p) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(LogError::io(format!("reading {}", p.display()), e)),
        };
        let what = p.display().to_string();
        let damaged = |r: String| {
            LogError::malformed(
                &what,
                format!(
                    "{r}: the witness state is damaged; restore it from a backup (deleting it \
                     makes this witness forget the log's history)"
                ),
            )
        };
        let parsed = parse_note(&note).map_err(damaged)?;
        let cp = Checkpoint::parse(parsed.text, &what).map_err(|e| damaged(e.to_string()))?;
        if cp.origin != origin {
            return Err(damaged(format!("it holds a checkpoint of {:?}", cp.origin)));
        }
        Ok(Some(cp))
    }

    /// Handles one `add-checkpoint` request body: on success returns the response body (the
    /// cosignature line), after the checkpoint is stored durably.
    pub fn add_checkpoint(&self, body: &[u8], now: u64) -> Result<String, Refusal> {
        let req = AddCheckpoint::parse(body).map_err(Refusal::BadRequest)?;
        let parsed = parse_note(req.checkpoint).map_err(|r| {
            Refusal::BadRequest(format!("the checkpoint is not a signed note: {r}"))
        })?;
        let cp = Checkpoint::parse(parsed.text, "checkpoint")
            .map_err(|e| Refusal::BadRequest(e.to_string()))?;
        let key = self
            .logs
            .get(&cp.origin)
            .ok_or_else(|| Refusal::UnknownLog(format!("unknown log origin {:?}", cp.origin)))?;
        key.open(req.checkpoint, "checkpoint")
            .map_err(|e| Refusal::Forbidden(e.to_string()))?;
        if req.old > cp.size {
            return Err(Refusal::BadRequest(format!(
                "old size {} is larger than the checkpoint's size {}",
                req.old, cp.size
            )));
        }
        let _guard = self.lock.lock();
        let latest = self
            .latest(&cp.origin)
            .map_err(|e| Refusal::Internal(e.to_string()))?;
        let (size, root) = match &latest {
            Some(l) => (l.size, l.root),
            None => (0, crate::hash::empty_root()),
        };
        // The log's key signed this checkpoint: if it is refused below as inconsistent, keep the
        // request, which proves the log's misbehaviour (tlog-witness allows this).
        let evidence = |r: Refusal| {
            self.keep_evidence(&cp.origin, body);
            r
        };
        if req.old != size {
            return Err(Refusal::Conflict {
                size,
                reason: format!(
                    "old size {} is not the size of the latest checkpoint cosigned",
                    req.old
                ),
            });
        }
        if cp.size == size {
            if cp.root != root {
                return Err(evidence(Refusal::Conflict {
                    size,
                    reason: format!(
                        "a checkpoint of size {size} with another root hash was cosigned: \
                         the log forked or was rewritten"
                    ),
                }));
            }
            if !req.proof.is_empty() {
                return Err(Refusal::BadProof(
                    "the proof between equal sizes must be empty".into(),
                ));
            }
        } else {
            verify_consistency(size, cp.size, &root, &cp.root, &req.proof).map_err(|e| {
                evidence(Refusal::BadProof(format!(
                    "the checkpoint of size {} is not a consistent extension of the one of size \
                     {size} cosigned before: {e}",
                    cp.size
                )))
            })?;
        }
        self.store(&cp.origin, req.checkpoint)
            .map_err(|e| Refusal::Internal(e.to_string()))?;
        Ok(self.signer.cosign(parsed.text, now))
    }

    /// Where the first refused request of log `origin` is kept ([`Witness::add_checkpoint`]).
    pub fn evidence_file(&self, origin: &str) -> PathBuf {
        self.state_file(origin).with_extension("evidence")
    }

    /// Keeps `body`, a request signed by log `origin`'s key that was refused as inconsistent,
    /// unless one is kept already (the first is the proof; one file per log bounds the space).
    fn keep_evidence(&self, origin: &str, body: &[u8]) {
        let p = self.evidence_file(origin);
        let r = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&p)
            .and_then(|mut f| f.write_all(body).and_then(|()| f.sync_all()));
        match r {
            Ok(()) => tracing::warn!(
                log = %origin,
                file = %p.display(),
                "kept a checkpoint signed by the log that is inconsistent with what this witness cosigned"
            ),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => tracing::warn!(file = %p.display(), "cannot keep evidence: {e}"),
        }
    }

    /// Stores signed checkpoint `note` of log `origin` durably: a new file, fsynced, renamed
    /// over the old one, and the directory fsynced.
    fn store(&self, origin: &str, note: &[u8]) -> Result<(), LogError> {
        let p = self.state_file(origin);
        let tmp = p.with_extension("tmp");
        let write = || -> std::io::Result<()> {
            let mut f = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(note)?;
            f.sync_all()?;
            fs::rename(&tmp, &p)
        };
        write().map_err(|e| LogError::io(format!("storing {}", p.display()), e))?;
        sync_dir(&self.state)
    }
}

fn sync_dir(dir: &Path) -> Result<(), LogError> {
    fs::File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(|e| LogError::io(format!("syncing directory {}", dir.display()), e))
}
