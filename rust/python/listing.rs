//! The listing functions over `crate::listing`: names decoded as `os.fsdecode`
//! decodes them, rows as `_fallback.listing` builds them.

use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList, PyString, PyTuple};

use crate::listing::{list, Detail, Found, ListError, Listing};
use crate::python::error::{errno_error, join};
use crate::python::path::{fs_is_utf8, fs_name, FsPath};

fn list_error(py: Python<'_>, error: ListError, location: &[u8]) -> PyErr {
    match error {
        ListError::Repository(errno) => errno_error(py, errno, location),
        ListError::Entry(errno, path) => errno_error(py, errno, &join(location, &path)),
    }
}

fn run(py: Python<'_>, location: &Bound<'_, PyAny>, details: bool) -> PyResult<Option<Listing>> {
    let path = FsPath::new(location)?;
    let c = path.as_c_str();
    py.detach(|| list(c, details))
        .map_err(|error| list_error(py, error, path.as_bytes()))
}

/// A session of a listing with the name Python sees.
type Named<'py, 'a> = (Bound<'py, PyString>, &'a Found, Option<&'a Detail>);

/// The sessions of `listing` with their decoded names, in `sort_key` order.
///
/// `list` orders ties by the names' UTF-8 decoding; under another file system
/// encoding only the interpreter's codec knows the `str` Python compares, so
/// the ties are ordered again by those strings' code points.
fn named<'py, 'a>(
    py: Python<'py>,
    sessions: &'a [(Found, Option<Detail>)],
) -> PyResult<Vec<Named<'py, 'a>>> {
    let named = sessions
        .iter()
        .map(|(found, detail)| Ok((fs_name(py, &found.name)?, found, detail.as_ref())))
        .collect::<PyResult<Vec<Named<'py, 'a>>>>()?;
    if fs_is_utf8(py) {
        return Ok(named);
    }
    // UTF-32-BE bytes compare as the code points do; surrogatepass keeps the
    // lone surrogates of undecodable bytes.
    let mut keyed = named
        .into_iter()
        .map(|entry| {
            let encoded = entry
                .0
                .call_method1("encode", ("utf-32-be", "surrogatepass"))?;
            Ok((encoded.cast_into::<PyBytes>()?.as_bytes().to_vec(), entry))
        })
        .collect::<PyResult<Vec<_>>>()?;
    keyed.sort_by(|(a_key, a), (b_key, b)| {
        b.1.mtime_ns
            .cmp(&a.1.mtime_ns)
            .then_with(|| a_key.cmp(b_key))
    });
    Ok(keyed.into_iter().map(|(_, entry)| entry).collect())
}

/// One scanned session as the tuple `_fallback.listing.ScannedSession` describes.
fn scanned_row<'py>(
    py: Python<'py>,
    name: Bound<'py, PyString>,
    found: &Found,
    detail: &Detail,
) -> PyResult<Bound<'py, PyTuple>> {
    let (next_ino, next_ctime) = match detail.next {
        Some((ino, ctime)) => (Some(ino), Some(ctime)),
        None => (None, None),
    };
    let entries = detail
        .entries
        .iter()
        .map(|(entry, kind)| Ok((fs_name(py, entry)?, *kind)))
        .collect::<PyResult<Vec<_>>>()?;
    let checkpoint = detail
        .checkpoint
        .as_ref()
        .map(|c| -> PyResult<_> { Ok((fs_name(py, c.name)?, c.mode, c.errno, c.size, c.mtime_ns)) })
        .transpose()?;
    let row = (
        name,
        found.mtime_ns,
        found.dev,
        found.ino,
        next_ino,
        next_ctime,
        detail.errno,
        PyList::new(py, entries)?,
        checkpoint,
    );
    row.into_pyobject(py)
}

/// The names of the sessions in `location`, youngest first; None when it is missing.
#[pyfunction]
pub fn list_sessions<'py>(
    py: Python<'py>,
    location: &Bound<'py, PyAny>,
) -> PyResult<Option<Bound<'py, PyList>>> {
    let Some(listing) = run(py, location, false)? else {
        return Ok(None);
    };
    let names = named(py, &listing.sessions)?
        .into_iter()
        .map(|(name, _, _)| name);
    PyList::new(py, names).map(Some)
}

/// The sessions in `location` with their stat data, youngest first, and the
/// tombstones' names; None when it is missing. Each session is a tuple
/// `(name, mtime_ns, st_dev, st_ino, checkpoint_size, next_ino, next_ctime_ns)`.
#[pyfunction]
pub fn scan_sessions<'py>(
    py: Python<'py>,
    location: &Bound<'py, PyAny>,
) -> PyResult<Option<(Bound<'py, PyList>, Bound<'py, PyList>)>> {
    let Some(listing) = run(py, location, true)? else {
        return Ok(None);
    };
    let mut sessions: Vec<Bound<'py, PyTuple>> = Vec::with_capacity(listing.sessions.len());
    for (name, found, detail) in named(py, &listing.sessions)? {
        let Some(detail) = detail else { continue };
        sessions.push(scanned_row(py, name, found, detail)?);
    }
    let mut tombstones: Vec<Bound<'py, PyTuple>> = Vec::new();
    for (found, detail) in &listing.tombstones {
        let Some(detail) = detail else { continue };
        let name = fs_name(py, &found.name)?;
        tombstones.push(scanned_row(py, name, found, detail)?);
    }
    Ok(Some((
        PyList::new(py, sessions)?,
        PyList::new(py, tombstones)?,
    )))
}
