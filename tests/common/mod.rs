//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use dpir::{Image, Restorer, RuntimeOptions};
use ndarray::Array3;

pub fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

pub fn bundle(name: &str) -> PathBuf {
    root().join("tests/fixtures/bundles").join(name)
}

/// The ONNX Runtime that tools/setup.sh fetched: the library itself looks in no source tree.
pub fn runtime_options() -> RuntimeOptions {
    RuntimeOptions::new().threads(1).onnxruntime_library(root().join("build/onnxruntime/lib/libonnxruntime.so"))
}

pub fn restorer(name: &str) -> Restorer {
    Restorer::load(bundle(name), &runtime_options()).expect("fixture bundle loads")
}

/// A smooth picture with detail, different in each channel, values inside (0, 1).
pub fn picture(height: usize, width: usize) -> Image {
    let rgb = Array3::from_shape_fn((3, height, width), |(c, y, x)| {
        let (u, v) = (x as f32 / width as f32, y as f32 / height as f32);
        0.1 + 0.8 * (0.5 + 0.5 * ((u * 9.0 + c as f32).sin() * (v * 7.0 - c as f32).cos())) * (0.5 + 0.5 * u)
    });
    Image::from_planes(rgb, None).unwrap()
}

pub fn max_abs_diff(a: &Array3<f32>, b: &Array3<f32>) -> f32 {
    assert_eq!(a.dim(), b.dim());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

/// The CLI binary, with a clean model environment.
pub fn cli() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_dpir"));
    command.env_remove("DPIR_MODEL");
    command
}

pub fn run(command: &mut Command) -> Output {
    command.output().expect("the CLI starts")
}

/// Runs `command`, sends it `signal` once a line of its stderr starts with `after`, and returns its exit code
/// with the rest of its stderr.
pub fn signal_after(command: &mut Command, after: &str, signal: i32) -> (Option<i32>, String) {
    use std::io::{BufRead, Read};
    let mut child = command.stderr(std::process::Stdio::piped()).spawn().expect("the CLI starts");
    let mut stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    while stderr.read_line(&mut line).unwrap() > 0 && !line.starts_with(after) {
        line.clear();
    }
    // SAFETY: a signal to our own child, which is still running (its stderr is open).
    assert_eq!(unsafe { libc::kill(child.id() as i32, signal) }, 0);
    let mut rest = String::new();
    stderr.read_to_string(&mut rest).unwrap();
    (child.wait().unwrap().code(), rest)
}

/// The reference pipeline's Python: $DPIR_PYTHON or the project's venv.
pub fn python() -> PathBuf {
    let path =
        std::env::var_os("DPIR_PYTHON").map(PathBuf::from).unwrap_or_else(|| root().join("build/venv/bin/python"));
    assert!(path.exists(), "{} is missing: run `bash tools/setup.sh` (the README's test command does)", path.display());
    path
}

/// Writes an 8-bit RGB PNG of `image`.
pub fn write_png(path: &Path, image: &Image) {
    let layout = dpir::PixelLayout::packed(image.width(), image.height(), 3, dpir::SampleType::U8);
    let mut bytes = vec![0u8; layout.validate().unwrap()];
    image.write_pixels(&layout, &mut bytes).unwrap();
    dpir::imagefile::write(path, &layout, &bytes).unwrap();
}

/// `command` with its address space limited to `bytes`: an allocation past it fails, so a regression that would
/// take the machine's memory aborts the child instead.
pub fn limit_address_space(command: &mut Command, bytes: u64) -> &mut Command {
    use std::os::unix::process::CommandExt;
    // SAFETY: setrlimit is async-signal-safe, so it may run between fork and exec.
    unsafe {
        command.pre_exec(move || {
            let limit = libc::rlimit { rlim_cur: bytes, rlim_max: bytes };
            libc::setrlimit(libc::RLIMIT_AS, &limit);
            Ok(())
        })
    }
}
