//! Dual prompts: CLIP features of the local patch and of the global image, and the text block, assembled into
//! the transformer's context and pooled inputs.

use ndarray::{s, Array1, Array2, Array3, ArrayView3, Axis, CowArray, Ix3};

use crate::bundle::{ClipInput, ClipSpec, Manifest};
use crate::error::Result;
use crate::model::{Conditioning, Features, Model};
use crate::options::Settings;
use crate::plan::{relative, Rect};
use crate::progress::{tracing, Call};
use crate::resample::{resize_u8, Filter};
use crate::source::FrameSource;

/// What every tile of a frame shares in its conditioning: one summary token per global tile of the context
/// image, the text block, and, when the context is the frame itself, each global tile's features by rectangle so
/// that a sampling tile that coincides with one can reuse them.
#[derive(Debug, Clone)]
pub(crate) struct FramePrompt {
    tokens: Vec<Array1<f32>>,
    text: Array2<f32>,
    reusable: Vec<(Rect, Features)>,
}

impl FramePrompt {
    /// The prompt of a frame whose global context is `context`: the frame being restored itself when
    /// `is_frame`, else another view of it (any resolution) read as its own frame.
    pub(crate) fn new(
        model: &Model,
        context: &FrameSource<'_>,
        is_frame: bool,
        text: Array2<f32>,
        settings: &Settings,
        call: &Call,
    ) -> Result<FramePrompt> {
        let (width, height) = context.frame();
        let clip = &model.manifest().clip;
        let rects = global_tiles(width, height, clip);
        // A frame that is one pass reconstructs the whole frame once and crops the global tiles from it, as the
        // procedure says; larger frames reconstruct each global tile on its own, to keep memory per tile.
        let whole = Rect::new(0, 0, width, height);
        let (latent_w, latent_h) = model.manifest().latent_size(width, height);
        let one_pass = latent_w <= settings.tile && latent_h <= settings.tile;
        let reconstructed = match settings.clip_input {
            ClipInput::InitialRestoration if one_pass && is_frame => {
                Some(clip_image(model, context, whole, settings, call)?)
            }
            _ => None,
        };
        let mut crops = Vec::with_capacity(rects.len());
        for &rect in &rects {
            let image = match &reconstructed {
                Some(frame) => CowArray::from(frame.slice(s![.., rect.y..rect.bottom(), rect.x..rect.right()])),
                None => CowArray::from(clip_image(model, context, rect, settings, call)?),
            };
            crops.push(clip_pixels(image.view(), clip));
        }
        if tracing() {
            eprintln!("dpir trace: global prompt of a {width}x{height} context, {} CLIP crops", crops.len());
        }
        let features = model.clip(&crops, call)?;
        let tokens = features.iter().map(Features::summary).collect();
        // A tile whose visible part is a global tile reuses its features when they are the same numbers it would
        // compute: always for the input itself, and for the reconstruction only when the frame is one pass (larger
        // frames reconstruct a tile from its own latent, with margins).
        let same_numbers = settings.clip_input == ClipInput::Lq || reconstructed.is_some();
        let reusable = if is_frame && same_numbers { rects.into_iter().zip(features).collect() } else { Vec::new() };
        Ok(FramePrompt { tokens, text, reusable })
    }

    /// The CLIP features of a tile whose visible pixels are `visible`: of `sees` (what CLIP sees of those pixels),
    /// or those of a global tile that is the same rectangle.
    pub(crate) fn local_features<'a>(
        &self,
        model: &Model,
        visible: Rect,
        sees: impl FnOnce() -> Result<CowArray<'a, f32, Ix3>>,
        call: &Call,
    ) -> Result<Features> {
        if let Some((_, features)) = self.reusable.iter().find(|(rect, _)| *rect == visible) {
            return Ok(features.clone());
        }
        let crop = clip_pixels(sees()?.view(), &model.manifest().clip);
        Ok(model.clip(&[crop], call)?.remove(0))
    }

    /// The conditioning of a tile with its `local` features, the frame's global tokens and its text.
    pub(crate) fn condition(&self, manifest: &Manifest, local: &Features) -> Conditioning {
        assemble(manifest, local, &self.tokens, &self.text)
    }
}

/// What CLIP sees of an output-frame rectangle: the (upsampled) input, or its reconstruction by the VAE.
fn clip_image(
    model: &Model,
    source: &FrameSource<'_>,
    rect: Rect,
    settings: &Settings,
    call: &Call,
) -> Result<Array3<f32>> {
    match settings.clip_input {
        ClipInput::Lq => Ok(source.read(rect)?.0),
        ClipInput::InitialRestoration => {
            // Encode the rectangle padded to the model's multiple (edges repeated), decode, keep the rectangle.
            let m = model.manifest().pixel_multiple();
            let d = model.manifest().latent.downscale;
            let padded = Rect::new(rect.x / m * m, rect.y / m * m, 0, 0);
            let padded = Rect {
                width: (rect.right() - padded.x).div_ceil(m) * m,
                height: (rect.bottom() - padded.y).div_ceil(m) * m,
                ..padded
            };
            let (lq, _) = source.read(padded)?;
            let posterior = settings.posterior.then_some(settings.seed);
            let z = model.encode(lq.view(), (padded.y / d, padded.x / d), posterior, call)?;
            model.decode(z.view(), relative(rect, padded), call)
        }
    }
}

/// What CLIP sees of a (3, H, W) image in [0, 1], as the official code's `CLIPImageProcessor` (the
/// transformers 4.x processor, on the 8-bit images it was given) computes it: the image in 8 bits
/// (`floor(x * 255 + 0.5)`), its shortest side resized to `image_size` with Pillow's 8-bit bicubic (the long side
/// truncated), the centre `image_size` square, scaled by 1/255 and normalised with the manifest's mean and std in
/// float32. Returns (3, S, S).
pub fn clip_pixels(image: ArrayView3<'_, f32>, clip: &ClipSpec) -> Array3<f32> {
    let size = clip.image_size;
    let (_, h, w) = image.dim();
    let (nh, nw) = if h <= w {
        (size, (size as f64 * w as f64 / h as f64) as usize)
    } else {
        ((size as f64 * h as f64 / w as f64) as usize, size)
    };
    let eight_bit = image.mapv(|v| (v.clamp(0.0, 1.0) * 255.0 + 0.5).floor() as u8);
    let resized = resize_u8(eight_bit.view(), nh.max(size), nw.max(size), Filter::Bicubic);
    let (top, left) = ((resized.dim().1 - size) / 2, (resized.dim().2 - size) / 2);
    let crop = resized.slice(s![.., top..top + size, left..left + size]);
    Array3::from_shape_fn((3, size, size), |(c, y, x)| {
        let unit = (crop[[c, y, x]] as f64 * (1.0 / 255.0)) as f32;
        (unit - clip.mean[c]) / clip.std[c]
    })
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

/// Builds the transformer's context and pooled inputs from the local patch's features, the global tokens
/// (one summary row per global tile) and the text block (text tokens, text width).
fn assemble(manifest: &Manifest, local: &Features, global: &[Array1<f32>], text: &Array2<f32>) -> Conditioning {
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
        let out = clip_pixels(img.view(), &clip);
        assert_eq!(out.dim(), (3, 224, 224));
        // Resized width 672; the crop keeps the middle third, so column values stay near the middle.
        let middle = out[[0, 112, 112]] * clip.std[0] + clip.mean[0];
        assert!((middle - 0.5).abs() < 0.01, "{middle}");
    }
}
