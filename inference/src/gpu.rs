//! GPUs of this node and how pools share them by fractions.
//!
//! Fractions are kept in integer thousandths (milli-GPUs) so that, say, ten pools of
//! 0.1 fill a device exactly and float rounding can never let the sum pass 1.0.
//!
//! What a fraction enforces: admission (the allocator never hands out more than a
//! whole device) and ONNX Runtime's CUDA memory arena cap (`gpu_mem_limit` =
//! fraction × device memory). What it does not: a share of the streaming
//! multiprocessors; kernels of co-located pools compete freely unless the operator
//! runs NVIDIA MPS with per-client limits.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use serde::{Deserialize, Serialize};
use tracing::{debug, info};

use crate::session::Device;

const WHOLE: u32 = 1000;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GpuError {
    #[error("GPU {device_id} is not in this node's inventory (known GPUs: {known:?})")]
    UnknownDevice { device_id: u32, known: Vec<u32> },

    #[error("GPU {device_id} ({name}): {owner} asked for {requested}, only {free} is free")]
    Insufficient {
        device_id: u32,
        name: String,
        owner: String,
        requested: GpuFraction,
        free: GpuFraction,
    },

    #[error("no GPU has {requested} free for {owner} (free per GPU: {free})")]
    NoDeviceFits {
        owner: String,
        requested: GpuFraction,
        free: String,
    },

    #[error("GPU fraction {value}: {reason}")]
    InvalidFraction { value: String, reason: String },

    #[error("GPU inventory: {reason}")]
    Inventory { reason: String },
}

/// A share of one GPU, in (0, 1], with a resolution of 0.001.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "f64", into = "f64")]
pub struct GpuFraction(u32);

impl GpuFraction {
    pub const WHOLE: GpuFraction = GpuFraction(WHOLE);

    pub fn from_milli(milli: u32) -> Result<GpuFraction, GpuError> {
        if milli == 0 || milli > WHOLE {
            return Err(GpuError::InvalidFraction {
                value: format!("{milli}/1000"),
                reason: "must be above 0 and at most 1".into(),
            });
        }
        Ok(GpuFraction(milli))
    }

    /// Rounds to the nearest thousandth.
    pub fn from_f64(value: f64) -> Result<GpuFraction, GpuError> {
        if !value.is_finite() || value <= 0.0 || value > 1.0 {
            return Err(GpuError::InvalidFraction {
                value: value.to_string(),
                reason: "must be above 0 and at most 1".into(),
            });
        }
        let milli = (value * f64::from(WHOLE)).round() as u32;
        if milli == 0 {
            return Err(GpuError::InvalidFraction {
                value: value.to_string(),
                reason: "the smallest fraction is 0.001".into(),
            });
        }
        Ok(GpuFraction(milli))
    }

    pub fn milli(self) -> u32 {
        self.0
    }

    pub fn as_f64(self) -> f64 {
        f64::from(self.0) / f64::from(WHOLE)
    }

    /// The share of `device_memory` this fraction may use.
    pub fn of_bytes(self, device_memory: u64) -> u64 {
        // u128: memory × 1000 overflows u64 above 18 PB, but cheap insurance.
        (u128::from(device_memory) * u128::from(self.0) / u128::from(WHOLE)) as u64
    }
}

impl TryFrom<f64> for GpuFraction {
    type Error = GpuError;
    fn try_from(value: f64) -> Result<Self, GpuError> {
        GpuFraction::from_f64(value)
    }
}

impl From<GpuFraction> for f64 {
    fn from(fraction: GpuFraction) -> f64 {
        fraction.as_f64()
    }
}

impl fmt::Display for GpuFraction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{:03}", self.0 / WHOLE, self.0 % WHOLE)
    }
}

/// One GPU; also the shape of a declared `[[gpu]]` table in the node config.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GpuDevice {
    /// CUDA device ordinal. NVML numbers devices by PCI bus; CUDA does too only with
    /// `CUDA_DEVICE_ORDER=PCI_BUS_ID`, which GPU nodes should set.
    pub id: u32,
    #[serde(default)]
    pub name: String,
    pub memory_bytes: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GpuInventory {
    pub devices: Vec<GpuDevice>,
}

impl GpuInventory {
    /// From config: ids must be unique and memory non-zero.
    pub fn declared(devices: Vec<GpuDevice>) -> Result<GpuInventory, GpuError> {
        let mut seen = std::collections::BTreeSet::new();
        for device in &devices {
            if !seen.insert(device.id) {
                return Err(GpuError::Inventory {
                    reason: format!("GPU {} is declared twice", device.id),
                });
            }
            if device.memory_bytes == 0 {
                return Err(GpuError::Inventory {
                    reason: format!("GPU {} declares memory_bytes = 0", device.id),
                });
            }
        }
        Ok(GpuInventory { devices })
    }

