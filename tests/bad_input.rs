//! Every class of bad input gets a clear error, and nothing is written: no output file appears, and an existing
//! one is left as it was.

mod common;

use std::fs;
use std::path::{Path, PathBuf};

use common::{bundle, cli, limit_address_space, picture, restorer, run, runtime_options, signal_after, write_png};
use dpir::{ErrorKind, Image, PixelLayout, RestoreOptions, Restorer, SampleType};

/// Runs `dpir restore` expecting failure; returns stderr. Checks the output was neither created nor touched.
fn restore_fails(input: &Path, extra: &[&str]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let fresh = dir.path().join("fresh.png");
    let existing = dir.path().join("existing.png");
    fs::write(&existing, b"keep me").unwrap();
    for output in [&fresh, &existing] {
        let out = run(cli().arg("restore").arg(input).arg(output).args(["--quiet", "--steps", "2"]).args(extra));
        assert!(!out.status.success(), "restore of {} with {extra:?} succeeded", input.display());
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(stderr.contains("error:"), "no error message: {stderr}");
        if output == &fresh {
            assert!(!fresh.exists(), "a failed restore created {}", fresh.display());
        } else {
            assert_eq!(fs::read(&existing).unwrap(), b"keep me", "a failed restore changed the existing output");
        }
        // No temporary file is left beside the output either.
        let leftovers: Vec<PathBuf> = fs::read_dir(dir.path()).unwrap().flatten().map(|e| e.path()).collect();
        assert_eq!(leftovers, vec![existing.clone()], "a failed restore left files behind");
    }
    let out = run(cli().arg("restore").arg(input).arg(&fresh).args(["--quiet", "--steps", "2"]).args(extra));
    String::from_utf8_lossy(&out.stderr).to_string()
}

fn good_png(dir: &Path) -> PathBuf {
    let path = dir.join("in.png");
    write_png(&path, &picture(20, 28));
    path
}

/// A copy of the oracle bundle to break.
fn oracle_copy(dir: &Path) -> PathBuf {
    let copy = dir.join("bundle");
    fs::create_dir_all(copy.join("prompts")).unwrap();
    for entry in fs::read_dir(bundle("oracle")).unwrap().flatten() {
        if entry.path().is_file() {
            fs::copy(entry.path(), copy.join(entry.file_name())).unwrap();
        }
    }
    fs::copy(bundle("oracle").join("prompts/quality.npy"), copy.join("prompts/quality.npy")).unwrap();
    copy
}

#[test]
fn missing_input_file() {
    let stderr = restore_fails(Path::new("/nonexistent/photo.png"), &[]);
    assert!(stderr.contains("/nonexistent/photo.png"), "{stderr}");
}

#[test]
fn unreadable_input_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("garbage.png");
    fs::write(&path, b"\x89PNG\r\n\x1a\n but not really").unwrap();
    let stderr = restore_fails(&path, &[]);
    assert!(stderr.contains("cannot decode"), "{stderr}");
}

#[test]
fn absurd_output_size() {
    let dir = tempfile::tempdir().unwrap();
    let stderr = restore_fails(&good_png(dir.path()), &["--scale", "5000"]);
    assert!(stderr.contains("image too large"), "{stderr}");
    let stderr = restore_fails(&good_png(dir.path()), &["--scale", "0"]);
    assert!(stderr.contains("scale must be a positive number"), "{stderr}");
}

#[test]
fn zero_sized_and_inconsistent_pixel_buffers() {
    let ok = PixelLayout::packed(8, 8, 3, SampleType::U8);
    let sized = |width, height| PixelLayout::packed(width, height, 3, SampleType::U8);
    for (layout, len, says) in [
        (sized(0, 8), 192, "has no pixels"),
        (sized(8, 0), 192, "has no pixels"),
        (sized(1 << 20, 8), 192, "largest side"),
        (ok.with_stride(20), 192, "smaller than a row"),
        (ok, 191, "needs 192"),
    ] {
        let error = Image::from_pixels(&layout, &vec![0u8; len]).unwrap_err();
        assert_eq!(error.kind(), ErrorKind::InvalidImage);
        assert!(error.to_string().contains(says), "{layout:?}: {error}");
    }
}

