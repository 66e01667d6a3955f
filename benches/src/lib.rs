//! What the server benchmarks share: the rkserve binary started on a directory of its own.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The workspace root.
pub fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A running `target/release/rkserve`; dropping it kills the server and removes its directory.
pub struct Server {
    child: Child,
    pub url: String,
    dir: PathBuf,
}

impl Server {
    /// Starts rkserve with `dir/rkserve.toml` holding `config` and `dir/models` as its models
    /// directory (the caller fills it), and waits up to `limit` for `/ready`.
    pub fn start(dir: &Path, config: &str, limit: Duration) -> Server {
        // CARGO_TARGET_DIR moves the build; RKSERVE_EXE names the binary then.
        let bin = std::env::var_os("RKSERVE_EXE")
            .map(PathBuf::from)
            .unwrap_or_else(|| workspace().join("target/release/rkserve"));
        assert!(bin.is_file(), "run cargo build --release first");
        std::fs::write(dir.join("rkserve.toml"), config).unwrap();
        let port = free_port();
        let child = Command::new(bin)
            .args(["--config", dir.join("rkserve.toml").to_str().unwrap()])
            .args(["--models-dir", dir.join("models").to_str().unwrap()])
            .args(["--port", &port.to_string()])
            .env("RKSERVE_LOG", "warn")
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // Owned at once, so that Drop kills it on every path, the panic below included.
        let server = Server {
            child,
            url: format!("http://127.0.0.1:{port}"),
            dir: dir.to_path_buf(),
        };
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if ready(&server.url) {
                return server;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("rkserve did not become ready");
    }
}

impl Server {
    /// The server process, for reading its resource use.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// GET /ready over plain TCP: 200 once a model can serve.
fn ready(url: &str) -> bool {
    use std::io::{Read, Write};
    let addr = url.trim_start_matches("http://");
    let Ok(mut c) = std::net::TcpStream::connect(addr) else {
        return false;
    };
    let _ = write!(c, "GET /ready HTTP/1.0\r\nHost: {addr}\r\n\r\n");
    let mut head = [0u8; 12];
    c.read_exact(&mut head).is_ok() && head.ends_with(b"200")
}
