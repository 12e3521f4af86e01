//! Float32 memory across the boundary, both ways:
//! * in: NumPy arrays (via `__array_interface__`) and CPU torch tensors (via
//!   `data_ptr()`), checked for dtype, contiguity, length and writability with one
//!   clear error each; this works under the abi3 limited API of Python 3.10;
//! * out: zero-copy views of shared memory as objects exposing `__array_interface__`,
//!   so `numpy.asarray(view)` (and then `torch.from_numpy`) wraps the memory while
//!   the view object keeps the mapping alive.

use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyTuple};

/// The address and length of a caller's float32 buffer, plus a reference that keeps
/// the object (and so the memory) alive while the GIL is released.
pub struct F32Buffer {
    address: usize,
    pub len: usize,
    _owner: Py<PyAny>,
}

impl F32Buffer {
    /// # Safety
    /// The caller must not let Python resize or free the object meanwhile (we hold a
    /// reference, so it is not freed) and must not create overlapping mutable slices.
    pub unsafe fn as_slice(&self) -> &[f32] {
        std::slice::from_raw_parts(self.address as *const f32, self.len)
    }

    /// # Safety
    /// As [`F32Buffer::as_slice`]; the buffer was checked to be writable.
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn as_mut_slice(&self) -> &mut [f32] {
        std::slice::from_raw_parts_mut(self.address as *mut f32, self.len)
    }

    /// Whether the two buffers share any byte (empty ones share none).
    pub fn overlaps(&self, other: &F32Buffer) -> bool {
        let (a, b) = (self.address..self.address + 4 * self.len, other.address..other.address + 4 * other.len);
        !a.is_empty() && !b.is_empty() && a.start < b.end && b.start < a.end
    }
}

fn dtype_name(typestr: &str) -> String {
    let (kind, size) = (typestr.chars().nth(1).unwrap_or('?'), typestr.get(2..).unwrap_or("?"));
    let bits = size.parse::<usize>().map(|b| (b * 8).to_string()).unwrap_or_default();
    match kind {
        'f' => format!("float{bits}"),
        'i' => format!("int{bits}"),
        'u' => format!("uint{bits}"),
        'c' => format!("complex{bits}"),
        'b' => "bool".into(),
        _ => format!("typestr {typestr:?}"),
    }
}

/// Extract a float32 buffer from `object` for argument `what`.
pub fn extract_f32(object: &Bound<'_, PyAny>, what: &str, writable: bool) -> PyResult<F32Buffer> {
    if let Ok(interface) = object.getattr("__array_interface__") {
        return from_array_interface(object, &interface, what, writable);
    }
    if object.hasattr("data_ptr")? && object.hasattr("is_contiguous")? {
        return from_torch(object, what);
    }
    Err(PyTypeError::new_err(format!(
        "{what} must be a float32 NumPy array or CPU torch tensor, got {}",
        object.get_type().name()?
    )))
}

fn from_array_interface(
    object: &Bound<'_, PyAny>,
    interface: &Bound<'_, PyAny>,
    what: &str,
    writable: bool,
) -> PyResult<F32Buffer> {
    let get = |key: &str| -> PyResult<Bound<'_, PyAny>> { interface.get_item(key) };
    let typestr: String = get("typestr")?.extract()?;
    if !matches!(typestr.as_str(), "<f4" | "=f4") || (cfg!(target_endian = "big") && typestr == "<f4") {
        return Err(PyTypeError::new_err(format!(
            "{what} must be float32, got {} (convert with .astype(numpy.float32))",
            dtype_name(&typestr)
        )));
    }
    let shape: Vec<usize> = get("shape")?.extract()?;
    let len: usize = shape.iter().product();
    let strides = interface.get_item("strides").ok().filter(|s| !s.is_none());
    if let Some(strides) = strides {
        let strides: Vec<isize> = strides.extract()?;
        let mut expected = 4isize;
        for (dim, stride) in shape.iter().zip(&strides).rev() {
            if *dim > 1 && *stride != expected {
                return Err(PyValueError::new_err(format!(
                    "{what} must be C-contiguous (strides {strides:?} for shape {shape:?}); \
                     use numpy.ascontiguousarray"
                )));
            }
            expected *= *dim as isize;
        }
    }
    let data = get("data")?;
    let data = data.cast::<PyTuple>().map_err(|_| {
        PyValueError::new_err(format!("{what} exposes its memory in a way that cannot be shared (no data pointer)"))
    })?;
    let address: usize = data.get_item(0)?.extract()?;
    let readonly: bool = data.get_item(1)?.extract()?;
    if writable && readonly {
        return Err(PyValueError::new_err(format!("{what} is read-only; pass a writable array")));
    }
    Ok(F32Buffer { address, len, _owner: object.clone().unbind() })
}

fn from_torch(object: &Bound<'_, PyAny>, what: &str) -> PyResult<F32Buffer> {
    let device: String = object.getattr("device")?.getattr("type")?.extract()?;
    if device != "cpu" {
        return Err(PyValueError::new_err(format!(
            "{what} is on device {device:?}; the store reads and writes CPU memory: copy through a \
             (pinned) CPU tensor, e.g. torch.empty(n, pin_memory=True)"
        )));
    }
    let dtype = object.getattr("dtype")?.str()?.to_string();
    if dtype != "torch.float32" {
        return Err(PyTypeError::new_err(format!("{what} must be float32, got {dtype} (convert with .float())")));
    }
    if !object.call_method0("is_contiguous")?.extract::<bool>()? {
        return Err(PyValueError::new_err(format!("{what} must be contiguous; use .contiguous()")));
    }
    let len: usize = object.call_method0("numel")?.extract()?;
    let address: usize = object.call_method0("data_ptr")?.extract()?;
    Ok(F32Buffer { address, len, _owner: object.clone().unbind() })
}

/// The `__array_interface__` dict of a 1-D float32 array at `address`.
pub fn array_interface<'py>(py: Python<'py>, address: usize, len: usize, readonly: bool) -> PyResult<Bound<'py, PyDict>> {
    let dict = PyDict::new(py);
    dict.set_item("version", 3)?;
    dict.set_item("shape", (len,))?;
    dict.set_item("typestr", "<f4")?;
    dict.set_item("data", (address, readonly))?;
    Ok(dict)
}

pub fn check_len(what: &str, len: usize, expected: usize) -> PyResult<()> {
    if len != expected {
        return Err(PyValueError::new_err(format!(
            "{what} has {len} values but the store holds num_params={expected}"
        )));
    }
    Ok(())
}
