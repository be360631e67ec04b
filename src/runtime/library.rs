//! Finding and loading the ONNX Runtime shared library at run time.
//!
//! dpir links nothing at build time (`ort`'s `load-dynamic`); the library is opened on first use. One process
//! holds one ONNX Runtime: the first successful load wins and later requests for another path are refused.

use std::env;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use crate::error::{Error, Result};

/// File names tried in each directory, most specific first.
#[cfg(not(windows))]
pub const LIBRARY_NAMES: &[&str] = &["libonnxruntime.so", "libonnxruntime.so.1"];
/// File names tried in each directory.
#[cfg(windows)]
pub const LIBRARY_NAMES: &[&str] = &["onnxruntime.dll"];

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
/// `ORT_DYLIB_PATH`; beside the executable; beside the loaded libdpir; an installed `onnxruntime` or
/// `onnxruntime-gpu` Python package (see [`python_site_dirs`] for where). No process is started and no path of the
/// machine that built dpir is looked at (the CLI adds the project's fetched copy itself when run from a checkout).
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
    if let Some(reason) = not_a_library_file(path) {
        return Err(Error::OnnxRuntimeLoad { path: path.to_path_buf(), reason });
    }
    let builder = ort::init_from(path)
        .map_err(|e| Error::OnnxRuntimeLoad { path: path.to_path_buf(), reason: describe_load_error(&e) })?;
    builder
        .with_name("dpir")
        .with_telemetry(false)
        .build()
        .map_err(|e| Error::OnnxRuntimeLoad { path: path.to_path_buf(), reason: e.to_string() })
}

/// Why `path` cannot be a library file, named as it is: missing, unreadable, a directory, a FIFO, a device, or
/// empty. `None` for a non-empty regular file (links followed), which the system's loader then judges.
fn not_a_library_file(path: &Path) -> Option<String> {
    let metadata = match std::fs::metadata(path) {
        Ok(metadata) => metadata,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Some("no such file".into()),
        Err(e) => return Some(format!("cannot be read: {e}")),
    };
    let kind = metadata.file_type();
    let what = if kind.is_dir() {
        "a directory"
    } else if let Some(special) = special_file(&kind) {
        special
    } else if metadata.len() == 0 {
        "an empty file"
    } else {
        return None;
    };
    Some(format!("it is {what}, not a library file"))
}

#[cfg(unix)]
fn special_file(kind: &std::fs::FileType) -> Option<&'static str> {
    use std::os::unix::fs::FileTypeExt;
    match () {
        _ if kind.is_fifo() => Some("a FIFO"),
        _ if kind.is_socket() => Some("a socket"),
        _ if kind.is_char_device() || kind.is_block_device() => Some("a device"),
        _ => None,
    }
}

#[cfg(not(unix))]
fn special_file(_: &std::fs::FileType) -> Option<&'static str> {
    None
}

