//! The one owner of each model's lifecycle: whether it is loading or loaded, since when, when
//! it expires, and which requests hold it. Requests hold a [`Lease`] from before they are
//! submitted until their stream ends; a model is only unloaded (by keep_alive 0, an expired
//! keep_alive, or an unload request) once no lease holds it, so unloading never ends a
//! request in flight. A model loads at most once however many first requests race for it:
//! the first loads, the others wait for that load and share its result.

use crate::catalog::CatalogError;
use crate::duration::KeepAlive;
use parking_lot::{Condvar, Mutex};
use scheduler::Scheduler;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

/// A request's hold on a loaded model; released when dropped. While any lease is held the
/// model stays loaded, whatever keep_alive or unload requests say in the meantime.
#[must_use = "the model may be unloaded as soon as the lease is dropped"]
pub struct Lease {
    manager: Arc<Inner>,
    name: String,
    waited: Duration,
    /// The span of the request that took it.
    span: tracing::Span,
}

impl Lease {
    pub fn model(&self) -> &str {
        &self.name
    }

    /// How long acquiring it waited for the model to load (zero if it was loaded).
    pub fn load_duration(&self) -> Duration {
        self.waited
    }
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease").field("model", &self.name).finish()
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        // Dropped when the response body ends, outside the handler: what the release logs
        // (an unload) belongs to the request that held the lease.
        let _request = self.span.enter();
        self.manager.release(&self.name);
    }
}

/// keep_alive durations longer than this keep the model loaded for good.
const FOREVER_AFTER: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// What a model's loading ended in, shared by everyone who waited for it.
type LoadResult = Result<(), CatalogError>;

#[derive(Default)]
struct Ticket {
    result: Mutex<Option<LoadResult>>,
    done: Condvar,
}

impl Ticket {
    fn wait(&self) -> LoadResult {
        let mut r = self.result.lock();
        while r.is_none() {
            self.done.wait(&mut r);
        }
        r.clone().expect("checked")
    }
}

enum Phase {
    Loading(Arc<Ticket>),
    Loaded { at: SystemTime, took: Duration },
}

struct State {
    phase: Phase,
    /// Leases held, including those reserved by requests waiting for the load.
    leases: usize,
    /// keep_alive: unload once free and idle past this instant. None: stay.
    expiry: Option<(Instant, SystemTime)>,
    /// keep_alive 0 or an unload request arrived while leases were held.
    unload_when_free: bool,
}

struct Inner {
    scheduler: Arc<Scheduler>,
    models: Mutex<HashMap<String, State>>,
}

impl Inner {
    fn release(&self, name: &str) {
        let mut models = self.models.lock();
        let Some(s) = models.get_mut(name) else {
            return;
        };
        s.leases = s.leases.saturating_sub(1);
        if s.leases == 0 && s.unload_when_free && matches!(s.phase, Phase::Loaded { .. }) {
            self.unload_locked(&mut models, name);
        }
    }

    /// Removing under the lock keeps a racing load from finding the old model still in the
    /// scheduler and taking it for its own.
    fn unload_locked(&self, models: &mut HashMap<String, State>, name: &str) -> bool {
        models.remove(name);
        let was = self.scheduler.remove_model(name);
        tracing::info!(model = name, "unloaded");
        was
    }
}

/// How a [`ModelManager`] loads a model: blocking, returning once it serves or failed.
pub trait Loader {
    fn load(&self, name: &str) -> LoadResult;
}

impl<F: Fn(&str) -> LoadResult> Loader for F {
    fn load(&self, name: &str) -> LoadResult {
        self(name)
    }
}

pub struct ModelManager {
    inner: Arc<Inner>,
}

