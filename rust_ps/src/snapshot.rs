//! Reading the latest state: pin a copy, read it, unpin (see `protocol::DoubleBuffer`).

use crate::layout::Shared;
use crate::sync::Ordering;
use crate::wait;

/// A pinned state copy: the server will not write it while this guard lives, so the
/// `num_params` floats at [`Pinned::as_ptr`] are a consistent snapshot of one version.
/// Dropping the guard releases the pin.
pub struct Pinned {
    shared: Shared,
    group: Option<usize>,
    index: usize,
    version: u64,
}

impl Pinned {
    /// Pin the latest copy for reader group `group` (a worker id, or `None` = owner).
    pub fn new(shared: &Shared, group: Option<usize>) -> Pinned {
        let index = shared.double_buffer().pin(shared.pins(group));
        let version = shared.header().buffer_version[index].load(Ordering::SeqCst);
        Pinned { shared: shared.clone(), group, index, version }
    }

    /// The store version this copy holds.
    pub fn version(&self) -> u64 {
        self.version
    }

    pub fn as_ptr(&self) -> *const f32 {
        self.shared.state_ptr(self.index)
    }

    pub fn len(&self) -> usize {
        self.shared.layout.num_params
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn shared(&self) -> &Shared {
        &self.shared
    }

    /// Copy the snapshot into `out` (its length must be `num_params`).
    pub fn copy_to(&self, out: &mut [f32]) {
        assert_eq!(out.len(), self.len());
        // SAFETY: the copy is pinned (the server does not write it while we hold the
        // pin) and lies inside the mapping, which `self.shared` keeps alive; `out` is
        // a distinct, caller-owned buffer of the same length.
        unsafe { std::ptr::copy_nonoverlapping(self.as_ptr(), out.as_mut_ptr(), out.len()) };
    }
}

impl Drop for Pinned {
    fn drop(&mut self) {
        if self.shared.double_buffer().unpin(self.shared.pins(self.group), self.index) {
            wait::ring(&self.shared.header().pin_bell);
        }
    }
}
