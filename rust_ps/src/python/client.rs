//! `StoreClient` for Python: one worker's connection to a store, from any process.

use super::arrays::{check_len, extract_f32};
use super::errors::to_py_err;
use super::views::{PySlotView, PyStateSnapshot};
use crate::client::StoreClient;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

/// Run a blocking store call with the GIL released. Every wait tick re-takes the GIL
/// briefly to run Python's signal handlers, so Ctrl-C interrupts a blocked pull/push
/// with the usual KeyboardInterrupt.
pub fn blocking<T: Send>(
    py: Python<'_>,
    call: impl FnOnce(&mut dyn FnMut() -> bool) -> crate::Result<T> + Send,
) -> PyResult<T> {
    let mut pending: Option<PyErr> = None;
    let result = py.detach(|| {
        let mut interrupted = || {
            Python::attach(|py| match py.check_signals() {
                Ok(()) => false,
                Err(error) => {
                    pending = Some(error);
                    true
                }
            })
        };
        call(&mut interrupted)
    });
    if let Some(error) = pending {
        return Err(error);
    }
    result.map_err(to_py_err)
}

/// A worker's handle on a store (attach by name). See `dbl_ps.store` for the API.
#[pyclass(name = "StoreClient", module = "dbl_ps._rust_ps", frozen)]
pub struct PyStoreClient {
    inner: StoreClient,
}

#[pymethods]
impl PyStoreClient {
    #[new]
    fn new(py: Python<'_>, name: String, worker_id: i64) -> PyResult<Self> {
        let worker = usize::try_from(worker_id)
            .map_err(|_| PyValueError::new_err(format!("worker_id={worker_id} must be >= 0")))?;
        let inner = py.detach(|| StoreClient::attach(&name, worker)).map_err(to_py_err)?;
        Ok(PyStoreClient { inner })
    }

    #[getter]
    fn name(&self) -> &str {
        self.inner.name()
    }

    #[getter]
    fn worker_id(&self) -> usize {
        self.inner.worker()
    }

    #[getter]
    fn num_params(&self) -> usize {
        self.inner.num_params()
    }

    #[getter]
    fn version(&self) -> u64 {
        self.inner.version()
    }

    /// Pushes this worker has queued so far.
    #[getter]
    fn pushes(&self) -> u64 {
        self.inner.pushes()
    }

    /// This worker's pushes refused as non-finite (store option `reject_non_finite`);
    /// after a pull returns it counts every push that pull waited for.
    fn rejected(&self) -> u64 {
        self.inner.rejected()
    }

    /// Copy the latest state into `out` after this worker's own pushes are applied
    /// (in BSP: after the round completes); returns the version.
    fn pull(&self, py: Python<'_>, out: &Bound<'_, PyAny>) -> PyResult<u64> {
        let buffer = extract_f32(out, "out", true)?;
        check_len("out", buffer.len, self.inner.num_params())?;
        // SAFETY: `buffer` keeps `out` alive and was checked writable and of the right length.
        blocking(py, |interrupt| self.inner.pull(unsafe { buffer.as_mut_slice() }, interrupt))
    }

    /// Queue `update` with merge weight `weight`; returns the store version.
    #[pyo3(signature = (update, weight=1.0))]
    fn push(&self, py: Python<'_>, update: &Bound<'_, PyAny>, weight: f64) -> PyResult<u64> {
        let buffer = extract_f32(update, "update", false)?;
        check_len("update", buffer.len, self.inner.num_params())?;
        // SAFETY: `buffer` keeps `update` alive and has the right length.
        blocking(py, |interrupt| self.inner.push(unsafe { buffer.as_slice() }, weight, interrupt))
    }

    /// Like `pull`, but zero-copy: a pinned snapshot of the latest state.
    fn snapshot(&self, py: Python<'_>) -> PyResult<PyStateSnapshot> {
        blocking(py, |interrupt| self.inner.pin(interrupt)).map(PyStateSnapshot::new)
    }

    /// Zero-copy push, part one: a writable view of the next free queue slot.
    fn reserve(&self, py: Python<'_>) -> PyResult<PySlotView> {
        let address = blocking(py, |interrupt| self.inner.reserve(interrupt).map(|p| p as usize))?;
        Ok(PySlotView::new(self.inner.shared().clone(), address, self.inner.num_params()))
    }

    /// Zero-copy push, part two: publish the reserved slot.
    #[pyo3(signature = (weight=1.0))]
    fn commit(&self, weight: f64) -> PyResult<u64> {
        self.inner.commit(weight).map_err(to_py_err)
    }

    /// Leave the store (BSP rounds and SSP bounds stop waiting for this worker).
    fn close(&self) {
        self.inner.close();
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    fn __exit__(&self, _t: Py<PyAny>, _v: Py<PyAny>, _tb: Py<PyAny>) -> bool {
        self.close();
        false
    }

    fn __repr__(&self) -> String {
        format!("StoreClient(name={:?}, worker_id={}, version={})", self.inner.name(), self.inner.worker(), self.inner.version())
    }
}
