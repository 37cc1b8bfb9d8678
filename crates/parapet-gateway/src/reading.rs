//! What decides how the server reads statement text, for the guard to read it the same way: the
//! session's `client_encoding` and `standard_conforming_strings`. The guard reads UTF-8 with
//! standard-conforming strings; a session whose settings differ is refused or ended
//! ([`unreadable_setting`]), and a statement that may change them ([`may_change_reading`]) is a
//! barrier: nothing after it is judged until the server has run it and reported the new values
//! (ParameterStatus comes just before ReadyForQuery), since what follows may be read differently.

use parapet_guard::Decision;

/// Why a session with setting `name` at `value` cannot be guarded, if it cannot: the guard reads
/// statements as UTF-8 text (SQL_ASCII, which the server does not convert, reads the same) with
/// standard-conforming strings, and must read exactly what the server will run. Checked on the
/// client's startup parameters, on the server's settings at login, and on every change the server
/// reports during the session (ParameterStatus).
pub(crate) fn unreadable_setting(name: &str, value: &str) -> Option<String> {
    let value = value.to_ascii_lowercase();
    match name.to_ascii_lowercase().as_str() {
        "client_encoding" => {
            let n: String = value.chars().filter(|c| c.is_ascii_alphanumeric()).collect();
            (!matches!(n.as_str(), "utf8" | "unicode" | "sqlascii")).then(|| {
                format!("parapet: client_encoding {value} is not supported: the gateway reads statements as UTF-8; use client_encoding=UTF8")
            })
        }
        "standard_conforming_strings" => (!matches!(value.as_str(), "on" | "true" | "yes" | "1"))
            .then(|| "parapet: standard_conforming_strings must stay on: the gateway reads string literals as the server does only with it on".to_string()),
        _ => None,
    }
}

/// Settings that change how the server reads statement text.
const READING_SETTINGS: &[&str] = &["client_encoding", "standard_conforming_strings"];

/// Whether running a statement judged `d` may change a setting in [`READING_SETTINGS`]: a `SET`
/// or `set_config` of one of them, a `set_config` of a name not known in advance, `RESET` and
/// `DISCARD` (back to a default that may differ from the value in force), `DO` and `CALL` (code
/// whose statements are not all seen here), or a call of a function that is not built in and
/// may run `set_config` (`user_functions`).
pub(crate) fn may_change_reading(d: &Decision, user_functions: impl Fn(&str) -> bool) -> bool {
    d.statements.iter().any(|s| {
        s.set_variables
            .iter()
            .any(|v| v == "?" || READING_SETTINGS.contains(&v.as_str()))
            || ["reset", "discard", "do", "call"]
                .iter()
                .any(|k| s.kinds.contains(*k))
            || s.functions.iter().any(|f| user_functions(f))
    })
}