#[test]
fn unsupported_pixel_format() {
    let layout = PixelLayout::packed(4, 4, 2, SampleType::U8);
    let error = Image::from_pixels(&layout, &[0u8; 32]).unwrap_err();
    assert_eq!(error.kind(), ErrorKind::InvalidImage);
    assert!(error.to_string().contains("2 channels"), "{error}");
    let dir = tempfile::tempdir().unwrap();
    let stderr = restore_fails(&good_png(dir.path()), &["--noise", "/nonexistent/noise.npy"]);
    assert!(stderr.contains("noise.npy"), "{stderr}");
}

#[test]
fn missing_bundle_and_missing_bundle_file() {
    let dir = tempfile::tempdir().unwrap();
    let input = good_png(dir.path());
    let stderr = restore_fails(&input, &["--model", "/nonexistent/bundle"]);
    assert!(stderr.contains("/nonexistent/bundle: no such folder"), "{stderr}");

    let broken = oracle_copy(dir.path());
    fs::remove_file(broken.join("clip_global.onnx")).unwrap();
    let stderr = restore_fails(&input, &["--model", broken.to_str().unwrap()]);
    assert!(stderr.contains("clip_global.onnx") && stderr.contains("missing"), "{stderr}");
}

#[test]
fn manifest_that_disagrees_with_its_graphs() {
    let dir = tempfile::tempdir().unwrap();
    let broken = oracle_copy(dir.path());
    let manifest = fs::read_to_string(broken.join("dpir.json")).unwrap();
    let mut json: serde_json::Value = serde_json::from_str(&manifest).unwrap();
    json["latent"]["channels"] = 8.into();
    fs::write(broken.join("dpir.json"), json.to_string()).unwrap();
    let error = Restorer::load(&broken, &runtime_options()).err().expect("a mismatch is refused");
    assert_eq!(error.kind(), ErrorKind::Bundle);
    let message = error.to_string();
    // File, field, expected and found are all named.
    assert!(message.contains("transformer.onnx") && message.contains("input `hidden_states` axis 1"), "{message}");
    assert!(message.contains("expected 8, found 12"), "{message}");
    let stderr = restore_fails(&good_png(dir.path()), &["--model", broken.to_str().unwrap()]);
    assert!(stderr.contains("expected 8, found 12"), "{stderr}");
}

/// A manifest's defaults are checked at load against the options' ranges, and its sizes against a bound: a bad one
/// is the bundle's error, naming dpir.json and the field, not an options error blamed on every caller that leaves
/// the option unset, nor an allocation that takes the process down.
#[test]
fn bundle_defaults_out_of_range_are_the_bundles_error() {
    let dir = tempfile::tempdir().unwrap();
    let broken = oracle_copy(dir.path());
    let manifest: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(broken.join("dpir.json")).unwrap()).unwrap();
    for (section, field, value) in [
        ("scheduler", "steps", serde_json::json!(5000)),
        ("defaults", "guidance", serde_json::json!(0.5)),
        ("defaults", "latent_tile", serde_json::json!(1)),
        ("defaults", "latent_overlap", serde_json::json!(4096)),
        // Sizes that would make every restore allocate terabytes.
        ("text", "tokens", serde_json::json!(1_000_000_000_000u64)),
        ("transformer", "context_width", serde_json::json!(1u64 << 40)),
    ] {
        let mut json = manifest.clone();
        json[section][field] = value;
        fs::write(broken.join("dpir.json"), json.to_string()).unwrap();
        let error = Restorer::load(&broken, &runtime_options()).err().expect("a bad default is refused at load");
        assert_eq!(error.kind(), ErrorKind::Bundle, "{section}.{field}: {error}");
        let message = error.to_string();
        assert!(message.contains("dpir.json") && message.contains(&format!("{section}.{field}")), "{message}");
    }
}

/// Thread counts over the documented bound are refused before ONNX Runtime sees them.
#[test]
fn thread_counts_over_the_bound_are_refused() {
    let options = runtime_options().threads(dpir::MAX_THREADS + 1);
    let error = Restorer::load(bundle("oracle"), &options).err().expect("too many threads are refused");
    assert_eq!(error.kind(), ErrorKind::InvalidOptions);
    assert!(error.to_string().contains("threads must be at most 256"), "{error}");
}

