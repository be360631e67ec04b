//! Finding and loading the ONNX Runtime shared library at run time.
//!
//! dpir links nothing at build time (`ort`'s `load-dynamic`); the library is opened on first use. One process
//! holds one ONNX Runtime: the first successful load wins and later requests for another path are refused.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};

use crate::error::{Error, Result};

/// File names tried in each directory, most specific first.
const LIBRARY_NAMES: &[&str] = &["libonnxruntime.so", "libonnxruntime.so.1"];

/// What is loaded in this process.
struct Loaded {
    path: PathBuf,
    environment: ort::environment::Environment,
}

static LOADED: OnceLock<Loaded> = OnceLock::new();
static LOADING: Mutex<()> = Mutex::new(());

/// Loads ONNX Runtime (once per process) and returns the path it came from.
///
/// `explicit` is the path from the caller's options; when it is `None` the lookup order is: `DPIR_ORT_LIB` or
/// `ORT_DYLIB_PATH`; beside the executable; beside the loaded libdpir; the project's fetched copy
/// (`build/onnxruntime/lib`); an installed `onnxruntime` or `onnxruntime-gpu` Python package.
pub(crate) fn ensure_loaded(explicit: Option<&Path>) -> Result<&'static Path> {
    let _guard = LOADING.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(loaded) = LOADED.get() {
        if let Some(wanted) = explicit {
            if !same_file(wanted, &loaded.path) {
                return Err(Error::OnnxRuntimeLoad {
                    path: wanted.to_path_buf(),
                    reason: format!(
                        "this process already loaded ONNX Runtime from {}; one process can use only one",
                        loaded.path.display()
                    ),
                });
            }
        }
        return Ok(&loaded.path);
    }
    let path = match explicit {
        Some(path) => path.to_path_buf(),
        None => find()?,
    };
    let environment = load(&path)?;
    let loaded = LOADED.get_or_init(|| Loaded { path, environment });
    Ok(&loaded.path)
}

/// The environment sessions are built in. Only valid after [`ensure_loaded`] succeeded.
pub(crate) fn environment() -> &'static ort::environment::Environment {
    &LOADED.get().expect("ONNX Runtime is loaded before any session is built").environment
}

fn load(path: &Path) -> Result<ort::environment::Environment> {
    if !path.is_file() {
        return Err(Error::OnnxRuntimeLoad { path: path.to_path_buf(), reason: "no such file".into() });
    }
    let builder = ort::init_from(path)
        .map_err(|e| Error::OnnxRuntimeLoad { path: path.to_path_buf(), reason: describe_load_error(&e) })?;
    builder
        .with_name("dpir")
        .with_telemetry(false)
        .build()
        .map_err(|e| Error::OnnxRuntimeLoad { path: path.to_path_buf(), reason: e.to_string() })
}

/// The dlopen reason hides in the inner error's source; bring it to the surface.
fn describe_load_error(error: &ort::LoadDynamicError) -> String {
    let mut text = error.to_string();
    if let ort::LoadDynamicError::Dlopen { error: inner, .. } = error {
        let mut source: Option<&dyn std::error::Error> = Some(inner);
        while let Some(cause) = source {
            let cause_text = cause.to_string();
            if !text.contains(&cause_text) {
                text.push_str(": ");
                text.push_str(&cause_text);
            }
            source = cause.source();
        }
    }
    text
}

/// A library named by `DPIR_ORT_LIB` or `ORT_DYLIB_PATH`: a choice the user made, used or reported, never skipped.
fn from_environment() -> Option<PathBuf> {
    ["DPIR_ORT_LIB", "ORT_DYLIB_PATH"]
        .iter()
        .find_map(|var| env::var_os(var).filter(|v| !v.is_empty()).map(PathBuf::from))
}

