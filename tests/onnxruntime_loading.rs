//! Finding ONNX Runtime: a missing, wrong or too old library, or an execution provider that cannot be
//! registered, is a typed error naming the path and the reason. Each case runs the CLI in its own process,
//! because one process loads one ONNX Runtime.

mod common;

use std::path::Path;
use std::process::Command;

use common::{cli, picture, run, write_png};

fn restore_with(extra: &[&str], env: &[(&str, &str)]) -> (bool, String) {
    let dir = scratch();
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

/// A named library that is not a regular file says what it is, not "no such file" (and a FIFO is not opened).
#[test]
fn a_library_path_that_is_no_file_says_what_it_is() {
    let dir = scratch();
    let fifo = dir.path().join("fifo");
    let made = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: a NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(made.as_ptr(), 0o600) }, 0);
    let empty = dir.path().join("libonnxruntime.so");
    std::fs::write(&empty, b"").unwrap();
    for (path, says) in [
        (dir.path(), "a directory"),
        (Path::new("/dev/zero"), "a device"),
        (fifo.as_path(), "a FIFO"),
        (empty.as_path(), "an empty file"),
    ] {
        let (ok, stderr) = restore_with(&[], &[("DPIR_ORT_LIB", path.to_str().unwrap())]);
        assert!(!ok);
        assert!(stderr.contains(&format!("it is {says}, not a library file")), "{stderr}");
    }
}

#[test]
fn environment_variable_is_honoured_before_the_default_locations() {
    let (ok, stderr) = restore_with(&[], &[("DPIR_ORT_LIB", "/nonexistent/from-env.so")]);
    assert!(!ok);
    assert!(stderr.contains("/nonexistent/from-env.so"), "{stderr}");
}

#[test]
fn a_file_that_is_not_a_library() {
    let dir = scratch();
    let fake = dir.path().join("libonnxruntime.so");
    std::fs::write(&fake, "not an ELF file\n".repeat(300)).unwrap();
    let (ok, stderr) = restore_with(&["--ort-lib", fake.to_str().unwrap()], &[]);
    assert!(!ok);
    assert!(stderr.contains(fake.to_str().unwrap()) && stderr.contains("invalid ELF header"), "{stderr}");
}

