//! The frames between parent and worker: a little-endian `u32` length, then a tag byte and
//! the message's fields in a fixed order. Hand-written: a decode step is a few copies, and
//! the per-step message is what the process boundary costs.

use rkllm::abi::{RKLLMPerfStat, RKLLMResult, RKLLMResultLastHiddenLayer};
use rkllm::{
    AbiFamily, EngineSpec, InferMode, Input, InputKind, PromptCache, RunOutcome, RunParams,
    Sampling, StepState,
};
use std::ffi::CString;
use std::io::{self, Read, Write};
use std::path::PathBuf;

/// A frame larger than this is a broken stream, not a message (hidden states of 8 slots of a
/// long prompt stay far below it).
const MAX_FRAME: usize = 1 << 30;

#[derive(Debug, thiserror::Error)]
pub enum ProtoError {
    #[error("the stream ended")]
    Closed,
    #[error("i/o: {0}")]
    Io(#[from] io::Error),
    #[error("malformed frame: {0}")]
    Malformed(&'static str),
}

/// Parent to worker.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    Init(EngineSpec),
    Run(Vec<Input>, RunParams),
    /// The run in progress returns pause at its next step.
    Pause,
    Abort,
    ClearKv {
        keep_system_prompt: bool,
        ranges: Option<Vec<(i32, i32)>>,
    },
    KvSizes,
    SetChatTemplate(String, String, String),
    LoadPromptCache(PathBuf),
    ReleasePromptCache,
    Destroy,
}

/// Worker to parent.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    /// Init succeeded: the handle's n_batch and its fixed sampling (ABI 1.2).
    Ready {
        n_batch: u8,
        handle_sampling: Option<Sampling>,
    },
    Done,
    Failed(String),
    KvSizes(Vec<i32>),
    Step(StepMsg),
    RunEnd(RunOutcome),
}

/// One slot of one step, owned.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SlotMsg {
    pub text: Option<Vec<u8>>,
    pub token_id: i32,
    pub perf: [f32; 5],
    pub hidden: Option<(u32, u32, Vec<f32>)>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct StepMsg {
    pub state: StepState,
    pub slots: Vec<SlotMsg>,
}

struct Enc<'a>(&'a mut Vec<u8>);

impl Enc<'_> {
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn i32(&mut self, v: i32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn f32(&mut self, v: f32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn bool(&mut self, v: bool) {
        self.u8(u8::from(v));
    }
    fn bytes(&mut self, b: &[u8]) {
        self.u32(b.len() as u32);
        self.0.extend_from_slice(b);
    }
    fn str(&mut self, s: &str) {
        self.bytes(s.as_bytes());
    }
    fn path(&mut self, p: &std::path::Path) {
        self.str(&p.to_string_lossy());
    }
    fn sampling(&mut self, s: &Sampling) {
        self.i32(s.top_k);
        for v in [
            s.top_p,
            s.temperature,
            s.repeat_penalty,
            s.frequency_penalty,
            s.presence_penalty,
        ] {
            self.f32(v);
        }
        self.i32(s.mirostat);
        self.f32(s.mirostat_tau);
        self.f32(s.mirostat_eta);
    }
    fn opt<T>(&mut self, v: &Option<T>, f: impl FnOnce(&mut Self, &T)) {
        match v {
            Some(x) => {
                self.u8(1);
                f(self, x);
            }
            None => self.u8(0),
        }
    }
}

struct Dec<'a>(&'a [u8]);

impl<'a> Dec<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], ProtoError> {
        if self.0.len() < n {
            return Err(ProtoError::Malformed("truncated"));
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
    fn u8(&mut self) -> Result<u8, ProtoError> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<u32, ProtoError> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }
    fn i32(&mut self) -> Result<i32, ProtoError> {
        Ok(i32::from_le_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }
    fn f32(&mut self) -> Result<f32, ProtoError> {
        Ok(f32::from_le_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }
    fn bool(&mut self) -> Result<bool, ProtoError> {
        Ok(self.u8()? != 0)
    }
    fn bytes(&mut self) -> Result<&'a [u8], ProtoError> {
        let n = self.u32()? as usize;
        self.take(n)
    }
    fn string(&mut self) -> Result<String, ProtoError> {
        String::from_utf8(self.bytes()?.to_vec()).map_err(|_| ProtoError::Malformed("not UTF-8"))
    }
    fn path(&mut self) -> Result<PathBuf, ProtoError> {
        Ok(PathBuf::from(self.string()?))
    }
    fn sampling(&mut self) -> Result<Sampling, ProtoError> {
        Ok(Sampling {
            top_k: self.i32()?,
            top_p: self.f32()?,
            temperature: self.f32()?,
            repeat_penalty: self.f32()?,
            frequency_penalty: self.f32()?,
            presence_penalty: self.f32()?,
            mirostat: self.i32()?,
            mirostat_tau: self.f32()?,
            mirostat_eta: self.f32()?,
        })
    }
    fn opt<T>(
        &mut self,
        f: impl FnOnce(&mut Self) -> Result<T, ProtoError>,
    ) -> Result<Option<T>, ProtoError> {
        match self.u8()? {
            0 => Ok(None),
            1 => Ok(Some(f(self)?)),
            _ => Err(ProtoError::Malformed("option tag")),
        }
    }
    fn count(&mut self, limit: usize) -> Result<usize, ProtoError> {
        let n = self.u32()? as usize;
        if n > limit {
            return Err(ProtoError::Malformed("count out of range"));
        }
        Ok(n)
    }
}

