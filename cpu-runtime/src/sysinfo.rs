//! What the runtime reads from the OS: peak memory and CPU placement.

/// The process's peak resident set (VmHWM) in MB, the figure Rockchip's runtime reports.
pub fn vm_hwm_mb() -> f32 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f32>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

pub fn online_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Pins the calling thread (and so the llama.cpp workers it starts) to the CPUs in `mask`.
/// Returns the CPUs actually used; an empty mask or one naming no online CPU pins nothing.
pub fn pin_current_thread(mask: u32) -> Vec<usize> {
    use nix::sched::{sched_setaffinity, CpuSet};
    use nix::unistd::Pid;
    let cpus: Vec<usize> = (0..32)
        .filter(|c| mask & (1 << c) != 0 && *c < online_cpus())
        .collect();
    if cpus.is_empty() {
        return cpus;
    }
    let mut set = CpuSet::new();
    for &c in &cpus {
        let _ = set.set(c);
    }
    match sched_setaffinity(Pid::from_raw(0), &set) {
        Ok(()) => cpus,
        Err(e) => {
            eprintln!("rkllm-cpu: cannot pin to CPUs {cpus:?}: {e}");
            Vec::new()
        }
    }
}

/// llama.cpp's thread count for `enabled_cpus_num` and the pinned CPUs.
pub fn thread_count(enabled_cpus_num: i8, pinned: &[usize]) -> i32 {
    let limit = if pinned.is_empty() {
        online_cpus()
    } else {
        pinned.len()
    };
    let wanted = if enabled_cpus_num > 0 {
        enabled_cpus_num as usize
    } else {
        limit
    };
    wanted.clamp(1, limit) as i32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thread_count_is_capped_by_pinned_and_online_cpus() {
        assert_eq!(thread_count(4, &[0]), 1);
        assert_eq!(thread_count(1, &[0, 1]), 1);
        assert_eq!(thread_count(0, &[2, 3]), 2);
        assert!(thread_count(64, &[]) as usize <= online_cpus());
    }

    #[test]
    fn peak_memory_is_read() {
        assert!(vm_hwm_mb() > 0.0);
    }
}
