//! Images larger than a tile: both sampling modes return the oracle's input for any tiling; region renders equal
//! the same region of a full render in independent mode; blending hides seams; progress and cancellation work
//! per tile.

mod common;

use common::{max_abs_diff, picture, restorer};
use dpir::{
    ColorFix, ErrorKind, Image, PixelLayout, Pixels, PixelsMut, Rect, Region, RestoreOptions, Restorer, SampleType,
    TileMode,
};
use ndarray::{s, Array3};

fn options(mode: TileMode, tile: usize, overlap: usize, steps: usize) -> RestoreOptions {
    RestoreOptions::new().tile_mode(mode).tile_size(tile).tile_overlap(overlap).steps(steps)
}

/// An image as a packed float RGB buffer.
fn packed(image: &Image) -> (PixelLayout, Vec<u8>) {
    let layout = PixelLayout::packed(image.width(), image.height(), 3, SampleType::F32);
    let mut bytes = vec![0u8; layout.validate().unwrap()];
    image.write_pixels(&layout, &mut bytes).unwrap();
    (layout, bytes)
}

fn planes(layout: &PixelLayout, bytes: &[u8]) -> Array3<f32> {
    Image::from_pixels(layout, bytes).unwrap().rgb().clone()
}

/// Renders `rect` of `image` from exactly its region of interest, with the whole frame as context, into a
/// NaN-poisoned destination.
fn render_region(model: &Restorer, image: &Image, rect: Rect, opts: &RestoreOptions) -> Array3<f32> {
    let frame = (image.width(), image.height());
    let roi = model.region_of_interest(frame, rect, opts).unwrap();
    let crop = Image::from_planes(image.rgb().slice(s![.., roi.y..roi.bottom(), roi.x..roi.right()]).to_owned(), None)
        .unwrap();
    let (crop_layout, crop_bytes) = packed(&crop);
    let (frame_layout, frame_bytes) = packed(image);
    let layout = PixelLayout::packed(rect.width, rect.height, 3, SampleType::F32);
    let mut out: Vec<u8> =
        std::iter::repeat_n(f32::NAN.to_ne_bytes(), rect.width * rect.height * 3).flatten().collect();
    let region = Region::new(Pixels::new(crop_layout, &crop_bytes).unwrap(), (roi.x, roi.y), frame, rect)
        .with_context(Pixels::new(frame_layout, &frame_bytes).unwrap());
    model.restore_region(&region, &mut PixelsMut::new(layout, &mut out).unwrap(), opts).unwrap();
    let values: Vec<f32> = out.chunks_exact(4).map(|c| f32::from_ne_bytes(c.try_into().unwrap())).collect();
    assert!(values.iter().all(|v| v.is_finite()), "every destination pixel was written");
    Array3::from_shape_vec((rect.height, rect.width, 3), values)
        .unwrap()
        .permuted_axes([2, 0, 1])
        .as_standard_layout()
        .into_owned()
}

#[test]
fn oracle_identity_for_every_mode_tile_size_and_overlap() {
    let oracle = restorer("oracle");
    for (h, w) in [(1, 1), (3, 5), (37, 53), (70, 130), (150, 96)] {
        let input = picture(h, w);
        for mode in [TileMode::Independent, TileMode::Joint] {
            // Latent tiles of 8 (16 px) with and without overlap, 10 (not dividing the images), 6 with overlap 4.
            for (tile, overlap) in [(8, 0), (8, 2), (10, 4), (6, 4)] {
                let out = oracle.restore(&input, &options(mode, tile, overlap, 2)).unwrap();
                let diff = max_abs_diff(out.rgb(), input.rgb());
                assert!(diff <= 1e-3, "{h}x{w} {mode:?} tile {tile} overlap {overlap}: max diff {diff}");
            }
        }
    }
}

#[test]
fn oracle_identity_when_upscaling_in_tiles() {
    let oracle = restorer("oracle");
    let input = picture(30, 44);
    let untiled = oracle.restore(&input, &RestoreOptions::new().scale(1.5).steps(1)).unwrap();
    for mode in [TileMode::Independent, TileMode::Joint] {
        let tiled = oracle.restore(&input, &options(mode, 8, 2, 1).scale(1.5)).unwrap();
        let diff = max_abs_diff(tiled.rgb(), untiled.rgb());
        assert!(diff <= 1e-3, "{mode:?}: max diff {diff} from the untiled upscale");
    }
}

