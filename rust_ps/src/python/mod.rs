//! The Python extension module `dbl_ps._rust_ps`: one file per Python-visible class,
//! errors in `errors.rs`, array handling in `arrays.rs`. The public, documented face
//! is the pure-Python package `dbl_ps` that wraps it.

mod arrays;
mod client;
mod errors;
mod store;
mod views;

use pyo3::prelude::*;

/// Remove shared-memory segments whose owning process died; returns their names.
#[pyfunction]
fn cleanup_stale(py: Python<'_>) -> Vec<String> {
    py.detach(crate::store::cleanup_stale)
}

#[pymodule]
fn _rust_ps(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<store::PyParameterStore>()?;
    m.add_class::<client::PyStoreClient>()?;
    m.add_class::<views::PyStateSnapshot>()?;
    m.add_class::<views::PySlotView>()?;
    m.add_function(wrap_pyfunction!(cleanup_stale, m)?)?;
    m.add("SEGMENT_PREFIX", crate::shm::PREFIX)?;
    errors::register(m)?;
    Ok(())
}
