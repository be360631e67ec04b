//! Finding ONNX Runtime: a missing, wrong or too old library, or an execution provider that cannot be
//! registered, is a typed error naming the path and the reason. Each case runs the CLI in its own process,
//! because one process loads one ONNX Runtime.

mod common;

use std::path::Path;
use std::process::Command;

use common::{cli, picture, run, write_png};

fn restore_with(extra: &[&str], env: &[(&str, &str)]) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.png");
    let output = dir.path().join("out.png");
    write_png(&input, &picture(12, 12));
    let mut command = cli();
    command.arg("restore").arg(&input).arg(&output).args(["--quiet", "--steps", "1"]).args(extra);
    for (key, value) in env {
        command.env(key, value);
    }
    let out = run(&mut command);
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.success(), output.exists(), "output exists exactly when the restore succeeds: {stderr}");
    (out.status.success(), stderr)
}

#[test]
fn explicit_missing_library() {
    let (ok, stderr) = restore_with(&["--ort-lib", "/nonexistent/libonnxruntime.so"], &[]);
    assert!(!ok);
    assert!(stderr.contains("/nonexistent/libonnxruntime.so") && stderr.contains("no such file"), "{stderr}");
}

#[test]
fn environment_variable_is_honoured_before_the_default_locations() {
    let (ok, stderr) = restore_with(&[], &[("DPIR_ORT_LIB", "/nonexistent/from-env.so")]);
    assert!(!ok);
    assert!(stderr.contains("/nonexistent/from-env.so"), "{stderr}");
}

#[test]
fn a_file_that_is_not_a_library() {
    let dir = tempfile::tempdir().unwrap();
    let fake = dir.path().join("libonnxruntime.so");
    std::fs::write(&fake, "not an ELF file\n".repeat(300)).unwrap();
    let (ok, stderr) = restore_with(&["--ort-lib", fake.to_str().unwrap()], &[]);
    assert!(!ok);
    assert!(stderr.contains(fake.to_str().unwrap()) && stderr.contains("invalid ELF header"), "{stderr}");
}

#[test]
fn a_library_that_is_too_old() {
    let dir = tempfile::tempdir().unwrap();
    let library = dir.path().join("libonnxruntime.so.1.20.0");
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/old_onnxruntime.c");
    let status = Command::new("cc").args(["-shared", "-fPIC", "-o"]).arg(&library).arg(&source).status().unwrap();
    assert!(status.success(), "cc builds the stand-in library");
    let (ok, stderr) = restore_with(&["--ort-lib", library.to_str().unwrap()], &[]);
    assert!(!ok);
    assert!(stderr.contains("1.20.0") && stderr.contains("expected version >= '1.31"), "{stderr}");
}

#[test]
fn an_execution_provider_that_cannot_be_registered_names_what_is_missing() {
    let (ok, stderr) = restore_with(&["--ep", "cuda"], &[]);
    assert!(!ok);
    assert!(stderr.contains("cuda") && stderr.contains("libonnxruntime_providers_cuda.so"), "{stderr}");
}

#[test]
fn auto_falls_back_and_says_what_it_chose() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.png");
    write_png(&input, &picture(12, 12));
    let out =
        run(cli().arg("restore").arg(&input).arg(dir.path().join("out.png")).args(["--ep", "auto", "--steps", "1"]));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains(" on cpu (chosen by auto)"), "{stderr}");
}

/// An empty shared library with the given soname, standing in for a CUDA library.
fn stub_library(path: &Path) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let soname = format!("-Wl,-soname,{}", path.file_name().unwrap().to_str().unwrap());
    let status = Command::new("cc")
        .args(["-shared", "-fPIC", "-x", "c", "/dev/null", &soname, "-o"])
        .arg(path)
        .status()
        .unwrap();
    assert!(status.success(), "cc builds {}", path.display());
}

#[test]
fn cuda_libraries_come_from_nvidia_python_packages() {
    let dir = tempfile::tempdir().unwrap();
    let driver = dir.path().join("driver");
    stub_library(&driver.join("libcuda.so.1"));
    let venv = dir.path().join("venv");
    let nvidia = venv.join("lib/python3.12/site-packages/nvidia");
    for library in ["cu13/lib/libcudart.so.13", "cu13/lib/libcublasLt.so.13", "cu13/lib/libcublas.so.13"] {
        stub_library(&nvidia.join(library));
    }
    stub_library(&nvidia.join("cudnn/lib/libcudnn.so.9"));
    let env = [("LD_LIBRARY_PATH", driver.to_str().unwrap()), ("VIRTUAL_ENV", venv.to_str().unwrap())];

    // cuRAND is missing: named with the package that has it, and nothing else is.
    let (ok, stderr) = restore_with(&["--ep", "cuda"], &env);
    assert!(!ok);
    assert!(stderr.contains("libcurand.so.10 (pip install nvidia-curand)"), "{stderr}");
    assert!(!stderr.contains("libcudart") && !stderr.contains("libcudnn.so"), "{stderr}");

    // With it, the CUDA libraries are all found: what is missing is the provider of the CPU-only ONNX Runtime.
    stub_library(&nvidia.join("curand/lib/libcurand.so.10"));
    let (ok, stderr) = restore_with(&["--ep", "cuda"], &env);
    assert!(!ok);
    assert!(stderr.contains("libonnxruntime_providers_cuda.so") && !stderr.contains("CUDA libraries"), "{stderr}");

    // Without the driver nothing else is looked for.
    let (ok, stderr) = restore_with(&["--ep", "cuda"], &[("VIRTUAL_ENV", venv.to_str().unwrap())]);
    assert!(!ok);
    assert!(stderr.contains("the NVIDIA driver (libcuda.so.1) is not installed"), "{stderr}");
}