/// Every entry point that takes restore options refuses a bad one alike, as an invalid option, before any model
/// call: restore, restore_pixels, restore_region, frame, requirements, region_of_interest and starting_noise.
#[test]
fn a_bad_option_is_refused_alike_by_every_entry_point() {
    let oracle = restorer("oracle");
    let (width, height) = (16, 16);
    let image = picture(height, width);
    let layout = PixelLayout::packed(width, height, 3, SampleType::U8);
    let bytes = vec![100u8; layout.validate().unwrap()];
    let source = dpir::Pixels::new(layout, &bytes).unwrap();
    let whole = dpir::Rect::new(0, 0, width, height);
    let joint = || RestoreOptions::new().tile_mode(dpir::TileMode::Joint);
    let mut cases = vec![
        (RestoreOptions::new().steps(0), "steps"),
        (RestoreOptions::new().steps(1001), "steps"),
        (RestoreOptions::new().guidance(0.5), "guidance"),
        (RestoreOptions::new().guidance(f32::NAN), "guidance"),
        (RestoreOptions::new().guidance(f32::INFINITY), "guidance"),
        (RestoreOptions::new().prompt("nope"), "prompt"),
        (RestoreOptions::new().prompt_text("a photo"), "no text encoder"),
        (RestoreOptions::new().tile_size(0), "tile size"),
        (RestoreOptions::new().tile_size(usize::MAX), "tile size"),
        (RestoreOptions::new().tile_size(8).tile_overlap(8), "tile overlap"),
        (RestoreOptions::new().tile_overlap(usize::MAX), "tile overlap"),
        (RestoreOptions::new().tile_batch(0), "tile batch"),
        (joint().tile_batch(65), "tile batch"),
        (joint().context_margin(usize::MAX), "context margin"),
        (RestoreOptions::new().noise(ndarray::Array4::zeros((1, 12, 3, 3))), "noise"),
    ];
    for scale in [f32::INFINITY, f32::NAN, 0.0, -1.0] {
        cases.push((RestoreOptions::new().scale(scale), "scale"));
    }
    let runs = || oracle.graph_runs().into_iter().map(|(_, n)| n).sum::<u64>();
    let before = runs();
    for (options, says) in cases {
        let (mut whole_out, mut region_out) = (vec![0u8; bytes.len()], vec![0u8; bytes.len()]);
        let mut whole_dest = dpir::PixelsMut::new(layout, &mut whole_out).unwrap();
        let mut region_dest = dpir::PixelsMut::new(layout, &mut region_out).unwrap();
        let region = dpir::Region::new(source, (0, 0), (width, height), whole);
        let results = [
            ("restore", oracle.restore(&image, &options).map(drop)),
            ("restore_pixels", oracle.restore_pixels(&source, &mut whole_dest, &options).map(drop)),
            ("restore_region", oracle.restore_region(&region, &mut region_dest, &options).map(drop)),
            ("frame", oracle.frame((width, height), source, &options).map(drop)),
            ("requirements", oracle.requirements(width, height, &options).map(drop)),
            ("region_of_interest", oracle.region_of_interest((width, height), whole, &options).map(drop)),
            ("starting_noise", oracle.starting_noise(width, height, &options).map(drop)),
        ];
        for (entry, result) in results {
            let error = result.expect_err("a bad option is refused");
            assert_eq!(error.kind(), ErrorKind::InvalidOptions, "{options:?} through {entry}: {error}");
            assert!(error.to_string().contains(says), "{options:?} through {entry}: {error}");
        }
        let untouched = whole_out.iter().chain(&region_out).all(|&v| v == 0);
        assert!(untouched, "{options:?}: a refused restore wrote its destination");
    }
    assert_eq!(runs(), before, "a refused call ran a graph");
    let error = oracle.output_size(width, height, f32::NAN).unwrap_err();
    assert_eq!(error.kind(), ErrorKind::InvalidOptions, "{error}");
}

