//! The parent's side: [`Worker`] is an [`Engine`] whose runtime lives in a child process.
//! A child that dies ends its run with [`rkllm::Error::WorkerDied`] (how it ended, and its
//! last output); the engine is then dead and the scheduler replaces it.

use crate::exit::describe;
use crate::protocol::{read_frame, write_frame, Command, OwnedStep, ProtoError, Reply};
use crate::tail::Tail;
use crate::WORKER_ARG;
use rkllm::{
    Engine, EngineSpec, Error, Flow, Input, Memory, OnStep, RunOutcome, RunParams, Sampling,
    StopRun, Stopper,
};
use std::io::{BufReader, BufWriter, Write};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Child, Command as Process, Stdio};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Lines of the worker's output a death report carries.
const TAIL_LINES: usize = 6;
/// How long a worker whose socket closed may take to be reaped before it is killed.
const EXIT_GRACE: Duration = Duration::from_secs(2);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

struct Shared {
    child: Mutex<Child>,
    /// Frames to the worker; pause and abort come from other threads than the run's.
    tx: Mutex<BufWriter<UnixStream>>,
}

impl Shared {
    fn send(&self, c: &Command) -> std::io::Result<()> {
        let mut buf = Vec::with_capacity(64);
        c.encode(&mut buf);
        let mut w = lock(&self.tx);
        write_frame(&mut *w, &buf)?;
        w.flush()
    }

    fn kill(&self) {
        let mut c = lock(&self.child);
        // Already reaped: std does not signal a pid it has collected.
        let _ = c.kill();
    }
}

struct WorkerStop(Arc<Shared>);

impl StopRun for WorkerStop {
    fn abort(&self) -> Result<(), Error> {
        self.0
            .send(&Command::Abort)
            .map_err(|e| Error::Worker(format!("cannot reach the worker: {e}")))
    }

    fn kill(&self) -> bool {
        self.0.kill();
        true
    }
}

pub struct Worker {
    shared: Arc<Shared>,
    pid: u32,
    rx: BufReader<UnixStream>,
    buf: Vec<u8>,
    tail: Tail,
    n_batch: usize,
    handle_sampling: Option<Sampling>,
    /// Set once the worker is gone: why.
    dead: Option<(String, Vec<String>)>,
    label: String,
}

