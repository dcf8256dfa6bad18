use proptest::prelude::*;

use super::*;

const GIB: u64 = 1 << 30;

fn inventory() -> GpuInventory {
    GpuInventory::declared(vec![
        GpuDevice {
            id: 0,
            name: "A100".into(),
            memory_bytes: 40 * GIB,
        },
        GpuDevice {
            id: 1,
            name: "L4".into(),
            memory_bytes: 24 * GIB,
        },
    ])
    .unwrap()
}

fn fraction(value: f64) -> GpuFraction {
    GpuFraction::from_f64(value).unwrap()
}

#[test]
fn fractions_parse_to_thousandths_and_refuse_nonsense() {
    assert_eq!(fraction(0.25).milli(), 250);
    assert_eq!(fraction(1.0).milli(), 1000);
    assert_eq!(fraction(0.0004 + 0.001).milli(), 1);
    assert_eq!(fraction(1.0 / 3.0).to_string(), "0.333");
    for bad in [0.0, -0.5, 1.0001, f64::NAN, f64::INFINITY, 0.0004] {
        assert!(GpuFraction::from_f64(bad).is_err(), "{bad} accepted");
    }
    assert!(GpuFraction::from_milli(0).is_err());
    assert!(GpuFraction::from_milli(1001).is_err());
    let parsed: GpuFraction = serde_json::from_str("0.5").unwrap();
    assert_eq!(parsed, fraction(0.5));
    assert!(serde_json::from_str::<GpuFraction>("1.5").is_err());
}

#[test]
fn ten_tenths_fill_a_device_exactly() {
    // 0.1 is not exact in binary; thousandths make ten of them exactly one GPU.
    let allocator = GpuAllocator::new(&inventory());
    let leases: Vec<GpuLease> = (0..10)
        .map(|i| {
            allocator
                .allocate(&format!("pool-{i}"), 0, fraction(0.1))
                .unwrap()
        })
        .collect();
    assert_eq!(allocator.free(0), Some(0));
    let error = allocator
        .allocate("one-more", 0, fraction(0.001))
        .unwrap_err();
    assert_eq!(
        error.to_string(),
        "GPU 0 (A100): one-more asked for 0.001, only 0.000 is free"
    );
    drop(leases);
    assert_eq!(allocator.free(0), Some(1000));
}

#[test]
fn memory_limit_is_the_fraction_of_device_memory() {
    let allocator = GpuAllocator::new(&inventory());
    let lease = allocator.allocate("rec", 1, fraction(0.25)).unwrap();
    assert_eq!(lease.mem_limit_bytes(), 6 * GIB);
    assert_eq!(
        lease.device(),
        Device::Cuda {
            device_id: 1,
            mem_limit_bytes: 6 * GIB
        }
    );
}

#[test]
fn errors_name_the_device_and_what_is_free() {
    let allocator = GpuAllocator::new(&inventory());
    let _held = allocator.allocate("det", 1, fraction(0.7)).unwrap();
    let error = allocator.allocate("rec", 1, fraction(0.5)).unwrap_err();
    assert_eq!(
        error,
        GpuError::Insufficient {
            device_id: 1,
            name: "L4".into(),
            owner: "rec".into(),
            requested: fraction(0.5),
            free: fraction(0.3)
        }
    );
    let error = allocator.allocate("rec", 7, fraction(0.5)).unwrap_err();
    assert_eq!(
        error.to_string(),
        "GPU 7 is not in this node's inventory (known GPUs: [0, 1])"
    );
}

#[test]
fn release_and_drop_both_give_the_share_back_once() {
    let allocator = GpuAllocator::new(&inventory());
    let lease = allocator.allocate("a", 0, fraction(0.6)).unwrap();
    let other = allocator.allocate("b", 0, fraction(0.4)).unwrap();
    lease.release();
    assert_eq!(allocator.free(0), Some(600));
    drop(other);
    assert_eq!(allocator.free(0), Some(1000));
    assert!(allocator
        .usage()
        .iter()
        .all(|usage| usage.leases.is_empty()));
}