/// A large but legitimate picture (16000x12000 RGB, 576 MB decoded, over the image crate's own 512 MiB default)
/// is read; one over the image limit is refused with the limit and how to raise it, and nothing is written.
#[test]
fn large_images_are_read_within_a_settable_limit() {
    let dir = tempfile::tempdir().unwrap();
    let large = dir.path().join("large.png");
    let (width, height) = (16000u32, 12000u32);
    let file = std::io::BufWriter::new(fs::File::create(&large).unwrap());
    let encoder = image::codecs::png::PngEncoder::new_with_quality(
        file,
        image::codecs::png::CompressionType::Fast,
        image::codecs::png::FilterType::NoFilter,
    );
    let black = vec![0u8; (width * height * 3) as usize];
    image::ImageEncoder::write_image(encoder, &black, width, height, image::ExtendedColorType::Rgb8).unwrap();
    drop(black);
    let (layout, pixels) = dpir::imagefile::read(&large).unwrap();
    assert_eq!((layout.width, layout.height, layout.channels, pixels.len()), (16000, 12000, 3, 576_000_000));
    drop(pixels);

    let out = dir.path().join("out.png");
    let refused = run(cli().arg("restore").arg(&large).arg(&out).arg("--quiet").env("DPIR_IMAGE_LIMIT", "100"));
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("image limit of 100 MiB") && stderr.contains("DPIR_IMAGE_LIMIT"), "{stderr}");
    assert!(!out.exists());
}

/// SIGINT, SIGTERM and SIGHUP stop a restore at its next model call: the CLI exits with 128 + the signal, leaves
/// no temporary file and does not touch an existing output.
#[test]
fn an_interrupted_restore_writes_nothing_and_exits_with_the_signal() {
    for (signal, status) in [(libc::SIGINT, 130), (libc::SIGTERM, 143), (libc::SIGHUP, 129)] {
        let dir = tempfile::tempdir().unwrap();
        let input = good_png(dir.path());
        let output = dir.path().join("out.png");
        fs::write(&output, b"keep me").unwrap();
        // Thousands of tiles and steps: minutes of work, stopped within one model call.
        let mut command = cli();
        command.arg("restore").arg(&input).arg(&output);
        command.args(["--steps", "1000", "--scale", "4", "--tile-size", "2", "--tile-overlap", "0"]);
        // "loaded ..." comes after the signal handlers are in place.
        let (exit, rest) = signal_after(&mut command, "loaded", signal);
        assert_eq!(exit, Some(status), "signal {signal}: {rest}");
        assert!(rest.contains(&format!("interrupted by signal {signal}")), "{rest}");
        assert_eq!(fs::read(&output).unwrap(), b"keep me", "the existing output is untouched");
        let mut left: Vec<_> = fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        left.sort();
        assert_eq!(left, ["in.png", "out.png"], "no temporary file is left");
    }
}

/// A `.npy` file declaring `shape` (float32) in a few bytes.
fn npy_bomb(path: &Path, shape: &str) {
    let header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {shape}, }}");
    let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
    bytes.extend((header.len() as u16).to_le_bytes());
    bytes.extend(header.as_bytes());
    bytes.extend([0u8; 64]);
    fs::write(path, bytes).unwrap();
}

/// Image-sized float planes are reserved fallibly: converting, restoring into an `Image` and writing an image
/// file from a buffer whose planes cannot be had are "too large" errors, not aborts. Run by this test binary in
/// a child whose address space is limited to 4 GiB ([`whole_image_planes_in_a_limited_child`]).
#[test]
fn whole_image_planes_are_reserved_fallibly() {
    let name = "whole_image_planes_in_a_limited_child";
    let mut command = std::process::Command::new(std::env::current_exe().unwrap());
    command.args(["--exact", name, "--ignored", "--nocapture", "--test-threads", "1"]).env("DPIR_LIMITED_CHILD", "1");
    let out = limit_address_space(&mut command, 4 << 30).output().unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && stdout.contains("1 passed"), "{:?}\n{stdout}\n{stderr}", out.status);
}

