//! Shared by the `server_*` integration tests: start the real `rkserve` binary on a free port
//! with its own configuration and models directory, and read its answers over HTTP.

// Each test binary compiles this module and uses a different part of it.
#![allow(dead_code)]

pub mod load;

use futures_util::StreamExt;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const DEFAULT_MODEL: &str = "smollm2-135m-instruct";

/// The workspace's models directory: the default GGUF model and `synthetic/*.toml`.
pub fn workspace_models() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("models")
}

/// A temporary models directory holding synthetic profiles, each `(stem, toml)`; a profile
/// `x.toml` is served as model `x`.
pub fn synthetic_models(profiles: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    for (stem, text) in profiles {
        std::fs::write(dir.path().join(format!("{stem}.toml")), text).expect("write profile");
    }
    dir
}

/// A configuration that preloads `preload` and never fetches the default model (tests must not
/// reach the network), followed by `extra` TOML, which must not repeat `[models]`.
/// A chat request body: `system`, then the user's `question` (callers add the rest).
pub fn system_chat(model: &str, system: &str, question: &str) -> Value {
    serde_json::json!({
        "model": model,
        "messages": [
            {"role": "system", "content": system},
            {"role": "user", "content": question},
        ],
    })
}

pub fn config(preload: &[&str], extra: &str) -> String {
    let list: Vec<String> = preload.iter().map(|m| format!("{m:?}")).collect();
    format!(
        "[models]\npreload = [{}]\nfetch_default_model = false\n\n{extra}",
        list.join(", ")
    )
}

pub struct Server {
    child: Child,
    pub port: u16,
    /// Holds the configuration file and the server's log.
    dir: tempfile::TempDir,
    /// A models directory made for this server; removed only after the server is stopped.
    models: Option<tempfile::TempDir>,
    /// How it was started, so that [`Server::restart`] starts it the same way.
    models_dir: PathBuf,
    args: Vec<String>,
}

impl Server {
    /// Starts rkserve on a models directory of its own holding `profiles` (see
    /// [`synthetic_models`]).
    pub async fn start_synthetic(profiles: &[(&str, &str)], config: &str, args: &[&str]) -> Server {
        let models = synthetic_models(profiles);
        let mut server = Server::start(models.path(), config, args).await;
        server.models = Some(models);
        server
    }

    /// Starts rkserve and waits until `/ready` answers 200. `args` are extra flags.
    pub async fn start(models_dir: &Path, config: &str, args: &[&str]) -> Server {
        let mut dir = tempfile::tempdir().expect("temp dir");
        let config_path = dir.path().join("rkserve.toml");
        // Prompt-cache files go with the server, not into a models directory other tests
        // share, where one test's saved prefix would make another's first request warm.
        let config = if config.contains("[prompt_cache]") {
            config.to_string()
        } else {
            let cache = dir.path().join("prompt-cache");
            format!(
                "{config}\n[prompt_cache]\ndir = {:?}\n",
                cache.display().to_string()
            )
        };
        std::fs::write(&config_path, config).expect("write config");
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        // Another process may take the port between our probe and the server's bind; a
        // server that fails that way is simply started again on another port.
        for _attempt in 0..3 {
            let port = free_port();
            let child = spawn(dir.path(), port, models_dir, &args);
            let mut server = Server {
                child,
                port,
                dir,
                models: None,
                models_dir: models_dir.to_path_buf(),
                args: args.clone(),
            };
            match server.wait_ready().await {
                Ok(()) => return server,
                Err(log) if log.contains("Address already in use") => {
                    dir = server.into_dir();
                    continue;
                }
                Err(log) => panic!("rkserve did not become ready; its log:\n{log}"),
            }
        }
        panic!("rkserve could not bind a free port in three attempts");
    }

    /// Starts the server again, on the same port with the same configuration, once it has
    /// exited (or after killing it), and waits until it is ready.
    pub async fn restart(&mut self) {
        self.stop();
        self.child = spawn(self.dir.path(), self.port, &self.models_dir, &self.args);
        if let Err(log) = self.wait_ready().await {
            panic!("rkserve did not become ready again; its log:\n{log}");
        }
    }