#[test]
fn joint_mode_batches_any_number_of_tiles_with_and_without_guidance() {
    let oracle = restorer("oracle");
    let input = picture(40, 72);
    for batch in [1, 2, 3, 64] {
        for guidance in [1.0, 2.5] {
            let opts = options(TileMode::Joint, 8, 2, 2).tile_batch(batch).guidance(guidance);
            let restored = oracle.restore_detailed(&input, &opts).unwrap();
            let diff = max_abs_diff(restored.image.rgb(), input.rgb());
            assert!(diff <= 1e-3, "batch {batch}, guidance {guidance}: max diff {diff}");
            // One transformer run per step and batch of tiles; guidance widens the batch, not the runs.
            let stats = restored.stats;
            assert_eq!(stats.transformer_runs, 2 * stats.tiles.div_ceil(batch), "batch {batch}: {stats:?}");
            assert!(stats.in_transformer <= stats.in_session, "{stats:?}");
        }
    }
}

#[test]
fn independent_regions_equal_the_full_render() {
    // (bundle, scale, tolerance, (height, width), tile, overlap)
    let cases = [
        ("oracle", 1.0f32, 1e-3f32, (90, 130), 8, 2),
        ("oracle", 1.5, 1e-3, (60, 70), 8, 4),
        ("tiny", 1.0, 1e-4, (150, 200), 8, 2),
    ];
    for (bundle, scale, tolerance, (h, w), tile, overlap) in cases {
        let model = restorer(bundle);
        let image = picture(h, w);
        let opts = options(TileMode::Independent, tile, overlap, 3).scale(scale);
        let full = model.restore(&image, &opts).unwrap();
        let (fw, fh) = (full.width(), full.height());
        for rect in [
            Rect::new(0, 0, fw, fh),
            Rect::new(0, 0, 17, 9),
            Rect::new(fw / 3, fh / 4, fw / 3, fh / 2),
            Rect::new(fw - 21, fh - 13, 21, 13),
            Rect::new(5, fh / 2, fw - 10, 1),
        ] {
            let region = render_region(&model, &image, rect, &opts);
            let expected = full.rgb().slice(s![.., rect.y..rect.bottom(), rect.x..rect.right()]).to_owned();
            let diff = max_abs_diff(&region, &expected);
            assert!(diff <= tolerance, "{bundle} x{scale} {rect:?}: max diff {diff}");
        }
    }
}

#[test]
fn a_crop_smaller_than_the_region_of_interest_is_refused() {
    let oracle = restorer("oracle");
    let image = picture(60, 80);
    let opts = options(TileMode::Independent, 8, 2, 1);
    let rect = Rect::new(30, 20, 10, 10);
    let roi = oracle.region_of_interest((80, 60), rect, &opts).unwrap();
    assert!(roi.contains(&rect) && roi.width < 80, "the region of interest is local: {roi:?}");
    let (layout, bytes) =
        packed(&Image::from_planes(image.rgb().slice(s![.., 20..30, 30..40]).to_owned(), None).unwrap());
    let out_layout = PixelLayout::packed(10, 10, 3, SampleType::F32);
    let mut out = vec![7u8; 10 * 10 * 12];
    let region = Region::new(Pixels::new(layout, &bytes).unwrap(), (30, 20), (80, 60), rect);
    let error = oracle.restore_region(&region, &mut PixelsMut::new(out_layout, &mut out).unwrap(), &opts).unwrap_err();
    assert_eq!(error.kind(), ErrorKind::InvalidImage);
    assert!(error.to_string().contains("source crop covers"), "{error}");
    assert!(out.iter().all(|&b| b == 7), "the destination is untouched");
}

#[test]
fn joint_regions_approach_the_full_render() {
    let tiny = restorer("tiny");
    let image = picture(150, 200);
    let opts = options(TileMode::Joint, 8, 2, 3);
    let full = tiny.restore(&image, &opts).unwrap();
    let rect = Rect::new(70, 50, 50, 40);
    let expected = full.rgb().slice(s![.., rect.y..rect.bottom(), rect.x..rect.right()]).to_owned();
    let mut last = f32::INFINITY;
    for margin in [0, 64, 1000] {
        let region = render_region(&tiny, &image, rect, &opts.clone().context_margin(margin));
        let diff = max_abs_diff(&region, &expected);
        eprintln!("joint region, context margin {margin} px: max abs difference {diff:.2e}");
        assert!(diff <= last + 1e-6, "more context must not move the region further from the full render");
        last = diff;
    }
    assert!(last <= 1e-4, "a margin covering the frame samples the whole frame: {last}");
}

