//! `gather_into` and `scatter_from`: the Python face of [`crate::flat`], called by
//! `dbl_ps.training.flat.FlatState` with a CPU model's tensors.

use super::arrays::{extract_f32, F32Buffer};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

fn buffers(objects: &[Bound<'_, PyAny>], what: &str, writable: bool) -> PyResult<Vec<F32Buffer>> {
    objects.iter().enumerate().map(|(i, o)| extract_f32(o, &format!("{what}[{i}]"), writable)).collect()
}

fn check_total(pieces: &[F32Buffer], what: &str, total: usize, flat: &str) -> PyResult<()> {
    let sum: usize = pieces.iter().map(|p| p.len).sum();
    if sum != total {
        return Err(PyValueError::new_err(format!("{what} hold {sum} values in all but {flat} has {total}")));
    }
    Ok(())
}

/// Written memory must not overlap anything else of the call: the copies read and write
/// through raw slices (and streaming stores), so an overlap would be undefined behaviour.
fn check_disjoint(written: &[(&F32Buffer, String)], read: &[(&F32Buffer, String)]) -> PyResult<()> {
    for (i, (w, w_name)) in written.iter().enumerate() {
        let others = written[i + 1..].iter().chain(read);
        if let Some((_, name)) = others.into_iter().find(|(o, _)| w.overlaps(o)) {
            return Err(PyValueError::new_err(format!("{w_name} overlaps {name} in memory; pass separate buffers")));
        }
    }
    Ok(())
}

/// Write the float32 CPU tensors (or arrays) `sources`, in order, into the flat vector
/// `out`; with `reference`, write `reference - state` instead (rule sgd's displacement).
/// One pass, streaming stores; returns whether every value written is finite.
#[pyfunction]
#[pyo3(signature = (sources, out, reference=None))]
pub fn gather_into(
    py: Python<'_>,
    sources: Vec<Bound<'_, PyAny>>,
    out: &Bound<'_, PyAny>,
    reference: Option<&Bound<'_, PyAny>>,
) -> PyResult<bool> {
    let sources = buffers(&sources, "sources", false)?;
    let out = extract_f32(out, "out", true)?;
    check_total(&sources, "sources", out.len, "out")?;
    let reference = reference.map(|r| extract_f32(r, "reference", false)).transpose()?;
    if let Some(r) = &reference {
        check_total(std::slice::from_ref(r), "reference", out.len, "out")?;
    }
    let mut read: Vec<(&F32Buffer, String)> = sources.iter().enumerate().map(|(i, s)| (s, format!("sources[{i}]"))).collect();
    read.extend(reference.iter().map(|r| (r, "reference".to_string())));
    check_disjoint(&[(&out, "out".to_string())], &read)?;
    Ok(py.detach(|| {
        // SAFETY: every buffer keeps its Python object alive; `out` is writable and
        // overlaps none of the others (checked), and the lengths add up (checked).
        unsafe {
            let pieces: Vec<&[f32]> = sources.iter().map(|s| s.as_slice()).collect();
            match &reference {
                None => crate::flat::gather(&pieces, out.as_mut_slice()),
                Some(r) => crate::flat::gather_displacement(&pieces, r.as_slice(), out.as_mut_slice()),
            }
        }
    }))
}

/// Split the flat vector `state` over the float32 CPU tensors (or arrays) `targets`, in
/// order; with `copy`, also write the whole state into it in the same pass.
#[pyfunction]
#[pyo3(signature = (state, targets, copy=None))]
pub fn scatter_from(
    py: Python<'_>,
    state: &Bound<'_, PyAny>,
    targets: Vec<Bound<'_, PyAny>>,
    copy: Option<&Bound<'_, PyAny>>,
) -> PyResult<()> {
    let state = extract_f32(state, "state", false)?;
    let targets = buffers(&targets, "targets", true)?;
    check_total(&targets, "targets", state.len, "state")?;
    let copy = copy.map(|c| extract_f32(c, "copy", true)).transpose()?;
    if let Some(c) = &copy {
        check_total(std::slice::from_ref(c), "copy", state.len, "state")?;
    }
    let mut written: Vec<(&F32Buffer, String)> =
        targets.iter().enumerate().map(|(i, t)| (t, format!("targets[{i}]"))).collect();
    written.extend(copy.iter().map(|c| (c, "copy".to_string())));
    check_disjoint(&written, &[(&state, "state".to_string())])?;
    py.detach(|| {
        // SAFETY: as in `gather_into`: live, checked writable, disjoint, lengths add up.
        unsafe {
            let mut pieces: Vec<&mut [f32]> = targets.iter().map(|t| t.as_mut_slice()).collect();
            crate::flat::scatter(state.as_slice(), &mut pieces, copy.as_ref().map(|c| c.as_mut_slice()));
        }
    });
    Ok(())
}
