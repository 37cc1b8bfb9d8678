//! PostgreSQL v3 wire-protocol framing and the few messages the gateway builds or inspects itself.
//! Everything else is forwarded as raw bytes. Frontend (client → server) and backend (server →
//! client) helpers are kept apart in [`frontend`] and [`backend`].

use bytes::{BufMut, BytesMut};

/// Protocol version 3.0 startup code.
pub const PROTOCOL_V3: i32 = 196_608;
/// SSLRequest code.
pub const SSL_REQUEST: i32 = 80_877_103;
/// GSSENCRequest code.
pub const GSSENC_REQUEST: i32 = 80_877_104;
/// CancelRequest code.
pub const CANCEL_REQUEST: i32 = 80_877_102;
/// Largest startup packet accepted (PostgreSQL uses 10000).
pub const MAX_STARTUP_PACKET: usize = 10_000;

/// A framing error: the peer sent something that is not a valid message.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The length word is impossible or above the cap.
    #[error("invalid message length {len} for message type {tag:?} (cap {cap} bytes)")]
    BadLength {
        /// Message type byte.
        tag: char,
        /// Declared length.
        len: i64,
        /// Cap in force.
        cap: usize,
    },
}

/// Looks at the front of `buf` for one complete typed message (`tag`, `int32 len`, body).
/// Returns `(tag, total_len)` when complete, `None` when more bytes are needed.
pub fn frame(buf: &[u8], cap: usize) -> Result<Option<(u8, usize)>, FrameError> {
    if buf.len() < 5 {
        return Ok(None);
    }
    let len = i32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]);
    if len < 4 || len as i64 > cap as i64 {
        return Err(FrameError::BadLength {
            tag: buf[0] as char,
            len: len as i64,
            cap,
        });
    }
    let total = 1 + len as usize;
    if buf.len() < total {
        return Ok(None);
    }
    Ok(Some((buf[0], total)))
}

/// Reads a NUL-terminated string at the front of `b`; returns it and the rest.
pub fn cstr(b: &[u8]) -> Option<(&str, &[u8])> {
    let end = b.iter().position(|&c| c == 0)?;
    let s = std::str::from_utf8(&b[..end]).ok()?;
    Some((s, &b[end + 1..]))
}

/// Client → server messages the gateway builds (upstream startup is done with `postgres-protocol`).
pub mod frontend {
    use super::*;

    /// A Parse of `sql` as statement `name`, with no parameter types.
    pub fn parse(name: &str, sql: &str, out: &mut BytesMut) {
        out.put_u8(b'P');
        out.put_i32((4 + name.len() + 1 + sql.len() + 1 + 2) as i32);
        out.put_slice(name.as_bytes());
        out.put_u8(0);
        out.put_slice(sql.as_bytes());
        out.put_u8(0);
        out.put_i16(0);
    }

    /// A Flush: the server sends what it holds; no reply of its own.
    pub fn flush(out: &mut BytesMut) {
        out.put_u8(b'H');
        out.put_i32(4);
    }

    /// A simple Query message.
    pub fn query(sql: &str, out: &mut BytesMut) {
        out.put_u8(b'Q');
        out.put_i32((4 + sql.len() + 1) as i32);
        out.put_slice(sql.as_bytes());
        out.put_u8(0);
    }
}

/// Server → client messages the gateway builds or inspects.
pub mod backend {
    use super::*;

    /// Fields of an ErrorResponse / NoticeResponse that the gateway cares about.
    #[derive(Debug, Default, Clone)]
    pub struct ErrorFields {
        /// SQLSTATE.
        pub code: String,
        /// Primary message.
        pub message: String,
    }

    /// Parses the body (after the length word) of an ErrorResponse.
    pub fn parse_error(body: &[u8]) -> ErrorFields {
        let mut f = ErrorFields::default();
        let mut rest = body;
        while let Some((&t, r)) = rest.split_first() {
            if t == 0 {
                break;
            }
            let Some((v, r2)) = cstr(r) else { break };
            match t {
                b'C' => f.code = v.to_string(),
                b'M' => f.message = v.to_string(),
                _ => {}
            }
            rest = r2;
        }
        f
    }

