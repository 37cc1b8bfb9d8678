//! C2SP tlog-checkpoint bodies: origin, tree size and root hash (plus optional extension lines).

use crate::error::LogError;
use crate::hash::Hash;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;

/// A checkpoint body (the text of a signed note).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    /// Origin: the log's unique name.
    pub origin: String,
    /// Tree size.
    pub size: u64,
    /// Root hash at that size.
    pub root: Hash,
    /// Extension lines (opaque; Parapet writes none).
    pub extensions: Vec<String>,
}

impl Checkpoint {
    /// The note text: `origin\nsize\nbase64(root)\n` then extension lines.
    pub fn to_text(&self) -> String {
        let mut s = format!(
            "{}\n{}\n{}\n",
            self.origin,
            self.size,
            B64.encode(self.root)
        );
        for e in &self.extensions {
            s.push_str(e);
            s.push('\n');
        }
        s
    }

    /// Parses note text; `what` names the source in errors.
    pub fn parse(text: &str, what: &str) -> Result<Checkpoint, LogError> {
        let bad = |r: &str| LogError::malformed(what, format!("not a tlog-checkpoint: {r}"));
        let body = text
            .strip_suffix('\n')
            .ok_or_else(|| bad("no final newline"))?;
        let lines: Vec<&str> = body.split('\n').collect();
        if lines.len() < 3 {
            return Err(bad("fewer than three lines"));
        }
        if lines.iter().any(|l| l.is_empty()) {
            return Err(bad("empty line"));
        }
        let size_line = lines[1];
        if !size_line.bytes().all(|b| b.is_ascii_digit())
            || (size_line.len() > 1 && size_line.starts_with('0'))
        {
            return Err(bad(
                "tree size is not a decimal number without leading zeros",
            ));
        }
        let size: u64 = size_line
            .parse()
            .map_err(|_| bad("tree size out of range"))?;
        let raw = B64
            .decode(lines[2])
            .map_err(|_| bad("root hash is not base64"))?;
        let root: Hash = raw
            .try_into()
            .map_err(|_| bad("root hash is not 32 bytes"))?;
        Ok(Checkpoint {
            origin: lines[0].to_string(),
            size,
            root,
            extensions: lines[3..].iter().map(|s| s.to_string()).collect(),
        })
    }
}
