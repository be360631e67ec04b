//! The Rust pipeline against the independent Python reference (tools/reference), on the tiny bundle with its
//! real transformer structure, from the same input and the same starting noise.

mod common;

use std::process::Command;

use common::{bundle, max_abs_diff, picture, python, restorer, root};
use dpir::{ClipInput, ColorFix, RestoreOptions, TileMode};
use ndarray::Array3;

/// Aim of the core issue: max abs difference on [0, 1] pixels.
const TOLERANCE: f32 = 1e-4;

struct Case {
    name: &'static str,
    size: (usize, usize),
    scale: f32,
    steps: usize,
    guidance: f32,
    prompt: &'static str,
    clip_input: ClipInput,
    /// A caption for the bundle's text encoder, replacing `prompt`.
    caption: Option<&'static str>,
    /// Joint tiles instead of one pass.
    joint: Option<Joint>,
}

/// Joint tiling (the official tiled sampler): tile side and overlap in latent samples, and tiles per transformer
/// call (the reference calls one tile at a time, so batching must not change the result).
struct Joint {
    tile: usize,
    overlap: usize,
    batch: usize,
}

fn check(case: Case) {
    let tiny = restorer("tiny");
    let input = picture(case.size.0, case.size.1);
    let mut options = RestoreOptions::new()
        .scale(case.scale)
        .steps(case.steps)
        .guidance(case.guidance)
        .prompt(case.prompt)
        .clip_input(case.clip_input)
        .seed(11);
    options.prompt_text = case.caption.map(str::to_string);
    if let Some(joint) = &case.joint {
        options.tile_mode = TileMode::Joint;
        options.tile_size = Some(joint.tile);
        options.tile_overlap = Some(joint.overlap);
        options.tile_batch = Some(joint.batch);
        // The runtime fixes colour per decoded tile, the reference over the whole frame; they agree only where the
        // tile margins cover the wavelet's reach. The sampler is what is under test.
        options.color_fix = Some(ColorFix::None);
        let tiles = tiny.requirements(input.width(), input.height(), &options).unwrap().tiles;
        assert!(tiles >= 4, "{}: {tiles} tiles", case.name);
    }
    let ours = tiny.restore_detailed(&input, &options).unwrap();

    let dir = tempfile::tempdir().unwrap();
    let (input_path, noise_path, output_path) =
        (dir.path().join("input.npy"), dir.path().join("noise.npy"), dir.path().join("reference.npy"));
    let hwc = input.rgb().view().permuted_axes([1, 2, 0]).as_standard_layout().into_owned();
    ndarray_npy::write_npy(&input_path, &hwc).unwrap();
    ndarray_npy::write_npy(&noise_path, &ours.noise).unwrap();
    let clip_input = match case.clip_input {
        ClipInput::Lq => "lq",
        ClipInput::InitialRestoration => "initial_restoration",
        other => panic!("the reference has no CLIP input {other:?}"),
    };
    let tiling = case.joint.as_ref().map(|joint| {
        let (tile, overlap) = (joint.tile.to_string(), joint.overlap.to_string());
        let args = ["--tile-mode", "joint", "--tile-size", &tile, "--tile-overlap", &overlap, "--color-fix", "none"];
        args.map(String::from)
    });
    let status = Command::new(python())
        .arg(root().join("tools/reference/dpir_reference.py"))
        .args(["--bundle".as_ref(), bundle("tiny").as_os_str()])
        .args(["--input".as_ref(), input_path.as_os_str(), "--output".as_ref(), output_path.as_os_str()])
        .args(["--noise".as_ref(), noise_path.as_os_str()])
        .args(["--scale", &case.scale.to_string(), "--steps", &case.steps.to_string()])
        .args(["--guidance", &case.guidance.to_string(), "--prompt", case.prompt, "--clip-input", clip_input])
        .args(case.caption.map(|c| ["--prompt-text", c]).into_iter().flatten())
        .args(tiling.iter().flatten())
        .status()
        .expect("the reference pipeline starts");
    assert!(status.success(), "{}: the reference pipeline failed", case.name);
    let reference: Array3<f32> = ndarray_npy::read_npy(&output_path).unwrap();
    let reference = reference.permuted_axes([2, 0, 1]).as_standard_layout().into_owned();
    let diff = max_abs_diff(ours.image.rgb(), &reference);
    eprintln!("{}: max abs difference {diff:.2e}", case.name);
    assert!(diff <= TOLERANCE, "{}: max abs difference {diff} > {TOLERANCE}", case.name);
    // The comparison means something only if the model changed the picture: the oracle returns the plain
    // (upsampled) input.
    let plain = restorer("oracle").restore(&input, &RestoreOptions::new().scale(case.scale).steps(1)).unwrap();
    assert!(
        max_abs_diff(ours.image.rgb(), plain.rgb()) > 0.01,
        "{}: the tiny model left the input as it was",
        case.name
    );
}

#[test]
fn plain_restore_matches() {
    check(Case {
        name: "plain",
        size: (40, 56),
        scale: 1.0,
        steps: 6,
        guidance: 1.0,
        prompt: "zeros",
        clip_input: ClipInput::Lq,
        caption: None,
        joint: None,
    });
}

#[test]
fn guidance_prompt_and_initial_restoration_match() {
    check(Case {
        name: "guided",
        size: (48, 64),
        scale: 1.0,
        steps: 4,
        guidance: 2.5,
        prompt: "quality",
        clip_input: ClipInput::InitialRestoration,
        caption: None,
        joint: None,
    });
}