#[test]
#[ignore = "run by whole_image_planes_are_reserved_fallibly, in a child with a limited address space"]
fn whole_image_planes_in_a_limited_child() {
    assert!(std::env::var_os("DPIR_LIMITED_CHILD").is_some(), "run only with a limited address space");
    let too_large = |result: dpir::Result<()>, what: &str| {
        let error = result.expect_err(what);
        assert_eq!(error.kind(), ErrorKind::TooLarge, "{what}: {error}");
        assert!(error.to_string().contains("cannot have"), "{what}: {error}");
    };
    // 32768x32768 gray: 1 GiB of pixels (zero pages, never touched), 12 GiB as float planes.
    let side = 32768;
    let gray = vec![0u8; side * side];
    let layout = PixelLayout::packed(side, side, 1, SampleType::U8);
    too_large(Image::from_pixels(&layout, &gray).map(drop), "Image::from_pixels");
    // An image restored into an `Image` of 32000x32000 pixels.
    let small = picture(64, 64);
    let options = RestoreOptions::new().scale(500.0).steps(1);
    too_large(restorer("oracle").restore(&small, &options).map(drop), "Restorer::restore");
    // Joint sampling of a whole 65536x65536 output frame (a 1024x1024 input at scale 64, one output pixel
    // wanted, the context margin spanning the frame): the oracle's block latent is 12 x 32768 x 32768 (48 GiB),
    // and so is the frame's starting noise.
    let side = 1024;
    let input = vec![128u8; side * side * 3];
    let layout = PixelLayout::packed(side, side, 3, SampleType::U8);
    let source = dpir::Pixels::new(layout, &input).unwrap();
    let options = RestoreOptions::new().scale(64.0).steps(1).tile_mode(dpir::TileMode::Joint).context_margin(65536);
    let region = dpir::Region::new(source, (0, 0), (side, side), dpir::Rect::new(0, 0, 1, 1));
    let mut pixel = [7u8; 3];
    let mut dest = dpir::PixelsMut::new(PixelLayout::packed(1, 1, 3, SampleType::U8), &mut pixel).unwrap();
    too_large(restorer("oracle").restore_region(&region, &mut dest, &options).map(drop), "joint block");
    assert_eq!(pixel, [7; 3], "the destination is untouched");
    too_large(restorer("oracle").starting_noise(side, side, &options).map(drop), "Restorer::starting_noise");

    // Writing a file (dpir_image_write) converts a band of rows at a time: only the stored bytes are image-sized,
    // so a 16384x16384 gray PNG (256 MiB; 3 GiB as float planes) is written.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("large.png");
    let side = 16384;
    let gray = vec![0u8; side * side];
    let pixels = dpir::Pixels::new(PixelLayout::packed(side, side, 1, SampleType::U8), &gray).unwrap();
    dpir::imagefile::write_pixels(&path, &pixels).unwrap();
    let (written, _) = dpir::imagefile::read(&path).unwrap();
    assert_eq!((written.width, written.height, written.channels), (side, side, 1));
}

/// Sizes a file declares are checked against the bytes it holds, and sizes a caller asks for against bounds,
/// before anything is allocated: each is a clear error from a CLI whose address space is limited to 4 GiB (a
/// regression would abort it), never an abort, and nothing is written.
#[test]
fn allocation_bombs_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let input = good_png(dir.path());
    let image_bomb = dir.path().join("bomb.npy");
    npy_bomb(&image_bomb, "(100000, 100000, 3)");
    let noise_bomb = dir.path().join("noise.npy");
    npy_bomb(&noise_bomb, "(1, 16, 1000000, 1000000)");
    let bundle_bomb = oracle_copy(dir.path());
    npy_bomb(&bundle_bomb.join("prompts/quality.npy"), "(100000000, 1000)");
    let truncated = dir.path().join("truncated.jpg");
    let mut jpeg = Vec::new();
    image::codecs::jpeg::JpegEncoder::new(&mut jpeg)
        .encode(&[128u8; 64 * 64 * 3], 64, 64, image::ExtendedColorType::Rgb8)
        .unwrap();
    fs::write(&truncated, &jpeg[..jpeg.len() / 2]).unwrap();
    let output = dir.path().join("out.png");
    let cases: [(&Path, &[&str], &str); 5] = [
        (&image_bomb, &[], "more than the 64 bytes of data it holds"),
        (&input, &["--noise", noise_bomb.to_str().unwrap()], "cannot read the noise"),
        (&input, &["--model", bundle_bomb.to_str().unwrap(), "--prompt", "quality"], "prompt embedding"),
        (&truncated, &[], "JPEG data ends before the image does"),
        // 56000x40000 RGB is 6.7 GB: more than the address space, so the output buffer cannot be had.
        (&input, &["--scale", "2000"], "cannot have 6409 MB of memory"),
    ];
    for (input, extra, says) in cases {
        let mut command = cli();
        command.arg("restore").arg(input).arg(&output).args(["--quiet", "--steps", "1"]).args(extra);
        let out = run(limit_address_space(&mut command, 4 << 30));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{extra:?}: {stderr}");
        assert!(stderr.contains(says), "{extra:?}: {stderr}");
        assert!(!output.exists());
    }
    // The same bounds through the library: a 65536x65536 frame in 2-latent tiles is an answer, not an abort.
    let error =
        restorer("oracle").requirements(65536, 65536, &RestoreOptions::new().tile_size(2).tile_overlap(0)).unwrap_err();
    assert_eq!(error.kind(), ErrorKind::TooLarge, "{error}");
}

