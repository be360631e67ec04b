//! The CUDA 13 and cuDNN 9 libraries that ONNX Runtime's CUDA and TensorRT providers load by name.
//!
//! Each is taken from the system's library path when it is there, else from the NVIDIA Python packages that a
//! CUDA build of PyTorch installs (`site-packages/nvidia/*/lib`): loaded by full path before the provider asks for
//! it, so that the provider finds it already loaded without `LD_LIBRARY_PATH`. The driver comes first: without
//! it nothing else is loaded.

use std::path::PathBuf;
use std::sync::OnceLock;

use super::library::{glob_dirs, python_site_dirs};

/// The NVIDIA driver's library; never in a Python package.
#[cfg(not(windows))]
pub(crate) const DRIVER: &str = "libcuda.so.1";
#[cfg(windows)]
pub(crate) const DRIVER: &str = "nvcuda.dll";

/// What the providers load, dependencies first, each with the PyPI package that carries it. Their own
/// dependencies (cuDNN's sub-libraries, cuBLASLt for cuBLAS) are found through their `$ORIGIN` run paths.
#[cfg(not(windows))]
const LIBRARIES: [(&str, &str); 5] = [
    ("libcudart.so.13", "nvidia-cuda-runtime"),
    ("libcublasLt.so.13", "nvidia-cublas"),
    ("libcublas.so.13", "nvidia-cublas"),
    ("libcurand.so.10", "nvidia-curand"),
    ("libcudnn.so.9", "nvidia-cudnn-cu13"),
];
/// The same on Windows, where the packages keep their DLLs in `bin` or `bin\x86_64` (cuDNN loads its
/// sub-libraries from its own folder).
#[cfg(windows)]
const LIBRARIES: [(&str, &str); 5] = [
    ("cudart64_13.dll", "nvidia-cuda-runtime"),
    ("cublasLt64_13.dll", "nvidia-cublas"),
    ("cublas64_13.dll", "nvidia-cublas"),
    ("curand64_10.dll", "nvidia-curand"),
    ("cudnn64_9.dll", "nvidia-cudnn-cu13"),
];

/// The folders of each NVIDIA package that hold its libraries (`nvidia/cu13/bin/x86_64/cudart64_13.dll` on Windows).
#[cfg(not(windows))]
const PACKAGE_LIBRARY_FOLDERS: &[&str] = &["lib"];
#[cfg(windows)]
const PACKAGE_LIBRARY_FOLDERS: &[&str] = &["bin\\x86_64", "bin"];

/// Loads the driver and the CUDA libraries, once per process; the reason when some cannot be found.
pub(crate) fn ensure_loaded() -> Result<(), String> {
    static LOADED: OnceLock<Result<(), String>> = OnceLock::new();
    LOADED.get_or_init(load).clone()
}

fn load() -> Result<(), String> {
    if ort::util::preload_dylib(DRIVER).is_err() {
        return Err(format!("the NVIDIA driver ({DRIVER}) is not installed"));
    }
    let mut folders: Option<Vec<PathBuf>> = None; // searched only when the library path lacks something
    let mut missing = Vec::new();
    for (name, package) in LIBRARIES {
        if ort::util::preload_dylib(name).is_ok() {
            continue;
        }
        let folders = folders.get_or_insert_with(package_folders);
        match locate(name, folders) {
            Some(path) => {
                if let Err(error) = ort::util::preload_dylib(&path) {
                    missing.push(format!("{} ({error})", path.display()));
                }
            }
            None => missing.push(format!("{name} (pip install {package})")),
        }
    }
    if missing.is_empty() {
        return Ok(());
    }
    let searched = folders.unwrap_or_default().iter().map(|f| f.display().to_string()).collect::<Vec<_>>().join(", ");
    Err(format!(
        "cannot load the CUDA libraries from the library path or the NVIDIA Python packages ({}): {}",
        if searched.is_empty() { "none installed" } else { &searched },
        missing.join(", ")
    ))
}

/// `nvidia/*/lib` (on Windows `nvidia\*\bin\x86_64` and `nvidia\*\bin`) of every site-packages folder dpir
/// knows of ([`python_site_dirs`]: found without running Python), in that order, each site's packages in name order.
fn package_folders() -> Vec<PathBuf> {
    python_site_dirs()
        .iter()
        .flat_map(|site| {
            PACKAGE_LIBRARY_FOLDERS.iter().flat_map(move |folder| glob_dirs(&site.join("nvidia"), "", folder))
        })
        .filter(|folder| folder.is_dir())
        .collect()
}

/// The first `folder/name` that exists.
fn locate(name: &str, folders: &[PathBuf]) -> Option<PathBuf> {
    folders.iter().map(|folder| folder.join(name)).find(|path| path.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libraries_are_found_in_the_first_package_folder_that_has_them() {
        let [(cudart, _), _, _, (curand, _), (cudnn, _)] = LIBRARIES;
        let folder = PACKAGE_LIBRARY_FOLDERS[0]; // lib, or bin\x86_64 on Windows
        let root = tempfile::tempdir().unwrap();
        let site = root.path();
        for (package, library) in [("cu13", cudart), ("cudnn", cudnn), ("curand", cudnn)] {
            std::fs::create_dir_all(site.join("nvidia").join(package).join(folder)).unwrap();
            std::fs::write(site.join("nvidia").join(package).join(folder).join(library), b"").unwrap();
        }
        let folders = glob_dirs(&site.join("nvidia"), "", folder); // in name order
        assert_eq!(locate(cudart, &folders), Some(site.join("nvidia").join("cu13").join(folder).join(cudart)));
        assert_eq!(locate(cudnn, &folders), Some(site.join("nvidia").join("cudnn").join(folder).join(cudnn)));
        assert_eq!(locate(curand, &folders), None);
        assert!(locate(cudart, &[PathBuf::from("/nonexistent")]).is_none());
    }
}