#[test]
fn upscaled_and_padded_restore_matches() {
    check(Case {
        name: "upscaled",
        size: (30, 44),
        scale: 1.5,
        steps: 4,
        guidance: 1.0,
        prompt: "zeros",
        clip_input: ClipInput::Lq,
        caption: None,
        joint: None,
    });
}

#[test]
fn several_global_tiles_match() {
    check(Case {
        name: "global tiles",
        size: (100, 130),
        scale: 1.0,
        steps: 3,
        guidance: 1.0,
        prompt: "zeros",
        clip_input: ClipInput::Lq,
        caption: None,
        joint: None,
    });
}

#[test]
fn a_caption_through_the_text_encoder_matches() {
    check(Case {
        name: "caption",
        size: (40, 56),
        scale: 1.0,
        steps: 4,
        guidance: 2.0,
        prompt: "zeros",
        clip_input: ClipInput::Lq,
        caption: Some("a sharp photo of high quality"),
        joint: None,
    });
}

#[test]
fn the_caption_changes_the_result() {
    let tiny = restorer("tiny");
    let input = picture(40, 56);
    let plain = RestoreOptions::new().steps(3);
    let captioned = plain.clone().prompt_text("a clean detailed photo");
    let (a, b) = (tiny.restore(&input, &plain).unwrap(), tiny.restore(&input, &captioned).unwrap());
    assert!(max_abs_diff(a.rgb(), b.rgb()) > 1e-3, "the text encoder's block reaches the transformer");
}

#[test]
fn initial_restoration_over_several_global_tiles_matches() {
    check(Case {
        name: "initial restoration, global tiles",
        size: (100, 130),
        scale: 1.0,
        steps: 3,
        guidance: 1.0,
        prompt: "zeros",
        clip_input: ClipInput::InitialRestoration,
        caption: None,
        joint: None,
    });
}

#[test]
fn joint_tiles_match() {
    // 90x120 pads to a 12x16 latent: 2x3 tiles of 8 latent samples.
    check(Case {
        name: "joint tiles",
        size: (90, 120),
        scale: 1.0,
        steps: 3,
        guidance: 1.0,
        prompt: "zeros",
        clip_input: ClipInput::Lq,
        caption: None,
        joint: Some(Joint { tile: 8, overlap: 2, batch: 1 }),
    });
}

#[test]
fn guided_joint_tiles_with_initial_restoration_match() {
    // 100x130 pads to a 14x18 latent: 3x4 tiles, three per transformer call.
    check(Case {
        name: "joint tiles, guided",
        size: (100, 130),
        scale: 1.0,
        steps: 3,
        guidance: 2.5,
        prompt: "quality",
        clip_input: ClipInput::InitialRestoration,
        caption: None,
        joint: Some(Joint { tile: 8, overlap: 4, batch: 3 }),
    });
}

/// What CLIP sees equals, bit for bit, what the official code's processor (transformers 4.x CLIPImageProcessor,
/// Pillow's 8-bit bicubic) makes of the same 8-bit image: sizes and aspect ratios that upsample and downsample,
/// odd crops, at the real model's 224 pixels and the tiny bundle's own size, mean and std.
#[test]
fn clip_pixels_equal_the_official_processor() {
    let dir = tempfile::tempdir().unwrap();
    let sizes = [(37, 91), (91, 37), (224, 224), (300, 200), (200, 301), (1024, 768), (17, 17), (40, 300)];
    let mut paths = Vec::new();
    for (index, &(h, w)) in sizes.iter().enumerate() {
        let pixels = ndarray::Array3::from_shape_fn((h, w, 3), |(y, x, c)| {
            let smooth = 128.0 + 100.0 * ((x as f32 / 7.0 + c as f32).sin() * (y as f32 / 5.0).cos());
            let grain = ((x * 31 + y * 17 + c * 7 + index) % 23) as f32 - 11.0;
            (smooth + grain).clamp(0.0, 255.0) as u8
        });
        let path = dir.path().join(format!("image{index}.npy"));
        ndarray_npy::write_npy(&path, &pixels).unwrap();
        paths.push((path, pixels));
    }
    let mut real = bundle_manifest("tiny");
    real.clip.image_size = 224;
    for clip in [real.clip.clone(), bundle_manifest("tiny").clip] {
        let mut command = Command::new(python());
        command.arg(root().join("tools/reference/clip_processor.py")).args(["--size", &clip.image_size.to_string()]);
        command.arg("--mean").args(clip.mean.map(|v| v.to_string())).arg("--std").args(clip.std.map(|v| v.to_string()));
        let status = command.args(paths.iter().map(|(path, _)| path)).status().expect("the processor starts");
        assert!(status.success(), "the official processor failed");
        for (path, pixels) in &paths {
            let planes = pixels.mapv(|v| v as f32 / 255.0).permuted_axes([2, 0, 1]);
            let ours = dpir::clip_pixels(planes.view(), &clip);
            let official: Array3<f32> = ndarray_npy::read_npy(path.with_extension("clip.npy")).unwrap();
            let diff = max_abs_diff(&ours, &official);
            assert_eq!(diff, 0.0, "{:?} at {} px: max abs difference {diff}", pixels.dim(), clip.image_size);
        }
    }
}

/// A fixture bundle's manifest, to change.
fn bundle_manifest(name: &str) -> dpir::Manifest {
    dpir::Manifest::load(&bundle(name)).unwrap()
}
