// Lets this package's own test and bench binaries, which embed CPython, find
// libpython at run time. `rustc-link-arg` applies to this package's targets only,
// never to crates that depend on it.
fn main() {
    pyo3_build_config::add_libpython_rpath_link_args();
}
