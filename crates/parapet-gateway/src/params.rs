//! Bound values as the audit log records them in `outcome` events (`params`): what a Bind gave a
//! prepared statement's `$n`, so an auditor sees the values a statement ran with, not only its
//! text.
//!
//! - Text-format values are recorded as sent.
//! - Binary values of built-in types are decoded to their text form (an `int8` sent in binary
//!   appears as its number). The type comes from the Parse's declared types, or from the
//!   server's ParameterDescription when the client described the statement.
//! - Other binary values are recorded as hex: `{"hex":"…"}`.
//! - A value over [`VALUE_LIMIT`] bytes is recorded as a prefix plus the SHA-256 and length of
//!   the whole: `{"prefix":"…","sha256":"…","bytes":N}`.
//! - Past [`TOTAL_LIMIT`] bytes of recorded values, the remaining ones are counted and hashed
//!   (`params_omitted`), so an outcome always fits in one log entry and still binds every value.
//!
//! Only the first [`VALUE_LIMIT`] bytes of a value are kept between Bind and its outcome.

use serde::Serialize;
use sha2::{Digest, Sha256};
use std::sync::Arc;

/// Largest value recorded whole, in bytes.
pub const VALUE_LIMIT: usize = 1024;
/// Bytes of values recorded in one outcome; the rest are summarised.
pub const TOTAL_LIMIT: usize = 24 * 1024;

/// One bound value as kept between Bind and the outcomes of its Executes.
#[derive(Debug, Clone)]
struct Bound {
    /// 1: binary; anything else: text.
    binary: bool,
    /// `None`: SQL NULL.
    value: Option<Captured>,
}

#[derive(Debug, Clone)]
struct Captured {
    /// The value, or its first [`VALUE_LIMIT`] bytes.
    head: Vec<u8>,
    /// Length of the whole value.
    len: usize,
    /// SHA-256 (hex) of the whole value when it is longer than `head`.
    sha256: Option<String>,
}

/// The values of one Bind: those recorded, and a summary of the rest.
#[derive(Debug, Clone, Default)]
pub(crate) struct BoundParams {
    values: Vec<Bound>,
    omitted: Option<Omitted>,
}

/// Values past [`TOTAL_LIMIT`]: how many, and the SHA-256 (hex) of their wire form (for each, its
/// 4-byte big-endian length, -1 for NULL, then its bytes).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Omitted {
    /// How many values are left out.
    pub count: usize,
    /// SHA-256 of their wire form.
    pub sha256: String,
}

/// A Bind's values together with the parameter types of its statement, ready to render.
#[derive(Debug)]
pub(crate) struct PortalParams {
    pub(crate) params: Arc<BoundParams>,
    pub(crate) types: Arc<[u32]>,
}

