//! Zero-copy views of shared memory handed to Python.

use super::arrays::array_interface;
use super::errors::StoreClosedError;
use crate::layout::Shared;
use crate::snapshot::Pinned;
use pyo3::prelude::*;
use pyo3::types::PyDict;
use std::sync::Mutex;

/// A pinned, read-only snapshot of the store's state: `numpy.asarray(snapshot)` is a
/// zero-copy float32 view that the server does not overwrite until `release()` (or the
/// end of a `with` block). The memory stays mapped while the snapshot object lives;
/// after release its contents may change.
#[pyclass(name = "StateSnapshot", module = "dbl_ps._rust_ps", frozen)]
pub struct PyStateSnapshot {
    pinned: Mutex<Option<Pinned>>,
    /// Keeps the mapping alive for arrays that outlive the pin.
    _shared: Shared,
    address: usize,
    len: usize,
    version: u64,
}

impl PyStateSnapshot {
    pub fn new(pinned: Pinned) -> PyStateSnapshot {
        PyStateSnapshot {
            _shared: pinned.shared().clone(),
            address: pinned.as_ptr() as usize,
            len: pinned.len(),
            version: pinned.version(),
            pinned: Mutex::new(Some(pinned)),
        }
    }
}

#[pymethods]
impl PyStateSnapshot {
    /// Store version held by this snapshot.
    #[getter]
    fn version(&self) -> u64 {
        self.version
    }

    #[getter]
    fn released(&self) -> bool {
        self.pinned.lock().expect("pin").is_none()
    }

    /// Let the server write this copy again. Idempotent.
    fn release(&self) {
        self.pinned.lock().expect("pin").take();
    }

    #[getter]
    fn __array_interface__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        if self.released() {
            return Err(StoreClosedError::new_err("this snapshot was released; take a new one"));
        }
        array_interface(py, self.address, self.len, true)
    }

    fn __len__(&self) -> usize {
        self.len
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    fn __exit__(&self, _t: Py<PyAny>, _v: Py<PyAny>, _tb: Py<PyAny>) -> bool {
        self.release();
        false
    }

    fn __repr__(&self) -> String {
        let released = if self.released() { "True" } else { "False" };
        format!("StateSnapshot(version={}, num_params={}, released={released})", self.version, self.len)
    }
}

/// A writable view of a reserved push slot (`StoreClient.reserve()`): fill it, then
/// `StoreClient.commit(weight)`. Do not write it after committing.
#[pyclass(name = "SlotView", module = "dbl_ps._rust_ps", frozen)]
pub struct PySlotView {
    _shared: Shared,
    address: usize,
    len: usize,
}

impl PySlotView {
    pub fn new(shared: Shared, address: usize, len: usize) -> PySlotView {
        PySlotView { _shared: shared, address, len }
    }
}

#[pymethods]
impl PySlotView {
    #[getter]
    fn __array_interface__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        array_interface(py, self.address, self.len, false)
    }

    fn __len__(&self) -> usize {
        self.len
    }
}
