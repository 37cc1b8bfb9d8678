//! `parapet approvals list|show|approve|deny`: approval requests of `review` rules, through the
//! console API of a running `parapet serve` (the decision must reach the running gateway, which
//! holds the requests and records every step in the audit log).

use anyhow::{bail, Context};
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request};
use serde_json::Value;
use std::path::PathBuf;
use std::process::ExitCode;

/// Where the console is and who is asking.
#[derive(clap::Args, Debug, Clone)]
pub struct ConsoleArgs {
    /// The console's base URL (`[console] listen` of the running `parapet serve`).
    #[arg(long, env = "PARAPET_URL", default_value = "http://127.0.0.1:7070")]
    pub url: String,
    /// Console token (an operator token naming an approver user to decide; any token to list).
    #[arg(long, env = "PARAPET_TOKEN", hide_env_values = true)]
    pub token: String,
    /// For an https:// console: PEM file of the CAs to trust (default: the system's).
    #[arg(long, value_name = "PEM")]
    pub ca_file: Option<PathBuf>,
}

/// `parapet approvals` subcommands.
#[derive(clap::Subcommand, Debug)]
pub enum ApprovalsCommand {
    /// List open approval requests and live approvals (windows included).
    List {
        #[command(flatten)]
        console: ConsoleArgs,
        /// Also those decided, used or expired in the last minutes.
        #[arg(long)]
        all: bool,
        /// Print the console's JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show one request: statement, rules, reasons, state.
    Show {
        /// The request id (from the client's DETAIL `approval request <id>`, or `list`).
        id: String,
        #[command(flatten)]
        console: ConsoleArgs,
    },
    /// Approve a request: once (the same statement, user and target), or as a maintenance window.
    Approve {
        /// The request id.
        id: String,
        /// Why (recorded in the audit log).
        #[arg(long)]
        reason: String,
        /// Grant a maintenance window of this many seconds instead (at most `[review] max_window`).
        #[arg(long, value_name = "SECONDS")]
        window: Option<u64>,
        /// With --window: a review rule the window lets through (repeat; default: the request's).
        #[arg(long = "rule", value_name = "RULE_ID", requires = "window")]
        rules: Vec<String>,
        #[command(flatten)]
        console: ConsoleArgs,
    },
    /// Deny a request.
    Deny {
        /// The request id.
        id: String,
        /// Why (recorded in the audit log, and told to a client waiting for it).
        #[arg(long)]
        reason: String,
        #[command(flatten)]
        console: ConsoleArgs,
    },
}

/// Runs `parapet approvals …`.
pub fn run(cmd: ApprovalsCommand) -> anyhow::Result<ExitCode> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(async move {
        match cmd {
            ApprovalsCommand::List { console, all, json } => {
                let path = if all {
                    "/api/approvals?all=true"
                } else {
                    "/api/approvals"
                };
                let v = call(&console, Method::GET, path, None).await?;
                if json {
                    crate::outln!("{}", serde_json::to_string_pretty(&v)?)?;
                    return Ok(ExitCode::SUCCESS);
                }
                let list = v["approvals"].as_array().cloned().unwrap_or_default();
                if list.is_empty() {
                    crate::outln!("no open approval requests")?;
                }
                for a in &list {
                    print_line(a)?;
                }
                Ok(ExitCode::SUCCESS)
            }
            ApprovalsCommand::Show { id, console } => {
                let v = call(&console, Method::GET, &format!("/api/approvals/{id}"), None).await?;
                print_detail(&v)?;
                Ok(ExitCode::SUCCESS)
            }
            ApprovalsCommand::Approve {
                id,
                reason,
                window,
                rules,
                console,
            } => {
                let mut body = serde_json::json!({ "reason": reason });
                if let Some(w) = window {
                    body["window_seconds"] = w.into();
                }
                if !rules.is_empty() {
                    body["rules"] = rules.into();
                }
                let path = format!("/api/approvals/{id}/approve");
                let v = call(&console, Method::POST, &path, Some(body)).await?;
                print_detail(&v)?;
                Ok(ExitCode::SUCCESS)
            }
            ApprovalsCommand::Deny {
                id,
                reason,
                console,
            } => {
                let body = serde_json::json!({ "reason": reason });
                let path = format!("/api/approvals/{id}/deny");
                let v = call(&console, Method::POST, &path, Some(body)).await?;
                print_detail(&v)?;
                Ok(ExitCode::SUCCESS)
            }
        }
    })
}

fn text(v: &Value, k: &str) -> String {
    v.get(k).and_then(Value::as_str).unwrap_or("").to_string()
}

