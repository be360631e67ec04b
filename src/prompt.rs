//! Dual prompts: CLIP features of the local patch and of the global image, and the text block, assembled into
//! the transformer's context and pooled inputs.

use ndarray::{concatenate, s, Array1, Array2, Array3, Array4, ArrayView3, Axis};

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

impl Conditioning {
    /// The unconditional branch of guidance: everything zero.
    pub fn zeros_like(&self) -> Conditioning {
        Conditioning { context: Array3::zeros(self.context.raw_dim()), pooled: Array2::zeros(self.pooled.raw_dim()) }
    }
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

/// The rectangles (y, x, height, width) of the global tiles of an image, row-major.
pub fn global_tiles(height: usize, width: usize, clip: &ClipSpec) -> Vec<(usize, usize, usize, usize)> {
    let tile_h = clip.global_tile.min(height);
    let tile_w = clip.global_tile.min(width);
    let mut tiles = Vec::new();
    for y in tile_starts(height, clip.global_tile, clip.global_overlap) {
        for x in tile_starts(width, clip.global_tile, clip.global_overlap) {
            tiles.push((y, x, tile_h, tile_w));
        }
    }
    tiles
}

/// Runs both CLIP towers on a batch of preprocessed crops: (N, Tl, Dl) local tokens and (N, Dg) embeddings.
fn encode_crops(
    crops: &[Array3<f32>],
    clip_local: &Graph,
    clip_global: &Graph,
    timer: &SessionTimer,
) -> Result<(Array3<f32>, Array2<f32>)> {
    let views: Vec<_> = crops.iter().map(|c| c.view().insert_axis(Axis(0))).collect();
    let batch: Array4<f32> = concatenate(Axis(0), &views).expect("crops share one shape");
    let tokens = clip_local.run(&[("pixel_values", batch.view().into_dyn())], &["last_hidden_state"], timer)?;
    let embeds = clip_global.run(&[("pixel_values", batch.view().into_dyn())], &["image_embeds"], timer)?;
    let tokens = tokens.into_iter().next().unwrap().into_dimensionality().expect("validated rank 3");
    let embeds = embeds.into_iter().next().unwrap().into_dimensionality().expect("validated rank 2");
    Ok((tokens, embeds))
}

/// Builds the context and pooled inputs from the local patch, the global image and the text block.
///
/// `local` and `global` are (3, H, W) in [0, 1]; `text` is (text tokens, text width).
pub fn condition(
    manifest: &Manifest,
    local: ArrayView3<'_, f32>,
    global: ArrayView3<'_, f32>,
    text: &Array2<f32>,
    clip_local: &Graph,
    clip_global: &Graph,
    timer: &SessionTimer,
) -> Result<Conditioning> {
    let clip = &manifest.clip;
    // One batch for both towers: the local patch first, then each global tile. A tile that is the local patch
    // itself (the whole image, when nothing is tiled) reuses its features.
    let mut crops = vec![preprocess(local, clip)];
    let (_, gh, gw) = global.dim();
    let same_image =
        local.as_ptr() == global.as_ptr() && local.raw_dim() == global.raw_dim() && local.strides() == global.strides();
    // Tokens past `clip_tokens` are cut, so only the tiles that fit are encoded.
    let room = clip.clip_tokens.saturating_sub(clip.local_tokens);
    let tile_crops: Vec<usize> = global_tiles(gh, gw, clip)
        .into_iter()
        .take(room)
        .map(|(y, x, h, w)| {
            if same_image && (y, x, h, w) == (0, 0, gh, gw) {
                0
            } else {
                crops.push(preprocess(global.slice(s![.., y..y + h, x..x + w]), clip));
                crops.len() - 1
            }
        })
        .collect();
    let (tokens, embeds) = encode_crops(&crops, clip_local, clip_global, timer)?;
    let pooled_row: Array1<f32> = concatenate![Axis(0), tokens.slice(s![0, 0, ..]), embeds.slice(s![0, ..])];

    let pooled_width = manifest.transformer.pooled_width;
    let mut context = Array3::<f32>::zeros((1, manifest.context_tokens(), manifest.transformer.context_width));
    // CLIP block: the local tokens (zero-padded to the pooled width), then one token per global tile.
    let mut row = 0;
    for token in tokens.index_axis(Axis(0), 0).outer_iter().take(clip.clip_tokens) {
        context.slice_mut(s![0, row, ..token.len()]).assign(&token);
        row += 1;
    }
    for &crop in &tile_crops {
        let cls = tokens.slice(s![crop, 0, ..]);
        context.slice_mut(s![0, row, ..cls.len()]).assign(&cls);
        context.slice_mut(s![0, row, cls.len()..pooled_width]).assign(&embeds.index_axis(Axis(0), crop));
        row += 1;
    }
    // Text block below the CLIP block.
    context.slice_mut(s![0, clip.clip_tokens.., ..manifest.text.width]).assign(text);
    let pooled = pooled_row.insert_axis(Axis(0));
    Ok(Conditioning { context, pooled })
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
        let clip_tiles = global_tiles(768, 1024, &test_clip());
        assert_eq!(clip_tiles, vec![(0, 0, 768, 1024)]);
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
