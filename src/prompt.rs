//! Dual prompts: CLIP features of the local patch and of the global image, and the text block, assembled into
//! the transformer's context and pooled inputs.

use ndarray::{concatenate, s, Array1, Array2, Array3, Array4, ArrayView3, Axis};

use crate::plan::Rect;

use crate::bundle::{ClipSpec, Manifest};
use crate::error::Result;
use crate::resample::{resize, Filter};
use crate::runtime::{Graph, SessionTimer};

/// The transformer's conditioning for one sample.
#[derive(Debug, Clone)]
pub struct Conditioning {
    /// (1, context tokens, context width).
    pub context: Array3<f32>,
    /// (1, pooled width).
    pub pooled: Array2<f32>,
}

/// CLIP preprocessing of a (3, H, W) image in [0, 1]: shortest side to `image_size` (bicubic), centre crop,
/// normalise. Returns (3, S, S).
pub fn preprocess(image: ArrayView3<'_, f32>, clip: &ClipSpec) -> Array3<f32> {
    let size = clip.image_size;
    let (_, h, w) = image.dim();
    let (nh, nw) = if h <= w {
        (size, (size as f64 * w as f64 / h as f64) as usize)
    } else {
        ((size as f64 * h as f64 / w as f64) as usize, size)
    };
    let resized = resize(image, nh.max(size), nw.max(size), Filter::Bicubic);
    let (top, left) = ((resized.dim().1 - size) / 2, (resized.dim().2 - size) / 2);
    let mut crop = resized.slice(s![.., top..top + size, left..left + size]).to_owned();
    for (c, mut plane) in crop.axis_iter_mut(Axis(0)).enumerate() {
        plane.mapv_inplace(|v| (v - clip.mean[c]) / clip.std[c]);
    }
    crop
}

/// Starts of the tiles covering `length` with tiles of `tile` and the given overlap; the last tile is snapped to
/// the end, and a length shorter than a tile gets one tile (clamped to the image, never a negative start).
pub fn tile_starts(length: usize, tile: usize, overlap: usize) -> Vec<usize> {
    if length <= tile {
        return vec![0];
    }
    let stride = tile - overlap;
    let count = (length - tile).div_ceil(stride) + 1;
    (0..count).map(|i| (i * stride).min(length - tile)).collect()
}

/// The global tiles of an image of `width x height`, row-major. Only the first `clip_tokens - local_tokens`
/// can be used (later ones are cut from the context), so only those are returned.
pub fn global_tiles(width: usize, height: usize, clip: &ClipSpec) -> Vec<Rect> {
    let room = clip.clip_tokens.saturating_sub(clip.local_tokens);
    let (tile_w, tile_h) = (clip.global_tile.min(width), clip.global_tile.min(height));
    let mut tiles = Vec::new();
    for y in tile_starts(height, clip.global_tile, clip.global_overlap) {
        for x in tile_starts(width, clip.global_tile, clip.global_overlap) {
            tiles.push(Rect::new(x, y, tile_w, tile_h));
        }
    }
    tiles.truncate(room);
    tiles
}

/// What the two CLIP towers say about one image: `clip_local`'s tokens (Tl, Dl) and `clip_global`'s embedding
/// (Dg).
#[derive(Debug, Clone)]
pub(crate) struct Features {
    pub tokens: Array2<f32>,
    pub embed: Array1<f32>,
}

impl Features {
    /// The one-token summary used for a global tile and as the pooled input: CLS token then embedding (Dp).
    pub fn summary(&self) -> Array1<f32> {
        concatenate![Axis(0), self.tokens.row(0), self.embed]
    }
}

/// Runs both CLIP towers on preprocessed crops (see [`preprocess`]) in one batch per tower.
pub(crate) fn features(
    crops: &[Array3<f32>],
    clip_local: &Graph,
    clip_global: &Graph,
    timer: &SessionTimer,
) -> Result<Vec<Features>> {
    let views: Vec<_> = crops.iter().map(|c| c.view().insert_axis(Axis(0))).collect();
    let batch: Array4<f32> = concatenate(Axis(0), &views).expect("crops share one shape");
    let tokens = clip_local.run(&[("pixel_values", batch.view().into_dyn())], &["last_hidden_state"], timer)?;
    let embeds = clip_global.run(&[("pixel_values", batch.view().into_dyn())], &["image_embeds"], timer)?;
    let tokens: Array3<f32> = tokens.into_iter().next().unwrap().into_dimensionality().expect("validated rank 3");
    let embeds: Array2<f32> = embeds.into_iter().next().unwrap().into_dimensionality().expect("validated rank 2");
    Ok(tokens
        .outer_iter()
        .zip(embeds.outer_iter())
        .map(|(t, e)| Features { tokens: t.to_owned(), embed: e.to_owned() })
        .collect())
}

/// Builds the transformer's context and pooled inputs from the local patch's features, the global tokens
/// (one summary row per global tile) and the text block (text tokens, text width).
pub(crate) fn assemble(
    manifest: &Manifest,
    local: &Features,
    global: &[Array1<f32>],
    text: &Array2<f32>,
) -> Conditioning {
    let clip = &manifest.clip;
    let mut context = Array3::<f32>::zeros((1, manifest.context_tokens(), manifest.transformer.context_width));
    // CLIP block: the local tokens (zero-padded to the pooled width), then one token per global tile, cut at
    // clip_tokens rows.
    let rows = local.tokens.outer_iter().chain(global.iter().map(|g| g.view())).take(clip.clip_tokens);
    for (row, token) in rows.enumerate() {
        context.slice_mut(s![0, row, ..token.len()]).assign(&token);
    }
    // Text block below the CLIP block.
    context.slice_mut(s![0, clip.clip_tokens.., ..manifest.text.width]).assign(text);
    Conditioning { context, pooled: local.summary().insert_axis(Axis(0)) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiles_cover_and_snap_to_the_end() {
        assert_eq!(tile_starts(50, 64, 8), vec![0]);
        assert_eq!(tile_starts(64, 64, 8), vec![0]);
        assert_eq!(tile_starts(150, 64, 8), vec![0, 56, 86]);
        assert_eq!(tile_starts(1024, 1024, 64), vec![0]);
        assert_eq!(tile_starts(2000, 1024, 64), vec![0, 960, 976]);
    }

    #[test]
    fn small_images_get_one_clamped_tile() {
        // The official code starts this tile at a negative row; ours covers the whole image.
        let clip_tiles = global_tiles(1024, 768, &test_clip());
        assert_eq!(clip_tiles, vec![Rect::new(0, 0, 1024, 768)]);
    }

    fn test_clip() -> ClipSpec {
        ClipSpec {
            image_size: 224,
            resize: "bicubic".into(),
            mean: [0.48145466, 0.4578275, 0.40821073],
            std: [0.268_629_54, 0.261_302_6, 0.275_777_1],
            local_tokens: 50,
            local_width: 768,
            global_width: 1280,
            clip_tokens: 77,
            global_tile: 1024,
            global_overlap: 64,
            input: crate::bundle::ClipInput::Lq,
        }
    }

    #[test]
    fn preprocess_crops_the_centre_of_the_short_side_resize() {
        let clip = test_clip();
        let img = Array3::from_shape_fn((3, 100, 300), |(_, _, x)| x as f32 / 299.0);
        let out = preprocess(img.view(), &clip);
        assert_eq!(out.dim(), (3, 224, 224));
        // Resized width 672; the crop keeps the middle third, so column values stay near the middle.
        let middle = out[[0, 112, 112]] * clip.std[0] + clip.mean[0];
        assert!((middle - 0.5).abs() < 0.01, "{middle}");
    }
}
