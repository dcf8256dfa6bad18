//! Resident memory of this process, for pool footprints and placement by bytes.

/// Resident set size in bytes from `/proc/self/statm` (Linux); `None` elsewhere or
/// when it cannot be read.
pub fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let resident_pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(resident_pages * page_size())
}

/// 4 KiB on x86-64; aarch64 and ppc64 kernels may use 16 or 64 KiB pages, which
/// smaps reports (read only there: it is slow, and calling sysconf needs unsafe FFI).
fn page_size() -> u64 {
    if cfg!(any(target_arch = "aarch64", target_arch = "powerpc64")) {
        if let Some(size) = kernel_page_size() {
            return size;
        }
    }
    4096
}

fn kernel_page_size() -> Option<u64> {
    let smaps = std::fs::read_to_string("/proc/self/smaps").ok()?;
    let line = smaps
        .lines()
        .find(|line| line.starts_with("KernelPageSize:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resident_memory_grows_when_pages_are_touched() {
        let Some(before) = resident_bytes() else {
            return; // not Linux
        };
        assert!(before > 0);
        let block: Vec<u8> = std::hint::black_box(vec![1; 64 << 20]);
        let after = resident_bytes().unwrap();
        assert!(
            after >= before + (48 << 20),
            "before {before}, after {after}"
        );
        drop(block);
    }
}