    /// Appends an ErrorResponse (severity ERROR unless `fatal`).
    pub fn error(code: &str, message: &str, detail: Option<&str>, fatal: bool, out: &mut BytesMut) {
        let sev = if fatal { "FATAL" } else { "ERROR" };
        let start = out.len();
        out.put_u8(b'E');
        out.put_i32(0);
        for (t, v) in [(b'S', sev), (b'V', sev), (b'C', code), (b'M', message)] {
            out.put_u8(t);
            put_cstr(out, v);
        }
        if let Some(d) = detail {
            out.put_u8(b'D');
            put_cstr(out, d);
        }
        out.put_u8(0);
        let len = (out.len() - start - 1) as i32;
        out[start + 1..start + 5].copy_from_slice(&len.to_be_bytes());
    }

    /// Appends an ErrorResponse (ERROR) with a DETAIL and a HINT.
    pub fn error_hint(code: &str, message: &str, detail: &str, hint: &str, out: &mut BytesMut) {
        fields(
            b'E',
            &[
                (b'S', "ERROR"),
                (b'V', "ERROR"),
                (b'C', code),
                (b'M', message),
                (b'D', detail),
                (b'H', hint),
            ],
            out,
        );
    }

    /// Appends a NoticeResponse (NOTICE, SQLSTATE 00000) with an optional DETAIL.
    pub fn notice(message: &str, detail: Option<&str>, out: &mut BytesMut) {
        let mut f = vec![
            (b'S', "NOTICE"),
            (b'V', "NOTICE"),
            (b'C', "00000"),
            (b'M', message),
        ];
        if let Some(d) = detail {
            f.push((b'D', d));
        }
        fields(b'N', &f, out);
    }

    /// Appends a message of type `kind` made of `(field type, value)` pairs.
    fn fields(kind: u8, fields: &[(u8, &str)], out: &mut BytesMut) {
        let start = out.len();
        out.put_u8(kind);
        out.put_i32(0);
        for (t, v) in fields {
            out.put_u8(*t);
            put_cstr(out, v);
        }
        out.put_u8(0);
        let len = (out.len() - start - 1) as i32;
        out[start + 1..start + 5].copy_from_slice(&len.to_be_bytes());
    }

    /// Appends a ReadyForQuery.
    pub fn ready_for_query(status: u8, out: &mut BytesMut) {
        out.put_u8(b'Z');
        out.put_i32(5);
        out.put_u8(status);
    }

    /// Appends an Authentication message with a 4-byte code and payload.
    pub fn authentication(code: i32, payload: &[u8], out: &mut BytesMut) {
        out.put_u8(b'R');
        out.put_i32((8 + payload.len()) as i32);
        out.put_i32(code);
        out.put_slice(payload);
    }

    /// Appends a BackendKeyData.
    pub fn backend_key_data(pid: i32, secret: i32, out: &mut BytesMut) {
        out.put_u8(b'K');
        out.put_i32(12);
        out.put_i32(pid);
        out.put_i32(secret);
    }

    fn put_cstr(out: &mut BytesMut, s: &str) {
        // NUL bytes cannot travel inside a C string; drop them.
        if s.as_bytes().contains(&0) {
            out.put_slice(s.replace('\0', "").as_bytes());
        } else {
            out.put_slice(s.as_bytes());
        }
        out.put_u8(0);
    }
}

/// The number at the end of a CommandComplete tag (`SELECT 5`, `INSERT 0 1`), if any.
pub fn tag_rows(tag: &str) -> Option<u64> {
    tag.rsplit(' ').next().and_then(|n| n.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn framing_rejects_bad_lengths_and_waits_for_more() {
        assert!(frame(b"Q\0\0\0", 100).unwrap().is_none());
        assert!(frame(b"Q\0\0\0\x03", 100).is_err());
        assert!(frame(b"Q\x7f\0\0\0", 100).is_err());
        assert_eq!(frame(b"Q\0\0\0\x05x", 100).unwrap(), Some((b'Q', 6)));
        assert!(frame(b"Q\0\0\0\x09x", 100).unwrap().is_none());
    }

    #[test]
    fn error_round_trip() {
        let mut b = BytesMut::new();
        backend::error("42501", "no", Some("d"), false, &mut b);
        let (tag, n) = frame(&b, 1000).unwrap().unwrap();
        assert_eq!((tag, n), (b'E', b.len()));
        let f = backend::parse_error(&b[5..]);
        assert_eq!((f.code.as_str(), f.message.as_str()), ("42501", "no"));
    }

    #[test]
    fn tag_rows_parses_counts() {
        assert_eq!(tag_rows("INSERT 0 3"), Some(3));
        assert_eq!(tag_rows("SELECT 10"), Some(10));
        assert_eq!(tag_rows("BEGIN"), None);
    }
}
