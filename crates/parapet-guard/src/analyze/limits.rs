//! Bounds on the work and stack one message's analysis may use, all counted in bytes, tokens
//! and parse nodes (never time), so a replay of the same text reaches the same verdict.
//!
//! Depth is handled in two steps, because libpg_query's C code recurses once per level of the
//! tree (its JSON writer, `normalize`, `fingerprint`) and its own stack check is inert (the
//! vendored `check_stack_depth` compares against a `stack_base_ptr` that libpg_query never
//! sets), so a tree deeper than the stack crashes the process:
//!
//! 1. Before the parser runs, [`scan`] bounds the tree's depth from the tokens alone (a cheap,
//!    linear, conservative bound) and the analysis runs on a stack sized for that bound
//!    ([`with_stack`], which grows the stack with `stacker` only when the current one is too
//!    small). A bound over [`MAX_NESTING`] is refused before any parsing.
//! 2. Everything after the parse (the JSON decoder, the tree walk, `normalize`, `fingerprint`)
//!    runs only on trees whose real depth the decoder checked against [`MAX_DEPTH`] before each
//!    recursive step.

use super::facts::{Problem, RULE_TOO_LARGE};

/// Deepest message nesting of a parse tree the decoder accepts (the `ParseResult` is at depth
/// 0). PostgreSQL 15 with its default `max_stack_depth` (2 MB) runs at most about 4,090 levels
/// of `1+1+…`, 7,700 of `NOT NOT …`, 7,260 `UNION`s, 2,100 nested subqueries and 10,000
/// parentheses (its parser's own limit); the deepest of these trees is about 16,000 messages
/// deep, so this leaves room and refuses only what the server refuses too.
pub const MAX_DEPTH: u32 = 40_000;

/// Most parse-tree messages one message's analysis may decode (nested function bodies and
/// `EXECUTE` strings included): bounds the memory of one analysis.
pub const MAX_NODES: u64 = 8_000_000;

/// Most tokens one message may hold (counted by [`scan`] before parsing): bounds the memory
/// libpg_query uses before the decoder can count nodes.
pub const MAX_TOKENS: usize = 4_000_000;

/// Largest depth bound ([`Scan::nesting`]) analysed; above it the message is refused unparsed.
/// A bound, not a depth: a run of 60,000 `OR`ed conditions has a bound of about 240,000.
pub const MAX_NESTING: usize = 250_000;

/// Stack reserved per unit of the depth bound. Measured on a debug build (whose frames are the
/// largest): the JSON decoder takes about 2.5 KiB per message, and a token can open up to two
/// messages (`NOT`, unary `-`), so 5 KiB per token; this leaves room for libpg_query's C frames.
/// At most `MAX_NESTING` × 8 KiB = 2 GiB of address space, of which only what is used becomes
/// resident.
pub const STACK_PER_LEVEL: usize = 8 * 1024;

/// Stack always reserved besides the per-level part (the parser's and decoder's fixed frames).
pub const STACK_BASE: usize = 2 << 20;

/// The depth bound a PL/pgSQL body is analysed with: libpg_query's PL/pgSQL grammar keeps its
/// nesting on a parser stack of 10,000 entries, so its tree is never deeper than that, whatever
/// the body's size (the SQL inside is parsed separately, with its own bound).
pub const PLPGSQL_NESTING: usize = 10_000;

/// Default largest statement text analysed (`[listen] max_statement_size`).
pub const DEFAULT_MAX_STATEMENT_SIZE: usize = 64 << 20;

/// What [`scan`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scan {
    /// Tokens in the text (comments and whitespace excluded, every literal one token).
    pub tokens: usize,
    /// An upper bound on how deep the text's parse tree nests, in tokens.
    pub nesting: usize,
}

/// One open bracket level while scanning.
#[derive(Default)]
struct Level {
    /// Set operations at this level (they chain statements across the level's commas).
    chain: usize,
    /// Tokens since the last separator.
    seg: usize,
    /// Deepest bracket group closed since the last separator.
    inner: usize,
    /// Deepest segment so far.
    best: usize,
}