/// The loader's reason hides in the inner error's source; bring it to the surface.
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
        // The file is there (checked before loading), so "module not found" is about a DLL it needs.
        const MODULE_NOT_FOUND: i32 = 126;
        if cfg!(windows) && text.contains(&std::io::Error::from_raw_os_error(MODULE_NOT_FOUND).to_string()) {
            text.push_str(
                "; a DLL it depends on is missing: ONNX Runtime needs the Microsoft Visual C++ Redistributable \
                 (x64, 2015-2022; MSVCP140.dll, VCRUNTIME140_1.dll)",
            );
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

/// The first places searched when neither the options nor the environment name a library, in order: beside the
/// executable, then beside the loaded libdpir. Cheap (a few `stat`s), so that a library found here costs nothing more.
fn direct_candidates() -> Vec<PathBuf> {
    let mut directories = Vec::new();
    if let Some(dir) = env::current_exe().ok().and_then(|exe| exe.parent().map(Path::to_path_buf)) {
        directories.push(dir);
    }
    if let Some(dir) = this_library_dir() {
        directories.push(dir);
    }
    // Beside the executable and beside libdpir are one place when libdpir is linked statically.
    directories.dedup();
    directories.iter().flat_map(|dir| LIBRARY_NAMES.iter().map(move |name| dir.join(name))).collect()
}

/// The project's fetched copy, for this crate's own unit tests only: never compiled into libdpir or the CLI (the
/// CLI finds it relative to its executable; see `src/bin/dpir/main.rs`).
#[cfg(test)]
fn test_candidates() -> Vec<PathBuf> {
    vec![Path::new(env!("CARGO_MANIFEST_DIR")).join("build/onnxruntime/lib/libonnxruntime.so")]
}

#[cfg(not(test))]
fn test_candidates() -> Vec<PathBuf> {
    Vec::new()
}

fn find() -> Result<PathBuf> {
    if let Some(path) = from_environment() {
        return Ok(path);
    }
    let mut searched = direct_candidates();
    searched.extend(test_candidates());
    if let Some(path) = searched.iter().find(|path| path.is_file()) {
        return Ok(path.clone());
    }
    // Python packages only when nothing closer is there: a host that ships the library beside itself pays nothing.
    for path in python_package_libraries() {
        if path.is_file() {
            return Ok(path);
        }
        searched.push(path);
    }
    Err(Error::OnnxRuntimeNotFound { searched })
}

/// The directory of the shared object this code lives in (libdpir.so when loaded by a C program).
#[cfg(unix)]
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

/// The directory of the module this code lives in (dpir.dll, or the plug-in that links dpir statically).
#[cfg(windows)]
fn this_library_dir() -> Option<PathBuf> {
    use std::os::windows::ffi::OsStringExt;
    use windows_sys::Win32::System::LibraryLoader::{
        GetModuleFileNameW, GetModuleHandleExW, GET_MODULE_HANDLE_EX_FLAG_FROM_ADDRESS,
        GET_MODULE_HANDLE_EX_FLAG_UNCHANGED_REFCOUNT,
    };
    let mut module = std::ptr::null_mut();
    let flags = GET_MODULE_HANDLE_EX_FLAG_FROM_ADDRESS | GET_MODULE_HANDLE_EX_FLAG_UNCHANGED_REFCOUNT;
    // SAFETY: with FROM_ADDRESS the name argument is an address inside the module wanted; `module` is writable.
    if unsafe { GetModuleHandleExW(flags, this_library_dir as *const u16, &mut module) } == 0 {
        return None;
    }
    // Long paths (\\?\ prefixed, up to 32767 characters) fit; a shorter buffer would be truncated silently.
    let mut name = vec![0u16; 32768];
    // SAFETY: the buffer's length is passed with it; the module handle stays valid (this code is in it).
    let length = unsafe { GetModuleFileNameW(module, name.as_mut_ptr(), name.len() as u32) } as usize;
    if length == 0 || length >= name.len() {
        return None;
    }
    let path = PathBuf::from(std::ffi::OsString::from_wide(&name[..length]));
    path.parent().map(Path::to_path_buf)
}

/// The site-packages folders of the Python installations this process can see, found on the file system alone:
/// no Python is run. In order, each folder once (the first spelling of a folder wins), each glob in name order:
///
/// 1. the active virtual environment: `$VIRTUAL_ENV/lib/python3*/site-packages`;
/// 2. the active conda environment: `$CONDA_PREFIX/lib/python3*/site-packages`;
/// 3. the user site: `$PYTHONUSERBASE` (default `~/.local`) `/lib/python3*/site-packages`;
/// 4. for each `python3` and `python3.N` on `PATH`, in `PATH` order (`python3` first, then newest `N` first): the
///    virtual environment it lives in, when its folder's parent has a `pyvenv.cfg` (`VENV/lib/python3*/site-packages`);
///    then the installation it resolves to (symbolic links followed; `PREFIX` is the parent of its `bin`):
///    `PREFIX/lib/python3*/site-packages`, `PREFIX/lib/python3/dist-packages` and
///    `PREFIX/local/lib/python3*/dist-packages` (Debian's layout).
///
/// Only folders that exist are returned. The cost is a few `stat` and `read_dir` calls: the folders of `PATH` and
/// the `lib` folders of each prefix, nothing inside site-packages.
#[cfg(not(windows))]
pub(crate) fn python_site_dirs() -> Vec<PathBuf> {
    let mut site_dirs = SiteDirs::default();
    for var in ["VIRTUAL_ENV", "CONDA_PREFIX"] {
        if let Some(prefix) = env::var_os(var).filter(|v| !v.is_empty()) {
            site_dirs.extend(glob_dirs(&Path::new(&prefix).join("lib"), "python3", "site-packages"));
        }
    }
    let user_base = env::var_os("PYTHONUSERBASE")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").filter(|v| !v.is_empty()).map(|home| Path::new(&home).join(".local")));
    if let Some(base) = user_base {
        site_dirs.extend(glob_dirs(&base.join("lib"), "python3", "site-packages"));
    }
    for python in pythons_on_path() {
        if let Some(venv) = python.parent().and_then(Path::parent).filter(|venv| venv.join("pyvenv.cfg").is_file()) {
            site_dirs.extend(glob_dirs(&venv.join("lib"), "python3", "site-packages"));
        }
        let Ok(resolved) = python.canonicalize() else { continue };
        let Some(prefix) = resolved.parent().and_then(Path::parent) else { continue };
        site_dirs.extend(glob_dirs(&prefix.join("lib"), "python3", "site-packages"));
        site_dirs.extend([prefix.join("lib/python3/dist-packages")]);
        site_dirs.extend(glob_dirs(&prefix.join("local/lib"), "python3", "dist-packages"));
    }
    site_dirs.dirs
}

/// The site-packages folders of the Python installations this process can see, on Windows; as on other systems,
/// found on the file system alone, in order, each folder once:
///
/// 1. the active virtual environment, then the active conda environment: `%VIRTUAL_ENV%\Lib\site-packages`,
///    `%CONDA_PREFIX%\Lib\site-packages`;
/// 2. the user site: `%APPDATA%\Python\Python3*\site-packages`;
/// 3. for each `python.exe` and `python3.exe` on `PATH`, in `PATH` order: the virtual environment it lives in
///    (`VENV\Scripts\python.exe` beside `VENV\pyvenv.cfg`), else its installation: `PREFIX\Lib\site-packages`;
/// 4. the python.org installer's per-user installations, `%LOCALAPPDATA%\Programs\Python\Python3*`, which are
///    often not on `PATH`: their `Lib\site-packages`, in name order.
#[cfg(windows)]
pub(crate) fn python_site_dirs() -> Vec<PathBuf> {
    let set = |name| env::var_os(name).filter(|v| !v.is_empty()).map(PathBuf::from);
    let mut site_dirs = SiteDirs::default();
    for var in ["VIRTUAL_ENV", "CONDA_PREFIX"] {
        if let Some(prefix) = set(var) {
            site_dirs.extend([prefix.join("Lib").join("site-packages")]);
        }
    }
    if let Some(appdata) = set("APPDATA") {
        site_dirs.extend(glob_dirs(&appdata.join("Python"), "Python3", "site-packages"));
    }
    if let Some(path) = env::var_os("PATH") {
        for dir in env::split_paths(&path).filter(|dir| dir.is_absolute()) {
            for name in ["python.exe", "python3.exe"] {
                if !dir.join(name).is_file() {
                    continue;
                }
                let venv = dir.parent().filter(|venv| venv.join("pyvenv.cfg").is_file());
                site_dirs.extend([venv.unwrap_or(&dir).join("Lib").join("site-packages")]);
            }
        }
    }
    if let Some(local) = set("LOCALAPPDATA") {
        site_dirs.extend(glob_dirs(&local.join("Programs").join("Python"), "Python3", "Lib\\site-packages"));
    }
    site_dirs.dirs
}

/// Existing folders, each once: a folder reached by two spellings (a `lib64` link, a venv inside `PATH` twice)
/// keeps the first.
#[derive(Default)]
struct SiteDirs {
    dirs: Vec<PathBuf>,
    seen: std::collections::HashSet<PathBuf>,
}

impl SiteDirs {
    fn extend(&mut self, candidates: impl IntoIterator<Item = PathBuf>) {
        for dir in candidates {
            let Ok(real) = dir.canonicalize() else { continue }; // also: it does not exist
            if real.is_dir() && self.seen.insert(real) {
                self.dirs.push(dir);
            }
        }
    }
}

/// Every `python3` and `python3.N` file in the folders of `PATH`, in `PATH` order; in one folder `python3` first,
/// then the `python3.N` from the highest `N` down. Not run, not checked to be a Python: only where it points matters.
#[cfg(not(windows))]
fn pythons_on_path() -> Vec<PathBuf> {
    let Some(path) = env::var_os("PATH") else { return Vec::new() };
    let mut pythons = Vec::new();
    for dir in env::split_paths(&path).filter(|dir| dir.is_absolute()) {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        let mut found: Vec<(u32, PathBuf)> = entries
            .flatten()
            .filter_map(|entry| {
                let name = entry.file_name();
                let minor = python_minor(name.to_str()?)?;
                Some((minor, entry.path()))
            })
            .filter(|(_, path)| path.is_file())
            .collect();
        found.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
        pythons.extend(found.into_iter().map(|(_, path)| path));
    }
    pythons
}

/// `python3` sorts before every `python3.N` (`u32::MAX`); `python3.N` is `N`; other names are not Pythons.
#[cfg(not(windows))]
fn python_minor(name: &str) -> Option<u32> {
    let rest = name.strip_prefix("python3")?;
    if rest.is_empty() {
        return Some(u32::MAX);
    }
    let minor = rest.strip_prefix('.')?;
    if minor.is_empty() || !minor.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    minor.parse().ok()
}

/// Libraries inside installed `onnxruntime` / `onnxruntime-gpu` wheels (`onnxruntime/capi/libonnxruntime.so*`, on
/// Windows `onnxruntime\capi\onnxruntime.dll`).
fn python_package_libraries() -> Vec<PathBuf> {
    let mut libraries = Vec::new();
    for dir in python_site_dirs() {
        let capi = dir.join("onnxruntime").join("capi");
        let Ok(entries) = std::fs::read_dir(&capi) else { continue };
        let mut names: Vec<PathBuf> = entries
            .flatten()
            .map(|entry| entry.path())
            .filter(|path| {
                path.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
                    if cfg!(windows) {
                        LIBRARY_NAMES.contains(&n)
                    } else {
                        n.starts_with("libonnxruntime.so")
                    }
                })
            })
            .collect();
        names.sort();
        libraries.extend(names);
    }
    libraries
}