#[test]
fn allocate_any_picks_the_tightest_fit() {
    let allocator = GpuAllocator::new(&inventory());
    let _a = allocator.allocate("a", 0, fraction(0.5)).unwrap();
    let _b = allocator.allocate("b", 1, fraction(0.2)).unwrap();
    // 0.4 fits on both; GPU 0 has 0.5 free, GPU 1 has 0.8: best fit is GPU 0.
    assert_eq!(
        allocator
            .allocate_any("c", fraction(0.4))
            .unwrap()
            .device_id(),
        0
    );
    let error = allocator.allocate_any("d", fraction(0.9)).unwrap_err();
    assert!(
        error
            .to_string()
            .contains("free per GPU: 0: 0.500, 1: 0.800"),
        "{error}"
    );
    let empty = GpuAllocator::new(&GpuInventory::default());
    assert!(empty
        .allocate_any("e", fraction(0.1))
        .unwrap_err()
        .to_string()
        .contains("no GPUs"));
}

#[test]
fn declared_inventory_refuses_duplicates_and_zero_memory() {
    let device = |id, memory_bytes| GpuDevice {
        id,
        name: String::new(),
        memory_bytes,
    };
    assert!(GpuInventory::declared(vec![device(0, GIB), device(0, GIB)]).is_err());
    assert!(GpuInventory::declared(vec![device(0, 0)]).is_err());
    let from_toml: GpuDevice = serde_json::from_str(r#"{"id":3,"memory_bytes":1024}"#).unwrap();
    assert_eq!(from_toml, device(3, 1024));
}

#[test]
fn detection_without_nvml_is_empty_not_an_error() {
    // No GPU in CI: detection must degrade to an empty inventory.
    if cfg!(feature = "nvml") {
        return;
    }
    assert!(GpuInventory::detect().devices.is_empty());
    assert_eq!(
        GpuInventory::declared_or_detected(vec![]).unwrap(),
        GpuInventory::default()
    );
}

#[derive(Clone, Debug)]
enum Op {
    Allocate { device_id: u32, milli: u32 },
    AllocateAny { milli: u32 },
    Release { index: usize },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0u32..3, 1u32..=1000).prop_map(|(device_id, milli)| Op::Allocate { device_id, milli }),
        (1u32..=600).prop_map(|milli| Op::AllocateAny { milli }),
        (0usize..32).prop_map(|index| Op::Release { index }),
    ]
}

proptest! {
    #[test]
    fn random_allocations_never_exceed_one_gpu(ops in proptest::collection::vec(op(), 1..120)) {
        let allocator = GpuAllocator::new(&inventory());
        let mut live: Vec<GpuLease> = Vec::new();
        for op in ops {
            match op {
                Op::Allocate { device_id, milli } => {
                    let requested = GpuFraction::from_milli(milli).unwrap();
                    let free_before = allocator.free(device_id);
                    match allocator.allocate("p", device_id, requested) {
                        Ok(lease) => live.push(lease),
                        // Refused only when it truly does not fit (or the GPU is unknown).
                        Err(_) => prop_assert!(free_before.is_none_or(|free| free < milli)),
                    }
                }
                Op::AllocateAny { milli } => {
                    let requested = GpuFraction::from_milli(milli).unwrap();
                    let fits_somewhere = [0, 1].iter().any(|&id| allocator.free(id).unwrap() >= milli);
                    match allocator.allocate_any("p", requested) {
                        Ok(lease) => live.push(lease),
                        Err(_) => prop_assert!(!fits_somewhere),
                    }
                }
                Op::Release { index } => {
                    if !live.is_empty() {
                        let lease = live.swap_remove(index % live.len());
                        lease.release();
                    }
                }
            }
            for usage in allocator.usage() {
                let held: u32 = live.iter().filter(|l| l.device_id() == usage.device.id).map(|l| l.fraction().milli()).sum();
                prop_assert!(usage.allocated_milli <= 1000);
                prop_assert_eq!(usage.allocated_milli, held);
                prop_assert_eq!(usage.free_milli, 1000 - held);
            }
        }
        drop(live);
        prop_assert!(allocator.usage().iter().all(|usage| usage.allocated_milli == 0));
    }
}