fn be_i16(b: &[u8], at: usize) -> Option<i16> {
    Some(i16::from_be_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn be_i32(b: &[u8], at: usize) -> Option<i32> {
    Some(i32::from_be_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// Reads the values of a Bind from `rest`, the body after the portal and statement names.
/// `None` when it does not decode (the server refuses such a Bind too).
pub(crate) fn capture(rest: &[u8]) -> Option<BoundParams> {
    let nformats = usize::try_from(be_i16(rest, 0)?).ok()?;
    let mut at = 2;
    let formats = rest.get(at..at + 2 * nformats)?;
    at += 2 * nformats;
    let nvalues = usize::try_from(be_i16(rest, at)?).ok()?;
    at += 2;
    let format = |i: usize| -> bool {
        let f = match nformats {
            0 => 0,
            1 => i16::from_be_bytes([formats[0], formats[1]]),
            _ => formats
                .get(2 * i..2 * i + 2)
                .map_or(0, |f| i16::from_be_bytes([f[0], f[1]])),
        };
        f == 1
    };
    let mut out = BoundParams::default();
    let mut used = 0usize;
    let mut rest_hash: Option<(usize, Sha256)> = None;
    for i in 0..nvalues {
        let len = be_i32(rest, at)?;
        at += 4;
        let value = if len < 0 {
            None
        } else {
            let len = usize::try_from(len).ok()?;
            let v = rest.get(at..at + len)?;
            at += len;
            Some(v)
        };
        if let Some((count, h)) = &mut rest_hash {
            *count += 1;
            wire(h, value);
            continue;
        }
        let kept = value.map_or(0, |v| v.len().min(VALUE_LIMIT));
        if used + kept > TOTAL_LIMIT {
            let mut h = Sha256::new();
            wire(&mut h, value);
            rest_hash = Some((1, h));
            continue;
        }
        used += kept;
        out.values.push(Bound {
            binary: format(i),
            value: value.map(|v| Captured {
                head: v[..v.len().min(VALUE_LIMIT)].to_vec(),
                len: v.len(),
                sha256: (v.len() > VALUE_LIMIT).then(|| hex::encode(Sha256::digest(v))),
            }),
        });
    }
    out.omitted = rest_hash.map(|(count, h)| Omitted {
        count,
        sha256: hex::encode(h.finalize()),
    });
    Some(out)
}

/// Feeds one value's wire form to `h`.
fn wire(h: &mut Sha256, value: Option<&[u8]>) {
    match value {
        None => h.update((-1i32).to_be_bytes()),
        Some(v) => {
            h.update(u32::try_from(v.len()).unwrap_or(u32::MAX).to_be_bytes());
            h.update(v);
        }
    }
}

/// The parameter types a Parse declares (`rest`: its body after the statement name and text);
/// 0 where the client left the type to the server.
pub(crate) fn declared_types(rest: &[u8]) -> Vec<u32> {
    let n = be_i16(rest, 0)
        .and_then(|n| usize::try_from(n).ok())
        .unwrap_or(0);
    (0..n)
        .map_while(|i| be_i32(rest, 2 + 4 * i).map(|t| t as u32))
        .collect()
}

/// The types of a ParameterDescription (`body`: after the length).
pub(crate) fn described_types(body: &[u8]) -> Option<Vec<u32>> {
    let n = usize::try_from(be_i16(body, 0)?).ok()?;
    (0..n)
        .map(|i| be_i32(body, 2 + 4 * i).map(|t| t as u32))
        .collect()
}

/// How one recorded value appears in the event.
#[derive(Debug, Serialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum ParamJson {
    /// NULL.
    Null,
    /// A text value, or a binary one decoded to text.
    Text(String),
    /// A binary value of a type not decoded here.
    Hex {
        /// Its bytes in hex.
        hex: String,
    },
    /// A value over [`VALUE_LIMIT`] bytes.
    Long {
        /// Its first bytes, rendered as a whole value would be (hex for binary).
        prefix: String,
        /// SHA-256 (hex) of the whole value as sent.
        sha256: String,
        /// Length of the whole value as sent.
        bytes: usize,
    },
}

impl PortalParams {
    /// The values as the outcome event records them, and the summary of those left out.
    pub(crate) fn render(&self) -> (Vec<ParamJson>, Option<Omitted>) {
        let values = self
            .params
            .values
            .iter()
            .enumerate()
            .map(|(i, b)| {
                let Some(c) = &b.value else {
                    return ParamJson::Null;
                };
                let ty = self.types.get(i).copied().unwrap_or(0);
                let rendered = if !b.binary {
                    Some(String::from_utf8_lossy(&c.head).into_owned())
                } else if c.sha256.is_some() {
                    // A cut binary value cannot be decoded; text-like ones still read as text.
                    is_textual(ty).then(|| String::from_utf8_lossy(&c.head).into_owned())
                } else {
                    decode_binary(ty, &c.head)
                };
                match (&c.sha256, rendered) {
                    (None, Some(t)) => ParamJson::Text(t),
                    (None, None) => ParamJson::Hex {
                        hex: hex::encode(&c.head),
                    },
                    (Some(sha), r) => ParamJson::Long {
                        prefix: r.unwrap_or_else(|| hex::encode(&c.head)),
                        sha256: sha.clone(),
                        bytes: c.len,
                    },
                }
            })
            .collect();
        (values, self.params.omitted.clone())
    }
}

/// Types whose binary form is their text (in the client encoding, UTF-8 here).
fn is_textual(ty: u32) -> bool {
    matches!(ty, 18 | 19 | 25 | 114 | 142 | 705 | 1042 | 1043)
}

/// The text form of a binary value of built-in type `ty`, for the types decoded here.
fn decode_binary(ty: u32, v: &[u8]) -> Option<String> {
    use postgres_protocol::types as t;
    Some(match ty {
        16 => (if t::bool_from_sql(v).ok()? { "t" } else { "f" }).to_string(),
        17 => format!("\\x{}", hex::encode(v)),
        ty if is_textual(ty) => std::str::from_utf8(v).ok()?.to_string(),
        20 => t::int8_from_sql(v).ok()?.to_string(),
        21 => t::int2_from_sql(v).ok()?.to_string(),
        23 => t::int4_from_sql(v).ok()?.to_string(),
        26 => t::oid_from_sql(v).ok()?.to_string(),
        700 => float(f64::from(t::float4_from_sql(v).ok()?)),
        701 => float(t::float8_from_sql(v).ok()?),
        1082 => date(t::date_from_sql(v).ok()?)?,
        1114 => timestamp(t::timestamp_from_sql(v).ok()?)?,
        1184 => format!("{}+00", timestamp(t::timestamp_from_sql(v).ok()?)?),
        1700 => numeric(v)?,
        2950 => uuid(t::uuid_from_sql(v).ok()?),
        3802 => {
            // jsonb: a version byte (1), then the text.
            let (1, text) = v.split_first()? else {
                return None;
            };
            std::str::from_utf8(text).ok()?.to_string()
        }
        _ => return None,
    })
}

fn float(f: f64) -> String {
    if f.is_nan() {
        "NaN".into()
    } else if f.is_infinite() {
        if f > 0.0 { "Infinity" } else { "-Infinity" }.into()
    } else {
        f.to_string()
    }
}

/// PostgreSQL's epoch, 2000-01-01, as a Julian day number.
const PG_EPOCH_JULIAN: i32 = 2_451_545;

fn date(days: i32) -> Option<String> {
    match days {
        i32::MAX => Some("infinity".into()),
        i32::MIN => Some("-infinity".into()),
        d => {
            let date = time::Date::from_julian_day(PG_EPOCH_JULIAN.checked_add(d)?).ok()?;
            Some(fmt_date(date))
        }
    }
}

fn fmt_date(d: time::Date) -> String {
    format!("{:04}-{:02}-{:02}", d.year(), u8::from(d.month()), d.day())
}

fn timestamp(micros: i64) -> Option<String> {
    match micros {
        i64::MAX => Some("infinity".into()),
        i64::MIN => Some("-infinity".into()),
        us => {
            let days = i32::try_from(us.div_euclid(86_400_000_000)).ok()?;
            let rem = us.rem_euclid(86_400_000_000);
            let date = time::Date::from_julian_day(PG_EPOCH_JULIAN.checked_add(days)?).ok()?;
            let (s, frac) = (rem / 1_000_000, rem % 1_000_000);
            let mut out = format!(
                "{} {:02}:{:02}:{:02}",
                fmt_date(date),
                s / 3600,
                s / 60 % 60,
                s % 60
            );
            if frac != 0 {
                let f = format!("{frac:06}");
                out.push('.');
                out.push_str(f.trim_end_matches('0'));
            }
            Some(out)
        }
    }
}

fn uuid(b: [u8; 16]) -> String {
    let h = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

/// The text form of a binary `numeric`: a header (digit count, weight of the first digit, sign,
/// display scale) and base-10000 digits.
fn numeric(v: &[u8]) -> Option<String> {
    let ndigits = usize::try_from(be_i16(v, 0)?).ok()?;
    let weight = i32::from(be_i16(v, 2)?);
    let sign = u16::from_be_bytes(v.get(4..6)?.try_into().ok()?);
    let dscale = usize::from(u16::from_be_bytes(v.get(6..8)?.try_into().ok()?));
    match sign {
        0xC000 => return Some("NaN".into()),
        0xD000 => return Some("Infinity".into()),
        0xF000 => return Some("-Infinity".into()),
        0x0000 | 0x4000 => {}
        _ => return None,
    }
    if v.len() != 8 + 2 * ndigits || dscale > 16_383 || weight.unsigned_abs() > 0x8000 {
        return None;
    }
    let digits: Vec<i16> = (0..ndigits)
        .map(|i| be_i16(v, 8 + 2 * i))
        .collect::<Option<_>>()?;
    if digits.iter().any(|d| !(0..10_000).contains(d)) {
        return None;
    }
    let digit = |pos: i32| -> i16 {
        // pos: the weight of a base-10000 digit; digits[0] has weight `weight`.
        usize::try_from(weight - pos)
            .ok()
            .and_then(|i| digits.get(i).copied())
            .unwrap_or(0)
    };
    let mut out = String::new();
    if sign == 0x4000 {
        out.push('-');
    }
    if weight < 0 {
        out.push('0');
    } else {
        for pos in (0..=weight).rev() {
            let d = digit(pos);
            if pos == weight {
                out.push_str(&d.to_string());
            } else {
                out.push_str(&format!("{d:04}"));
            }
        }
    }
    if dscale > 0 {
        out.push('.');
        let mut frac = String::new();
        let mut pos = -1;
        while frac.len() < dscale {
            frac.push_str(&format!("{:04}", digit(pos)));
            pos -= 1;
        }
        frac.truncate(dscale);
        out.push_str(&frac);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BufMut;

    fn bind_rest(formats: &[i16], values: &[Option<&[u8]>]) -> Vec<u8> {
        let mut b = Vec::new();
        b.put_i16(formats.len() as i16);
        for f in formats {
            b.put_i16(*f);
        }
        b.put_i16(values.len() as i16);
        for v in values {
            match v {
                None => b.put_i32(-1),
                Some(v) => {
                    b.put_i32(v.len() as i32);
                    b.put_slice(v);
                }
            }
        }
        b
    }

    fn render(formats: &[i16], values: &[Option<&[u8]>], types: &[u32]) -> Vec<ParamJson> {
        let params = capture(&bind_rest(formats, values)).expect("decodes");
        PortalParams {
            params: Arc::new(params),
            types: types.into(),
        }
        .render()
        .0
    }

    fn text(s: &str) -> ParamJson {
        ParamJson::Text(s.into())
    }

    #[test]
    fn text_values_as_sent_binary_builtins_as_text_others_as_hex() {
        let i8 = 42i64.to_be_bytes();
        let f8 = 2.5f64.to_be_bytes();
        let got = render(
            &[0, 1, 1, 1, 1],
            &[
                Some(b"it's"),
                Some(&i8),
                Some(&f8),
                None,
                Some(&[1, 2, 255]),
            ],
            &[25, 20, 701, 23, 600],
        );
        assert_eq!(
            got,
            vec![
                text("it's"),
                text("42"),
                text("2.5"),
                ParamJson::Null,
                ParamJson::Hex {
                    hex: "0102ff".into()
                }
            ]
        );
        // One format code applies to all; no type known: binary stays hex.
        let got = render(&[1], &[Some(&7i32.to_be_bytes())], &[]);
        assert_eq!(
            got,
            vec![ParamJson::Hex {
                hex: "00000007".into()
            }]
        );
    }

    #[test]
    fn dates_times_numerics_and_uuids_read_as_the_server_prints_them() {
        assert_eq!(date(0).as_deref(), Some("2000-01-01"));
        assert_eq!(date(-1).as_deref(), Some("1999-12-31"));
        assert_eq!(
            timestamp(86_400_000_000 + 3_723_500_000).as_deref(),
            Some("2000-01-02 01:02:03.5")
        );
        assert_eq!(timestamp(-1).as_deref(), Some("1999-12-31 23:59:59.999999"));
        // 12345.678 = digits [1, 2345, 6780], weight 1, dscale 3.
        let mut n = Vec::new();
        for x in [3i16, 1, 0, 3, 1, 2345, 6780] {
            n.put_i16(x);
        }
        assert_eq!(numeric(&n).as_deref(), Some("12345.678"));
        // -0.05 = digits [500], weight -1, dscale 2.
        let mut n = Vec::new();
        for x in [1i16, -1, 0x4000u16 as i16, 2, 500] {
            n.put_i16(x);
        }
        assert_eq!(numeric(&n).as_deref(), Some("-0.05"));
        assert_eq!(
            uuid([0x12; 16]),
            "12121212-1212-1212-1212-121212121212".to_string()
        );
    }

    #[test]
    fn long_values_keep_a_prefix_and_the_hash_and_many_are_summarised() {
        let big = vec![b'a'; 5000];
        let got = render(&[0], &[Some(&big)], &[25]);
        assert_eq!(
            got,
            vec![ParamJson::Long {
                prefix: "a".repeat(VALUE_LIMIT),
                sha256: hex::encode(Sha256::digest(&big)),
                bytes: 5000,
            }]
        );
        let v = vec![b'x'; 1000];
        let many: Vec<Option<&[u8]>> = (0..100).map(|_| Some(&v[..])).collect();
        let params = capture(&bind_rest(&[], &many)).expect("decodes");
        let kept = TOTAL_LIMIT / 1000;
        assert_eq!(params.values.len(), kept);
        let omitted = params.omitted.expect("the rest is summarised");
        assert_eq!(omitted.count, 100 - kept);
        let mut h = Sha256::new();
        for _ in kept..100 {
            wire(&mut h, Some(&v));
        }
        assert_eq!(omitted.sha256, hex::encode(h.finalize()));
        // A Bind cut short does not decode.
        assert!(capture(&[0, 0, 0, 1, 0, 0, 0, 9, b'a']).is_none());
    }
}
