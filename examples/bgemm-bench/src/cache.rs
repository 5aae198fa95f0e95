//! The last-level cache size, which sets how many copies of a layer the
//! streaming benchmarks cycle through (`examples/bgemm-bench --stream` and
//! the workspace's `benches/kernels.rs`, which includes this file by path).

/// Last-level cache assumed when the OS does not say.
pub const DEFAULT_LLC: usize = 32 << 20;

/// Largest CPU cache the OS reports (Linux sysfs), else [`DEFAULT_LLC`].
pub fn last_level_cache() -> usize {
    let parse = |s: &str| -> Option<usize> {
        let s = s.trim();
        let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit())?);
        let v: usize = num.parse().ok()?;
        match unit {
            "K" => Some(v << 10),
            "M" => Some(v << 20),
            "" => Some(v),
            _ => None,
        }
    };
    (0..8)
        .filter_map(|i| {
            std::fs::read_to_string(format!("/sys/devices/system/cpu/cpu0/cache/index{i}/size"))
                .ok()
                .and_then(|s| parse(&s))
        })
        .max()
        .unwrap_or(DEFAULT_LLC)
}