    /// The declared GPUs when there are any, else what NVML finds (none without the
    /// `nvml` feature or without an NVIDIA driver).
    pub fn declared_or_detected(declared: Vec<GpuDevice>) -> Result<GpuInventory, GpuError> {
        if declared.is_empty() {
            return Ok(GpuInventory::detect());
        }
        GpuInventory::declared(declared)
    }

    /// GPUs NVML reports; empty when the driver library is absent.
    pub fn detect() -> GpuInventory {
        match detect_nvml() {
            Ok(devices) => {
                info!(gpus = devices.len(), "gpu inventory from nvml");
                GpuInventory { devices }
            }
            Err(reason) => {
                debug!(%reason, "no gpu inventory from nvml");
                GpuInventory::default()
            }
        }
    }

    pub fn device(&self, id: u32) -> Option<&GpuDevice> {
        self.devices.iter().find(|device| device.id == id)
    }
}

#[cfg(feature = "nvml")]
fn detect_nvml() -> Result<Vec<GpuDevice>, String> {
    use std::ffi::OsStr;
    // Opened at run time: a node without the NVIDIA driver gets an error, not a link failure.
    let nvml = nvml_wrapper::Nvml::builder()
        .lib_path(OsStr::new("libnvidia-ml.so.1"))
        .init()
        .map_err(|error| format!("libnvidia-ml.so.1: {error}"))?;
    let count = nvml.device_count().map_err(|error| error.to_string())?;
    let mut devices = Vec::new();
    for index in 0..count {
        let device = nvml
            .device_by_index(index)
            .map_err(|error| format!("GPU {index}: {error}"))?;
        let memory = device
            .memory_info()
            .map_err(|error| format!("GPU {index} memory: {error}"))?;
        let name = device.name().unwrap_or_default();
        devices.push(GpuDevice {
            id: index,
            name,
            memory_bytes: memory.total,
        });
    }
    Ok(devices)
}

#[cfg(not(feature = "nvml"))]
fn detect_nvml() -> Result<Vec<GpuDevice>, String> {
    Err("built without the `nvml` feature".into())
}

/// Usage of one GPU, for node reports and placement.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GpuUsage {
    pub device: GpuDevice,
    pub allocated_milli: u32,
    pub free_milli: u32,
    /// (owner, milli) of each live lease.
    pub leases: Vec<(String, u32)>,
}

struct DeviceState {
    device: GpuDevice,
    allocated_milli: u32,
    leases: BTreeMap<u64, (String, u32)>,
}

impl DeviceState {
    fn free(&self) -> u32 {
        WHOLE - self.allocated_milli
    }
}

struct AllocatorState {
    devices: BTreeMap<u32, DeviceState>,
    next_lease: u64,
}

/// Hands out GPU fractions; on each device the live leases never add up above 1.
/// Cheap to clone (shared state).
#[derive(Clone)]
pub struct GpuAllocator {
    state: Arc<Mutex<AllocatorState>>,
}

fn lock(state: &Mutex<AllocatorState>) -> MutexGuard<'_, AllocatorState> {
    // Each operation updates the counters and the lease map together before any
    // call that could panic, so a poisoned lock still guards consistent data.
    state.lock().unwrap_or_else(PoisonError::into_inner)
}

impl GpuAllocator {
    pub fn new(inventory: &GpuInventory) -> GpuAllocator {
        let devices = inventory
            .devices
            .iter()
            .map(|device| {
                (
                    device.id,
                    DeviceState {
                        device: device.clone(),
                        allocated_milli: 0,
                        leases: BTreeMap::new(),
                    },
                )
            })
            .collect();
        GpuAllocator {
            state: Arc::new(Mutex::new(AllocatorState {
                devices,
                next_lease: 0,
            })),
        }
    }

    /// Reserves `fraction` of GPU `device_id` for `owner` (a pool name).
    pub fn allocate(
        &self,
        owner: &str,
        device_id: u32,
        fraction: GpuFraction,
    ) -> Result<GpuLease, GpuError> {
        let mut state = lock(&self.state);
        let known: Vec<u32> = state.devices.keys().copied().collect();
        let Some(device) = state.devices.get(&device_id) else {
            return Err(GpuError::UnknownDevice { device_id, known });
        };
        if fraction.milli() > device.free() {
            return Err(GpuError::Insufficient {
                device_id,
                name: device.device.name.clone(),
                owner: owner.to_string(),
                requested: fraction,
                free: GpuFraction(device.free()),
            });
        }
        Ok(self.grant(&mut state, owner, device_id, fraction))
    }