impl Worker {
    /// Starts `exe worker` and initialises the model in it. `label` names it in the log.
    pub fn spawn(exe: &Path, spec: &EngineSpec, label: &str) -> Result<Worker, Error> {
        let io = |what: &str, e: std::io::Error| Error::Worker(format!("{what}: {e}"));
        let (ours, theirs) = UnixStream::pair().map_err(|e| io("socket pair", e))?;
        let (pipe_r, pipe_w) = std::io::pipe().map_err(|e| io("pipe", e))?;
        let child = {
            let mut cmd = Process::new(exe);
            cmd.arg(WORKER_ARG)
                .stdin(Stdio::from(OwnedFd::from(theirs)))
                .stdout(pipe_w.try_clone().map_err(|e| io("pipe", e))?)
                .stderr(pipe_w);
            // `cmd` holds the child's ends; they are closed here when it goes, so that the
            // worker's death closes the socket and the pipe.
            cmd.spawn()
                .map_err(|e| io(&format!("cannot start {}", exe.display()), e))?
        };
        let pid = child.id();
        let tail =
            Tail::start(pipe_r, format!("{label}[{pid}]")).map_err(|e| io("log thread", e))?;
        let rx = BufReader::with_capacity(1 << 16, ours.try_clone().map_err(|e| io("socket", e))?);
        let shared = Arc::new(Shared {
            child: Mutex::new(child),
            tx: Mutex::new(BufWriter::new(ours)),
        });
        let mut w = Worker {
            shared,
            pid,
            rx,
            buf: Vec::new(),
            tail,
            n_batch: spec.n_batch as usize,
            handle_sampling: None,
            dead: None,
            label: label.to_string(),
        };
        w.send(&Command::Init(spec.clone()))?;
        match w.recv()? {
            Reply::Ready {
                n_batch,
                handle_sampling,
            } => {
                w.n_batch = n_batch as usize;
                w.handle_sampling = handle_sampling;
                Ok(w)
            }
            Reply::Failed(m) => {
                // The reason is in what the runtime printed before it returned the error
                // (ours writes it to stderr, Rockchip's logs its own lines): read once the
                // worker has exited, so none of it is still in the pipe.
                let _ = w.stop(Duration::from_secs(5));
                let said = w.tail.last(TAIL_LINES, Duration::from_millis(500));
                Err(Error::WorkerSaid {
                    message: m,
                    output: said,
                })
            }
            other => Err(w.broken(&format!("unexpected reply to init: {other:?}"))),
        }
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    fn died_error(&self) -> Error {
        let (how, stderr) = self.dead.clone().unwrap_or_default();
        Error::WorkerDied { how, stderr }
    }

    /// The worker's socket closed or broke: reap it (killing it if it lingers) and say how
    /// it ended.
    fn mark_dead(&mut self) -> Error {
        if self.dead.is_none() {
            let status = {
                let deadline = Instant::now() + EXIT_GRACE;
                loop {
                    let mut c = lock(&self.shared.child);
                    match c.try_wait() {
                        Ok(Some(s)) => break Some(s),
                        Ok(None) if Instant::now() < deadline => {}
                        Ok(None) | Err(_) => {
                            let _ = c.kill();
                            break c.wait().ok();
                        }
                    }
                    drop(c);
                    std::thread::sleep(Duration::from_millis(5));
                }
            };
            let how = status.map_or_else(|| "ended".to_string(), describe);
            let stderr = self.tail.last(TAIL_LINES, Duration::from_millis(500));
            tracing::warn!(worker = %self.label, pid = self.pid, "the runtime's worker process {how}");
            self.dead = Some((how, stderr));
        }
        self.died_error()
    }

    /// The protocol broke: the worker cannot be trusted any more.
    fn broken(&mut self, why: &str) -> Error {
        tracing::error!(worker = %self.label, "worker protocol: {why}; killing it");
        self.shared.kill();
        self.mark_dead()
    }

    fn send(&mut self, c: &Command) -> Result<(), Error> {
        if self.dead.is_some() {
            return Err(self.died_error());
        }
        match self.shared.send(c) {
            Ok(()) => Ok(()),
            Err(_) => Err(self.mark_dead()),
        }
    }

    fn recv(&mut self) -> Result<Reply, Error> {
        if self.dead.is_some() {
            return Err(self.died_error());
        }
        match read_frame(&mut self.rx, &mut self.buf) {
            Ok(()) => match Reply::decode(&self.buf) {
                Ok(r) => Ok(r),
                Err(e) => Err(self.broken(&e.to_string())),
            },
            Err(ProtoError::Closed) | Err(ProtoError::Io(_)) => Err(self.mark_dead()),
            Err(e) => Err(self.broken(&e.to_string())),
        }
    }

    /// Sends a command and waits for its Done.
    fn call(&mut self, c: &Command) -> Result<Reply, Error> {
        self.send(c)?;
        match self.recv()? {
            Reply::Failed(m) => Err(Error::Worker(m)),
            r => Ok(r),
        }
    }
}

impl Engine for Worker {
    fn n_batch(&self) -> usize {
        self.n_batch
    }

    fn handle_sampling(&self) -> Option<Sampling> {
        self.handle_sampling
    }

