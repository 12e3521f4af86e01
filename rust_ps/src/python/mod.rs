//! The Python extension module `dbl_ps._rust_ps`: one file per Python-visible class,
//! errors in `errors.rs`, array handling in `arrays.rs`. The public, documented face
//! is the pure-Python package `dbl_ps` that wraps it.

mod arrays;
mod client;
mod errors;
mod flat;
mod store;
mod views;

use pyo3::prelude::*;

/// Remove shared-memory segments whose owning process died; returns their names.
#[pyfunction]
fn cleanup_stale(py: Python<'_>) -> Vec<String> {
    py.detach(crate::store::cleanup_stale)
}

/// Every `dblps-*` segment on the machine: name, owner_pid, owner_alive, stale.
#[pyfunction]
fn list_segments(py: Python<'_>) -> PyResult<Vec<Bound<'_, pyo3::types::PyDict>>> {
    let segments = py.detach(crate::store::list_segments);
    segments
        .into_iter()
        .map(|s| {
            let d = pyo3::types::PyDict::new(py);
            d.set_item("name", s.name)?;
            d.set_item("owner_pid", s.owner_pid)?;
            d.set_item("owner_alive", s.owner_alive)?;
            d.set_item("stale", s.stale)?;
            Ok(d)
        })
        .collect()
}

#[pymodule]
fn _rust_ps(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<store::PyParameterStore>()?;
    m.add_class::<client::PyStoreClient>()?;
    m.add_class::<views::PyStateSnapshot>()?;
    m.add_class::<views::PySlotView>()?;
    m.add_function(wrap_pyfunction!(cleanup_stale, m)?)?;
    m.add_function(wrap_pyfunction!(list_segments, m)?)?;
    m.add_function(wrap_pyfunction!(flat::gather_into, m)?)?;
    m.add_function(wrap_pyfunction!(flat::scatter_from, m)?)?;
    m.add("SEGMENT_PREFIX", crate::shm::PREFIX)?;
    errors::register(m)?;
    Ok(())
}