fn state_code(s: StepState) -> u8 {
    match s {
        StepState::Normal => 0,
        StepState::Waiting => 1,
        StepState::Finish => 2,
        StepState::Error => 3,
    }
}

fn state_of(c: u8) -> Result<StepState, ProtoError> {
    Ok(match c {
        0 => StepState::Normal,
        1 => StepState::Waiting,
        2 => StepState::Finish,
        3 => StepState::Error,
        _ => return Err(ProtoError::Malformed("step state")),
    })
}

fn outcome_code(o: RunOutcome) -> u8 {
    match o {
        RunOutcome::Finished => 0,
        RunOutcome::Failed => 1,
        RunOutcome::Aborted => 2,
        RunOutcome::Stopped => 3,
    }
}

fn outcome_of(c: u8) -> Result<RunOutcome, ProtoError> {
    Ok(match c {
        0 => RunOutcome::Finished,
        1 => RunOutcome::Failed,
        2 => RunOutcome::Aborted,
        3 => RunOutcome::Stopped,
        _ => return Err(ProtoError::Malformed("run outcome")),
    })
}

impl Command {
    pub fn encode(&self, out: &mut Vec<u8>) {
        let mut e = Enc(out);
        match self {
            Command::Init(s) => {
                e.u8(1);
                e.path(&s.lib);
                e.u8(s.abi.code() as u8);
                e.path(&s.model_path);
                e.u8(s.n_batch);
                e.i32(s.context_len);
                e.i32(s.max_new_tokens);
                e.u32(s.cpus_mask);
                e.u8(s.cpus_num as u8);
                e.opt(&s.sampling, |e, s| e.sampling(s));
            }
            Command::Run(inputs, p) => {
                e.u8(2);
                e.u32(inputs.len() as u32);
                for i in inputs {
                    e.str(&i.role);
                    e.bool(i.enable_thinking);
                    match &i.kind {
                        InputKind::Prompt(t) => {
                            e.u8(0);
                            e.str(t);
                        }
                        InputKind::Tokens(ids) => {
                            e.u8(1);
                            e.u32(ids.len() as u32);
                            for &id in ids {
                                e.i32(id);
                            }
                        }
                    }
                }
                e.u8(match p.mode {
                    InferMode::Generate => 0,
                    InferMode::LastHiddenLayer => 1,
                });
                e.opt(&p.sampling, |e, s| e.sampling(s));
                e.opt(&p.max_new_tokens, |e, &n| e.i32(n));
                e.bool(p.keep_history);
                e.opt(&p.prompt_cache, |e, c| {
                    e.path(&c.path);
                    e.bool(c.save);
                });
                e.opt(&p.release_hidden_states, |e, &b| e.bool(b));
            }
            Command::Pause => e.u8(3),
            Command::Abort => e.u8(4),
            Command::ClearKv {
                keep_system_prompt,
                ranges,
            } => {
                e.u8(5);
                e.bool(*keep_system_prompt);
                e.opt(ranges, |e, r| {
                    e.u32(r.len() as u32);
                    for &(a, b) in r {
                        e.i32(a);
                        e.i32(b);
                    }
                });
            }
            Command::KvSizes => e.u8(6),
            Command::SetChatTemplate(a, b, c) => {
                e.u8(7);
                e.str(a);
                e.str(b);
                e.str(c);
            }
            Command::LoadPromptCache(p) => {
                e.u8(8);
                e.path(p);
            }
            Command::ReleasePromptCache => e.u8(9),
            Command::Destroy => e.u8(10),
        }
    }