    fn run(
        &mut self,
        inputs: &[Input],
        params: &RunParams,
        on_step: &mut OnStep<'_>,
    ) -> Result<RunOutcome, Error> {
        self.send(&Command::Run(inputs.to_vec(), params.clone()))?;
        let mut paused = false;
        loop {
            match self.recv()? {
                Reply::Step(msg) => {
                    let owned = OwnedStep::new(msg);
                    let flow = on_step(&owned.step());
                    if flow == Flow::Pause && !paused {
                        paused = true;
                        self.send(&Command::Pause)?;
                    }
                }
                Reply::RunEnd(o) => {
                    // Where sampling is fixed per handle, the worker re-initialised its
                    // handle for this run's (as InProcess does): that is the handle's now.
                    if let (Some(_), Some(s)) = (self.handle_sampling, params.sampling) {
                        self.handle_sampling = Some(s);
                    }
                    return Ok(o);
                }
                Reply::Failed(m) => return Err(Error::Worker(m)),
                other => return Err(self.broken(&format!("unexpected reply in a run: {other:?}"))),
            }
        }
    }

    fn stopper(&self) -> Stopper {
        Stopper::new(WorkerStop(self.shared.clone()))
    }

    fn alive(&mut self) -> bool {
        if self.dead.is_some() {
            return false;
        }
        let exited = matches!(lock(&self.shared.child).try_wait(), Ok(Some(_)));
        if exited {
            self.mark_dead();
        }
        !exited
    }

    fn clear_kv_cache(
        &mut self,
        keep_system_prompt: bool,
        ranges: Option<&[(i32, i32)]>,
    ) -> Result<(), Error> {
        self.call(&Command::ClearKv {
            keep_system_prompt,
            ranges: ranges.map(<[_]>::to_vec),
        })
        .map(drop)
    }

    fn kv_cache_sizes(&mut self) -> Result<Vec<i32>, Error> {
        match self.call(&Command::KvSizes)? {
            Reply::KvSizes(v) => Ok(v),
            other => Err(self.broken(&format!("unexpected reply: {other:?}"))),
        }
    }

    fn set_chat_template(
        &mut self,
        system: &str,
        prefix: &str,
        postfix: &str,
    ) -> Result<(), Error> {
        self.call(&Command::SetChatTemplate(
            system.into(),
            prefix.into(),
            postfix.into(),
        ))
        .map(drop)
    }

    fn load_prompt_cache(&mut self, path: &Path) -> Result<(), Error> {
        self.call(&Command::LoadPromptCache(path.to_path_buf()))
            .map(drop)
    }

    fn release_prompt_cache(&mut self) -> Result<(), Error> {
        self.call(&Command::ReleasePromptCache).map(drop)
    }

    fn memory(&self) -> Option<Memory> {
        if self.dead.is_some() {
            return None;
        }
        Memory::of_pid(self.pid)
    }

    /// Asks the worker to destroy its handle and exit; past `limit` it is killed. Either
    /// way the process is reaped before this returns.
    fn destroy(self: Box<Self>, limit: Duration) -> Result<(), Error> {
        self.stop(limit)
    }
}

impl Worker {
    /// Asks the worker to destroy its handle and exit; kills it past `limit`.
    fn stop(&self, limit: Duration) -> Result<(), Error> {
        if self.dead.is_some() {
            return Ok(());
        }
        let _ = self.shared.send(&Command::Destroy);
        let deadline = Instant::now() + limit;
        loop {
            let mut c = lock(&self.shared.child);
            match c.try_wait() {
                Ok(Some(status)) if status.success() => return Ok(()),
                Ok(Some(status)) => {
                    let how = describe(status);
                    drop(c);
                    let stderr = self.tail.last(TAIL_LINES, Duration::from_millis(500));
                    tracing::warn!(worker = %self.label, "rkllm_destroy: the worker {how}");
                    return Err(Error::WorkerDied { how, stderr });
                }
                Ok(None) if Instant::now() < deadline => {}
                Ok(None) | Err(_) => {
                    let _ = c.kill();
                    let _ = c.wait();
                    tracing::warn!(
                        worker = %self.label,
                        "rkllm_destroy did not return within {limit:?}; the worker was killed"
                    );
                    return Err(Error::DestroyTimedOut(limit));
                }
            }
            drop(c);
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        // A worker dropped without destroy (a panic, an early return) is not left behind.
        let mut c = lock(&self.shared.child);
        if let Ok(None) = c.try_wait() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
