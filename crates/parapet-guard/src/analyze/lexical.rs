//! The lexical shape key: a statement text with the values of its plain numeric and string
//! literals blanked out, found by a short, deliberately narrow scan instead of PostgreSQL's
//! parser. [`super::analyze_with_shapes`] remembers statement shapes by it, so a known statement
//! with new literal values (pgbench's `... WHERE aid = 123;`, an application's queries) is
//! recognised without the parse that even `pg_query::normalize` costs.
//!
//! Hand-written because no lexer crate speaks PostgreSQL's grammar, and a narrow one is what
//! keeps this safe: the scanner accepts only texts whose tokens it cannot get wrong, and gives
//! up (`None`, so the text goes the parser's way) on anything else: dollar signs (parameters,
//! dollar quoting), backslashes, prefixed strings (`E'…'`, `B'…'`, `X'…'`, `U&'…'`),
//! numbers that are not plain decimals (`1.`, `.5`, `0x1F`, `1_000`, trailing letters), control
//! characters and non-ASCII outside quoted identifiers and comments. Comments are kept whole,
//! nothing in them blanked. Two accepted texts with the same key then have the same characters
//! everywhere but inside those literals, which PostgreSQL's lexer
//! reads as the same tokens with other values.
//!
//! The key alone does not say that the parser turns every blanked literal into a constant that
//! `normalize` replaces (a number in `float(53)` stays in the normalised text, `-5` is replaced
//! from its sign). So a key is only ever remembered together with proof from the parser: the
//! first text of a shape is normalised, and the key is stored only if [`LexicalKey::normalized`]
//! matches exactly that normalised text ([`LexicalKey::matches_normalized`]). The grammar
//! position of a literal, not its value, decides how it is parsed, so every text with that key
//! normalises alike.

/// A text's lexical shape key (see the module documentation).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LexicalKey {
    /// The text with each numeric literal replaced by `\x01` and each string literal by `\x02`,
    /// after a `\0` (which no accepted text contains, so it never equals a normalised text).
    key: String,
}

const NUMBER: u8 = 1;
const STRING: u8 = 2;

impl LexicalKey {
    /// The key, for a cache.
    pub fn as_str(&self) -> &str {
        &self.key
    }

    /// Whether `normalized` (a `pg_query::normalize` output) is this key's text with every
    /// blanked literal replaced by a `$n`: then every literal it blanks is a constant that
    /// `normalize` replaces. (`normalize` numbers the constants in the order it meets them in
    /// the tree, which need not be the text's.)
    pub fn matches_normalized(&self, normalized: &str) -> bool {
        let n = normalized.as_bytes();
        let mut j = 0;
        for c in self.key.bytes().skip(1) {
            if c == NUMBER || c == STRING {
                if n.get(j) != Some(&b'$') || !n.get(j + 1).is_some_and(u8::is_ascii_digit) {
                    return false;
                }
                j += 2;
                while n.get(j).is_some_and(u8::is_ascii_digit) {
                    j += 1;
                }
            } else if n.get(j) == Some(&c) {
                j += 1;
            } else {
                return false;
            }
        }
        j == n.len()
    }
}

fn ident_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

