//! `ParameterStore` for Python: owns the store and its server thread.

use super::arrays::{check_len, extract_f32};
use super::errors::to_py_err;
use super::views::PyStateSnapshot;
use crate::options::{Mode, Rule, StoreOptions};
use crate::store::ParameterStore;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyDict;

/// The parameter store (owner side). See `dbl_ps.store` for the documented API.
#[pyclass(name = "ParameterStore", module = "dbl_ps._rust_ps", frozen)]
pub struct PyParameterStore {
    inner: ParameterStore,
}

fn non_negative(name: &str, value: i64) -> PyResult<usize> {
    usize::try_from(value).map_err(|_| PyValueError::new_err(format!("{name}={value} must be >= 0")))
}

#[pymethods]
impl PyParameterStore {
    #[new]
    #[pyo3(signature = (num_params, num_workers, mode="asp", rule="blend", staleness=0, apply_threads=None,
                        lr=0.1, momentum=0.0, weight_decay=0.0, nesterov=false, name=None, initial=None, slots=2,
                        reject_non_finite=false))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        num_params: i64,
        num_workers: i64,
        mode: &str,
        rule: &str,
        staleness: i64,
        apply_threads: Option<i64>,
        lr: f64,
        momentum: f64,
        weight_decay: f64,
        nesterov: bool,
        name: Option<String>,
        initial: Option<&Bound<'_, PyAny>>,
        slots: i64,
        reject_non_finite: bool,
    ) -> PyResult<Self> {
        let options = StoreOptions {
            num_params: non_negative("num_params", num_params)?,
            num_workers: non_negative("num_workers", num_workers)?,
            mode: Mode::parse(mode).map_err(to_py_err)?,
            rule: Rule::parse(rule).map_err(to_py_err)?,
            staleness: u32::try_from(staleness)
                .map_err(|_| PyValueError::new_err(format!("staleness={staleness} must be in 0..=2**32-1")))?,
            apply_threads: apply_threads.map(|t| non_negative("apply_threads", t)).transpose()?,
            slots: non_negative("slots", slots)?,
            lr,
            momentum,
            weight_decay,
            nesterov,
            name,
            reject_non_finite,
        };
        options.validate().map_err(to_py_err)?;
        let initial = initial.map(|obj| extract_f32(obj, "initial", false)).transpose()?;
        if let Some(buffer) = &initial {
            check_len("initial", buffer.len, options.num_params)?;
        }
        let inner = py
            .detach(|| {
                // SAFETY: `initial` holds a reference to its object for the whole call.
                let values = initial.as_ref().map(|b| unsafe { b.as_slice() });
                ParameterStore::create(options, values)
            })
            .map_err(to_py_err)?;
        Ok(PyParameterStore { inner })
    }

    /// Name to pass to `StoreClient(name, worker_id)`.
    #[getter]
    fn name(&self) -> &str {
        self.inner.name()
    }

    /// Updates (asp/ssp) or rounds (bsp) applied so far.
    #[getter]
    fn version(&self) -> u64 {
        self.inner.version()
    }

    #[getter]
    fn num_params(&self) -> usize {
        self.inner.options().num_params
    }

    #[getter]
    fn num_workers(&self) -> usize {
        self.inner.options().num_workers
    }

    #[getter]
    fn mode(&self) -> &'static str {
        self.inner.options().mode.as_str()
    }

    #[getter]
    fn rule(&self) -> &'static str {
        self.inner.options().rule.as_str()
    }

    #[getter]
    fn staleness(&self) -> u32 {
        self.inner.options().staleness
    }

    #[getter]
    fn apply_threads(&self) -> usize {
        self.inner.apply_threads()
    }

    #[getter]
    fn lr(&self) -> f64 {
        self.inner.lr()
    }

    /// Whether merges that would write a NaN or an infinity are refused.
    #[getter]
    fn reject_non_finite(&self) -> bool {
        self.inner.options().reject_non_finite
    }

    #[getter]
    fn closed(&self) -> bool {
        self.inner.is_closed()
    }

    /// Set the learning rate of rule 'sgd' (effective from the next applied update).
    fn set_lr(&self, lr: f64) -> PyResult<()> {
        self.inner.set_lr(lr).map_err(to_py_err)
    }

    /// Copy the latest state into `out` (float32, num_params); returns its version.
    fn read(&self, py: Python<'_>, out: &Bound<'_, PyAny>) -> PyResult<u64> {
        let buffer = extract_f32(out, "out", true)?;
        check_len("out", buffer.len, self.inner.options().num_params)?;
        // SAFETY: `buffer` keeps `out` alive and was checked writable and of the right length.
        py.detach(|| self.inner.read(unsafe { buffer.as_mut_slice() })).map_err(to_py_err)
    }

    /// Pin the latest state for zero-copy reading (`numpy.asarray(snapshot)`).
    fn snapshot(&self) -> PyResult<PyStateSnapshot> {
        Ok(PyStateSnapshot::new(self.inner.pin().map_err(to_py_err)?))
    }

    /// Server totals: ``applies`` (merges published), ``apply_seconds`` (merging),
    /// ``wait_seconds`` (for readers to release a copy), ``bytes_moved`` (floats read and
    /// written x 4) and ``rejected`` (payloads refused as non-finite).
    fn server_stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        use std::sync::atomic::Ordering::Relaxed;
        let s = self.inner.server_stats();
        let d = PyDict::new(py);
        d.set_item("applies", s.applies.load(Relaxed))?;
        d.set_item("apply_seconds", s.apply_nanos.load(Relaxed) as f64 * 1e-9)?;
        d.set_item("wait_seconds", s.wait_nanos.load(Relaxed) as f64 * 1e-9)?;
        d.set_item("bytes_moved", s.bytes_moved.load(Relaxed))?;
        d.set_item("rejected", s.rejected.load(Relaxed))?;
        Ok(d)
    }

    /// Per worker: pushes published, pushes applied, pushes rejected (non-finite),
    /// attached pid (0 = none), departed.
    fn worker_stats<'py>(&self, py: Python<'py>) -> PyResult<Vec<Bound<'py, PyDict>>> {
        self.inner
            .worker_stats()
            .into_iter()
            .map(|s| {
                let d = PyDict::new(py);
                d.set_item("pushes", s.pushes)?;
                d.set_item("applied", s.applied)?;
                d.set_item("rejected", s.rejected)?;
                d.set_item("attached_pid", s.attached_pid)?;
                d.set_item("departed", s.departed)?;
                Ok(d)
            })
            .collect()
    }

    /// Stop the server, fail waiting clients and remove the shared memory. Idempotent.
    fn close(&self, py: Python<'_>) {
        py.detach(|| self.inner.close());
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    fn __exit__(&self, py: Python<'_>, _t: Py<PyAny>, _v: Py<PyAny>, _tb: Py<PyAny>) -> bool {
        self.close(py);
        false
    }

    fn __repr__(&self) -> String {
        let o = self.inner.options();
        format!(
            "ParameterStore(name={:?}, num_params={}, num_workers={}, mode={:?}, rule={:?}, version={}, closed={})",
            self.inner.name(),
            o.num_params,
            o.num_workers,
            o.mode.as_str(),
            o.rule.as_str(),
            self.inner.version(),
            self.inner.is_closed()
        )
    }
}
