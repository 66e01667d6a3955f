//! Opens an instance's engine where the model's isolation says: in a worker process, or in
//! this one. Everything past this point sees only [`rkllm::Engine`].

use crate::config::Isolation;
use crate::cpus;
use crate::model::Model;
use rkllm::{Engine, EngineSpec, InProcess};

/// Loads the model with `n_batch` slots and makes its runtime pass prompts verbatim (they
/// arrive rendered by the server's chat templates).
pub(crate) fn open(
    model: &Model,
    n_batch: u8,
    label: &str,
) -> Result<Box<dyn Engine>, rkllm::Error> {
    let cfg = &model.cfg;
    let spec = EngineSpec {
        lib: cfg.runtime_lib.clone(),
        abi: cfg.abi,
        model_path: cfg.model_path.clone(),
        n_batch,
        context_len: cfg.context_len as i32,
        // Each request stops at its own max_tokens; the handle's limit is the context.
        max_new_tokens: cfg.context_len as i32,
        cpus_mask: cpus::mask(&model.cpus),
        cpus_num: if model.cpus.is_empty() {
            std::thread::available_parallelism().map_or(1, |n| n.get()) as i8
        } else {
            model.cpus.len() as i8
        },
        sampling: None,
    };
    let mut engine: Box<dyn Engine> = match &cfg.isolation {
        Isolation::InProcess => {
            Box::new(InProcess::open(&spec)?.with_destroy_limit(cfg.destroy_timeout))
        }
        Isolation::Process { exe } => Box::new(worker::Worker::spawn(exe, &spec, label)?),
    };
    if let Err(e) = engine.set_chat_template("", "", "") {
        let _ = engine.destroy(cfg.destroy_timeout);
        return Err(e);
    }
    Ok(engine)
}