    /// Reserves `fraction` on the GPU with the least free share that still fits it
    /// (best fit keeps large holes for large pools).
    pub fn allocate_any(&self, owner: &str, fraction: GpuFraction) -> Result<GpuLease, GpuError> {
        let mut state = lock(&self.state);
        let best = state
            .devices
            .values()
            .filter(|device| device.free() >= fraction.milli())
            .min_by_key(|device| (device.free(), device.device.id))
            .map(|device| device.device.id);
        let Some(device_id) = best else {
            let free: Vec<String> = state
                .devices
                .values()
                .map(|d| format!("{}: {}", d.device.id, GpuFraction(d.free())))
                .collect();
            return Err(GpuError::NoDeviceFits {
                owner: owner.to_string(),
                requested: fraction,
                free: if free.is_empty() {
                    "no GPUs".into()
                } else {
                    free.join(", ")
                },
            });
        };
        Ok(self.grant(&mut state, owner, device_id, fraction))
    }

    fn grant(
        &self,
        state: &mut AllocatorState,
        owner: &str,
        device_id: u32,
        fraction: GpuFraction,
    ) -> GpuLease {
        let lease_id = state.next_lease;
        state.next_lease += 1;
        let mut mem_limit_bytes = 0;
        if let Some(device) = state.devices.get_mut(&device_id) {
            device.allocated_milli += fraction.milli();
            debug_assert!(device.allocated_milli <= WHOLE);
            device
                .leases
                .insert(lease_id, (owner.to_string(), fraction.milli()));
            mem_limit_bytes = fraction.of_bytes(device.device.memory_bytes);
        }
        info!(owner, device_id, fraction = %fraction, mem_limit_bytes, "gpu fraction allocated");
        GpuLease {
            state: Arc::clone(&self.state),
            lease_id,
            device_id,
            fraction,
            mem_limit_bytes,
            released: false,
        }
    }

    /// Free share of a GPU, `None` for an unknown id.
    pub fn free(&self, device_id: u32) -> Option<u32> {
        lock(&self.state)
            .devices
            .get(&device_id)
            .map(DeviceState::free)
    }

    pub fn usage(&self) -> Vec<GpuUsage> {
        lock(&self.state)
            .devices
            .values()
            .map(|device| GpuUsage {
                device: device.device.clone(),
                allocated_milli: device.allocated_milli,
                free_milli: device.free(),
                leases: device.leases.values().cloned().collect(),
            })
            .collect()
    }
}

/// A reserved GPU fraction; released on `release` or drop.
pub struct GpuLease {
    state: Arc<Mutex<AllocatorState>>,
    lease_id: u64,
    device_id: u32,
    fraction: GpuFraction,
    mem_limit_bytes: u64,
    released: bool,
}

impl fmt::Debug for GpuLease {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GpuLease")
            .field("device_id", &self.device_id)
            .field("fraction", &self.fraction)
            .field("mem_limit_bytes", &self.mem_limit_bytes)
            .finish()
    }
}

impl GpuLease {
    pub fn device_id(&self) -> u32 {
        self.device_id
    }

    pub fn fraction(&self) -> GpuFraction {
        self.fraction
    }

    /// `fraction × device memory`: the CUDA arena limit for the pool's sessions.
    pub fn mem_limit_bytes(&self) -> u64 {
        self.mem_limit_bytes
    }

    /// The `Device` a pool on this lease uses (`PoolOptions::device`). The pool's
    /// replicas share the limit only if there is one replica; give each replica its
    /// own lease otherwise.
    pub fn device(&self) -> Device {
        Device::Cuda {
            device_id: self.device_id,
            mem_limit_bytes: self.mem_limit_bytes,
        }
    }

    pub fn release(mut self) {
        self.release_now();
    }

    fn release_now(&mut self) {
        if self.released {
            return;
        }
        self.released = true;
        let mut state = lock(&self.state);
        if let Some(device) = state.devices.get_mut(&self.device_id) {
            if let Some((_, milli)) = device.leases.remove(&self.lease_id) {
                device.allocated_milli -= milli;
            }
        }
        debug!(device_id = self.device_id, fraction = %self.fraction, "gpu fraction released");
    }
}

impl Drop for GpuLease {
    fn drop(&mut self) {
        self.release_now();
    }
}

#[cfg(test)]
mod tests;