    pub fn decode(buf: &[u8]) -> Result<Command, ProtoError> {
        let mut d = Dec(buf);
        Ok(match d.u8()? {
            1 => Command::Init(EngineSpec {
                lib: d.path()?,
                abi: AbiFamily::from_code(i32::from(d.u8()?))
                    .ok_or(ProtoError::Malformed("ABI family"))?,
                model_path: d.path()?,
                n_batch: d.u8()?,
                context_len: d.i32()?,
                max_new_tokens: d.i32()?,
                cpus_mask: d.u32()?,
                cpus_num: d.u8()? as i8,
                sampling: d.opt(|d| d.sampling())?,
            }),
            2 => {
                let n = d.count(64)?;
                let mut inputs = Vec::with_capacity(n);
                for _ in 0..n {
                    let role = d.string()?;
                    let enable_thinking = d.bool()?;
                    let kind = match d.u8()? {
                        0 => InputKind::Prompt(d.string()?),
                        1 => {
                            let k = d.count(d.0.len() / 4)?;
                            let mut ids = Vec::with_capacity(k);
                            for _ in 0..k {
                                ids.push(d.i32()?);
                            }
                            InputKind::Tokens(ids)
                        }
                        _ => return Err(ProtoError::Malformed("input kind")),
                    };
                    inputs.push(Input {
                        kind,
                        role,
                        enable_thinking,
                    });
                }
                let mode = match d.u8()? {
                    0 => InferMode::Generate,
                    1 => InferMode::LastHiddenLayer,
                    _ => return Err(ProtoError::Malformed("infer mode")),
                };
                let p = RunParams {
                    mode,
                    sampling: d.opt(|d| d.sampling())?,
                    max_new_tokens: d.opt(|d| d.i32())?,
                    keep_history: d.bool()?,
                    prompt_cache: d.opt(|d| {
                        Ok(PromptCache {
                            path: d.path()?,
                            save: d.bool()?,
                        })
                    })?,
                    release_hidden_states: d.opt(|d| d.bool())?,
                };
                Command::Run(inputs, p)
            }
            3 => Command::Pause,
            4 => Command::Abort,
            5 => Command::ClearKv {
                keep_system_prompt: d.bool()?,
                ranges: d.opt(|d| {
                    let n = d.count(64)?;
                    (0..n).map(|_| Ok((d.i32()?, d.i32()?))).collect()
                })?,
            },
            6 => Command::KvSizes,
            7 => Command::SetChatTemplate(d.string()?, d.string()?, d.string()?),
            8 => Command::LoadPromptCache(d.path()?),
            9 => Command::ReleasePromptCache,
            10 => Command::Destroy,
            _ => return Err(ProtoError::Malformed("command tag")),
        })
    }
}

impl Reply {
    pub fn encode(&self, out: &mut Vec<u8>) {
        let mut e = Enc(out);
        match self {
            Reply::Ready {
                n_batch,
                handle_sampling,
            } => {
                e.u8(1);
                e.u8(*n_batch);
                e.opt(handle_sampling, |e, s| e.sampling(s));
            }
            Reply::Done => e.u8(2),
            Reply::Failed(m) => {
                e.u8(3);
                e.str(m);
            }
            Reply::KvSizes(v) => {
                e.u8(4);
                e.u32(v.len() as u32);
                for &x in v {
                    e.i32(x);
                }
            }
            Reply::Step(s) => {
                e.u8(5);
                e.u8(state_code(s.state));
                e.u32(s.slots.len() as u32);
                for slot in &s.slots {
                    e.i32(slot.token_id);
                    for v in slot.perf {
                        e.f32(v);
                    }
                    e.opt(&slot.text, |e, t| e.bytes(t));
                    e.opt(&slot.hidden, |e, (embd, n, states)| {
                        e.u32(*embd);
                        e.u32(*n);
                        e.u32(states.len() as u32);
                        for &x in states {
                            e.f32(x);
                        }
                    });
                }
            }
            Reply::RunEnd(o) => {
                e.u8(6);
                e.u8(outcome_code(*o));
            }
        }
    }

