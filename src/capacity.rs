//! How much more work this server can take, from a scheduler snapshot: the one arithmetic
//! behind the free-slots gauge, the vLLM-named gauges routers read and the HAProxy agent's
//! weight, so that every router sees the same figure.

use scheduler::{InstanceState, ModelSnapshot, ModelStatus};

/// One model's load, in the units routers use.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Load {
    /// Slots of instances that can run: a failed or restarting instance takes no work.
    pub slots: usize,
    /// Slots generating now (vLLM's "running").
    pub busy: usize,
    /// Requests queued for a slot.
    pub waiting: usize,
    /// KV cells in use over all there are, 0 to 1.
    pub kv_usage: f64,
}

impl Load {
    pub fn of(m: &ModelSnapshot) -> Load {
        let usable = m
            .instances
            .iter()
            .filter(|i| matches!(i.state, InstanceState::Idle | InstanceState::Running { .. }))
            .count();
        Load {
            slots: usable * m.n_batch as usize,
            busy: m.busy_slots(),
            waiting: m.waiting,
            kv_usage: m.kv_usage(),
        }
    }

    /// Slots a new request would find free now.
    pub fn free_slots(&self) -> usize {
        self.slots.saturating_sub(self.busy)
    }
}

/// What the whole server can take, over the models that can serve.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Capacity {
    /// No model is ready: a request sent here would only queue or fail.
    None,
    /// Every ready model is to be unloaded once its requests in flight end: they finish,
    /// new work belongs elsewhere.
    Leaving,
    /// Free share of the slots, 0 to 100, after the queue has taken its part: a queued
    /// request will take the next free slot before a new one does.
    Free { percent: u8 },
}

impl Capacity {
    /// As [`Capacity::of`], over the models that stay: those for which `leaving` is false.
    pub fn staying(snapshot: &[ModelSnapshot], leaving: impl Fn(&str) -> bool) -> Capacity {
        let (gone, stay): (Vec<ModelSnapshot>, Vec<ModelSnapshot>) =
            snapshot.iter().cloned().partition(|m| leaving(&m.name));
        match Capacity::of(&stay) {
            Capacity::None if Capacity::of(&gone) != Capacity::None => Capacity::Leaving,
            c => c,
        }
    }

    pub fn of(snapshot: &[ModelSnapshot]) -> Capacity {
        let ready: Vec<Load> = snapshot
            .iter()
            .filter(|m| m.status == ModelStatus::Ready)
            .map(Load::of)
            .collect();
        let slots: usize = ready.iter().map(|l| l.slots).sum();
        if slots == 0 {
            return Capacity::None;
        }
        let taken: usize = ready.iter().map(|l| l.busy + l.waiting).sum();
        let free = slots.saturating_sub(taken);
        Capacity::Free {
            percent: (free * 100 / slots) as u8,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use scheduler::InstanceSnapshot;

    fn model(status: ModelStatus, states: &[InstanceState], waiting: usize) -> ModelSnapshot {
        named("m", status, states, waiting)
    }

    fn named(
        name: &str,
        status: ModelStatus,
        states: &[InstanceState],
        waiting: usize,
    ) -> ModelSnapshot {
        ModelSnapshot {
            name: name.into(),
            status,
            waiting,
            n_batch: 4,
            context_len: 100,
            instances: states
                .iter()
                .enumerate()
                .map(|(index, s)| InstanceSnapshot {
                    index,
                    state: s.clone(),
                    kv_tokens: match s {
                        InstanceState::Running { slots } => slots * 50,
                        _ => 0,
                    },
                    n_batch: 8,
                    fallback: None,
                    restarts: 0,
                    rss_bytes: None,
                    peak_rss_bytes: None,
                })
                .collect(),
        }
    }

    #[test]
    fn free_slots_count_only_instances_that_can_run() {
        let m = model(
            ModelStatus::Ready,
            &[
                InstanceState::Running { slots: 3 },
                InstanceState::Idle,
                InstanceState::Failed("x".into()),
            ],
            0,
        );
        let l = Load::of(&m);
        assert_eq!((l.slots, l.busy, l.free_slots()), (8, 3, 5));
        assert!((l.kv_usage - 150.0 / 1200.0).abs() < 1e-9, "{}", l.kv_usage);
    }

    #[test]
    fn the_queue_takes_its_share_before_new_work() {
        let idle = model(ModelStatus::Ready, &[InstanceState::Idle], 0);
        assert_eq!(Capacity::of(&[idle]), Capacity::Free { percent: 100 });
        let part = model(
            ModelStatus::Ready,
            &[InstanceState::Running { slots: 2 }],
            1,
        );
        assert_eq!(Capacity::of(&[part]), Capacity::Free { percent: 25 });
        let over = model(
            ModelStatus::Ready,
            &[InstanceState::Running { slots: 4 }],
            9,
        );
        assert_eq!(Capacity::of(&[over]), Capacity::Free { percent: 0 });
    }

    #[test]
    fn no_ready_model_is_no_capacity() {
        assert_eq!(Capacity::of(&[]), Capacity::None);
        let loading = model(ModelStatus::Loading, &[InstanceState::Starting], 0);
        let failed = model(
            ModelStatus::Unavailable("gone".into()),
            &[InstanceState::Failed("gone".into())],
            0,
        );
        assert_eq!(Capacity::of(&[loading, failed.clone()]), Capacity::None);
        let ready = model(ModelStatus::Ready, &[InstanceState::Idle], 0);
        assert_eq!(
            Capacity::of(&[failed, ready]),
            Capacity::Free { percent: 100 }
        );
    }

    #[test]
    fn models_being_unloaded_take_no_new_work() {
        let a = named("a", ModelStatus::Ready, &[InstanceState::Idle], 0);
        let b = named(
            "b",
            ModelStatus::Ready,
            &[InstanceState::Running { slots: 2 }],
            0,
        );
        let both = [a.clone(), b];
        assert_eq!(
            Capacity::staying(&both, |_| false),
            Capacity::Free { percent: 75 }
        );
        assert_eq!(
            Capacity::staying(&both, |n| n == "a"),
            Capacity::Free { percent: 50 },
            "only b's slots count once a is leaving"
        );
        assert_eq!(Capacity::staying(&both, |_| true), Capacity::Leaving);
        let failed = named(
            "a",
            ModelStatus::Unavailable("gone".into()),
            &[InstanceState::Failed("gone".into())],
            0,
        );
        assert_eq!(
            Capacity::staying(&[failed], |_| true),
            Capacity::None,
            "a failed model being unloaded could serve nothing anyway"
        );
        assert_eq!(Capacity::staying(&[a], |_| true), Capacity::Leaving);
    }
}