/// A restored file gets the mode a plain write would leave: 0666 less the umask when new, its own when replaced.
#[test]
fn outputs_get_the_usual_file_mode() {
    use std::os::unix::{fs::PermissionsExt, process::CommandExt};
    let dir = tempfile::tempdir().unwrap();
    let input = good_png(dir.path());
    let (fresh, replaced) = (dir.path().join("fresh.png"), dir.path().join("replaced.png"));
    fs::write(&replaced, b"an older result").unwrap();
    fs::set_permissions(&replaced, fs::Permissions::from_mode(0o604)).unwrap();
    for output in [&fresh, &replaced] {
        let mut command = cli();
        command.arg("restore").arg(&input).arg(output).args(["--quiet", "--steps", "1"]);
        // SAFETY: umask is async-signal-safe, so it may run between fork and exec.
        unsafe {
            command.pre_exec(|| {
                libc::umask(0o027);
                Ok(())
            });
        }
        let out = run(&mut command);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    let mode = |path: &Path| fs::metadata(path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&fresh), 0o640, "a new file: 0666 less the umask 027");
    assert_eq!(mode(&replaced), 0o604, "a replaced file keeps its mode");
}

#[test]
fn malformed_manifest() {
    let dir = tempfile::tempdir().unwrap();
    let broken = oracle_copy(dir.path());
    fs::write(broken.join("dpir.json"), "{ \"format\": \"dpir-bundle\", ").unwrap();
    let error = Restorer::load(&broken, &runtime_options()).err().unwrap();
    assert!(error.to_string().contains("invalid manifest"), "{error}");
}

#[test]
fn nan_output_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let stderr = restore_fails(&good_png(dir.path()), &["--model", bundle("broken_nan").to_str().unwrap()]);
    assert!(stderr.contains("NaN"), "{stderr}");
    let error = restorer("broken_nan").restore(&picture(8, 8), &RestoreOptions::default()).unwrap_err();
    assert_eq!(error.kind(), ErrorKind::BadOutput);
}

#[test]
fn black_output_from_a_non_black_input_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let stderr = restore_fails(&good_png(dir.path()), &["--model", bundle("broken_black").to_str().unwrap()]);
    assert!(stderr.contains("black"), "{stderr}");
    // A black input may well come out black.
    let black = Image::from_planes(ndarray::Array3::zeros((3, 8, 8)), None).unwrap();
    restorer("broken_black").restore(&black, &RestoreOptions::new().steps(1)).unwrap();
}

#[test]
fn cancelling_stops_before_the_next_model_call() {
    let oracle = restorer("oracle");
    let calls = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = calls.clone();
    let options = RestoreOptions::new().steps(10).progress(move |p: &dpir::Progress| {
        seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        p.stage != dpir::Stage::Sample || p.step < 3
    });
    let error = oracle.restore(&picture(8, 8), &options).unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Cancelled);
    // global prompt, the tile's encode and prompt, steps 0..=3: the report at step 3 said stop.
    assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 7);

    let token = dpir::CancelToken::new();
    token.cancel();
    let options = RestoreOptions::new().cancel(token);
    assert_eq!(oracle.restore(&picture(8, 8), &options).unwrap_err().kind(), ErrorKind::Cancelled);
}