    pub fn decode(buf: &[u8]) -> Result<Reply, ProtoError> {
        let mut d = Dec(buf);
        Ok(match d.u8()? {
            1 => Reply::Ready {
                n_batch: d.u8()?,
                handle_sampling: d.opt(|d| d.sampling())?,
            },
            2 => Reply::Done,
            3 => Reply::Failed(d.string()?),
            4 => {
                let n = d.count(64)?;
                Reply::KvSizes((0..n).map(|_| d.i32()).collect::<Result<_, _>>()?)
            }
            5 => {
                let state = state_of(d.u8()?)?;
                let n = d.count(64)?;
                let mut slots = Vec::with_capacity(n);
                for _ in 0..n {
                    let token_id = d.i32()?;
                    let mut perf = [0f32; 5];
                    for p in &mut perf {
                        *p = d.f32()?;
                    }
                    let text = d.opt(|d| Ok(d.bytes()?.to_vec()))?;
                    let hidden = d.opt(|d| {
                        let (embd, n) = (d.u32()?, d.u32()?);
                        let k = d.count(d.0.len() / 4)?;
                        let states = (0..k).map(|_| d.f32()).collect::<Result<_, _>>()?;
                        Ok((embd, n, states))
                    })?;
                    slots.push(SlotMsg {
                        text,
                        token_id,
                        perf,
                        hidden,
                    });
                }
                Reply::Step(StepMsg { state, slots })
            }
            6 => Reply::RunEnd(outcome_of(d.u8()?)?),
            _ => return Err(ProtoError::Malformed("reply tag")),
        })
    }
}

impl StepMsg {
    /// Copies what a step may be read for.
    pub fn of(step: &rkllm::Step<'_>) -> StepMsg {
        StepMsg {
            state: step.state(),
            slots: step
                .slots()
                .map(|s| SlotMsg {
                    text: s.text.map(<[u8]>::to_vec),
                    token_id: s.token_id,
                    perf: [
                        s.perf.prefill_time_ms,
                        s.perf.prefill_tokens as f32,
                        s.perf.generate_time_ms,
                        s.perf.generate_tokens as f32,
                        s.perf.memory_usage_mb,
                    ],
                    hidden: s
                        .hidden
                        .map(|h| (h.embd_size as u32, h.num_tokens as u32, h.states.to_vec())),
                })
                .collect(),
        }
    }
}

/// The parent's copy of a step, in the runtime's own result layout so that [`rkllm::Step`]
/// reads it as it reads the runtime's: the texts are NUL-terminated copies it owns.
pub struct OwnedStep {
    state: StepState,
    _texts: Vec<CString>,
    _hidden: Vec<Vec<f32>>,
    results: Vec<RKLLMResult>,
}

impl OwnedStep {
    pub fn new(msg: StepMsg) -> OwnedStep {
        let mut texts = Vec::new();
        let mut hidden = Vec::new();
        let mut results = Vec::with_capacity(msg.slots.len());
        for s in msg.slots {
            let mut r = RKLLMResult::EMPTY;
            r.token_id = s.token_id;
            r.perf = RKLLMPerfStat {
                prefill_time_ms: s.perf[0],
                prefill_tokens: s.perf[1] as i32,
                generate_time_ms: s.perf[2],
                generate_tokens: s.perf[3] as i32,
                memory_usage_mb: s.perf[4],
            };
            if let Some(t) = s.text {
                // The runtime's text is a C string: it has no NUL inside.
                let c = CString::new(t).unwrap_or_default();
                r.text = c.as_ptr();
                texts.push(c);
            }
            if let Some((embd, n, states)) = s.hidden {
                r.last_hidden_layer = RKLLMResultLastHiddenLayer {
                    hidden_states: states.as_ptr(),
                    embd_size: embd as i32,
                    num_tokens: n as i32,
                };
                if (embd as usize).checked_mul(n as usize) != Some(states.len()) {
                    r.last_hidden_layer.num_tokens = 0;
                }
                hidden.push(states);
            }
            results.push(r);
        }
        OwnedStep {
            state: msg.state,
            _texts: texts,
            _hidden: hidden,
            results,
        }
    }

    pub fn step(&self) -> rkllm::Step<'_> {
        rkllm::Step::from_results(self.state, &self.results)
    }
}

/// Writes one frame: its length, then its bytes.
pub fn write_frame(w: &mut impl Write, body: &[u8]) -> io::Result<()> {
    w.write_all(&(body.len() as u32).to_le_bytes())?;
    w.write_all(body)
}

