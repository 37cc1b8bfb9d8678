//! The console's web UI in a real headless Chromium (Debian's `chromium` and `chromium-driver`),
//! driven through WebDriver, against `parapet quickstart` (the real process): a statement run
//! through psql appears in the live feed; a blocked one shows its rule and reason; the entry page
//! verifies the proof in the browser (✓), and shows ✗ once one byte of a tile is changed;
//! terminate in the UI ends a live psql session. A screenshot of each page is kept in
//! `target/console-screenshots/` (docs/console.md shows them).

mod common;

use common::browser::Browser;
use common::http::*;
use serde_json::json;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_web_ui_in_chromium() {
    let browser = Browser::start();
    let pg_port = free_port();
    let qs = Quickstart::start(pg_port);
    let console = qs.field("console:");
    let (url, token) = console.split_once("token:").expect("console line");
    let (url, token) = (url.trim().to_string(), token.trim().to_string());
    let vkey = qs.field("verifier key:").to_string();
    let log_dir = PathBuf::from(qs.field("audit log:"));
    let password = qs
        .field("password:")
        .split_whitespace()
        .next()
        .expect("password")
        .to_string();
    let psql = |sql: &str, app: &str| {
        Command::new(
            std::fs::read_dir("/usr/lib/postgresql")
                .ok()
                .and_then(|mut d| d.next())
                .and_then(Result::ok)
                .map(|e| e.path().join("bin/psql"))
                .expect("psql (apt-get install postgresql-client)"),
        )
        .arg("-X")
        .args(sql.split("\n").flat_map(|c| ["-c", c]))
        .arg(format!(
            "host=127.0.0.1 port={pg_port} user=alice dbname=main application_name={app}"
        ))
        .env("PGPASSWORD", &password)
        .output()
        .expect("psql")
    };

    // Log in with the token, pin the verifier key.
    browser.go(&url);
    browser.wait(
        "the token form",
        "return document.querySelector('#token') !== null",
    );
    browser.screenshot("login");
    browser.js(&format!(
        "document.querySelector('#token').value = {}; document.querySelector('#vkey').value = {}; document.querySelector('#save').click(); return true;",
        json!(token),
        json!(vkey)
    ));
    browser.wait(
        "the live feed",
        "return document.querySelector('#feed tbody') !== null",
    );

    // A statement run through psql appears in the live feed; a blocked one shows rule and reason.
    let tag = format!("ui{}", std::process::id());
    let o = psql(&format!("CREATE TABLE t_{tag} (id int)"), "ui-test");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    browser.wait(
        "the statement in the live feed",
        &format!(
            "return document.querySelector('#feed').innerText.includes('CREATE TABLE t_{tag}')"
        ),
    );
    let o = psql(
        &format!("SELECT 'before-{tag}'\nDELETE FROM t_{tag}"),
        "ui-test",
    );
    assert!(!o.status.success());
    let row = browser.wait(
        "the blocked statement in the feed",
        &format!("const r = [...document.querySelectorAll('#feed tbody tr')].find(r => r.innerText.includes('DELETE FROM t_{tag}')); return r ? r.innerText : null"),
    );
    let row = row.as_str().expect("row text");
    assert!(
        row.contains("deny") && row.contains("parapet.delete-without-where"),
        "{row}"
    );
    assert!(row.contains("WHERE"), "the reason is shown: {row}");
    browser.screenshot("live-feed");

    // Pause and resume lose nothing.
    browser.js("document.querySelector('#pause').click(); return true;");
    psql(&format!("SELECT 'held-{tag}'"), "ui-test");
    browser.wait(
        "an event held while paused",
        "return document.querySelector('#feed-state').innerText.includes('held')",
    );
    let shown = browser.js(&format!(
        "return document.querySelector('#feed').innerText.includes('held-{tag}')"
    ));
    assert_eq!(shown, json!(false), "paused: not shown yet");
    browser.js("document.querySelector('#pause').click(); return true;");
    browser.wait(
        "the held event after resume",
        &format!("return document.querySelector('#feed').innerText.includes('held-{tag}')"),
    );

    // The entry page checks the proof in the browser.
    let index = browser
        .js(&format!("const r = [...document.querySelectorAll('#feed tbody tr')].find(r => r.innerText.includes('DELETE FROM t_{tag}')); return r.dataset.index"))
        .as_str()
        .expect("index")
        .parse::<u64>()
        .expect("a number");
    browser.go(&format!("{url}#/entry/{index}"));
    let proof = browser.wait("the proof check", "const p = document.querySelector('#proof'); return p && !p.innerText.includes('checking') ? p.innerText : null");
    assert!(
        proof.as_str().is_some_and(|p| p.starts_with('✓')),
        "{proof}"
    );
    let page = browser
        .js("return document.querySelector('#view').innerText")
        .to_string();
    assert!(
        page.contains("parapet.delete-without-where")
            && page.contains(&format!("DELETE FROM t_{tag}")),
        "{page}"
    );
    browser.wait(
        "the session's other statements",
        &format!("return document.querySelector('#others').innerText.includes('before-{tag}')"),
    );
    browser.screenshot("entry");
    // One byte of the entry's bundle changed: the browser's check fails.
    let bundle = log_dir.join(parapet_log::tile::bundle_path(index / 256, {
        let size = parapet_log::LogReader::open(&log_dir).expect("log").size();
        parapet_log::tile::tile_width(0, index / 256, size)
    }));
    let mut bytes = std::fs::read(&bundle).expect("bundle");
    let original = bytes.clone();
    let at = bytes
        .windows(6)
        .position(|w| w == b"DELETE")
        .expect("the statement's bytes in its bundle");
    bytes[at] = b'd';
    std::fs::write(&bundle, &bytes).expect("tamper");
    browser.js("location.reload(); return true;");
    let proof = browser.wait("the proof check after tampering", "const p = document.querySelector('#proof'); return p && !p.innerText.includes('checking') ? p.innerText : null");
    assert!(
        proof.as_str().is_some_and(|p| p.starts_with('✗')),
        "{proof}"
    );
    browser.screenshot("entry-tampered");
    std::fs::write(&bundle, &original).expect("restore");

    // Search page with the chart; log health.
    browser.go(&format!("{url}#/search"));
    browser.wait(
        "search results",
        &format!("return document.querySelector('#results').innerText.includes('t_{tag}')"),
    );
    browser.wait(
        "the chart",
        "return document.querySelector('#chart svg rect') !== null",
    );
    browser.screenshot("search");
    browser.go(&format!("{url}#/health"));
    browser.wait("log health", "return document.querySelector('#health') && document.querySelector('#health').innerText.includes('size')");
    browser.screenshot("health");

    // Terminate in the UI ends a live psql session.
    let mut victim = Command::new(
        std::fs::read_dir("/usr/lib/postgresql")
            .ok()
            .and_then(|mut d| d.next())
            .and_then(Result::ok)
            .map(|e| e.path().join("bin/psql"))
            .expect("psql"),
    )
    .args(["-X", "-c", "SELECT pg_sleep(60)"])
    .arg(format!(
        "host=127.0.0.1 port={pg_port} user=alice dbname=main application_name=victim-{tag}"
    ))
    .env("PGPASSWORD", &password)
    .stdout(Stdio::null())
    .stderr(Stdio::piped())
    .spawn()
    .expect("psql");
    let started = Instant::now();
    browser.go(&format!("{url}#/sessions"));
    browser.wait(
        "the psql session listed",
        &format!("location.hash = '#/sessions'; window.dispatchEvent(new HashChangeEvent('hashchange')); return document.querySelector('#sessions') && document.querySelector('#sessions').innerText.includes('victim-{tag}')"),
    );
    browser.screenshot("sessions");
    browser.js(&format!(
        "window.confirm = () => true; const r = [...document.querySelectorAll('#sessions tbody tr')].find(r => r.innerText.includes('victim-{tag}')); r.querySelector('button.terminate').click(); return true;"
    ));
    let status = eventually("psql to end", || victim.try_wait().ok().flatten());
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "ended by terminate, not by the sleep"
    );
    assert!(!status.success());
    let mut err = String::new();
    use std::io::Read;
    victim
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut err)
        .ok();
    assert!(err.contains("terminated by operator quickstart"), "{err}");
    browser.go(&format!("{url}#/users"));
    browser.wait("the users page", "return document.querySelector('#users') && document.querySelector('#users').innerText.includes('alice')");
    browser.screenshot("users");
}
