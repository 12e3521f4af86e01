//! Rust errors -> Python exceptions, in one place. Users catch `StoreError` (or its
//! subclasses); bad arguments are `ValueError`/`TypeError` like everywhere in Python.

use pyo3::exceptions::{PyOSError, PyRuntimeError, PyValueError};
use pyo3::prelude::*;

pyo3::create_exception!(
    _rust_ps,
    StoreError,
    PyRuntimeError,
    "Base class of the parameter store's own errors."
);
pyo3::create_exception!(
    _rust_ps,
    StoreClosedError,
    StoreError,
    "The store (or this handle) was closed."
);
pyo3::create_exception!(
    _rust_ps,
    StoreNotFoundError,
    StoreError,
    "No parameter store has that name."
);
pyo3::create_exception!(
    _rust_ps,
    OwnerDiedError,
    StoreError,
    "The process that owns the store died."
);

pub fn to_py_err(error: crate::StoreError) -> PyErr {
    use crate::StoreError as E;
    match error {
        E::InvalidArgument(m) => PyValueError::new_err(m),
        E::NotFound(m) => StoreNotFoundError::new_err(m),
        E::Closed(m) => StoreClosedError::new_err(m),
        E::OwnerDied(m) => OwnerDiedError::new_err(m),
        E::Interrupted => StoreError::new_err("interrupted while waiting on the parameter store"),
        E::Os(m) => PyOSError::new_err(m),
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add("StoreError", py.get_type::<StoreError>())?;
    m.add("StoreClosedError", py.get_type::<StoreClosedError>())?;
    m.add("StoreNotFoundError", py.get_type::<StoreNotFoundError>())?;
    m.add("OwnerDiedError", py.get_type::<OwnerDiedError>())?;
    Ok(())
}