impl Level {
    fn end_segment(&mut self) {
        self.best = self.best.max(self.seg + self.inner);
        self.seg = 0;
        self.inner = 0;
    }
    fn value(mut self) -> usize {
        self.end_segment();
        // A bracket group costs a few messages of its own (the node that holds the list).
        4 + self.chain + self.best
    }
}

fn ident_start(b: u8) -> bool {
    b.is_ascii_alphabetic() || b == b'_' || b >= 0x80
}

fn ident_char(b: u8) -> bool {
    ident_start(b) || b.is_ascii_digit() || b == b'$'
}

/// Scans `sql` as PostgreSQL's lexer would (comments, quoted strings and identifiers, dollar
/// quoting), counting tokens and bounding the parse tree's depth.
///
/// The bound: within one bracket level (`(…)`, `[…]`), a tree path can only descend through
/// nodes whose text lies between two separators (`,` or `;`) of that level, one node per token
/// at most (a chain like `1+1+1` nests once per operator), plus the set operations (`UNION`,
/// `INTERSECT`, `EXCEPT`), the only nodes that chain across a level's commas, plus a few list
/// nodes per bracket. Literals, comments and quoted text count as one token each, so function
/// bodies and `EXECUTE` strings are bounded again when they are parsed in turn.
pub fn scan(sql: &str) -> Scan {
    let b = sql.as_bytes();
    let mut tokens = 0usize;
    let mut deepest = 0usize;
    let mut stack: Vec<Level> = vec![Level::default()];
    let mut i = 0;
    let n = b.len();
    // Counts one token at the current level.
    macro_rules! token {
        () => {{
            tokens += 1;
            if let Some(top) = stack.last_mut() {
                top.seg += 1;
            }
        }};
    }
    while i < n {
        let c = b[i];
        match c {
            b' ' | b'\t' | b'\n' | b'\r' | b'\x0c' => i += 1,
            b'-' if b.get(i + 1) == Some(&b'-') => {
                while i < n && b[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                // Comments nest in PostgreSQL.
                let mut depth = 0usize;
                while i < n {
                    if b[i] == b'/' && b.get(i + 1) == Some(&b'*') {
                        depth += 1;
                        i += 2;
                    } else if b[i] == b'*' && b.get(i + 1) == Some(&b'/') {
                        depth -= 1;
                        i += 2;
                        if depth == 0 {
                            break;
                        }
                    } else {
                        i += 1;
                    }
                }
            }
            b'\'' => {
                // `E'…'` (the word just before, with no space) takes backslash escapes.
                let escapes =
                    i >= 1 && matches!(b[i - 1], b'e' | b'E') && (i < 2 || !ident_char(b[i - 2]));
                i += 1;
                while i < n {
                    if escapes && b[i] == b'\\' {
                        i += 2;
                    } else if b[i] == b'\'' {
                        if b.get(i + 1) == Some(&b'\'') {
                            i += 2;
                        } else {
                            i += 1;
                            break;
                        }
                    } else {
                        i += 1;
                    }
                }
                token!();
            }
            b'"' => {
                i += 1;
                while i < n {
                    if b[i] == b'"' {
                        if b.get(i + 1) == Some(&b'"') {
                            i += 2;
                        } else {
                            i += 1;
                            break;
                        }
                    } else {
                        i += 1;
                    }
                }
                token!();
            }
            b'$' => {
                if b.get(i + 1).is_some_and(u8::is_ascii_digit) {
                    i += 1;
                    while i < n && b[i].is_ascii_digit() {
                        i += 1;
                    }
                } else if let Some(end) = dollar_quote_end(b, i) {
                    i = end;
                } else {
                    i += 1;
                }
                token!();
            }
            c if ident_start(c) => {
                let start = i;
                while i < n && ident_char(b[i]) {
                    i += 1;
                }
                let word = &b[start..i];
                if word.eq_ignore_ascii_case(b"union")
                    || word.eq_ignore_ascii_case(b"intersect")
                    || word.eq_ignore_ascii_case(b"except")
                {
                    if let Some(top) = stack.last_mut() {
                        top.chain += 1;
                    }
                }
                token!();
            }
            c if c.is_ascii_digit() => {
                while i < n && (b[i].is_ascii_alphanumeric() || b[i] == b'_' || b[i] == b'.') {
                    i += 1;
                }
                token!();
            }
            b'(' | b'[' => {
                token!();
                stack.push(Level::default());
                i += 1;
            }
            b')' | b']' => {
                if stack.len() > 1 {
                    let value = stack.pop().map(Level::value).unwrap_or(0);
                    if let Some(top) = stack.last_mut() {
                        top.inner = top.inner.max(value);
                    }
                }
                token!();
                i += 1;
            }
            b',' => {
                tokens += 1;
                if let Some(top) = stack.last_mut() {
                    top.end_segment();
                }
                i += 1;
            }
            b';' => {
                tokens += 1;
                if stack.len() == 1 {
                    // A new statement: nothing before it encloses anything after it.
                    let done = std::mem::take(&mut stack[0]);
                    deepest = deepest.max(done.value());
                } else if let Some(top) = stack.last_mut() {
                    top.end_segment();
                }
                i += 1;
            }
            _ => {
                // Operators (each character may be its own token: `-+-1`), `.`, `:`, and
                // anything else.
                token!();
                i += 1;
            }
        }
    }
    while let Some(level) = stack.pop() {
        let value = level.value();
        match stack.last_mut() {
            Some(top) => top.inner = top.inner.max(value),
            None => deepest = deepest.max(value),
        }
    }
    Scan {
        tokens,
        nesting: deepest,
    }
}

/// The end (exclusive) of the dollar-quoted string starting at `b[i] == b'$'`, if a valid
/// opening tag starts there and the `$` does not continue an identifier. An unterminated
/// string runs to the end of the text (where the parser reports it).
fn dollar_quote_end(b: &[u8], i: usize) -> Option<usize> {
    if i > 0 && ident_char(b[i - 1]) {
        return None;
    }
    let mut j = i + 1;
    if j < b.len() && ident_start(b[j]) {
        while j < b.len() && (ident_start(b[j]) || b[j].is_ascii_digit()) {
            j += 1;
        }
    }
    if b.get(j) != Some(&b'$') {
        return None;
    }
    let tag = &b[i..=j];
    let body = j + 1;
    let end = b[body..]
        .windows(tag.len())
        .position(|w| w == tag)
        .map_or(b.len(), |p| body + p + tag.len());
    Some(end)
}

/// The stack needed to analyse a text whose depth bound is `nesting`.
pub fn stack_for(nesting: usize) -> usize {
    STACK_BASE.saturating_add(nesting.saturating_mul(STACK_PER_LEVEL))
}

/// Runs `f` on a stack with room for a text of depth bound `nesting`: on the current stack when
/// it has that much left, otherwise on a new one (mapped, so only the pages used are resident,
/// and unmapped when `f` returns).
pub fn with_stack<R>(nesting: usize, f: impl FnOnce() -> R) -> R {
    let need = stack_for(nesting);
    stacker::maybe_grow(need, need, f)
}

/// Runs one recursive step of the Rust side (decoder, walk): on the current stack while at least
/// 256 KiB of it is left, else on a new 8 MiB segment. Together with the depth checks before
/// each step, the Rust recursion needs no estimate of its frame sizes.
#[inline]
pub fn grow<R>(f: impl FnOnce() -> R) -> R {
    stacker::maybe_grow(256 * 1024, 8 << 20, f)
}

/// Checks the size caps of a message before parsing: text size, tokens and depth bound.
pub fn check(sql: &str, max_statement_size: usize) -> Result<Scan, Problem> {
    if sql.len() > max_statement_size {
        return Err(Problem {
            rule: RULE_TOO_LARGE,
            reason: format!(
                "statement text of {} bytes is over the limit of {max_statement_size} bytes \
                 ([listen] max_statement_size); denied",
                sql.len()
            ),
        });
    }
    let s = scan(sql);
    if s.tokens > MAX_TOKENS {
        return Err(Problem {
            rule: RULE_TOO_LARGE,
            reason: format!(
                "statement text of {} tokens is over the analysis limit of {MAX_TOKENS} tokens; \
                 split it into smaller statements; denied",
                s.tokens
            ),
        });
    }
    if s.nesting > MAX_NESTING {
        return Err(Problem {
            rule: RULE_TOO_LARGE,
            reason: format!(
                "statement may nest up to {} levels (a run of about that many tokens without a \
                 comma), over the analysis limit of {MAX_NESTING}; split it or use lists; denied",
                s.nesting
            ),
        });
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nesting(sql: &str) -> usize {
        scan(sql).nesting
    }

    #[test]
    fn chains_count_per_token_and_lists_per_element() {
        let chain = format!("SELECT {}", vec!["1"; 1000].join("+"));
        assert!(nesting(&chain) >= 1999, "{}", nesting(&chain));
        let list = format!("SELECT 1 WHERE a IN ({})", vec!["1"; 100_000].join(","));
        assert!(nesting(&list) < 20, "{}", nesting(&list));
        let values = format!(
            "INSERT INTO t VALUES {}",
            vec!["(1, 'a,b', NULL)"; 10_000].join(",")
        );
        assert!(nesting(&values) < 20, "{}", nesting(&values));
        let statements = "SELECT 1;".repeat(100_000);
        assert!(nesting(&statements) < 10);
        assert_eq!(scan(&statements).tokens, 300_000);
    }

    #[test]
    fn brackets_and_set_operations_nest() {
        let parens = format!("SELECT {}1{}", "(".repeat(500), ")".repeat(500));
        assert!(nesting(&parens) >= 500);
        let subq = format!("SELECT {}1{}", "(SELECT ".repeat(300), ")".repeat(300));
        assert!(nesting(&subq) >= 600);
        let union = vec!["SELECT 1, 2"; 500].join(" UNION ");
        assert!(nesting(&union) >= 500, "{}", nesting(&union));
    }

    #[test]
    fn quoted_text_is_one_token() {
        for sql in [
            "SELECT '1+1+1+1+1+1+1+1+1+1+1+1'",
            "SELECT E'\\'1+1+1+1+1+1+1+1+1+1+1+1'",
            "SELECT \"1+1+1+1+1+1+1+1+1+1+1+1\"",
            "SELECT $$1+1+1+1+1+1+1+1+1+1+1+1$$",
            "SELECT $a$1+1+1+1+1+$$+1+1+1+1+1+1$a$",
            "SELECT /* 1+1+1+1+1+1 /* +1+1+1+1+1 */ +1+1 */ 1",
            "SELECT -- 1+1+1+1+1+1+1+1+1+1+1+1\n 1",
        ] {
            // `E` of `E'…'` is a token of its own here: counting more is safe.
            assert!(scan(sql).tokens <= 3, "{sql}");
        }
        // A `$` inside an identifier does not open a dollar quote.
        assert!(scan("SELECT a$b$ + 1 + 1 + 1 + $b$").tokens >= 8);
        // A backslash does not escape in a standard string.
        assert!(scan("SELECT 'a\\' + 1 + 1 + 1").tokens >= 8);
    }

    #[test]
    fn caps_refuse_with_a_reason() {
        let p = check("SELECT 1", 4).unwrap_err();
        assert_eq!(p.rule, RULE_TOO_LARGE);
        assert!(p.reason.contains("max_statement_size"), "{}", p.reason);
        assert!(check("SELECT 1", 8).is_ok());
    }
}