/// The places searched when neither the options nor the environment name a library, in order.
fn candidates() -> Vec<PathBuf> {
    let mut directories = Vec::new();
    if let Some(dir) = env::current_exe().ok().and_then(|exe| exe.parent().map(Path::to_path_buf)) {
        directories.push(dir);
    }
    if let Some(dir) = this_library_dir() {
        directories.push(dir);
    }
    directories.push(Path::new(env!("CARGO_MANIFEST_DIR")).join("build/onnxruntime/lib"));
    // Beside the executable and beside libdpir are one place when libdpir is linked statically.
    directories.dedup();
    let mut found: Vec<PathBuf> =
        directories.iter().flat_map(|dir| LIBRARY_NAMES.iter().map(move |name| dir.join(name))).collect();
    found.extend(python_package_libraries());
    found
}

fn find() -> Result<PathBuf> {
    if let Some(path) = from_environment() {
        return Ok(path);
    }
    let searched = candidates();
    match searched.iter().find(|path| path.is_file()) {
        Some(path) => Ok(path.clone()),
        None => Err(Error::OnnxRuntimeNotFound { searched }),
    }
}

/// The directory of the shared object this code lives in (libdpir.so when loaded by a C program).
fn this_library_dir() -> Option<PathBuf> {
    let mut info: libc::Dl_info = unsafe { std::mem::zeroed() };
    // SAFETY: dladdr only reads the address; `info` outlives the call.
    let ok = unsafe { libc::dladdr(this_library_dir as *const libc::c_void, &mut info) };
    if ok == 0 || info.dli_fname.is_null() {
        return None;
    }
    // SAFETY: dladdr returned a NUL-terminated path owned by the loader.
    let name = unsafe { std::ffi::CStr::from_ptr(info.dli_fname) };
    let path = PathBuf::from(<std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(name.to_bytes()));
    path.parent().map(Path::to_path_buf)
}

/// The site-packages folders of the active virtual environment and of the `python3` on PATH.
pub(crate) fn python_site_dirs() -> Vec<PathBuf> {
    let mut site_dirs: Vec<PathBuf> = Vec::new();
    if let Some(venv) = env::var_os("VIRTUAL_ENV") {
        site_dirs.extend(glob_dirs(&Path::new(&venv).join("lib"), "python3", "site-packages"));
    }
    // Ask the Python on PATH where its packages live; silently nothing when there is no Python.
    let script = "import site; print('\\n'.join(site.getsitepackages() + [site.getusersitepackages()]))";
    if let Ok(output) = Command::new("python3").args(["-c", script]).output() {
        if output.status.success() {
            site_dirs.extend(String::from_utf8_lossy(&output.stdout).lines().map(PathBuf::from));
        }
    }
    site_dirs
}

/// Libraries inside installed `onnxruntime` / `onnxruntime-gpu` wheels (`onnxruntime/capi/libonnxruntime.so.*`).
fn python_package_libraries() -> Vec<PathBuf> {
    let mut libraries = Vec::new();
    for dir in python_site_dirs() {
        let capi = dir.join("onnxruntime/capi");
        let Ok(entries) = std::fs::read_dir(&capi) else { continue };
        let mut names: Vec<PathBuf> = entries
            .flatten()
            .map(|entry| entry.path())
            .filter(|path| {
                path.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("libonnxruntime.so"))
            })
            .collect();
        names.sort();
        libraries.extend(names);
    }
    libraries
}

/// `base/<prefix>*/<leaf>` for every matching child directory.
pub(crate) fn glob_dirs(base: &Path, prefix: &str, leaf: &str) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(base) else { return Vec::new() };
    entries
        .flatten()
        .filter(|entry| entry.file_name().to_string_lossy().starts_with(prefix))
        .map(|entry| entry.path().join(leaf))
        .collect()
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candidates_include_the_fetched_copy() {
        let fetched = Path::new(env!("CARGO_MANIFEST_DIR")).join("build/onnxruntime/lib/libonnxruntime.so");
        assert!(candidates().contains(&fetched));
    }
}
