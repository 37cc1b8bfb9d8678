//! The C2SP tlog-tiles read API over HTTP: `/log/checkpoint`, `/log/tile/<L>/<N>[.p/<W>]` and
//! `/log/tile/entries/<N>[.p/<W>]`, exactly the files' bytes, so any tlog-tiles client can mirror
//! and verify the log. Only paths of the spec's grammar are served (nothing else of the
//! directory, no traversal).

/// A tile path of the tlog-tiles grammar.
#[derive(Debug, PartialEq, Eq)]
pub struct TilePath {
    /// The path relative to the log directory (`tile/…`).
    pub rel: String,
    /// A full tile (no `.p/<W>`): immutable.
    pub full: bool,
}

/// Parses the part of a request path after `/log/tile/`.
pub fn parse(rest: &str) -> Option<TilePath> {
    let mut parts: Vec<&str> = rest.split('/').collect();
    let first = parts.first().copied()?;
    let level_ok = first == "entries"
        || (first.len() <= 2
            && first.bytes().all(|b| b.is_ascii_digit())
            && first.parse::<u8>().is_ok_and(|l| l <= 63)
            && (first == "0" || !first.starts_with('0')));
    if !level_ok || parts.len() < 2 {
        return None;
    }
    // A partial tile: `…/<N>.p/<W>`, W in 1..=255 without leading zeros.
    let mut full = true;
    if parts.len() >= 3 && parts[parts.len() - 2].ends_with(".p") {
        let w = parts.pop()?;
        let ok = !w.is_empty()
            && w.len() <= 3
            && w.bytes().all(|b| b.is_ascii_digit())
            && !w.starts_with('0')
            && w.parse::<u16>().is_ok_and(|w| (1..=255).contains(&w));
        if !ok {
            return None;
        }
        let last = parts.pop()?;
        parts.push(last.strip_suffix(".p")?);
        full = false;
        parts.push(w);
    }
    // N: `x`-prefixed groups of three digits, then three digits.
    let n_end = if full { parts.len() } else { parts.len() - 1 };
    let n = &parts[1..n_end];
    let (last, groups) = n.split_last()?;
    if last.len() != 3 || !last.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    for g in groups {
        let digits = g.strip_prefix('x')?;
        if digits.len() != 3 || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
    }
    let mut rel = format!("tile/{}", parts[..n_end].join("/"));
    if !full {
        rel.push_str(&format!(".p/{}", parts[n_end]));
    }
    Some(TilePath { rel, full })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_grammar_is_served() {
        assert_eq!(
            parse("0/x001/234"),
            Some(TilePath {
                rel: "tile/0/x001/234".into(),
                full: true
            })
        );
        assert_eq!(
            parse("entries/000.p/17"),
            Some(TilePath {
                rel: "tile/entries/000.p/17".into(),
                full: false
            })
        );
        assert_eq!(parse("2/005").map(|t| t.full), Some(true));
        for bad in [
            "",
            "0",
            "0/1",
            "0/../../log.key",
            "0/x01/234",
            "64/000",
            "00/000",
            "0/000.p/0",
            "0/000.p/256",
            "0/000.p/07",
            "entries/000.p/",
            "journal",
            "0/000/../../x",
        ] {
            assert_eq!(parse(bad), None, "{bad}");
        }
    }
}
