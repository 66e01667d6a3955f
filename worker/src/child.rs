//! The worker's side: its stdin is a Unix socket to the parent. A reader thread takes the
//! parent's frames (pause and abort at once, even mid-run; the rest go to the main thread,
//! which owns the engine), and a writer thread sends replies, so the step callback only
//! encodes a step and hands it over: it never waits on the socket.

use crate::protocol::{read_frame, write_frame, Command, Reply, StepMsg};
use crossbeam_channel::{unbounded, Receiver, Sender};
use rkllm::{Engine, Flow, InProcess, Stopper};
use std::io::{BufWriter, Write};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The child's main: serves one engine until Destroy, or until the parent goes.
pub fn child_main() -> i32 {
    let sock = match std::io::stdin().as_fd().try_clone_to_owned() {
        Ok(fd) => UnixStream::from(fd),
        Err(e) => {
            tracing::error!("worker: no socket on stdin: {e}");
            return 2;
        }
    };
    let Ok(read_half) = sock.try_clone() else {
        return 2;
    };
    let (out_tx, out_rx) = unbounded::<Vec<u8>>();
    let writer = std::thread::Builder::new()
        .name("worker-writer".into())
        .spawn(move || write_loop(sock, out_rx));
    let Ok(writer) = writer else { return 2 };
    let pause = Arc::new(AtomicBool::new(false));
    let stopper: Arc<Mutex<Option<Stopper>>> = Arc::default();
    let (cmd_tx, cmd_rx) = unbounded::<Command>();
    {
        let (pause, stopper) = (pause.clone(), stopper.clone());
        let spawned = std::thread::Builder::new()
            .name("worker-reader".into())
            .spawn(move || read_loop(read_half, cmd_tx, &pause, &stopper));
        if spawned.is_err() {
            return 2;
        }
    }
    let code = serve(&cmd_rx, &out_tx, &pause, &stopper);
    drop(out_tx);
    let _ = writer.join();
    code
}

fn write_loop(sock: UnixStream, rx: Receiver<Vec<u8>>) {
    let mut w = BufWriter::with_capacity(1 << 16, sock);
    for frame in rx.iter() {
        if write_frame(&mut w, &frame).is_err() {
            // The parent is gone: nothing is left to serve.
            std::process::exit(0);
        }
        if rx.is_empty() && w.flush().is_err() {
            std::process::exit(0);
        }
    }
    let _ = w.flush();
}

fn read_loop(
    mut sock: UnixStream,
    tx: Sender<Command>,
    pause: &AtomicBool,
    stopper: &Mutex<Option<Stopper>>,
) {
    let mut buf = Vec::new();
    loop {
        if read_frame(&mut sock, &mut buf).is_err() {
            // The parent closed its end (or died): a worker never outlives it.
            std::process::exit(0);
        }
        match Command::decode(&buf) {
            Ok(Command::Pause) => pause.store(true, Ordering::Release),
            Ok(Command::Abort) => {
                let s = stopper.lock().unwrap_or_else(|p| p.into_inner()).clone();
                if let Some(s) = s {
                    if let Err(e) = s.abort() {
                        tracing::warn!("worker: rkllm_abort failed: {e}");
                    }
                }
            }
            Ok(c) => {
                if tx.send(c).is_err() {
                    return;
                }
            }
            Err(e) => {
                tracing::error!("worker: {e}");
                std::process::exit(3);
            }
        }
    }
}

fn send(out: &Sender<Vec<u8>>, r: &Reply) {
    let mut buf = Vec::new();
    r.encode(&mut buf);
    let _ = out.send(buf);
}

fn done(out: &Sender<Vec<u8>>, r: Result<(), rkllm::Error>) {
    send(
        out,
        &match r {
            Ok(()) => Reply::Done,
            Err(e) => Reply::Failed(e.to_string()),
        },
    );
}

fn serve(
    cmds: &Receiver<Command>,
    out: &Sender<Vec<u8>>,
    pause: &AtomicBool,
    stopper: &Mutex<Option<Stopper>>,
) -> i32 {
    let mut engine: Option<Box<dyn Engine>> = None;
    let no_engine = || rkllm::Error::InvalidArgument("the worker has no model yet".into());
    for cmd in cmds.iter() {
        match cmd {
            Command::Init(spec) => match InProcess::open(&spec) {
                Ok(e) => {
                    *stopper.lock().unwrap_or_else(|p| p.into_inner()) = Some(e.stopper());
                    send(
                        out,
                        &Reply::Ready {
                            n_batch: e.n_batch() as u8,
                            handle_sampling: e.handle_sampling(),
                        },
                    );
                    engine = Some(Box::new(e));
                }
                Err(e) => send(out, &Reply::Failed(e.to_string())),
            },
            Command::Run(inputs, params) => {
                let Some(e) = engine.as_mut() else {
                    send(out, &Reply::Failed(no_engine().to_string()));
                    continue;
                };
                pause.store(false, Ordering::Release);
                let result = e.run(&inputs, &params, &mut |step| {
                    let mut buf = Vec::with_capacity(32 + 48 * step.len());
                    Reply::Step(StepMsg::of(step)).encode(&mut buf);
                    let _ = out.send(buf);
                    if pause.load(Ordering::Acquire) {
                        Flow::Pause
                    } else {
                        Flow::Continue
                    }
                });
                send(
                    out,
                    &match result {
                        Ok(o) => Reply::RunEnd(o),
                        Err(e) => Reply::Failed(e.to_string()),
                    },
                );
            }
            Command::ClearKv {
                keep_system_prompt,
                ranges,
            } => {
                let r = engine
                    .as_mut()
                    .ok_or_else(no_engine)
                    .and_then(|e| e.clear_kv_cache(keep_system_prompt, ranges.as_deref()));
                done(out, r);
            }
            Command::KvSizes => {
                match engine
                    .as_mut()
                    .ok_or_else(no_engine)
                    .and_then(|e| e.kv_cache_sizes())
                {
                    Ok(v) => send(out, &Reply::KvSizes(v)),
                    Err(e) => send(out, &Reply::Failed(e.to_string())),
                }
            }
            Command::SetChatTemplate(a, b, c) => {
                let r = engine
                    .as_mut()
                    .ok_or_else(no_engine)
                    .and_then(|e| e.set_chat_template(&a, &b, &c));
                done(out, r);
            }
            Command::LoadPromptCache(p) => {
                let r = engine
                    .as_mut()
                    .ok_or_else(no_engine)
                    .and_then(|e| e.load_prompt_cache(&p));
                done(out, r);
            }
            Command::ReleasePromptCache => {
                let r = engine
                    .as_mut()
                    .ok_or_else(no_engine)
                    .and_then(|e| e.release_prompt_cache());
                done(out, r);
            }
            Command::Destroy => {
                *stopper.lock().unwrap_or_else(|p| p.into_inner()) = None;
                // The parent enforces the deadline (it kills a worker that does not answer).
                let r = match engine.take() {
                    Some(e) => e.destroy(Duration::from_secs(365 * 24 * 3600)),
                    None => Ok(()),
                };
                done(out, r);
                return 0;
            }
            Command::Pause | Command::Abort => {}
        }
    }
    0
}
