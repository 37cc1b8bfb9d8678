//! The delivery cursor of one alert: the index of the first log entry it has not finished
//! with, in a small JSON file (`{"alert":…,"origin":…,"next":N}`) in the `alerts` directory
//! beside the log directory (as the console's `console-index`). Written atomically and
//! durably (new file, fsync, rename, directory fsync), only after what precedes it was
//! delivered, so a restart resends from it and skips nothing.

use super::AlertError;
use std::io::Write;
use std::path::{Path, PathBuf};

/// The cursors' directory: `alerts` beside the log directory.
pub fn dir(log_dir: &Path) -> PathBuf {
    log_dir.parent().unwrap_or(Path::new(".")).join("alerts")
}

/// What the file holds.
#[derive(serde::Serialize, serde::Deserialize)]
struct Stored {
    alert: String,
    origin: String,
    next: u64,
}

/// One alert's cursor file.
#[derive(Debug, Clone)]
pub struct Cursor {
    path: PathBuf,
    alert: String,
    origin: String,
}

impl Cursor {
    /// The cursor of alert `alert` (a checked name) in `dir`, for the log of `origin`, and
    /// where it stands (`None`: no cursor yet). A cursor made for another log is refused.
    pub fn open(
        dir: &Path,
        alert: &str,
        origin: &str,
    ) -> Result<(Cursor, Option<u64>), AlertError> {
        let path = dir.join(format!("{alert}.cursor"));
        let err = |reason: String| AlertError::Cursor {
            alert: alert.to_string(),
            path: path.clone(),
            reason,
        };
        std::fs::create_dir_all(dir)
            .map_err(|e| err(format!("cannot create {}: {e}", dir.display())))?;
        let next = match std::fs::read(&path) {
            Ok(bytes) => {
                let s: Stored = serde_json::from_slice(&bytes).map_err(|e| {
                    err(format!(
                        "unreadable ({e}); remove it to start from the log's end"
                    ))
                })?;
                if s.origin != origin {
                    return Err(err(format!(
                        "it belongs to log {:?}, not {origin:?}; remove it to start from the log's end",
                        s.origin
                    )));
                }
                Some(s.next)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(err(format!("cannot read it: {e}"))),
        };
        Ok((
            Cursor {
                path,
                alert: alert.to_string(),
                origin: origin.to_string(),
            },
            next,
        ))
    }

    /// Records that every entry before `next` is done with (blocking: file writes and fsyncs).
    pub fn save(&self, next: u64) -> Result<(), AlertError> {
        let stored = Stored {
            alert: self.alert.clone(),
            origin: self.origin.clone(),
            next,
        };
        let mut text = serde_json::to_string(&stored).map_err(|e| self.err(e.to_string()))?;
        text.push('\n');
        let dir = self.path.parent().unwrap_or(Path::new("."));
        let tmp = dir.join(format!(".{}.cursor.new", self.alert));
        let write = || -> std::io::Result<()> {
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .open(&tmp)?;
            f.write_all(text.as_bytes())?;
            f.sync_all()?;
            std::fs::rename(&tmp, &self.path)?;
            std::fs::File::open(dir)?.sync_all()
        };
        write().map_err(|e| self.err(format!("cannot write it: {e}")))
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn err(&self, reason: String) -> AlertError {
        AlertError::Cursor {
            alert: self.alert.clone(),
            path: self.path.clone(),
            reason,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_persist_and_belong_to_their_log() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let d = dir(&tmp.path().join("log"));
        assert_eq!(d, tmp.path().join("alerts"));
        let (c, at) = Cursor::open(&d, "pager", "example.com/log").expect("open");
        assert_eq!(at, None);
        c.save(17).expect("save");
        c.save(42).expect("save");
        let (_, at) = Cursor::open(&d, "pager", "example.com/log").expect("reopen");
        assert_eq!(at, Some(42));
        let names: Vec<String> = std::fs::read_dir(&d)
            .expect("list")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, vec!["pager.cursor".to_string()]);
        let e = Cursor::open(&d, "pager", "other/log").expect_err("another log");
        assert!(e.to_string().contains("belongs to log"), "{e}");
        std::fs::write(c.path(), "{").expect("corrupt");
        assert!(Cursor::open(&d, "pager", "example.com/log").is_err());
    }
}
