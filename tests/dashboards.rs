//! The Grafana dashboard against real data: rkserve under load, scraped by a real Prometheus
//! (Debian's `prometheus` package), and every query of `dashboards/grafana/rkserve.json`
//! evaluated by it. A panel whose metric was renamed, whose PromQL does not parse, or whose
//! labels do not match shows "No data" in Grafana; here it fails the test instead.

mod common;

use common::{sse_events, Reply, Server, SseLines};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Fast enough for hundreds of requests in the test's few seconds of load, with prefill and
/// memory figures so their panels show something, and an end of generation before the
/// largest `max_tokens` so both finish reasons occur.
const PROFILE: &str = "[model]\nmemory_mb = 256.0\n\n\
    [timing]\ndecode_step_ms = 2.0\nprefill_tokens_per_second = 4000.0\n\n\
    [output]\neos_after = 24\n";

/// A queue shorter than the clients beyond one run's 8 slots, so some requests are refused
/// (429) and the rejections panel has data.
const SERVER_CONFIG: &str = "[scheduler]\nn_batch = 8\nmax_queue = 6\n";

/// Clients of each kind (streaming and not) running requests back to back.
const CLIENTS: usize = 6;

/// What Grafana's `$__rate_interval` becomes: ten 1 s scrapes, well over the four that
/// Grafana itself requires.
const WINDOW: &str = "10s";
const WINDOW_SECS: u64 = 10;

/// The dashboard, from the workspace root.
const DASHBOARD_JSON: &str = "dashboards/grafana/rkserve.json";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_dashboard_query_has_data() {
    let started = Instant::now();
    let prometheus_bin = tool("prometheus");
    let promtool_bin = tool("promtool");

    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(DASHBOARD_JSON);
    let text =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let dashboard: Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let targets = panel_targets(&dashboard);
    let variables = variable_queries(&dashboard);
    // Cheap mistakes fail before anything is started.
    check_structure(&dashboard, &targets);
    promtool_check_config(&promtool_bin);

    let server = Server::start_synthetic(
        &[("fast", PROFILE)],
        &common::config(&["fast"], SERVER_CONFIG),
        &[],
    )
    .await;
    let prom = Prometheus::start(&prometheus_bin, server.port).await;
    let client = reqwest::Client::new();

    let load = Load::start(&server);
    let load_started = Instant::now();
    wait_for_samples(&client, &prom, load_started).await;

    // Linted mid-load, when every histogram and labelled series exists.
    let exposition = client
        .get(server.url("/metrics"))
        .send()
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("read /metrics");
    common::promtool_check_metrics(&promtool_bin, &exposition);

    // Every panel, with the variables as "All" sets them and as one chosen model.
    let mut failures = Vec::new();
    let mut checked = 0;
    for (title, expr) in &targets {
        for model in [".*", "fast"] {
            let q = substitute(expr, model);
            checked += 1;
            if let Err(e) = evaluate(&client, &prom, &q).await {
                failures.push(format!(
                    "panel {title:?} (model={model}):\n    {q}\n    -> {e}"
                ));
            }
        }
    }
    for (name, query) in &variables {
        if let Err(e) = check_variable(&client, &prom, query).await {
            failures.push(format!("variable ${name}: {query}\n    -> {e}"));
        }
    }

    // Negative controls: the checker must see what Grafana would show as "No data" or an
    // error, or the loop above proves nothing.
    let (_, first) = &targets[0];
    let renamed = substitute(&first.replace("rkserve_", "rkserve_renamed_"), ".*");
    match evaluate(&client, &prom, &renamed).await {
        Err(e) if e.contains("empty") => {}
        other => panic!("a renamed metric must read as empty: {renamed} -> {other:?}"),
    }
    let broken = format!("{})", substitute(first, ".*"));
    assert!(
        evaluate(&client, &prom, &broken).await.is_err(),
        "a query that does not parse must fail: {broken}"
    );

    // The error panels plotted real errors, not just the zeros registered at start-up.
    let kinds = instant_values(
        &client,
        &prom,
        "sum by (kind) (rkserve_request_failure_total)",
        "kind",
    )
    .await;
    for kind in ["bad_request", "cancelled", "overloaded"] {
        if kinds.get(kind).copied().unwrap_or(0.0) <= 0.0 {
            failures.push(format!(
                "the load made {kind} errors, but rkserve_request_failure_total counts none: {kinds:?}"
            ));
        }
    }
    // A metric the server exports with no panel is invisible on the dashboard.
    for family in metric_families(&exposition) {
        if !targets.iter().any(|(_, e)| uses_metric(e, &family)) {
            failures.push(format!("{family} is exported but no panel plots it"));
        }
    }

    let stats = load.stop().await;
    eprintln!(
        "dashboards: {} panel queries x 2 model selections = {checked} queries, {} variables; \
         load: {stats}; {:.1} s in all",
        targets.len(),
        variables.len(),
        started.elapsed().as_secs_f64()
    );
    assert!(
        failures.is_empty(),
        "{} dashboard check(s) failed:\n\n{}\n\nthe end of rkserve's log:\n{}",
        failures.len(),
        failures.join("\n\n"),
        tail(&server.log(), 40)
    );
}

