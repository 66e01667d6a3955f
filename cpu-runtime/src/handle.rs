//! One `LLMHandle`: a worker thread that owns the engine and makes every call into it, as
//! Rockchip's runtime does (callbacks arrive on a thread that is not the caller's).

use crate::engine::llama::{load_model, LlamaConfig, LlamaEngine};
use crate::engine::synthetic::{Profile, SyntheticEngine};
use crate::engine::{Backend, EngineError};
use crate::generate::generate;
use crate::report::CReporter;
use crate::request::RunRequest;
use crate::sysinfo;
use crossbeam_channel::{bounded, unbounded, Sender};
use parking_lot::Mutex;
use rkllm::abi::LLMResultCallback;
use rkllm::{InitParams, Sampling};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

/// Run settings fixed at init, which a v1.3 run may override.
#[derive(Debug, Clone)]
pub struct RunDefaults {
    pub sampling: Sampling,
    pub max_new_tokens: i32,
    pub ignore_eos: bool,
    pub skip_special_token: bool,
}

enum Command {
    Run {
        req: RunRequest,
        userdata: usize,
        done: Option<Sender<i32>>,
    },
    ClearKv {
        keep_system: bool,
        ranges: Option<Vec<(i32, i32)>>,
        reply: Sender<i32>,
    },
    KvSizes {
        reply: Sender<Vec<i32>>,
    },
    SetTemplate {
        parts: [String; 3],
        reply: Sender<i32>,
    },
    LoadCache {
        path: PathBuf,
        reply: Sender<i32>,
    },
    ReleaseCache {
        reply: Sender<i32>,
    },
}

pub struct RtHandle {
    tx: Mutex<Option<Sender<Command>>>,
    worker: Mutex<Option<JoinHandle<()>>>,
    running: Arc<AtomicBool>,
    abort: Arc<AtomicBool>,
    pub n_batch: usize,
    pub defaults: RunDefaults,
    /// v1.3 `result_userdata`, used when a run passes NULL.
    pub default_userdata: usize,
}

fn log_error(context: &str, e: &dyn std::fmt::Display) -> i32 {
    eprintln!("rkllm-cpu: {context}: {e}");
    -1
}