/// A frame made once restores each region exactly as `restore_region` does, and pays for the global prompt once:
/// N regions run the global CLIP batch once, not N times.
#[test]
fn a_frame_restores_regions_as_restore_region_does_with_one_global_prompt() {
    let tiny = restorer("tiny");
    // Global tiles of 48 pixels: a 150x200 frame has 12 (the tiny bundle keeps 10), so the global batch stands
    // out from the tiles' own CLIP passes (batches of one).
    let image = picture(150, 200);
    let opts = options(TileMode::Independent, 8, 2, 2).clip_input(dpir::ClipInput::InitialRestoration);
    let (frame_layout, frame_bytes) = packed(&image);
    let whole = Pixels::new(frame_layout, &frame_bytes).unwrap();
    let frame_size = (image.width(), image.height());
    let rects = [Rect::new(0, 0, 64, 48), Rect::new(64, 0, 136, 48), Rect::new(0, 48, 200, 102)];
    let clip_global_runs = || tiny.graph_runs().into_iter().find(|(file, _)| *file == "clip_global.onnx").unwrap().1;

    let before = clip_global_runs();
    let expected: Vec<Array3<f32>> = rects.iter().map(|&rect| render_region(&tiny, &image, rect, &opts)).collect();
    let per_region = clip_global_runs() - before;

    let before = clip_global_runs();
    let frame = tiny.frame(frame_size, whole, &opts).unwrap();
    assert_eq!(clip_global_runs() - before, 1, "the frame runs the global prompt's batch once");
    assert_eq!((frame.input_size(), frame.output_size()), (frame_size, frame_size));
    for (rect, expected) in rects.iter().zip(&expected) {
        let roi = frame.region_of_interest(*rect).unwrap();
        assert_eq!(roi, tiny.region_of_interest(frame_size, *rect, &opts).unwrap());
        let crop = image.rgb().slice(s![.., roi.y..roi.bottom(), roi.x..roi.right()]).to_owned();
        let (crop_layout, crop_bytes) = packed(&Image::from_planes(crop, None).unwrap());
        let layout = PixelLayout::packed(rect.width, rect.height, 3, SampleType::F32);
        let mut out = vec![0u8; layout.validate().unwrap()];
        let source = Pixels::new(crop_layout, &crop_bytes).unwrap();
        let control = dpir::Control::new();
        frame
            .restore_region(&source, (roi.x, roi.y), *rect, &mut PixelsMut::new(layout, &mut out).unwrap(), &control)
            .unwrap();
        assert_eq!(
            &planes(&layout, &out),
            expected,
            "{rect:?}: the frame's region equals restore_region's, bit for bit"
        );
    }
    let per_frame = clip_global_runs() - before;
    eprintln!("clip_global runs for {} regions: {per_region} one by one, {per_frame} through a frame", rects.len());
    assert_eq!(per_region - per_frame, rects.len() as u64 - 1, "only the frame's one global batch is saved");
}

/// How much texture a column holds: the standard deviation down the column, averaged over channels.
fn column_energy(image: &Array3<f32>, x: usize) -> f32 {
    (0..3).map(|c| image.slice(s![c, .., x]).std(0.0)).sum::<f32>() / 3.0
}

/// A seam detector: decoders fade towards grey where a tile's latent ends, so a hard tile edge shows as a column
/// with much less texture than its surroundings. The score is the median column energy over the weakest edge
/// column's: about 1 without seams, large with them.
fn seam_score(image: &Array3<f32>, edges: &[usize]) -> f32 {
    let width = image.dim().2;
    let mut energy: Vec<f32> = (0..width).map(|x| column_energy(image, x)).collect();
    let weakest = edges.iter().flat_map(|&e| [e - 1, e]).map(|x| energy[x]).fold(f32::INFINITY, f32::min);
    energy.sort_by(f32::total_cmp);
    energy[width / 2] / weakest
}

/// The pixel columns where tiles start or end inside a frame of `width` pixels (downscale 8, patch 2).
fn tile_edges(width: usize, tile: usize, overlap: usize) -> Vec<usize> {
    let tiles = dpir::plan::axis_tiles(width / 8, tile, overlap, 2);
    let mut edges: Vec<usize> =
        tiles.iter().flat_map(|&(s, l)| [s * 8, (s + l) * 8]).filter(|&e| e > 0 && e < width).collect();
    edges.sort();
    edges.dedup();
    edges
}