#[test]
fn a_library_that_is_too_old() {
    let dir = scratch();
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
    let dir = scratch();
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
    let dir = scratch();
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

/// Runs `dpir info` on the oracle bundle with `exe` and only the given environment (plus an empty HOME); returns
/// whether it succeeded, its stdout and its stderr.
fn info_with(exe: &Path, env: &[(&str, &Path)]) -> (bool, String, String) {
    let home = scratch();
    let mut command = Command::new(exe);
    command.env_clear().env("HOME", home.path()).arg("info").arg(common::bundle("oracle"));
    for (key, value) in env {
        command.env(key, value);
    }
    let out = run(&mut command);
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

/// The CLI out of the source tree, in `dir/cli/bin/`: what an installed dpir sees, with no checkout around it. A
/// hard link, not a copy: a copy's file is open for writing while another test thread forks, and starting it then
/// fails with "text file busy". `dir` comes from [`scratch`], on the target folder's file system.
fn installed_cli(dir: &Path) -> std::path::PathBuf {
    let bin = dir.join("cli/bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::hard_link(env!("CARGO_BIN_EXE_dpir"), bin.join("dpir")).unwrap();
    bin.join("dpir")
}

/// A scratch folder under the target folder (outside any checkout's layout `CHECKOUT/target/PROFILE/dpir`).
fn scratch() -> tempfile::TempDir {
    tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap()
}

/// The library the project fetched (tools/setup.sh).
fn fetched_library() -> std::path::PathBuf {
    let library = common::root().join("build/onnxruntime/lib/libonnxruntime.so.1.31.1");
    assert!(library.is_file(), "{} is missing: run `bash tools/setup.sh`", library.display());
    library
}

/// `site/onnxruntime/capi/libonnxruntime.so.1.31.1`, as the onnxruntime wheel installs it (a link to the fetched one).
fn install_wheel(site: &Path) -> std::path::PathBuf {
    let capi = site.join("onnxruntime/capi");
    std::fs::create_dir_all(&capi).unwrap();
    std::os::unix::fs::symlink(fetched_library(), capi.join("libonnxruntime.so.1.31.1")).unwrap();
    capi.join("libonnxruntime.so.1.31.1")
}

#[test]
fn the_cli_of_a_checkout_uses_the_fetched_copy_with_nothing_set() {
    let (ok, stdout, stderr) = info_with(Path::new(env!("CARGO_BIN_EXE_dpir")), &[]);
    assert!(ok, "{stderr}");
    let fetched = common::root().join("build/onnxruntime/lib/libonnxruntime.so");
    assert!(stdout.contains(&format!("onnxruntime: {}\n", fetched.display())), "{stdout}");
}

#[test]
fn an_installed_cli_finds_nothing_of_the_checkout() {
    let dir = scratch();
    let (ok, _, stderr) = info_with(&installed_cli(dir.path()), &[]);
    assert!(!ok);
    assert!(stderr.contains("ONNX Runtime 1.31 or newer was not found"), "{stderr}");
    assert!(!stderr.contains("build/onnxruntime"), "{stderr}");
}

#[test]
fn a_python_package_in_the_active_virtual_environment_is_found() {
    let dir = scratch();
    let venv = dir.path().join("venv");
    let library = install_wheel(&venv.join("lib/python3.12/site-packages"));
    let (ok, stdout, stderr) = info_with(&installed_cli(dir.path()), &[("VIRTUAL_ENV", &venv)]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains(&format!("onnxruntime: {}\n", library.display())), "{stdout}");
}

#[test]
fn pythons_on_path_are_located_without_running_them() {
    let dir = scratch();
    let exe = installed_cli(dir.path());
    let marker = dir.path().join("python-ran");
    // A Python installation whose `python3` only leaves a marker behind, were it ever started.
    let prefix = dir.path().join("python");
    std::fs::create_dir_all(prefix.join("bin")).unwrap();
    let python = prefix.join("bin/python3.12");
    std::fs::write(&python, format!("#!/bin/sh\ntouch '{}'\n", marker.display())).unwrap();
    std::fs::set_permissions(&python, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    std::os::unix::fs::symlink("python3.12", prefix.join("bin/python3")).unwrap();
    // A virtual environment made from it.
    let venv = dir.path().join("venv");
    std::fs::create_dir_all(venv.join("bin")).unwrap();
    std::fs::write(venv.join("pyvenv.cfg"), format!("home = {}\n", prefix.join("bin").display())).unwrap();
    std::os::unix::fs::symlink(&python, venv.join("bin/python3")).unwrap();

    // Nothing installed anywhere: not found, and no Python was run to look.
    let path = std::env::join_paths([venv.join("bin"), prefix.join("bin")]).unwrap();
    let (ok, _, stderr) = info_with(&exe, &[("PATH", Path::new(&path))]);
    assert!(!ok);
    assert!(stderr.contains("ONNX Runtime 1.31 or newer was not found"), "{stderr}");

    // In the installation's site-packages (the python3 link resolved to its prefix), in Debian's dist-packages.
    for site in ["lib/python3.12/site-packages", "local/lib/python3.12/dist-packages", "lib/python3/dist-packages"] {
        let library = install_wheel(&prefix.join(site));
        let (ok, stdout, stderr) = info_with(&exe, &[("PATH", &prefix.join("bin"))]);
        assert!(ok, "{site}: {stderr}");
        assert!(stdout.contains(&format!("onnxruntime: {}\n", library.display())), "{site}: {stdout}");
        std::fs::remove_dir_all(prefix.join(site)).unwrap();
    }

    // The virtual environment a python3 on PATH lives in comes before the installation it was made from.
    install_wheel(&prefix.join("lib/python3.12/site-packages"));
    let library = install_wheel(&venv.join("lib/python3.12/site-packages"));
    let (ok, stdout, stderr) = info_with(&exe, &[("PATH", Path::new(&path))]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains(&format!("onnxruntime: {}\n", library.display())), "{stdout}");

    assert!(!marker.exists(), "the lookup ran a python3");
}

#[test]
fn libdpir_holds_no_path_of_the_source_tree() {
    let release = Path::new(env!("CARGO_BIN_EXE_dpir")).parent().unwrap();
    for name in ["libdpir.so", "libdpir.a"] {
        let bytes = std::fs::read(release.join(name)).unwrap();
        assert!(!bytes.windows(17).any(|w| w == b"build/onnxruntime"), "{name} names build/onnxruntime");
    }
}