    /// Where this server keeps prompt-cache files (unless its configuration says).
    pub fn prompt_cache_dir(&self) -> PathBuf {
        self.dir.path().join("prompt-cache")
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `signal` (`TERM`, `INT`, `KILL`) to the server, as an orchestrator would.
    pub fn signal(&self, signal: &str) {
        let ok = Command::new("kill")
            .args(["-s", signal, &self.pid().to_string()])
            .status()
            .expect("run kill")
            .success();
        assert!(ok, "kill -s {signal} {} failed", self.pid());
    }

    /// Waits up to `limit` for the server to exit; its status, or `None` if still running.
    pub async fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn wait_ready(&mut self) -> Result<(), String> {
        let client = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(120);
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return Err(format!("(exited with {status})\n{}", self.log()));
            }
            if let Ok(r) = client.get(self.url("/ready")).send().await {
                if r.status() == 200 {
                    return Ok(());
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Err(format!("(not ready after 120 s)\n{}", self.log()))
    }

    /// Stops the server and hands back its directory, for another attempt.
    fn into_dir(mut self) -> tempfile::TempDir {
        self.stop();
        let dir = tempfile::tempdir().expect("temp dir");
        std::mem::replace(&mut self.dir, dir)
    }

    /// Kills the server (a later [`Server::restart`] starts it again).
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// What the server logged so far, for failure messages.
    pub fn log(&self) -> String {
        let mut out = String::new();
        if let Ok(rd) = std::fs::read_dir(self.dir.path()) {
            for e in rd.flatten() {
                if e.file_name().to_string_lossy().ends_with(".log") {
                    out.push_str(&std::fs::read_to_string(e.path()).unwrap_or_default());
                }
            }
        }
        out
    }

    /// The Prometheus exposition.
    pub async fn metrics(&self) -> String {
        reqwest::get(self.url("/metrics"))
            .await
            .expect("GET /metrics")
            .text()
            .await
            .expect("body")
    }

    /// A counter's value summed over its series, from the Prometheus exposition.
    pub async fn counter(&self, name: &str) -> f64 {
        let text = self.metrics().await;
        text.lines()
            .filter(|l| l.starts_with(name) && !l.starts_with('#'))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// The counter once it reads `expected`, or what it reads after 10 s: the telemetry
    /// thread records an outcome just after its reply goes out, so a scrape right after the
    /// reply may not have it yet.
    pub async fn counter_when(&self, name: &str, expected: f64) -> f64 {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let v = self.counter(name).await;
            if v == expected || std::time::Instant::now() > deadline {
                return v;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    /// `GET /v1/models/loaded`'s entry for `model`.
    pub async fn loaded(&self, model: &str) -> Value {
        let v: Value = reqwest::get(self.url("/v1/models/loaded"))
            .await
            .expect("GET /v1/models/loaded")
            .json()
            .await
            .expect("JSON");
        v["data"]
            .as_array()
            .and_then(|d| d.iter().find(|m| m["id"] == model))
            .cloned()
            .unwrap_or_else(|| panic!("{model} is not in /v1/models/loaded: {v}"))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Starts rkserve with the configuration in `dir`, logging to `dir` (one log per start, so a
/// restarted server's log follows the first one's).
fn spawn(dir: &Path, port: u16, models_dir: &Path, args: &[String]) -> Child {
    let exe = Path::new(env!("CARGO_BIN_EXE_rkserve"));
    let runtime = exe.with_file_name("librkllmrt.so");
    let runtime_in_deps = exe.with_file_name("deps").join("librkllmrt.so");
    assert!(
        runtime.is_file() || runtime_in_deps.is_file(),
        "{} is missing: run `cargo build --release` before these tests",
        runtime.display()
    );
    let starts = std::fs::read_dir(dir).map_or(0, |rd| rd.count());
    let log_path = dir.join(format!("rkserve-{port}-{starts}.log"));
    let log = std::fs::File::create(&log_path).expect("log file");
    let mut cmd = Command::new(exe);
    // The developer's own RKSERVE_* settings must not leak into a test.
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("RKSERVE_") {
            cmd.env_remove(k);
        }
    }
    cmd.env("RKSERVE_LOG", "info")
        .arg("--config")
        .arg(dir.join("rkserve.toml"))
        .arg("--port")
        .arg(port.to_string())
        .arg("--models-dir")
        .arg(models_dir)
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log);
    cmd.spawn().expect("spawn rkserve")
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

/// A response read to its end: status, headers, and the body as JSON (`Value::Null` if the
/// body is not JSON; `text` keeps it either way).
pub struct Reply {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub text: String,
    pub json: Value,
}

impl Reply {
    pub async fn read(r: reqwest::Response) -> Reply {
        let status = r.status().as_u16();
        let headers = r.headers().clone();
        let text = r.text().await.expect("read body");
        let json = serde_json::from_str(&text).unwrap_or(Value::Null);
        Reply {
            status,
            headers,
            text,
            json,
        }
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Its Retry-After in seconds; panics where there is none, or not in whole seconds.
    pub fn retry_after(&self) -> u64 {
        self.header("retry-after")
            .unwrap_or_else(|| panic!("no Retry-After: {self:?} {:?}", self.headers))
            .parse()
            .expect("Retry-After in whole seconds")
    }

    /// The first HTTP/1.1 response in `bytes` read off a socket, and the bytes it took; None
    /// until all of it (its head and `Content-Length` bytes of body) is there.
    pub fn parse(bytes: &[u8]) -> Option<(Reply, usize)> {
        let end = bytes.windows(4).position(|w| w == b"\r\n\r\n")?;
        let head = std::str::from_utf8(&bytes[..end]).unwrap();
        let mut lines = head.split("\r\n");
        let status: u16 = lines.next().unwrap()[9..12].parse().unwrap();
        let mut headers = reqwest::header::HeaderMap::new();
        for l in lines {
            let (k, v) = l.split_once(": ").unwrap();
            headers.insert(
                reqwest::header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        let len: usize = headers
            .get("content-length")
            .map_or(0, |v| v.to_str().unwrap().parse().unwrap());
        let body = bytes.get(end + 4..end + 4 + len)?;
        let text = String::from_utf8_lossy(body).into_owned();
        let json = serde_json::from_str(&text).unwrap_or(Value::Null);
        let reply = Reply {
            status,
            headers,
            text,
            json,
        };
        Some((reply, end + 4 + len))
    }
}

impl std::fmt::Debug for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.status, self.text)
    }
}

/// (prompt tokens, cached prompt tokens) of an OpenAI `usage` object.
pub fn cached_usage(usage: &Value) -> (u64, u64) {
    (
        usage["prompt_tokens"]
            .as_u64()
            .unwrap_or_else(|| panic!("no prompt_tokens in {usage}")),
        usage["prompt_tokens_details"]["cached_tokens"]
            .as_u64()
            .unwrap_or_else(|| panic!("no cached_tokens in {usage}")),
    )
}

/// An Ollama chat asking `model` (a scripted profile that answers "bad json" with text that is
/// not JSON) for `format: "json"`: refused with 422 once its retries are spent.
pub async fn ollama_json_is_refused(server: &Server, model: &str) -> Reply {
    let body = serde_json::json!({"model": model, "stream": false, "format": "json",
        "messages": [{"role": "user", "content": "bad json"}]});
    let r = post_json(&server.url("/api/chat"), &body).await;
    assert_eq!(r.status, 422, "{r:?}");
    r
}

pub async fn post_json(url: &str, body: &Value) -> Reply {
    let r = reqwest::Client::new()
        .post(url)
        .json(body)
        .send()
        .await
        .unwrap_or_else(|e| panic!("POST {url}: {e}"));
    Reply::read(r).await
}

/// Posts raw bytes as JSON, for bodies that are deliberately not valid requests.
pub async fn post_raw(url: &str, body: impl Into<reqwest::Body>) -> Reply {
    let r = reqwest::Client::new()
        .post(url)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap_or_else(|e| panic!("POST {url}: {e}"));
    Reply::read(r).await
}

/// The `data:` payloads of a server-sent event stream read to its end, `[DONE]` excluded; a
/// stream that does not end with `[DONE]` fails the test.
pub async fn sse_events(r: reqwest::Response) -> Vec<Value> {
    let mut lines = SseLines::new(r);
    let mut events = Vec::new();
    while let Some(data) = lines.next_data().await {
        if data == "[DONE]" {
            assert!(
                lines.next_data().await.is_none(),
                "nothing may follow [DONE]"
            );
            return events;
        }
        events.push(serde_json::from_str(&data).unwrap_or_else(|e| panic!("{e}: {data}")));
    }
    panic!("the stream ended without [DONE]; got {events:?}");
}

/// Reads `data:` lines off an event stream as they arrive, so that a test can stop reading
/// (and drop the connection) part-way.
pub struct SseLines {
    body: futures_util::stream::BoxStream<'static, reqwest::Result<Vec<u8>>>,
    buf: Vec<u8>,
}

impl SseLines {
    pub fn new(r: reqwest::Response) -> SseLines {
        SseLines {
            body: r.bytes_stream().map(|c| c.map(|b| b.to_vec())).boxed(),
            buf: Vec::new(),
        }
    }

    /// The next `data:` payload; `None` at the end of the stream. Comments and blank lines
    /// (keep-alives, event separators) are skipped.
    pub async fn next_data(&mut self) -> Option<String> {
        loop {
            if let Some(nl) = self.buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=nl).collect();
                let line = String::from_utf8(line).expect("SSE lines are UTF-8");
                if let Some(data) = line.trim_end().strip_prefix("data:") {
                    return Some(data.trim_start().to_string());
                }
                continue;
            }
            match self.body.next().await {
                Some(chunk) => self.buf.extend(chunk.expect("read the event stream")),
                None => {
                    assert!(
                        self.buf.iter().all(u8::is_ascii_whitespace),
                        "the stream ended mid-line: {:?}",
                        String::from_utf8_lossy(&self.buf)
                    );
                    return None;
                }
            }
        }
    }
}

/// `promtool check metrics` on the exposition: it must exit 0 and say nothing.
pub fn promtool_check_metrics(promtool: &Path, exposition: &str) {
    use std::io::Write;
    let mut child = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool: install Debian's prometheus package (scripts/install-deps does)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(exposition.as_bytes())
        .expect("write to promtool");
    let out = child.wait_with_output().expect("promtool");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // vLLM's gauge names have a colon, which promlint flags as style (colons are meant for
    // recording rules); routers' defaults need those exact names, so that one lint is
    // expected for them and nothing else may be said.
    let vllm_colon =
        |l: &str| l.starts_with("vllm:") && l.ends_with("metric names should not contain ':'");
    let rest: Vec<&str> = said.lines().filter(|l| !vllm_colon(l.trim())).collect();
    let only_vllm = !said.trim().is_empty() && rest.iter().all(|l| l.trim().is_empty());
    assert!(
        (out.status.success() && said.trim().is_empty()) || only_vllm,
        "promtool check metrics ({}): {said}\non:\n{exposition}",
        out.status
    );
}
