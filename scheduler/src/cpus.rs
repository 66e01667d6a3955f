//! Where runtime threads run. On big.LITTLE boards (RK3588: four Cortex-A76 and four A55)
//! the default is the big cores, read from sysfs; elsewhere nothing is pinned.

use std::path::Path;

fn read_num(path: &Path) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// The fastest CPUs under `root` (normally /sys/devices/system/cpu), by `cpu_capacity`, else
/// by `cpufreq/cpuinfo_max_freq`. Empty when every CPU looks the same or sysfs says nothing.
pub fn big_cores(root: &Path) -> Vec<usize> {
    let mut cpus: Vec<usize> = std::fs::read_dir(root)
        .into_iter()
        .flatten()
        .filter_map(|e| {
            let name = e.ok()?.file_name().into_string().ok()?;
            name.strip_prefix("cpu")?.parse().ok()
        })
        .collect();
    cpus.sort_unstable();
    for file in ["cpu_capacity", "cpufreq/cpuinfo_max_freq"] {
        let values: Vec<(usize, u64)> = cpus
            .iter()
            .filter_map(|&c| read_num(&root.join(format!("cpu{c}/{file}"))).map(|v| (c, v)))
            .collect();
        if values.len() < 2 {
            continue;
        }
        let max = values.iter().map(|&(_, v)| v).max().unwrap_or(0);
        let min = values.iter().map(|&(_, v)| v).min().unwrap_or(0);
        if max != min {
            return values
                .into_iter()
                .filter(|&(_, v)| v == max)
                .map(|(c, _)| c)
                .collect();
        }
    }
    Vec::new()
}

/// The RKLLM `enabled_cpus_mask` for a CPU list.
pub fn mask(cpus: &[usize]) -> u32 {
    cpus.iter()
        .filter(|&&c| c < 32)
        .fold(0, |m, &c| m | (1 << c))
}

/// Pins the calling thread; an empty list leaves it free.
pub fn pin_current_thread(cpus: &[usize]) -> Result<(), String> {
    use nix::sched::{sched_setaffinity, CpuSet};
    if cpus.is_empty() {
        return Ok(());
    }
    let mut set = CpuSet::new();
    for &c in cpus {
        set.set(c).map_err(|e| format!("CPU {c}: {e}"))?;
    }
    sched_setaffinity(nix::unistd::Pid::from_raw(0), &set).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake(caps: &[Option<u64>], freqs: &[Option<u64>]) -> std::path::PathBuf {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let root = std::env::temp_dir().join(format!(
            "rkserve-sysfs-{}-{}",
            std::process::id(),
            N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        for (i, (c, f)) in caps.iter().zip(freqs).enumerate() {
            let d = root.join(format!("cpu{i}/cpufreq"));
            std::fs::create_dir_all(&d).unwrap();
            if let Some(c) = c {
                std::fs::write(root.join(format!("cpu{i}/cpu_capacity")), format!("{c}\n"))
                    .unwrap();
            }
            if let Some(f) = f {
                std::fs::write(d.join("cpuinfo_max_freq"), format!("{f}\n")).unwrap();
            }
        }
        std::fs::create_dir_all(root.join("cpufreq")).unwrap();
        root
    }

    #[test]
    fn rk3588_big_cores_by_capacity() {
        let caps: Vec<Option<u64>> = [414, 414, 414, 414, 1024, 1024, 1024, 1024]
            .map(Some)
            .to_vec();
        let root = fake(&caps, &[None; 8]);
        assert_eq!(big_cores(&root), vec![4, 5, 6, 7]);
        assert_eq!(mask(&[4, 5, 6, 7]), 0xF0);
    }

    #[test]
    fn by_max_frequency_when_capacity_is_missing() {
        let freqs = [
            Some(1_800_000),
            Some(1_800_000),
            Some(2_400_000),
            Some(2_400_000),
        ];
        assert_eq!(big_cores(&fake(&[None; 4], &freqs)), vec![2, 3]);
    }

    #[test]
    fn uniform_or_unknown_cpus_pin_nothing() {
        assert!(big_cores(&fake(&[Some(1024); 4], &[Some(3_000_000); 4])).is_empty());
        assert!(big_cores(&fake(&[None; 2], &[None; 2])).is_empty());
        assert!(big_cores(Path::new("/nonexistent")).is_empty());
    }
}