/// Reads one frame into `buf` (replacing its contents).
pub fn read_frame(r: &mut impl Read, buf: &mut Vec<u8>) -> Result<(), ProtoError> {
    let mut len = [0u8; 4];
    if let Err(e) = r.read_exact(&mut len) {
        return Err(if e.kind() == io::ErrorKind::UnexpectedEof {
            ProtoError::Closed
        } else {
            ProtoError::Io(e)
        });
    }
    let n = u32::from_le_bytes(len) as usize;
    if n > MAX_FRAME {
        return Err(ProtoError::Malformed("frame too large"));
    }
    buf.clear();
    buf.resize(n, 0);
    r.read_exact(buf).map_err(|e| {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            ProtoError::Closed
        } else {
            ProtoError::Io(e)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip_command(c: Command) {
        let mut buf = Vec::new();
        c.encode(&mut buf);
        assert_eq!(Command::decode(&buf).unwrap(), c);
        // Every prefix of a frame is refused rather than misread.
        for n in 0..buf.len() {
            assert!(Command::decode(&buf[..n]).is_err(), "prefix {n} of {c:?}");
        }
    }

    #[test]
    fn commands_round_trip() {
        round_trip_command(Command::Init(EngineSpec {
            lib: "/x/librkllmrt.so".into(),
            abi: AbiFamily::V1_2,
            model_path: "/m/a.toml".into(),
            n_batch: 4,
            context_len: 4096,
            max_new_tokens: -1,
            cpus_mask: 0xf0,
            cpus_num: 4,
            sampling: Some(Sampling::greedy()),
        }));
        round_trip_command(Command::Run(
            vec![Input::prompt("héllo"), Input::tokens(vec![1, -2, 3])],
            RunParams {
                mode: InferMode::LastHiddenLayer,
                sampling: Some(Sampling::default()),
                max_new_tokens: Some(17),
                keep_history: true,
                prompt_cache: Some(PromptCache {
                    path: "/c".into(),
                    save: true,
                }),
                release_hidden_states: Some(false),
            },
        ));
        round_trip_command(Command::Run(vec![], RunParams::default()));
        round_trip_command(Command::ClearKv {
            keep_system_prompt: true,
            ranges: Some(vec![(0, 5), (-1, -1)]),
        });
        for c in [
            Command::Pause,
            Command::Abort,
            Command::KvSizes,
            Command::ReleasePromptCache,
            Command::Destroy,
            Command::SetChatTemplate("a".into(), "".into(), "c".into()),
            Command::LoadPromptCache("/p".into()),
        ] {
            round_trip_command(c);
        }
    }

    #[test]
    fn replies_round_trip_and_a_step_reads_as_the_runtimes_would() {
        let step = StepMsg {
            state: StepState::Normal,
            slots: vec![
                SlotMsg {
                    text: Some(b"hi".to_vec()),
                    token_id: 7,
                    perf: [1.0, 2.0, 3.0, 4.0, 5.0],
                    hidden: Some((2, 1, vec![0.5, -0.5])),
                },
                SlotMsg {
                    token_id: -1,
                    ..SlotMsg::default()
                },
            ],
        };
        for r in [
            Reply::Ready {
                n_batch: 8,
                handle_sampling: None,
            },
            Reply::Done,
            Reply::Failed("no".into()),
            Reply::KvSizes(vec![1, 2]),
            Reply::Step(step.clone()),
            Reply::RunEnd(RunOutcome::Aborted),
        ] {
            let mut buf = Vec::new();
            r.encode(&mut buf);
            assert_eq!(Reply::decode(&buf).unwrap(), r);
        }
        let owned = OwnedStep::new(step);
        let s = owned.step();
        assert_eq!(s.len(), 2);
        let a = s.slot(0);
        assert_eq!(a.text, Some(&b"hi"[..]));
        assert_eq!(a.token_id, 7);
        assert_eq!(a.perf.generate_tokens, 4);
        assert_eq!(a.hidden.unwrap().states, &[0.5, -0.5]);
        assert!(s.slot(1).finished() && s.slot(1).text.is_none());
        // And back: the copy a worker makes of a step is the message it came from.
        assert_eq!(StepMsg::of(&s), StepMsg::of(&owned.step()));
    }

    #[test]
    fn frames_carry_their_length_and_a_cut_stream_is_closed() {
        let mut wire = Vec::new();
        write_frame(&mut wire, b"abc").unwrap();
        write_frame(&mut wire, b"").unwrap();
        let mut r = &wire[..];
        let mut buf = Vec::new();
        read_frame(&mut r, &mut buf).unwrap();
        assert_eq!(buf, b"abc");
        read_frame(&mut r, &mut buf).unwrap();
        assert!(buf.is_empty());
        assert!(matches!(
            read_frame(&mut r, &mut buf),
            Err(ProtoError::Closed)
        ));
        let mut cut = &wire[..5];
        assert!(matches!(
            read_frame(&mut cut, &mut buf),
            Err(ProtoError::Closed)
        ));
    }
}