fn statement(v: &Value) -> String {
    let s = v
        .get("sql")
        .and_then(Value::as_str)
        .or_else(|| v.get("normalized").and_then(Value::as_str))
        .unwrap_or("");
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn rule_ids(v: &Value) -> String {
    v["rules"]
        .as_array()
        .map(|r| {
            r.iter()
                .filter_map(|x| x["id"].as_str())
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default()
}

/// One line per request: id, state, requester@target, rules, expiry, statement.
fn print_line(a: &Value) -> anyhow::Result<()> {
    let mut stmt = statement(a);
    if let Some((cut, _)) = stmt.char_indices().nth(80) {
        stmt.truncate(cut);
        stmt.push('…');
    }
    crate::outln!(
        "{}  {:<8} {}@{}  {}  expires {}  {}",
        text(a, "id"),
        text(a, "state"),
        text(a, "requester"),
        text(a, "target"),
        rule_ids(a),
        text(a, "expires"),
        stmt
    )?;
    Ok(())
}

fn print_detail(a: &Value) -> anyhow::Result<()> {
    crate::outln!("approval request {}: {}", text(a, "id"), text(a, "state"))?;
    crate::outln!(
        "  requested by {} on {} (session {}) at {}",
        text(a, "requester"),
        text(a, "target"),
        text(a, "session"),
        text(a, "requested")
    )?;
    if let Some(r) = a.get("reason").and_then(Value::as_str) {
        crate::outln!("  their reason: {r}")?;
    }
    crate::outln!("  statement: {}", statement(a))?;
    crate::outln!("  sha256: {}", text(a, "sql_sha256"))?;
    for r in a["rules"].as_array().cloned().unwrap_or_default() {
        let approvers: Vec<&str> = r["approvers"]
            .as_array()
            .map(|g| g.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        crate::outln!(
            "  rule {} (approvers: {}): {}",
            text(&r, "id"),
            approvers.join(", "),
            text(&r, "reason")
        )?;
    }
    if let Some(res) = a.get("resolution").filter(|r| r.is_object()) {
        crate::outln!(
            "  decided by {} (token {}) at {}: {}",
            text(res, "approver"),
            text(res, "by"),
            text(res, "time"),
            text(res, "reason")
        )?;
    }
    if let Some(w) = a.get("window").filter(|w| w.is_object()) {
        crate::outln!(
            "  window of {} s for rules {}",
            w["seconds"],
            w["rules"]
                .as_array()
                .map(|r| r
                    .iter()
                    .filter_map(Value::as_str)
                    .collect::<Vec<_>>()
                    .join(","))
                .unwrap_or_default()
        )?;
    }
    crate::outln!("  expires {}", text(a, "expires"))?;
    Ok(())
}

/// One request to the console; its JSON answer, or the console's own message as the error.
async fn call(
    c: &ConsoleArgs,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> anyhow::Result<Value> {
    let url = url::Url::parse(&c.url)
        .with_context(|| format!("--url {:?} is not a URL like http://127.0.0.1:7070", c.url))?;
    let tls = match url.scheme() {
        "http" => false,
        "https" => true,
        other => bail!("--url must be http:// or https:// (got {other}://)"),
    };
    let host = url
        .host_str()
        .context("--url has no host")?
        .trim_matches(['[', ']'])
        .to_string();
    let port = url.port_or_known_default().unwrap_or(80);
    let base = url.path().trim_end_matches('/');
    let full_path = format!("{base}{path}");
    let tcp = tokio::net::TcpStream::connect((host.as_str(), port))
        .await
        .with_context(|| {
            format!(
                "cannot reach the console at {}: is `parapet serve` running with [console]?",
                c.url
            )
        })?;
    let bytes = body.map(|b| b.to_string()).unwrap_or_default();
    let req = Request::builder()
        .method(method)
        .uri(&full_path)
        .header(hyper::header::HOST, format!("{host}:{port}"))
        .header(hyper::header::AUTHORIZATION, format!("Bearer {}", c.token))
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .body(Full::new(bytes::Bytes::from(bytes)))
        .context("building the request")?;
    let resp = if tls {
        let connector = parapet_gateway::tls::upstream_connector(&parapet_gateway::UpstreamTls {
            mode: parapet_gateway::SslMode::VerifyFull,
            root_cert: c.ca_file.clone(),
        })
        .map_err(|e| anyhow::anyhow!("TLS set-up: {e}"))?
        .context("TLS set-up: no connector")?;
        let name = rustls_name(&host)?;
        let stream = connector
            .connect(name, tcp)
            .await
            .with_context(|| format!("TLS with the console at {} failed", c.url))?;
        send(hyper_util::rt::TokioIo::new(stream), req).await?
    } else {
        send(hyper_util::rt::TokioIo::new(tcp), req).await?
    };
    let (status, body) = resp;
    let text = String::from_utf8_lossy(&body).trim().to_string();
    if !(200..300).contains(&status) {
        bail!("the console answered {status}: {text}");
    }
    serde_json::from_str(&text).with_context(|| format!("the console's answer is not JSON: {text}"))
}

fn rustls_name(host: &str) -> anyhow::Result<tokio_rustls::rustls::pki_types::ServerName<'static>> {
    tokio_rustls::rustls::pki_types::ServerName::try_from(host.to_string())
        .map_err(|e| anyhow::anyhow!("--url host {host:?} is not a valid TLS server name: {e}"))
}

async fn send<I>(io: I, req: Request<Full<bytes::Bytes>>) -> anyhow::Result<(u16, Vec<u8>)>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .context("HTTP handshake with the console")?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let resp = sender
        .send_request(req)
        .await
        .context("sending the request to the console")?;
    let status = resp.status().as_u16();
    let body = resp
        .into_body()
        .collect()
        .await
        .context("reading the console's answer")?
        .to_bytes()
        .to_vec();
    Ok((status, body))
}