/// The lexical key of `sql`, or `None` when the text holds anything the narrow scan does not
/// accept (see the module documentation).
pub fn key(sql: &str) -> Option<LexicalKey> {
    let b = sql.as_bytes();
    let mut key = String::with_capacity(sql.len() + 1);
    key.push('\0');
    let mut i = 0;
    // Start of the last run of text copied as it is.
    let mut copied = 0;
    while i < b.len() {
        let c = b[i];
        match c {
            b' ' | b'\t' | b'\n' | b'\r' | 0x0c => i += 1,
            b'a'..=b'z' | b'A'..=b'Z' | b'_' => {
                let start = i;
                while i < b.len() && ident_char(b[i]) {
                    i += 1;
                }
                match b.get(i) {
                    // A prefixed string (E'…', B'…', X'…', N'…') or a `$` inside a name.
                    Some(b'\'') | Some(b'$') => return None,
                    // U&'…' and U&"…": Unicode escapes.
                    Some(b'&') if i - start == 1 && b[start].eq_ignore_ascii_case(&b'u') => {
                        return None
                    }
                    _ => {}
                }
            }
            b'0'..=b'9' => {
                if i > 0 && b[i - 1] == b'.' {
                    return None; // `.5`, `t.1`
                }
                let start = i;
                while i < b.len() && b[i].is_ascii_digit() {
                    i += 1;
                }
                if b.get(i) == Some(&b'.') {
                    if !b.get(i + 1).is_some_and(u8::is_ascii_digit) {
                        return None; // `1.`, `1..2`
                    }
                    i += 1;
                    while i < b.len() && b[i].is_ascii_digit() {
                        i += 1;
                    }
                }
                if matches!(b.get(i), Some(b'e') | Some(b'E')) {
                    let mut j = i + 1;
                    if matches!(b.get(j), Some(b'+') | Some(b'-')) {
                        j += 1;
                    }
                    if !b.get(j).is_some_and(u8::is_ascii_digit) {
                        return None;
                    }
                    i = j;
                    while i < b.len() && b[i].is_ascii_digit() {
                        i += 1;
                    }
                }
                // Trailing junk, hexadecimal and underscores are the parser's business.
                if b.get(i)
                    .is_some_and(|&n| ident_char(n) || n == b'.' || n == b'$')
                {
                    return None;
                }
                key.push_str(&sql[copied..start]);
                key.push(char::from(NUMBER));
                copied = i;
            }
            b'\'' => {
                let start = i;
                i += 1;
                loop {
                    match b.get(i) {
                        None => return None, // unterminated
                        Some(b'\\') => return None,
                        Some(b'\'') if b.get(i + 1) == Some(&b'\'') => i += 2,
                        Some(b'\'') => {
                            i += 1;
                            break;
                        }
                        Some(_) => i += 1,
                    }
                }
                key.push_str(&sql[copied..start]);
                key.push(char::from(STRING));
                copied = i;
            }
            b'"' => {
                // A quoted identifier, kept as it is (`""` is a quote inside it).
                i += 1;
                loop {
                    match b.get(i) {
                        None => return None,
                        Some(b'"') if b.get(i + 1) == Some(&b'"') => i += 2,
                        Some(b'"') => {
                            i += 1;
                            break;
                        }
                        Some(0) => return None,
                        Some(_) => i += 1,
                    }
                }
            }
            // A comment (`--` to the end of the line, `/* */` nested), kept as it is: nothing
            // in it is a literal (sqlcommenter-style tags stay part of the shape).
            b'-' if b.get(i + 1) == Some(&b'-') => {
                while i < b.len() && b[i] != b'\n' && b[i] != b'\r' {
                    i += 1;
                }
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                let mut depth = 0usize;
                loop {
                    match (b.get(i), b.get(i + 1)) {
                        (None, _) => return None, // unterminated
                        (Some(b'/'), Some(b'*')) => {
                            depth += 1;
                            i += 2;
                        }
                        (Some(b'*'), Some(b'/')) => {
                            depth -= 1;
                            i += 2;
                            if depth == 0 {
                                break;
                            }
                        }
                        _ => i += 1,
                    }
                }
            }
            // Parameters and dollar quoting, escapes.
            b'$' | b'\\' => return None,
            // Other punctuation and operators, kept as they are.
            b'!'..=b'~' => i += 1,
            // Control characters and non-ASCII outside quoted identifiers.
            _ => return None,
        }
    }
    key.push_str(&sql[copied..]);
    Some(LexicalKey { key })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k(s: &str) -> Option<String> {
        key(s).map(|k| k.as_str().to_string())
    }

    #[test]
    fn literals_are_blanked_and_the_rest_kept() {
        let a = key("SELECT abalance FROM pgbench_accounts WHERE aid = 12345;").unwrap();
        let b = key("SELECT abalance FROM pgbench_accounts WHERE aid = 7;").unwrap();
        assert_eq!(a, b);
        assert!(a.matches_normalized("SELECT abalance FROM pgbench_accounts WHERE aid = $1;"));
        assert!(!a.matches_normalized("SELECT abalance FROM pgbench_accounts WHERE aid = $1"));
        assert!(!a.matches_normalized("SELECT abalance FROM pgbench_accounts WHERE aid = 7;"));
        let s = key("select * from t where name = 'O''Brien' and x > 1.5e-3").unwrap();
        assert!(s.matches_normalized("select * from t where name = $2 and x > $1"));
        assert!(!s.matches_normalized("select * from t where name = $ and x > $1"));
        assert_eq!(
            s,
            key("select * from t where name = 'x' and x > 2.0e+7").unwrap()
        );
        // Names with digits and quoted names are not literals.
        assert!(key(r#"SELECT t1.c2 FROM "My ""T"" 9" t1 WHERE c2 = 3"#)
            .unwrap()
            .matches_normalized(r#"SELECT t1.c2 FROM "My ""T"" 9" t1 WHERE c2 = $1"#));
    }

    #[test]
    fn different_statements_get_different_keys() {
        let base = k("SELECT * FROM t WHERE a = 1").unwrap();
        for other in [
            "SELECT * FROM t WHERE a = '1'",
            "SELECT * FROM t WHERE a = 1 ",
            "SELECT * FROM u WHERE a = 1",
            "SELECT * FROM t WHERE a = 1; DROP TABLE t",
            "SELECT * FROM t WHERE a = 1 OR 1 = 1",
            "select * FROM t WHERE a = 1",
            "SELECT * FROM t WHERE a = -1",
        ] {
            assert_ne!(k(other).as_deref(), Some(base.as_str()), "{other}");
        }
    }

    #[test]
    fn comments_are_kept_whole() {
        let a = key("/* app='x',id=5 */ SELECT 1 -- it's 7\nFROM t WHERE a = 2").unwrap();
        assert!(a.matches_normalized("/* app='x',id=5 */ SELECT $1 -- it's 7\nFROM t WHERE a = $2"));
        assert_eq!(
            Some(a),
            key("/* app='x',id=5 */ SELECT 3 -- it's 7\nFROM t WHERE a = 4")
        );
        // Other comment text, another shape; nested comments end where PostgreSQL ends them.
        assert_ne!(k("/* id=6 */ SELECT 1"), k("/* id=5 */ SELECT 1"));
        assert!(key("/* a /* b */ c */ SELECT 1")
            .unwrap()
            .matches_normalized("/* a /* b */ c */ SELECT $1"));
        assert_eq!(k("/* a /* b */ SELECT 1"), None);
        assert_eq!(
            k("SELECT 1 -- $1 é\\"),
            Some("\0SELECT \u{1} -- $1 é\\".into())
        );
    }

    #[test]
    fn anything_the_scan_could_misread_is_refused() {
        for text in [
            "SELECT $1",
            "SELECT $$x$$",
            "SELECT E'a\\'b'",
            "SELECT e'x'",
            "SELECT B'101'",
            "SELECT X'1F'",
            "SELECT N'x'",
            "SELECT U&'d\\0061t'",
            "SELECT U&\"d0061t\"",
            "SELECT 'a\\'",
            "SELECT 'unterminated",
            "SELECT \"unterminated",
            "SELECT 1.",
            "SELECT .5",
            "SELECT t.1",
            "SELECT 0x1F",
            "SELECT 1_000",
            "SELECT 1abc",
            "SELECT 1e",
            "SELECT 1..2",
            "SELECT é",
            "SELECT x\u{7}",
            "SELECT a$b",
        ] {
            assert_eq!(k(text), None, "{text}");
        }
    }
}
