//! Frontend (client → server) messages as the session acts on them, each decoded once from its
//! frame and shared by the judging and forwarding phases (pgdog's `net/messages` is the model).
//! Only what the gateway reads is decoded; the frame's bytes are what is forwarded. A message
//! whose body does not decode is kept as [`FrontendMessage::Malformed`]: it is an error only when acted
//! on, since the server, skipping to Sync after an error, never reads such a message either.

use crate::protocol::cstr;

/// One frontend message of the v3 protocol (after startup).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FrontendMessage<'a> {
    /// `Q`: a simple query.
    Query { sql: &'a str },
    /// `P`: a statement to prepare under `name` (`""`: the unnamed statement); `types`: the
    /// rest of the body (the declared parameter types, see `params::declared_types`).
    Parse {
        name: &'a str,
        sql: &'a str,
        types: &'a [u8],
    },
    /// `B`: binding `portal` to `statement`; `params`: the rest of the body (formats, values and
    /// result formats, see `params::capture`).
    Bind {
        portal: &'a str,
        statement: &'a str,
        params: &'a [u8],
    },
    /// `E`: running `portal`.
    Execute { portal: &'a str },
    /// `D`: describing a statement (`Some(name)`) or a portal (`None`).
    Describe { statement: Option<&'a str> },
    /// `C`: closing a statement (`statement`) or a portal.
    Close { statement: bool, name: &'a str },
    /// `S`.
    Sync,
    /// `H`.
    Flush,
    /// `X`.
    Terminate,
    /// `d`.
    CopyData,
    /// `c`.
    CopyDone,
    /// `f`.
    CopyFail,
    /// `F`: the fastpath function call (refused: it cannot be judged).
    FunctionCall,
    /// A known type whose body does not decode; names the message.
    Malformed(&'static str),
    /// A type the protocol does not have.
    Unknown(u8),
}

impl<'a> FrontendMessage<'a> {
    /// Decodes the complete frame `msg` (type byte, length, body) of type `tag`.
    pub(crate) fn decode(tag: u8, msg: &'a [u8]) -> FrontendMessage<'a> {
        let body = msg.get(5..).unwrap_or_default();
        let decoded = match tag {
            b'Q' => cstr(body).map(|(sql, _)| FrontendMessage::Query { sql }),
            b'P' => cstr(body).and_then(|(name, rest)| {
                cstr(rest).map(|(sql, types)| FrontendMessage::Parse { name, sql, types })
            }),
            b'B' => cstr(body).and_then(|(portal, rest)| {
                cstr(rest).map(|(statement, params)| FrontendMessage::Bind {
                    portal,
                    statement,
                    params,
                })
            }),
            b'E' => cstr(body).map(|(portal, _)| FrontendMessage::Execute { portal }),
            b'D' => body.split_first().and_then(|(&kind, rest)| {
                cstr(rest).map(|(name, _)| FrontendMessage::Describe {
                    statement: (kind == b'S').then_some(name),
                })
            }),
            b'C' => body.split_first().and_then(|(&kind, rest)| {
                cstr(rest).map(|(name, _)| FrontendMessage::Close {
                    statement: kind == b'S',
                    name,
                })
            }),
            b'S' => Some(FrontendMessage::Sync),
            b'H' => Some(FrontendMessage::Flush),
            b'X' => Some(FrontendMessage::Terminate),
            b'd' => Some(FrontendMessage::CopyData),
            b'c' => Some(FrontendMessage::CopyDone),
            b'f' => Some(FrontendMessage::CopyFail),
            b'F' => Some(FrontendMessage::FunctionCall),
            other => return FrontendMessage::Unknown(other),
        };
        decoded.unwrap_or(FrontendMessage::Malformed(match tag {
            b'Q' => "Query",
            b'P' => "Parse",
            b'B' => "Bind",
            b'E' => "Execute",
            b'D' => "Describe",
            _ => "Close",
        }))
    }

    /// Copy data, CopyDone or CopyFail.
    pub(crate) fn is_copy(&self) -> bool {
        matches!(
            self,
            FrontendMessage::CopyData | FrontendMessage::CopyDone | FrontendMessage::CopyFail
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;
    use postgres_protocol::message::frontend as fe;

    fn frame(b: &BytesMut) -> (u8, &[u8]) {
        (b[0], &b[..])
    }

    #[test]
    fn decodes_what_the_session_reads_and_marks_the_rest() {
        let mut b = BytesMut::new();
        fe::parse("s1", "SELECT $1", std::iter::empty(), &mut b).unwrap();
        let (t, m) = frame(&b);
        assert_eq!(
            FrontendMessage::decode(t, m),
            FrontendMessage::Parse {
                name: "s1",
                sql: "SELECT $1",
                types: &[0, 0][..]
            }
        );
        let mut b = BytesMut::new();
        fe::close(b'S', "s1", &mut b).unwrap();
        let (t, m) = frame(&b);
        assert_eq!(
            FrontendMessage::decode(t, m),
            FrontendMessage::Close {
                statement: true,
                name: "s1"
            }
        );
        // A Query without its terminating NUL, a Bind cut short, a bare type byte.
        assert_eq!(
            FrontendMessage::decode(b'Q', b"Q\0\0\0\x07abc"),
            FrontendMessage::Malformed("Query")
        );
        assert_eq!(
            FrontendMessage::decode(b'B', b"B\0\0\0\x06p\0"),
            FrontendMessage::Malformed("Bind")
        );
        assert_eq!(
            FrontendMessage::decode(b'E', b"E"),
            FrontendMessage::Malformed("Execute")
        );
        assert_eq!(
            FrontendMessage::decode(b'z', b"z\0\0\0\x04"),
            FrontendMessage::Unknown(b'z')
        );
        assert!(FrontendMessage::decode(b'c', b"c\0\0\0\x04").is_copy());
    }
}