impl ModelManager {
    pub fn new(scheduler: Arc<Scheduler>) -> ModelManager {
        ModelManager {
            inner: Arc::new(Inner {
                scheduler,
                models: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// A lease on a model that is loaded already, without blocking; `None` if it is not
    /// (loading, or not loaded at all).
    pub fn try_acquire(&self, name: &str) -> Option<Lease> {
        let mut models = self.inner.models.lock();
        let s = models.get_mut(name)?;
        if !matches!(s.phase, Phase::Loaded { .. }) {
            return None;
        }
        s.leases += 1;
        Some(self.lease(name, Duration::ZERO))
    }

    /// A lease on the model, loading it first if needed. Blocks for as long as the load
    /// takes: call it off the async workers. Concurrent callers share one load, and its
    /// failure.
    pub fn acquire(&self, name: &str, loader: &dyn Loader) -> Result<Lease, CatalogError> {
        let started = Instant::now();
        let ticket = {
            let mut models = self.inner.models.lock();
            match models.get_mut(name) {
                Some(s) => {
                    // Reserved now, so an unload cannot slip between the load and the lease.
                    s.leases += 1;
                    match &s.phase {
                        Phase::Loaded { .. } => return Ok(self.lease(name, Duration::ZERO)),
                        Phase::Loading(t) => Some(t.clone()),
                    }
                }
                None => {
                    models.insert(
                        name.to_string(),
                        State {
                            phase: Phase::Loading(Arc::default()),
                            leases: 1,
                            expiry: None,
                            unload_when_free: false,
                        },
                    );
                    None
                }
            }
        };
        if let Some(t) = ticket {
            t.wait()?;
            return Ok(self.lease(name, started.elapsed()));
        }
        // A loader that panics must not leave its waiters, and every later request, waiting
        // for a load that never ends: the panic is the load's failure.
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| loader.load(name)))
            .unwrap_or_else(|_| {
                Err(CatalogError::Invalid {
                    model: name.to_string(),
                    reason: "loading it panicked (a bug in rkserve: the log has the panic)".into(),
                })
            });
        let took = started.elapsed();
        let mut models = self.inner.models.lock();
        let Some(s) = models.get_mut(name) else {
            unreachable!("a loading model is removed only by its loader")
        };
        let Phase::Loading(ticket) = std::mem::replace(
            &mut s.phase,
            Phase::Loaded {
                at: SystemTime::now(),
                took,
            },
        ) else {
            unreachable!("only the loader ends a load")
        };
        if result.is_err() {
            models.remove(name);
        }
        *ticket.result.lock() = Some(result.clone());
        ticket.done.notify_all();
        drop(models);
        result.map(|()| self.lease(name, took))
    }

    fn lease(&self, name: &str, waited: Duration) -> Lease {
        Lease {
            manager: self.inner.clone(),
            name: name.to_string(),
            waited,
            span: tracing::Span::current(),
        }
    }

    /// Applies an Ollama keep_alive to a loaded model: 0 unloads it once no lease holds it
    /// (at once if none does), a duration once it has been free that long, negative never.
    /// The latest request's keep_alive wins, as in Ollama.
    pub fn keep_alive(&self, name: &str, keep: KeepAlive) {
        let mut models = self.inner.models.lock();
        let Some(s) = models.get_mut(name) else {
            return;
        };
        match keep {
            KeepAlive::Unload => {
                s.unload_when_free = true;
                s.expiry = None;
                if s.leases == 0 && matches!(s.phase, Phase::Loaded { .. }) {
                    self.inner.unload_locked(&mut models, name);
                }
            }
            KeepAlive::For(d) => {
                s.unload_when_free = false;
                // Past a century is forever: such an expiry cannot be added to a clock on
                // every platform, nor written as an RFC 3339 date for /api/ps.
                s.expiry = Some(d).filter(|d| *d <= FOREVER_AFTER).and_then(|d| {
                    Instant::now()
                        .checked_add(d)
                        .zip(SystemTime::now().checked_add(d))
                });
            }
            KeepAlive::Forever => {
                s.unload_when_free = false;
                s.expiry = None;
            }
        }
    }

    /// Unloads the model once no lease holds it (at once if none does). Returns whether it
    /// was loaded (or loading).
    pub fn unload(&self, name: &str) -> bool {
        let mut models = self.inner.models.lock();
        match models.get_mut(name) {
            Some(s) if s.leases > 0 || matches!(s.phase, Phase::Loading(_)) => {
                s.unload_when_free = true;
                true
            }
            Some(_) => {
                self.inner.unload_locked(&mut models, name);
                true
            }
            // Served without this manager knowing (nothing else adds models, but the
            // scheduler is public): still unload it.
            None => self.inner.scheduler.remove_model(name),
        }
    }

    /// Unloads the models whose keep_alive has passed and that no lease holds, for which
    /// `idle` also holds; returns their names.
    pub fn reap(&self, idle: impl Fn(&str) -> bool) -> Vec<String> {
        let now = Instant::now();
        let mut models = self.inner.models.lock();
        let due: Vec<String> = models
            .iter()
            .filter(|(_, s)| {
                s.leases == 0
                    && matches!(s.phase, Phase::Loaded { .. })
                    && (s.unload_when_free || s.expiry.is_some_and(|(t, _)| t <= now))
            })
            .map(|(n, _)| n.clone())
            .filter(|n| idle(n))
            .collect();
        for n in &due {
            self.inner.unload_locked(&mut models, n);
        }
        due
    }

    /// Whether the model is to be unloaded when its last lease ends (keep_alive 0 or an
    /// unload request that arrived while requests held it).
    pub fn unloading(&self, name: &str) -> bool {
        self.inner
            .models
            .lock()
            .get(name)
            .is_some_and(|s| s.unload_when_free)
    }

    /// When the model will be unloaded if it stays free, if a keep_alive set a time.
    pub fn expires_at(&self, name: &str) -> Option<SystemTime> {
        self.inner.models.lock().get(name)?.expiry.map(|(_, t)| t)
    }

    /// When the model finished loading and how long its load took.
    pub fn load_info(&self, name: &str) -> Option<(SystemTime, Duration)> {
        match self.inner.models.lock().get(name)?.phase {
            Phase::Loaded { at, took } => Some((at, took)),
            Phase::Loading(_) => None,
        }
    }

    /// Leases held on the model (including requests waiting for it to load).
    pub fn leases(&self, name: &str) -> usize {
        self.inner.models.lock().get(name).map_or(0, |s| s.leases)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn manager() -> ModelManager {
        ModelManager::new(Arc::new(Scheduler::new(vec![])))
    }

    #[test]
    fn concurrent_first_acquires_load_once_and_all_get_it() {
        let m = Arc::new(manager());
        let loads = Arc::new(AtomicUsize::new(0));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let (m, loads) = (m.clone(), loads.clone());
                std::thread::spawn(move || {
                    let loader = |_: &str| {
                        loads.fetch_add(1, Ordering::SeqCst);
                        std::thread::sleep(Duration::from_millis(100));
                        Ok(())
                    };
                    m.acquire("a", &loader).map(|l| l.model().to_string())
                })
            })
            .collect();
        for t in threads {
            assert_eq!(t.join().unwrap().unwrap(), "a");
        }
        assert_eq!(loads.load(Ordering::SeqCst), 1);
        assert_eq!(m.leases("a"), 0);
    }

    #[test]
    fn a_failed_load_fails_every_waiter_and_the_next_acquire_tries_again() {
        let m = Arc::new(manager());
        let fail = |name: &str| {
            std::thread::sleep(Duration::from_millis(50));
            Err(CatalogError::NotFound(name.to_string()))
        };
        let waiter = {
            let m = m.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(10));
                m.acquire("a", &|_: &str| Ok(())).map(|_| ())
            })
        };
        assert!(m.acquire("a", &fail).is_err());
        assert!(
            waiter.join().unwrap().is_err(),
            "the waiter shares the failure"
        );
        assert!(m.acquire("a", &|_: &str| Ok(())).is_ok());
    }

    #[test]
    fn a_load_that_panics_fails_its_waiters_instead_of_leaving_them_waiting() {
        let m = Arc::new(manager());
        let waiter = {
            let m = m.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(10));
                m.acquire("a", &|_: &str| Ok(())).map(|_| ())
            })
        };
        let panics = |_: &str| -> Result<(), CatalogError> {
            std::thread::sleep(Duration::from_millis(50));
            panic!("a loader bug")
        };
        match m.acquire("a", &panics) {
            Err(CatalogError::Invalid { reason, .. }) => assert!(reason.contains("panicked")),
            other => panic!("{:?}", other.map(|l| l.model().to_string())),
        }
        assert!(
            waiter.join().unwrap().is_err(),
            "the waiter shares the failure"
        );
        assert!(
            m.acquire("a", &|_: &str| Ok(())).is_ok(),
            "and the next load runs"
        );
    }

    #[test]
    fn keep_alive_zero_waits_for_the_last_lease() {
        let m = manager();
        let a = m.acquire("a", &|_: &str| Ok(())).unwrap();
        let b = m.try_acquire("a").expect("loaded");
        m.keep_alive("a", KeepAlive::Unload);
        assert!(m.load_info("a").is_some(), "held: still loaded");
        drop(a);
        assert!(m.load_info("a").is_some(), "one lease left");
        drop(b);
        assert!(m.load_info("a").is_none(), "unloaded with the last lease");
        assert!(m.try_acquire("a").is_none());
    }

    #[test]
    fn an_expired_keep_alive_reaps_only_free_models() {
        let m = manager();
        let held = m.acquire("held", &|_: &str| Ok(())).unwrap();
        drop(m.acquire("free", &|_: &str| Ok(())).unwrap());
        m.keep_alive("held", KeepAlive::For(Duration::from_nanos(1)));
        m.keep_alive("free", KeepAlive::For(Duration::from_nanos(1)));
        std::thread::sleep(Duration::from_millis(2));
        assert_eq!(m.reap(|_| true), vec!["free".to_string()]);
        drop(held);
        assert_eq!(m.reap(|_| true), vec!["held".to_string()]);
    }

    #[test]
    fn a_huge_keep_alive_is_forever_not_a_panic() {
        let m = manager();
        drop(m.acquire("a", &|_: &str| Ok(())).unwrap());
        m.keep_alive("a", KeepAlive::For(Duration::MAX));
        assert_eq!(m.expires_at("a"), None);
        m.keep_alive(
            "a",
            KeepAlive::For(Duration::from_secs(3600 * 99_999_999_999)),
        );
        assert_eq!(m.expires_at("a"), None);
        assert!(m.reap(|_| true).is_empty());
    }
}