/// The last `n` lines of `text`: the server logs every request of the load.
fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Where a binary is, or the failure that says how to get it.
fn tool(name: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/bin")])
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "`{name}` is not installed: install Debian's prometheus package \
                 (scripts/install-deps does)"
            )
        })
}

/// Every `(panel title, expr)` of the dashboard, panels nested in rows included.
fn panel_targets(dashboard: &Value) -> Vec<(String, String)> {
    fn walk(v: &Value, out: &mut Vec<(String, String)>) {
        match v {
            Value::Object(o) => {
                if let Some(Value::Array(targets)) = o.get("targets") {
                    let title = o.get("title").and_then(Value::as_str).unwrap_or("?");
                    for t in targets {
                        let expr = t["expr"].as_str().unwrap_or_else(|| {
                            panic!("panel {title:?} has a target without an expr: {t}")
                        });
                        out.push((title.to_string(), expr.to_string()));
                    }
                }
                o.values().for_each(|v| walk(v, out));
            }
            Value::Array(a) => a.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(&dashboard["panels"], &mut out);
    assert!(!out.is_empty(), "the dashboard has no queries");
    out
}

/// `(name, query)` of each template variable backed by a Prometheus query.
fn variable_queries(dashboard: &Value) -> Vec<(String, String)> {
    let list = dashboard["templating"]["list"]
        .as_array()
        .expect("templating.list");
    list.iter()
        .filter(|v| v["type"] == "query")
        .map(|v| {
            // Newer Grafana stores an object; older a plain string.
            let q = v["query"]["query"]
                .as_str()
                .or_else(|| v["query"].as_str())
                .unwrap_or_else(|| panic!("variable without a query: {v}"));
            (v["name"].as_str().unwrap_or("?").to_string(), q.to_string())
        })
        .collect()
}

/// What can be checked without Prometheus: variables, data sources, filters, windows.
fn check_structure(dashboard: &Value, targets: &[(String, String)]) {
    let schema = dashboard["schemaVersion"].as_u64().unwrap_or(0);
    assert!(
        schema >= 36,
        "schemaVersion {schema}: too old for a current Grafana"
    );
    let vars = dashboard["templating"]["list"].as_array().unwrap();
    let var = |name: &str| {
        vars.iter()
            .find(|v| v["name"] == name)
            .unwrap_or_else(|| panic!("no ${name} variable"))
    };
    let ds = var("datasource");
    assert_eq!(ds["type"], "datasource", "{ds}");
    assert_eq!(ds["query"], "prometheus", "{ds}");
    let model = var("model");
    assert_eq!(model["multi"], true, "$model must allow several models");
    assert_eq!(model["includeAll"], true, "$model must offer All");
    // Grafana's default All is a list of the models it knows; `.*` also keeps series whose
    // model label is empty (refused requests that named no model).
    assert_eq!(model["allValue"], ".*", "{model}");
    let queries = variable_queries(dashboard);
    assert!(
        queries.iter().any(|(n, q)| n == "model"
            && q.replace(' ', "") == "label_values(rkserve_num_requests_running,model)"),
        "{queries:?}"
    );

    let mut ids = std::collections::HashSet::new();
    let mut problems = Vec::new();
    for p in all_panels(&dashboard["panels"]) {
        let title = p["title"].as_str().unwrap_or("?");
        if !ids.insert(p["id"].as_u64().expect("panel id")) {
            problems.push(format!("{title:?}: duplicate id {}", p["id"]));
        }
        if !p["gridPos"].is_object() {
            problems.push(format!("{title:?}: no gridPos"));
        }
        if p["type"] == "row" {
            continue;
        }
        if p["datasource"]["uid"] != "${datasource}" {
            problems.push(format!("{title:?}: data source {}", p["datasource"]));
        }
        for t in p["targets"].as_array().into_iter().flatten() {
            if t["datasource"]["uid"] != "${datasource}" {
                problems.push(format!("{title:?}: target data source {}", t["datasource"]));
            }
        }
    }
    for (title, expr) in targets {
        for (metric, selector) in selectors(expr) {
            if !selector.contains(r#"model=~"$model""#) {
                problems.push(format!(
                    "{title:?}: {metric} is not filtered by $model: {expr}"
                ));
            }
        }
        for window in ranges(expr) {
            if window != "$__rate_interval" {
                problems.push(format!(
                    "{title:?}: range [{window}] should be [$__rate_interval]: {expr}"
                ));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

fn all_panels(panels: &Value) -> Vec<&Value> {
    let mut out = Vec::new();
    for p in panels.as_array().into_iter().flatten() {
        out.push(p);
        out.extend(all_panels(&p["panels"]));
    }
    out
}

/// Each `rkserve_*` metric in `expr` with its `{...}` selector ("" if it has none).
fn selectors(expr: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = expr;
    while let Some(at) = rest.find("rkserve_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
            .unwrap_or(tail.len());
        let (name, after) = tail.split_at(end);
        let selector = match after.strip_prefix('{') {
            Some(s) => s.split('}').next().unwrap_or_default().to_string(),
            None => String::new(),
        };
        out.push((name.to_string(), selector));
        rest = after;
    }
    out
}

/// The contents of every `[...]` range in `expr`.
fn ranges(expr: &str) -> Vec<String> {
    expr.split('[')
        .skip(1)
        .map(|s| s.split(']').next().unwrap_or_default().to_string())
        .collect()
}

/// `expr` as Grafana would send it, `model` standing for the `$model` selection.
fn substitute(expr: &str, model: &str) -> String {
    let window_ms = (WINDOW_SECS * 1000).to_string();
    let window_s = WINDOW_SECS.to_string();
    // Longer names first: `$__interval` is a prefix of `$__interval_ms`.
    let pairs: [(&str, &str); 14] = [
        ("${__rate_interval}", WINDOW),
        ("$__rate_interval", WINDOW),
        ("${__interval_ms}", &window_ms),
        ("$__interval_ms", &window_ms),
        ("${__interval}", WINDOW),
        ("$__interval", WINDOW),
        ("${__range_s}", &window_s),
        ("$__range_s", &window_s),
        ("${__range}", WINDOW),
        ("$__range", WINDOW),
        ("${model:regex}", model),
        ("${model}", model),
        ("[[model]]", model),
        ("$model", model),
    ];
    pairs
        .iter()
        .fold(expr.to_string(), |e, (from, to)| e.replace(from, to))
}

/// Evaluates `expr` now; `Ok(series)` if Prometheus answers with at least one series and a
/// finite value, `Err(why)` otherwise (a rejected query, an empty result, only NaN).
async fn evaluate(
    client: &reqwest::Client,
    prom: &Prometheus,
    expr: &str,
) -> Result<usize, String> {
    if let Some(at) = expr.find('$') {
        return Err(format!("an unsubstituted variable at {:?}", &expr[at..]));
    }
    let data = query(client, prom, expr).await?;
    let values: Vec<&Value> = match data["resultType"].as_str() {
        Some("vector") => data["result"]
            .as_array()
            .map(|r| r.iter().map(|s| &s["value"][1]).collect())
            .unwrap_or_default(),
        Some("scalar") => vec![&data["result"][1]],
        other => return Err(format!("unexpected result type {other:?}: {data}")),
    };
    if values.is_empty() {
        return Err("empty result: no series match".into());
    }
    let finite = values
        .iter()
        .filter_map(|v| v.as_str()?.parse::<f64>().ok())
        .filter(|v| v.is_finite())
        .count();
    if finite == 0 {
        return Err(format!("no finite value (NaN or Inf only): {data}"));
    }
    Ok(values.len())
}

/// `data` of a successful `/api/v1/query` answer, or why there is none.
async fn query(client: &reqwest::Client, prom: &Prometheus, expr: &str) -> Result<Value, String> {
    let url = reqwest::Url::parse_with_params(&prom.url("/api/v1/query"), &[("query", expr)])
        .expect("query URL");
    let r = client
        .get(url)
        .send()
        .await
        .map_err(|e| format!("GET /api/v1/query: {e}"))?;
    let body: Value = r.json().await.map_err(|e| format!("not JSON: {e}"))?;
    if body["status"] != "success" {
        return Err(format!("{}: {}", body["errorType"], body["error"]));
    }
    Ok(body["data"].clone())
}

/// `label -> value` of an instant query's series.
async fn instant_values(
    client: &reqwest::Client,
    prom: &Prometheus,
    expr: &str,
    label: &str,
) -> std::collections::BTreeMap<String, f64> {
    let data = query(client, prom, expr)
        .await
        .unwrap_or_else(|e| panic!("{expr}: {e}"));
    data["result"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|s| {
            let key = s["metric"][label].as_str().unwrap_or_default().to_string();
            let v = s["value"][1].as_str().and_then(|v| v.parse().ok());
            (key, v.unwrap_or(f64::NAN))
        })
        .collect()
}

/// A `label_values(metric, label)` variable: the metric has series, and they carry the
/// label (the variable's drop-down would be empty otherwise).
async fn check_variable(
    client: &reqwest::Client,
    prom: &Prometheus,
    variable: &str,
) -> Result<(), String> {
    let args = variable
        .trim()
        .strip_prefix("label_values(")
        .and_then(|s| s.strip_suffix(')'))
        .ok_or("not a label_values(metric, label) query")?;
    let (metric, label) = args
        .rsplit_once(',')
        .ok_or("label_values without a metric lists every series' label")?;
    let (metric, label) = (metric.trim(), label.trim());
    let url = reqwest::Url::parse_with_params(
        &prom.url(&format!("/api/v1/label/{label}/values")),
        &[("match[]", metric)],
    )
    .map_err(|e| e.to_string())?;
    let body: Value = client
        .get(url)
        .send()
        .await
        .map_err(|e| e.to_string())?
        .json()
        .await
        .map_err(|e| e.to_string())?;
    if body["status"] != "success" {
        return Err(format!("{}: {}", body["errorType"], body["error"]));
    }
    let values = body["data"].as_array().cloned().unwrap_or_default();
    if !values.iter().any(|v| v == "fast") {
        return Err(format!(
            "{metric} has no series with {label}=\"fast\": {values:?}"
        ));
    }
    Ok(())
}

/// Waits until Prometheus holds enough of the load for every rate window: the load has run
/// longer than the window, and the generated-tokens counter has that many samples.
async fn wait_for_samples(client: &reqwest::Client, prom: &Prometheus, load_started: Instant) {
    let wanted = WINDOW_SECS as f64 + 2.0;
    let expr = "count_over_time(rkserve_generation_tokens_total{model=\"fast\"}[1m])";
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let last = match query(client, prom, expr).await {
            Ok(data) => {
                let n = data["result"][0]["value"][1]
                    .as_str()
                    .and_then(|v| v.parse::<f64>().ok())
                    .unwrap_or(0.0);
                if n >= wanted && load_started.elapsed() >= Duration::from_secs(WINDOW_SECS + 3) {
                    return;
                }
                format!("{n} samples")
            }
            Err(e) => e,
        };
        if Instant::now() > deadline {
            let targets = client.get(prom.url("/api/v1/targets")).send().await.ok();
            let targets = match targets {
                Some(r) => r.text().await.unwrap_or_default(),
                None => String::new(),
            };
            panic!(
                "Prometheus did not collect {wanted} samples of {expr} in time ({last});\n\
                 targets: {targets}\nPrometheus log:\n{}",
                prom.log()
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The docker-compose setup's Prometheus configuration is one Prometheus accepts.
fn promtool_check_config(promtool: &Path) {
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("dashboards/prometheus/prometheus.yml");
    let out = Command::new(promtool)
        .args(["check", "config"])
        .arg(&config)
        .output()
        .expect("run promtool");
    assert!(
        out.status.success(),
        "promtool check config {}:\n{}{}",
        config.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The `rkserve_*` metric families of an exposition, from its `# TYPE` lines.
fn metric_families(exposition: &str) -> Vec<String> {
    exposition
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|name| name.starts_with("rkserve_"))
        .map(str::to_string)
        .collect()
}

/// Whether `expr` reads `family` (a histogram through its `_bucket`, `_sum` or `_count`).
fn uses_metric(expr: &str, family: &str) -> bool {
    selectors(expr).iter().any(|(name, _)| {
        name == family
            || ["_bucket", "_sum", "_count"]
                .iter()
                .any(|s| name.strip_suffix(s) == Some(family))
    })
}

/// A Prometheus of our own, scraping one rkserve every second; killed on drop.
struct Prometheus {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl Prometheus {
    async fn start(bin: &Path, rkserve_port: u16) -> Prometheus {
        let config = format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
             scrape_configs:\n  - job_name: rkserve\n    static_configs:\n      \
             - targets: [\"127.0.0.1:{rkserve_port}\"]\n"
        );
        // Another process may take the port between our probe and Prometheus' bind.
        for _attempt in 0..3 {
            let dir = tempfile::tempdir().expect("temp dir");
            let config_path = dir.path().join("prometheus.yml");
            std::fs::write(&config_path, &config).expect("write prometheus.yml");
            let port = free_port();
            let log = std::fs::File::create(dir.path().join("prometheus.log")).expect("log");
            let child = Command::new(bin)
                .arg(format!("--config.file={}", config_path.display()))
                .arg(format!(
                    "--storage.tsdb.path={}",
                    dir.path().join("data").display()
                ))
                .arg(format!("--web.listen-address=127.0.0.1:{port}"))
                .arg("--log.level=warn")
                .current_dir(dir.path())
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("spawn prometheus");
            let mut prom = Prometheus { child, port, dir };
            match prom.wait_ready().await {
                Ok(()) => return prom,
                Err(log) if log.contains("address already in use") => continue,
                Err(log) => panic!("Prometheus did not become ready; its log:\n{log}"),
            }
        }
        panic!("Prometheus could not bind a free port in three attempts");
    }

    async fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return Err(format!("(exited with {status})\n{}", self.log()));
            }
            if let Ok(r) = reqwest::get(self.url("/-/ready")).await {
                if r.status() == 200 {
                    return Ok(());
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(format!("(not ready after 30 s)\n{}", self.log()))
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

/// Clients hammering the server until stopped: streaming and non-streaming completions,
/// malformed requests, and clients that hang up mid-stream.
struct Load {
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    counts: Arc<Counts>,
}

#[derive(Default)]
struct Counts {
    completed: AtomicU64,
    rejected: AtomicU64,
    bad: AtomicU64,
    hung_up: AtomicU64,
    /// Answers no client expected, reported at the end.
    unexpected: Mutex<Vec<String>>,
}

impl Counts {
    fn unexpected(&self, what: String) {
        let mut u = self.unexpected.lock().unwrap();
        if u.len() < 20 {
            u.push(what);
        }
    }
}

impl Load {
    fn start(server: &Server) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let counts = Arc::new(Counts::default());
        let client = reqwest::Client::new();
        let url = server.url("/v1/completions");
        let mut tasks = Vec::new();
        let ctx = || (stop.clone(), counts.clone(), client.clone(), url.clone());
        for i in 0..CLIENTS {
            for stream in [false, true] {
                let (stop, counts, client, url) = ctx();
                tasks.push(tokio::spawn(async move {
                    let mut n = i;
                    while !stop.load(Ordering::Relaxed) {
                        n += 1;
                        // 8 and 16 end by length, 40 by the profile's end of generation.
                        let max_tokens = [8, 16, 40][n % 3];
                        let prompt = "why batch ".repeat(1 + n % 5);
                        let body = json!({"model": "fast", "prompt": prompt,
                            "max_tokens": max_tokens, "stream": stream});
                        complete(&client, &url, &body, &counts).await;
                    }
                }));
            }
        }
        let (stop_, counts_, client_, url_) = ctx();
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            while !stop_.load(Ordering::Relaxed) {
                n += 1;
                let body: &'static str = if n.is_multiple_of(2) {
                    "{not json"
                } else {
                    r#"{"model": "fast", "prompt": "hi", "max_tokens": 0}"#
                };
                let r = client_
                    .post(&url_)
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await;
                match r {
                    Ok(r) if r.status() == 400 => {
                        counts_.bad.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(r) => counts_.unexpected(format!("{body} -> {:?}", Reply::read(r).await)),
                    Err(e) => counts_.unexpected(format!("{body} -> {e}")),
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }));
        let (stop_, counts_, client_, url_) = ctx();
        tasks.push(tokio::spawn(async move {
            while !stop_.load(Ordering::Relaxed) {
                let body = json!({"model": "fast", "prompt": "never mind",
                    "max_tokens": 2000, "stream": true});
                match client_.post(&url_).json(&body).send().await {
                    Ok(r) if r.status() == 200 => {
                        let mut lines = SseLines::new(r);
                        for _ in 0..2 {
                            lines.next_data().await;
                        }
                        // Dropping the body closes the connection: the server must notice
                        // and count the request as cancelled.
                        drop(lines);
                        counts_.hung_up.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(r) if r.status() == 429 => {
                        counts_.rejected.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(r) => {
                        counts_.unexpected(format!("hang-up client: {:?}", Reply::read(r).await))
                    }
                    Err(e) => counts_.unexpected(format!("hang-up client: {e}")),
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }));
        Load {
            stop,
            tasks,
            counts,
        }
    }

    /// Stops the clients; a client that panicked fails the test here.
    async fn stop(self) -> String {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            t.await.expect("a load client panicked");
        }
        let c = &self.counts;
        let unexpected = c.unexpected.lock().unwrap();
        assert!(
            unexpected.is_empty(),
            "unexpected answers:\n{}",
            unexpected.join("\n")
        );
        format!(
            "{} completed, {} refused with 429, {} bad requests, {} hung up",
            c.completed.load(Ordering::Relaxed),
            c.rejected.load(Ordering::Relaxed),
            c.bad.load(Ordering::Relaxed),
            c.hung_up.load(Ordering::Relaxed)
        )
    }
}

/// One completion, read to its end; a 429 backs off briefly as a real client would.
async fn complete(client: &reqwest::Client, url: &str, body: &Value, counts: &Counts) {
    let r = match client.post(url).json(body).send().await {
        Ok(r) => r,
        Err(e) => return counts.unexpected(format!("POST {body}: {e}")),
    };
    match r.status().as_u16() {
        200 if body["stream"] == true => {
            let events = sse_events(r).await;
            assert!(!events.is_empty(), "{body}: no events");
            counts.completed.fetch_add(1, Ordering::Relaxed);
        }
        200 => {
            let reply = Reply::read(r).await;
            assert!(
                reply.json["choices"][0]["finish_reason"].is_string(),
                "{reply:?}"
            );
            counts.completed.fetch_add(1, Ordering::Relaxed);
        }
        429 => {
            counts.rejected.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        _ => counts.unexpected(format!("POST {body}: {:?}", Reply::read(r).await)),
    }
}