#[test]
fn blending_hides_seams_on_a_smooth_gradient() {
    let tiny = restorer("tiny");
    let gradient = Image::from_planes(
        Array3::from_shape_fn((3, 64, 384), |(c, y, x)| {
            0.2 + 0.5 * x as f32 / 384.0 + 0.1 * c as f32 + 0.05 * y as f32 / 64.0
        }),
        None,
    )
    .unwrap();
    // The raw model output shows seams best; the colour fix would hide part of them.
    let raw = |tile, overlap| options(TileMode::Independent, tile, overlap, 4).color_fix(ColorFix::None);
    let untiled = tiny.restore(&gradient, &raw(48, 0)).unwrap();
    let mut scores = Vec::new();
    for overlap in [0, 2, 4] {
        let tiled = tiny.restore(&gradient, &raw(16, overlap)).unwrap();
        let edges = tile_edges(384, 16, overlap);
        let (score, reference) = (seam_score(tiled.rgb(), &edges), seam_score(untiled.rgb(), &edges));
        let diff = max_abs_diff(tiled.rgb(), untiled.rgb());
        eprintln!("tiles of 16 latents, overlap {overlap}: seam score {score:.2} (untiled at the same columns {reference:.2}), max abs difference from untiled {diff:.3}");
        scores.push((score, reference));
    }
    // The detector sees the hard edges without overlap, and none with it: the tile edges then score like the
    // same columns of the untiled render.
    let (hard, hard_reference) = scores[0];
    assert!(hard > 1.5 * hard_reference, "no overlap must show seams: {hard} vs {hard_reference} untiled");
    for &(score, reference) in &scores[1..] {
        assert!(score <= 1.15 * reference, "overlap must hide the seams: {score} vs {reference} untiled");
    }
}

#[test]
fn progress_counts_tiles_and_cancelling_between_tiles_writes_nothing() {
    use std::sync::{Arc, Mutex};
    let oracle = restorer("oracle");
    let image = picture(40, 72);
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    let opts = options(TileMode::Independent, 8, 2, 2).progress(move |p: &dpir::Progress| {
        log.lock().unwrap().push((p.stage, p.tile, p.tiles));
        true
    });
    let requirements = oracle.requirements(72, 40, &opts).unwrap();
    let (layout, bytes) = packed(&image);
    let mut out = vec![0u8; bytes.len()];
    let stats = oracle
        .restore_pixels(&Pixels::new(layout, &bytes).unwrap(), &mut PixelsMut::new(layout, &mut out).unwrap(), &opts)
        .unwrap();
    let seen = seen.lock().unwrap().clone();
    assert!(requirements.tiles > 4 && stats.tiles == requirements.tiles, "{requirements:?} {stats:?}");
    assert!(seen.iter().all(|&(_, _, n)| n == requirements.tiles));
    // Every tile's prompt first (the frame's global prompt is reported as tile 1), then each tile's sampling.
    let prompts = seen.iter().take_while(|&&(stage, _, _)| stage == dpir::Stage::Prompt).count();
    for (what, part) in [("prompts", &seen[..prompts]), ("sampling", &seen[prompts..])] {
        let mut tiles: Vec<usize> = part.iter().map(|&(_, t, _)| t).collect();
        tiles.dedup();
        assert_eq!(tiles, (1..=requirements.tiles).collect::<Vec<_>>(), "{what}: tiles reported 1..=n in order");
    }
    assert!(seen[prompts..].iter().all(|&(stage, _, _)| stage != dpir::Stage::Prompt));
    assert!(max_abs_diff(&planes(&layout, &out), image.rgb()) <= 1e-3);

    for mode in [TileMode::Independent, TileMode::Joint] {
        let opts = options(mode, 8, 2, 2).progress(|p: &dpir::Progress| p.tile < 3);
        let mut out = vec![0xA5u8; bytes.len()];
        let error = oracle
            .restore_pixels(
                &Pixels::new(layout, &bytes).unwrap(),
                &mut PixelsMut::new(layout, &mut out).unwrap(),
                &opts,
            )
            .unwrap_err();
        assert_eq!(error.kind(), ErrorKind::Cancelled);
        assert!(out.iter().all(|&b| b == 0xA5), "{mode:?}: a cancelled render writes nothing");
    }
}

#[test]
fn regions_equal_the_full_render_with_clip_on_the_initial_restoration() {
    // Tiles of 64 px without overlap coincide with the tiny bundle's 64 px global tiles at the frame's corner.
    let tiny = restorer("tiny");
    let image = picture(128, 192);
    let opts = options(TileMode::Independent, 8, 0, 2).clip_input(dpir::ClipInput::InitialRestoration);
    let full = tiny.restore(&image, &opts).unwrap();
    for rect in [Rect::new(0, 0, 64, 64), Rect::new(40, 30, 100, 60)] {
        let region = render_region(&tiny, &image, rect, &opts);
        let expected = full.rgb().slice(s![.., rect.y..rect.bottom(), rect.x..rect.right()]).to_owned();
        let diff = max_abs_diff(&region, &expected);
        assert!(diff <= 1e-4, "{rect:?}: max diff {diff}");
    }
}
