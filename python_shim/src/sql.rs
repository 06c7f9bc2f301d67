//! The placeholder rewriting that `pyo3_twisted.database` uses for PostgreSQL: the
//! crate's scanner, one implementation for Rust and Python callers.

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

/// convert_placeholders(sql, style) -> str
///
/// Rewrites `?` placeholders (outside literals, quoted identifiers and comments) for
/// an engine: style "pyformat" (`%s`, and `%` doubled) or "numbered" (`$1`, `$2`...).
#[pyfunction]
pub(crate) fn convert_placeholders(sql: &str, style: &str) -> PyResult<String> {
    let placeholders = pyo3_twisted::db::Placeholders::scan(sql);
    match style {
        "pyformat" => Ok(placeholders.pyformat(sql)),
        "numbered" => Ok(placeholders.numbered(sql)),
        other => Err(PyValueError::new_err(format!(
            "style must be 'pyformat' or 'numbered', got {other:?}"
        ))),
    }
}

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(convert_placeholders, m)?)
}
