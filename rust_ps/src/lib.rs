//! `rust_ps`: the shared-memory parameter store behind dbl-ps.
//!
//! One owner process creates a [`ParameterStore`]: a named shared-memory segment that
//! holds the flat f32 model state (twice, see [`protocol::DoubleBuffer`]) and one
//! bounded update queue per worker ([`protocol::Ring`]), plus a server thread that
//! applies updates with a team of threads on disjoint slices of the state. Worker
//! processes attach by name with a [`StoreClient`] and pull/push through shared memory
//! only. Sync modes (BSP/ASP/SSP) and merge rules (average/blend/sgd) are in
//! [`options`]; the arithmetic is in [`rules`]; a worker's copies between its model's
//! tensors and a slot or snapshot are in [`flat`]; the segment's layout and who writes
//! which field is documented in [`layout`].
//!
//! The core has no Python dependency; the `python` feature adds the PyO3 module
//! `dbl_ps._rust_ps` (see `src/python/`).

pub mod error;
pub mod flat;
pub mod options;
pub mod protocol;
pub mod rules;
pub mod sync;

#[cfg(not(loom))]
pub mod client;
#[cfg(not(loom))]
pub mod layout;
#[cfg(not(loom))]
pub mod pool;
#[cfg(not(loom))]
pub mod shm;
#[cfg(not(loom))]
pub mod snapshot;
#[cfg(not(loom))]
pub mod store;
#[cfg(not(loom))]
pub mod wait;

#[cfg(all(feature = "python", not(loom)))]
mod python;

pub use error::{Result, StoreError};
pub use options::{Mode, Rule, StoreOptions};
#[cfg(not(loom))]
pub use client::StoreClient;
#[cfg(not(loom))]
pub use snapshot::Pinned;
#[cfg(not(loom))]
pub use store::{cleanup_stale, list_segments, ParameterStore, SegmentInfo, ServerStats, WorkerStats};
