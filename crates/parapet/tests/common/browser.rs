//! A headless Chromium (Debian's `chromium` and `chromium-driver`) driven through WebDriver, for
//! the console's web UI tests. Screenshots go to `target/console-screenshots/`.
#![allow(dead_code)]

use super::http::{eventually, free_port, request};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A WebDriver session on a chromedriver process.
pub struct Browser {
    driver: Child,
    addr: SocketAddr,
    session: String,
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = request(
            self.addr,
            "DELETE",
            &format!("/session/{}", self.session),
            None,
            None,
        );
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

fn need(tool: &str) {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(
        found,
        "{tool} is missing: apt-get install chromium chromium-driver (scripts/setup.sh does)"
    );
}

impl Browser {
    pub fn start() -> Browser {
        need("chromium");
        need("chromedriver");
        let port = free_port();
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver");
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        // Owned from here: a failed start still stops chromedriver.
        let mut browser = Browser {
            driver,
            addr,
            session: String::new(),
        };
        eventually("chromedriver to listen", || {
            std::net::TcpStream::connect(addr).ok()
        });
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1400,900"]
            }
        }}});
        let r = request(addr, "POST", "/session", None, Some(&caps.to_string()));
        let v = r.json();
        browser.session = v["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no WebDriver session: {v}"))
            .to_string();
        browser
    }

    pub fn call(&self, method: &str, path: &str, body: Value) -> Value {
        let body = body.to_string();
        let r = request(
            self.addr,
            method,
            &format!("/session/{}{path}", self.session),
            None,
            (method == "POST").then_some(body.as_str()),
        );
        let v = r.json();
        assert!(
            r.status == 200,
            "WebDriver {method} {path}: {} {v}",
            r.status
        );
        v["value"].clone()
    }

    pub fn go(&self, url: &str) {
        self.call("POST", "/url", json!({ "url": url }));
    }

    pub fn js(&self, script: &str) -> Value {
        self.call(
            "POST",
            "/execute/sync",
            json!({"script": script, "args": []}),
        )
    }

    /// Waits (10 s at most) until `script` returns something truthy; returns it.
    pub fn wait(&self, what: &str, script: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let v = self.js(script);
            if !(v.is_null() || v == json!(false) || v == json!("")) {
                return v;
            }
            assert!(Instant::now() < deadline, "{what}: not within 10 s");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn screenshot(&self, name: &str) {
        use base64::Engine;
        let png = self.call("GET", "/screenshot", Value::Null);
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(png.as_str().expect("base64 PNG"))
            .expect("PNG");
        let dir =
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/console-screenshots");
        std::fs::create_dir_all(&dir).expect("screenshot dir");
        std::fs::write(dir.join(format!("{name}.png")), bytes).expect("write screenshot");
    }
}
