//! HTTP helpers of the console tests: a plain HTTP/1.1 client (what any client sends), a
//! Server-Sent Events reader, and `parapet quickstart` as a real process.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
}

/// One HTTP/1.1 GET (Connection: close), as any client would send it.
pub fn get(addr: SocketAddr, path: &str, token: Option<&str>) -> Response {
    request(addr, "GET", path, token, None)
}

/// One HTTP/1.1 POST with a JSON body.
pub fn post(addr: SocketAddr, path: &str, token: &str, body: &str) -> Response {
    request(addr, "POST", path, Some(token), Some(body))
}

pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> Response {
    let mut s = TcpStream::connect(addr).expect("connect to the console");
    s.set_read_timeout(Some(Duration::from_secs(30))).ok();
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    let body_headers = body.map_or(String::new(), |b| {
        format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            b.len()
        )
    });
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}{body_headers}Connection: close\r\n\r\n{}",
        body.unwrap_or("")
    )
    .expect("send");
    // Read to the end of the response: its Content-Length, its last chunk, or the close (some
    // servers keep the connection open whatever the request says).
    let mut raw = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    let split = loop {
        if let Some(split) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&raw[..split]).to_ascii_lowercase();
            let length = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok());
            let done = match length {
                Some(n) => raw.len() >= split + 4 + n,
                None if head.contains("transfer-encoding: chunked") => raw.ends_with(b"0\r\n\r\n"),
                None => false,
            };
            if done {
                break split;
            }
        }
        let n = s.read(&mut buf).expect("read");
        if n == 0 {
            break raw
                .windows(4)
                .position(|w| w == b"\r\n\r\n")
                .expect("a header block");
        }
        raw.extend_from_slice(&buf[..n]);
    };
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .expect("a status line");
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let mut body = raw[split + 4..].to_vec();
    if headers
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"))
    {
        body = dechunk(&body);
    }
    Response {
        status,
        headers,
        body,
    }
}

pub fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(nl) = b.windows(2).position(|w| w == b"\r\n") else {
            return out;
        };
        let n = usize::from_str_radix(String::from_utf8_lossy(&b[..nl]).trim(), 16).unwrap_or(0);
        if n == 0 {
            return out;
        }
        out.extend_from_slice(&b[nl + 2..nl + 2 + n]);
        b = &b[nl + 2 + n + 2..];
    }
}

/// A Server-Sent Events connection: events as (id, data) as they come.
pub struct Sse {
    reader: BufReader<TcpStream>,
}

impl Sse {
    pub fn open(addr: SocketAddr, path: &str, token: &str, last_id: Option<u64>) -> Sse {
        let mut s = TcpStream::connect(addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(20))).ok();
        let resume = last_id.map_or(String::new(), |i| format!("Last-Event-ID: {i}\r\n"));
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nAccept: text/event-stream\r\n{resume}\r\n"
        )
        .expect("send");
        let mut reader = BufReader::new(s);
        let mut line = String::new();
        reader.read_line(&mut line).expect("status");
        assert!(line.contains(" 200 "), "stream refused: {line}");
        loop {
            line.clear();
            reader.read_line(&mut line).expect("header");
            if line == "\r\n" {
                break;
            }
        }
        Sse { reader }
    }

    /// The next event (skipping chunk framing and keep-alive comments).
    pub fn next(&mut self) -> (u64, serde_json::Value) {
        let (mut id, mut data) = (None, None);
        let mut line = String::new();
        loop {
            line.clear();
            let n = self
                .reader
                .read_line(&mut line)
                .expect("stream read (no event in 20 s)");
            assert!(n > 0, "the stream ended");
            let l = line.trim_end_matches(['\r', '\n']);
            if let Some(v) = l.strip_prefix("id:") {
                id = v.trim().parse().ok();
            } else if let Some(v) = l.strip_prefix("data:") {
                data = serde_json::from_str(v.trim()).ok();
            } else if l.is_empty() {
                if let (Some(i), Some(d)) = (id, data.take()) {
                    return (i, d);
                }
            }
        }
    }
}

pub struct Quickstart {
    pub child: Child,
    pub lines: Vec<String>,
}

impl Drop for Quickstart {
    fn drop(&mut self) {
        // SAFETY: kill(2) on the child started here.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, libc::SIGINT);
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
    }
}

impl Quickstart {
    pub fn start(pg_port: u16) -> Quickstart {
        let mut child = Command::new(env!("CARGO_BIN_EXE_parapet"))
            .args([
                "quickstart",
                "--listen",
                &format!("127.0.0.1:{pg_port}"),
                "--console",
                "127.0.0.1:0",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("run parapet quickstart");
        let out = BufReader::new(child.stdout.take().expect("stdout"));
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for l in out.lines().map_while(Result::ok) {
                let done = l.starts_with("Press Ctrl-C");
                if tx.send(l).is_err() || done {
                    return;
                }
            }
        });
        let mut lines = Vec::new();
        loop {
            match rx.recv_timeout(Duration::from_secs(120)) {
                Ok(l) if l.starts_with("Press Ctrl-C") => break,
                Ok(l) => lines.push(l),
                Err(e) => {
                    let _ = child.kill();
                    panic!(
                        "quickstart did not come up ({e}): {lines:#?} (apt-get install postgresql)"
                    )
                }
            }
        }
        Quickstart { child, lines }
    }

    pub fn field(&self, label: &str) -> &str {
        self.lines
            .iter()
            .find_map(|l| l.trim().strip_prefix(label))
            .map(str::trim)
            .unwrap_or_else(|| panic!("no {label:?} line: {:#?}", self.lines))
    }
}

/// Polls `f` for up to 10 s.
pub fn eventually<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "{what} did not happen within 10 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