/// `base/<prefix>*/<leaf>` for every child of `base` whose name starts with `prefix`, in name order.
pub(crate) fn glob_dirs(base: &Path, prefix: &str, leaf: &str) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(base) else { return Vec::new() };
    let mut children: Vec<PathBuf> = entries
        .flatten()
        .filter(|entry| entry.file_name().to_string_lossy().starts_with(prefix))
        .map(|entry| entry.path())
        .collect();
    children.sort();
    children.into_iter().map(|child| child.join(leaf)).collect()
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
    fn the_lookup_names_no_path_of_the_build_machine() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let searched = direct_candidates();
        assert!(!searched.is_empty());
        assert!(searched.iter().all(|path| !path.starts_with(root.join("build"))), "{searched:?}");
    }

    #[test]
    #[cfg(not(windows))]
    fn python_names() {
        assert_eq!(python_minor("python3"), Some(u32::MAX));
        assert_eq!(python_minor("python3.12"), Some(12));
        for name in ["python", "python3-config", "python3.12-config", "python3.", "python3.x", "python2.7"] {
            assert_eq!(python_minor(name), None, "{name}");
        }
    }

    #[test]
    #[cfg(unix)]
    fn globs_are_sorted_and_only_existing_site_folders_are_kept_once() {
        let root = tempfile::tempdir().unwrap();
        let lib = root.path().join("lib");
        for version in ["python3.9", "python3.12", "python3.11"] {
            std::fs::create_dir_all(lib.join(version).join("site-packages")).unwrap();
        }
        std::fs::create_dir_all(lib.join("python3.10")).unwrap(); // no site-packages
        std::os::unix::fs::symlink(root.path(), root.path().join("again")).unwrap();
        let mut dirs = SiteDirs::default();
        dirs.extend(glob_dirs(&lib, "python3", "site-packages"));
        dirs.extend(glob_dirs(&root.path().join("again/lib"), "python3", "site-packages"));
        let names: Vec<_> = dirs.dirs.iter().map(|d| d.strip_prefix(&lib).unwrap().to_str().unwrap()).collect();
        assert_eq!(names, ["python3.11/site-packages", "python3.12/site-packages", "python3.9/site-packages"]);
    }
}