impl RtHandle {
    pub fn spawn(
        params: InitParams,
        callback: Option<LLMResultCallback>,
        default_userdata: usize,
    ) -> Result<RtHandle, String> {
        let (tx, rx) = unbounded::<Command>();
        let (ready_tx, ready_rx) = bounded::<Result<(), String>>(1);
        let running = Arc::new(AtomicBool::new(false));
        let abort = Arc::new(AtomicBool::new(false));
        let n_batch = params.n_batch as usize;
        let defaults = RunDefaults {
            sampling: params.sampling,
            max_new_tokens: params.max_new_tokens,
            ignore_eos: params.ignore_eos_token,
            skip_special_token: params.skip_special_token,
        };
        let (w_running, w_abort) = (running.clone(), abort.clone());
        let worker = std::thread::Builder::new()
            .name("rkllm-cpu".into())
            .spawn(move || {
                let pinned = sysinfo::pin_current_thread(params.enabled_cpus_mask);
                let threads = sysinfo::thread_count(params.enabled_cpus_num, &pinned);
                let path = params.model_path.clone();
                let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
                let serve = |engine: &mut dyn Backend| {
                    let _ = ready_tx.send(Ok(()));
                    serve(engine, rx, &w_running, &w_abort, callback, n_batch);
                };
                let result: Result<(), EngineError> = match ext {
                    "gguf" => load_model(&path).and_then(|model| {
                        let cfg = LlamaConfig {
                            n_batch,
                            max_context_len: params.max_context_len,
                            threads,
                        };
                        let mut engine = LlamaEngine::new(&model, &cfg)?;
                        serve(&mut engine);
                        Ok(())
                    }),
                    "toml" => Profile::load(&path).and_then(|profile| {
                        let mut engine =
                            SyntheticEngine::new(profile, n_batch, params.max_context_len)?;
                        serve(&mut engine);
                        Ok(())
                    }),
                    "rkllm" => Err(EngineError::Load {
                        path: path.display().to_string(),
                        reason: "a .rkllm model needs Rockchip's librkllmrt.so on an NPU board; \
                                 this CPU runtime runs .gguf models and synthetic .toml profiles"
                            .into(),
                    }),
                    _ => Err(EngineError::Load {
                        path: path.display().to_string(),
                        reason: "expected a .gguf model or a synthetic .toml profile".into(),
                    }),
                };
                if let Err(e) = result {
                    let _ = ready_tx.send(Err(e.to_string()));
                }
            })
            .map_err(|e| format!("cannot start the runtime thread: {e}"))?;
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(RtHandle {
                tx: Mutex::new(Some(tx)),
                worker: Mutex::new(Some(worker)),
                running,
                abort,
                n_batch,
                defaults,
                default_userdata,
            }),
            Ok(Err(e)) => {
                let _ = worker.join();
                Err(e)
            }
            Err(_) => {
                let _ = worker.join();
                Err("the runtime thread ended while loading the model".into())
            }
        }
    }

    fn send(&self, cmd: Command) -> bool {
        self.tx
            .lock()
            .as_ref()
            .is_some_and(|tx| tx.send(cmd).is_ok())
    }

    /// Starts a run; with `wait`, blocks until it ends and returns its code.
    pub fn run(&self, req: RunRequest, userdata: usize, wait: bool) -> i32 {
        if self
            .running
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return log_error("rkllm_run", &"a run is already in progress on this handle");
        }
        self.abort.store(false, Ordering::Release);
        let (done_tx, done_rx) = bounded(1);
        let done = wait.then_some(done_tx);
        if !self.send(Command::Run {
            req,
            userdata,
            done,
        }) {
            self.running.store(false, Ordering::Release);
            return log_error("rkllm_run", &"the handle has been destroyed");
        }
        if wait {
            done_rx.recv().unwrap_or(-1)
        } else {
            0
        }
    }

    pub fn is_running(&self) -> bool {
        self.running.load(Ordering::Acquire)
    }

    pub fn abort(&self) {
        if self.is_running() {
            self.abort.store(true, Ordering::Release);
        }
    }

    fn call<T>(&self, make: impl FnOnce(Sender<T>) -> Command) -> Option<T> {
        if self.is_running() {
            eprintln!("rkllm-cpu: the handle is busy with a run; abort it or wait for it to end");
            return None;
        }
        let (tx, rx) = bounded(1);
        if !self.send(make(tx)) {
            return None;
        }
        rx.recv().ok()
    }

    pub fn clear_kv_cache(&self, keep_system: bool, ranges: Option<Vec<(i32, i32)>>) -> i32 {
        self.call(|reply| Command::ClearKv {
            keep_system,
            ranges,
            reply,
        })
        .unwrap_or(-1)
    }

    pub fn kv_cache_sizes(&self) -> Option<Vec<i32>> {
        self.call(|reply| Command::KvSizes { reply })
    }

    pub fn set_chat_template(&self, parts: [String; 3]) -> i32 {
        self.call(|reply| Command::SetTemplate { parts, reply })
            .unwrap_or(-1)
    }

    pub fn load_prompt_cache(&self, path: PathBuf) -> i32 {
        self.call(|reply| Command::LoadCache { path, reply })
            .unwrap_or(-1)
    }

    pub fn release_prompt_cache(&self) -> i32 {
        self.call(|reply| Command::ReleaseCache { reply })
            .unwrap_or(-1)
    }

    /// Aborts any run, stops the worker and waits for it.
    pub fn destroy(&self) {
        self.abort();
        self.tx.lock().take();
        if let Some(w) = self.worker.lock().take() {
            let _ = w.join();
        }
    }
}

fn serve(
    engine: &mut dyn Backend,
    rx: crossbeam_channel::Receiver<Command>,
    running: &AtomicBool,
    abort: &AtomicBool,
    callback: Option<LLMResultCallback>,
    n_batch: usize,
) {
    for cmd in rx {
        match cmd {
            Command::Run {
                req,
                userdata,
                done,
            } => {
                let mut reporter = CReporter::new(callback, userdata as *mut _, n_batch)
                    .with_finish_results(engine.finish_results());
                let ran = if req.hidden_states {
                    crate::embed::hidden_states(engine, &req, abort, &mut reporter)
                } else {
                    generate(engine, &req, abort, &mut reporter).map(|_| ())
                };
                let code = match ran {
                    Ok(()) => 0,
                    Err(e) => {
                        reporter.error();
                        log_error("rkllm_run", &e)
                    }
                };
                running.store(false, Ordering::Release);
                if let Some(done) = done {
                    let _ = done.send(code);
                }
            }
            Command::ClearKv {
                keep_system,
                ranges,
                reply,
            } => {
                let code = match engine.clear_kv_cache(keep_system, ranges.as_deref()) {
                    Ok(()) => 0,
                    Err(e) => log_error("rkllm_clear_kv_cache", &e),
                };
                let _ = reply.send(code);
            }
            Command::KvSizes { reply } => {
                let _ = reply.send(engine.kv_cache_sizes());
            }
            Command::SetTemplate { parts, reply } => {
                let [system, prefix, postfix] = parts;
                engine.set_chat_template(&system, &prefix, &postfix);
                let _ = reply.send(0);
            }
            Command::LoadCache { path, reply } => {
                let code = match engine.load_prompt_cache(&path) {
                    Ok(()) => 0,
                    Err(e) => log_error("rkllm_load_prompt_cache", &e),
                };
                let _ = reply.send(code);
            }
            Command::ReleaseCache { reply } => {
                engine.release_prompt_cache();
                let _ = reply.send(0);
            }
        }
    }
    engine.shutdown();
}
