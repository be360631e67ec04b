//! The options of a restore, and the settings they resolve to against a model's defaults and limits.

use std::sync::Arc;

use ndarray::Array4;

use crate::bundle::{self, ClipInput, ColorFix, Manifest, VAE_MARGIN};
use crate::error::{Error, Result};
use crate::model::{check_scale, Model};
use crate::pixels::MAX_SIDE;
use crate::progress::{CancelToken, Control, Progress, ProgressFn};
use crate::runtime::ExecutionProvider;

/// Options of one restore. Unset fields take the bundle's defaults.
///
/// Build them with the setters, which take plain values (`RestoreOptions::new().steps(8).seed(7)`), or set the
/// public fields of a [`RestoreOptions::default`]; fields are only ever added.
#[derive(Clone, Default)]
#[non_exhaustive]
pub struct RestoreOptions {
    /// Output size / input size, > 0. Default 1.
    pub scale: Option<f32>,
    /// Size the output as the paper's test script does ([`paper_size`]: the long side 1024 pixels, each side a
    /// multiple of 8) instead of by `scale`, which it overrides. Default: off.
    pub paper_size: bool,
    /// Denoising steps, >= 1. Default: the bundle's (28 for the real model).
    pub steps: Option<usize>,
    /// Seed of the starting noise (and of the posterior draw). Default: the bundle's (1234).
    pub seed: Option<u64>,
    /// Classifier-free guidance scale, >= 1; 1 turns it off. Default: the bundle's (1).
    pub guidance: Option<f32>,
    /// Precomputed text prompt of the bundle, or "zeros". Default: the bundle's.
    pub prompt: Option<String>,
    /// A caption encoded with the bundle's text encoder (`t5.onnx` + `tokenizer.json`), replacing `prompt`.
    /// An error when the bundle has no text encoder.
    pub prompt_text: Option<String>,
    /// Which image CLIP sees. Default: the bundle's.
    pub clip_input: Option<ClipInput>,
    /// Colour fix. Default: the bundle's (wavelet).
    pub color_fix: Option<ColorFix>,
    /// Draw the LQ latent from the encoder's posterior (seeded) instead of taking its mean.
    pub sample_posterior: bool,
    /// Starting noise (1, C, h, w) for the whole padded latent frame, replacing the seeded draw (for parity
    /// tests). Tiles take their window of it.
    pub noise: Option<Array4<f32>>,
    /// How images larger than one tile are sampled. Default: [`TileMode::Independent`].
    pub tile_mode: TileMode,
    /// Tile side in latent samples (a multiple of the patch size, at most what one pass takes). Default: the
    /// bundle's `latent_tile` (128 = 1024 px for SD3), capped at one pass.
    pub tile_size: Option<usize>,
    /// Overlap of neighbouring tiles in latent samples. Default: the bundle's `latent_overlap` (16).
    pub tile_overlap: Option<usize>,
    /// Tiles per transformer call in joint mode (the graph's batch axis). Default 1.
    pub tile_batch: Option<usize>,
    /// Joint-mode region renders: pixels of surrounding frame sampled with the region, at most 65536. Default:
    /// one tile overlap. No effect in independent mode, where a region needs only the tiles that touch it.
    pub context_margin: Option<usize>,
    /// Progress reports; returning false cancels.
    pub progress: Option<Arc<ProgressFn>>,
    /// Cancellation from another thread.
    pub cancel: Option<CancelToken>,
}

/// How an image larger than one tile is sampled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum TileMode {
    /// Each tile is sampled, decoded and colour-fixed on its own, then blended with its neighbours (cosine ramps
    /// over the overlaps). A pixel depends only on the tiles that contain it, so region renders equal the same
    /// region of a full render, and memory stays per tile.
    #[default]
    Independent,
    /// Every step blends all tiles' velocities with Gaussian weights before one Euler step on the whole latent
    /// (the official tiled sampler, without its bugs); the latent is then decoded in tiles with margins. Needs
    /// the whole frame's latent in memory; region renders only approximate the full render.
    Joint,
}

/// Setters of optional values: each sets its field to `Some(value)`.
macro_rules! setters {
    ($($field:ident: $type:ty;)*) => {
        $(#[doc = concat!("Sets the `", stringify!($field), "` field (see there).")]
        pub fn $field(mut self, value: $type) -> RestoreOptions {
            self.$field = Some(value);
            self
        })*
    };
}

impl RestoreOptions {
    /// All defaults: the bundle's.
    pub fn new() -> RestoreOptions {
        RestoreOptions::default()
    }

    setters! {
        scale: f32;
        steps: usize;
        seed: u64;
        guidance: f32;
        clip_input: ClipInput;
        color_fix: ColorFix;
        noise: Array4<f32>;
        tile_size: usize;
        tile_overlap: usize;
        tile_batch: usize;
        context_margin: usize;
        cancel: CancelToken;
    }

    /// Sets the `prompt` field (see there).
    pub fn prompt(mut self, name: impl Into<String>) -> RestoreOptions {
        self.prompt = Some(name.into());
        self
    }

    /// Sets the `prompt_text` field (see there).
    pub fn prompt_text(mut self, caption: impl Into<String>) -> RestoreOptions {
        self.prompt_text = Some(caption.into());
        self
    }

    /// Sets the `paper_size` field (see there).
    pub fn paper_size(mut self, value: bool) -> RestoreOptions {
        self.paper_size = value;
        self
    }

    /// Sets the `sample_posterior` field (see there).
    pub fn sample_posterior(mut self, value: bool) -> RestoreOptions {
        self.sample_posterior = value;
        self
    }

    /// Sets the `tile_mode` field (see there).
    pub fn tile_mode(mut self, value: TileMode) -> RestoreOptions {
        self.tile_mode = value;
        self
    }

    /// Reports progress to `callback`; its returning false cancels.
    pub fn progress(mut self, callback: impl Fn(&Progress) -> bool + Send + Sync + 'static) -> RestoreOptions {
        self.progress = Some(Arc::new(callback));
        self
    }

    /// The progress callback and cancel token, for the calls that take them apart from the options.
    pub(crate) fn control(&self) -> Control {
        Control { progress: self.progress.clone(), cancel: self.cancel.clone() }
    }
}

impl std::fmt::Debug for RestoreOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RestoreOptions")
            .field("scale", &self.scale)
            .field("paper_size", &self.paper_size)
            .field("steps", &self.steps)
            .field("seed", &self.seed)
            .field("guidance", &self.guidance)
            .field("prompt", &self.prompt)
            .field("clip_input", &self.clip_input)
            .field("color_fix", &self.color_fix)
            .field("sample_posterior", &self.sample_posterior)
            .field("noise", &self.noise.as_ref().map(|n| n.dim()))
            .field("tile_mode", &self.tile_mode)
            .field("tile_size", &self.tile_size)
            .field("tile_overlap", &self.tile_overlap)
            .field("tile_batch", &self.tile_batch)
            .field("context_margin", &self.context_margin)
            .finish_non_exhaustive()
    }
}

/// The resolved settings of one restore.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub scale: f32,
    /// The output frame's (width, height): the input frame's times the scale.
    pub output: (usize, usize),
    pub steps: usize,
    pub seed: u64,
    pub guidance: f32,
    pub clip_input: ClipInput,
    pub color_fix: ColorFix,
    pub posterior: bool,
    pub mode: TileMode,
    /// Tile side and overlap, latent samples.
    pub tile: usize,
    pub overlap: usize,
    pub batch: usize,
    pub context_margin: usize,
}

impl Settings {
    /// Checks `options` for a frame of `frame_in` (width, height) input pixels against the model, and fills in its
    /// defaults. Every entry point starts here, so that an option is refused alike by all of them, before any work.
    pub(crate) fn resolve(model: &Model, options: &RestoreOptions, frame_in: (usize, usize)) -> Result<Settings> {
        let m = model.manifest();
        let d = &m.defaults;
        let mut scale = options.scale.unwrap_or(1.0);
        check_scale(scale)?;
        let steps = options.steps.unwrap_or(m.scheduler.steps);
        if !bundle::STEPS.contains(&steps) {
            return Err(Error::InvalidOptions(format!("steps must be between 1 and 1000, got {steps}")));
        }
        let guidance = options.guidance.unwrap_or(d.guidance);
        if !(guidance.is_finite() && bundle::GUIDANCE.contains(&guidance)) {
            return Err(Error::InvalidOptions(format!("guidance must be between 1 and 100, got {guidance}")));
        }
        let patch = m.transformer.patch_size;
        let max_tile = m.transformer.max_patches * patch;
        let tile = options.tile_size.unwrap_or(m.default_tile());
        if tile < patch || tile > max_tile {
            return Err(Error::InvalidOptions(format!(
                "tile size must be between {patch} and {max_tile} latent samples for this model, got {tile}"
            )));
        }
        let tile = tile / patch * patch;
        let overlap = options.tile_overlap.unwrap_or(d.latent_overlap);
        if overlap >= tile {
            return Err(Error::InvalidOptions(format!(
                "tile overlap {overlap} must be smaller than the tile ({tile})"
            )));
        }
        // Prompts are checked here so that a bad name fails before any work (loaded when rendering).
        if let Some(name) = options.prompt.as_deref() {
            if name != "zeros" && !m.text.prompts.contains_key(name) {
                let known: Vec<&String> = m.text.prompts.keys().collect();
                return Err(Error::InvalidOptions(format!(
                    "prompt {name:?} is not in the bundle (it has \"zeros\" and {known:?})"
                )));
            }
        }
        if options.prompt_text.is_some() && !model.has_text_encoder() {
            return Err(model.no_text_encoder());
        }
        let batch = options.tile_batch.unwrap_or(1);
        if !(1..=64).contains(&batch) {
            return Err(Error::InvalidOptions(format!("tile batch must be between 1 and 64, got {batch}")));
        }
        let context_margin = options.context_margin.unwrap_or(overlap * m.latent.downscale);
        if context_margin > MAX_SIDE {
            return Err(Error::InvalidOptions(format!(
                "context margin must be at most {MAX_SIDE} pixels, got {context_margin}"
            )));
        }
        let output = match options.paper_size {
            false => model.output_size(frame_in.0, frame_in.1, scale)?,
            true => {
                model.output_size(frame_in.0, frame_in.1, 1.0)?; // the input's own checks
                let output = paper_size(frame_in.0, frame_in.1);
                // The horizontal scale stands for both where one number is needed (reading a global context).
                scale = output.0 as f32 / frame_in.0 as f32;
                output
            }
        };
        if let Some(noise) = &options.noise {
            let (width, height) = m.latent_size(output.0, output.1);
            let want = (1, m.latent.channels, height, width);
            if noise.dim() != want {
                return Err(Error::InvalidOptions(format!(
                    "noise has shape {:?}; this image needs {want:?}",
                    noise.dim()
                )));
            }
        }
        if matches!(model.execution_provider(), ExecutionProvider::TensorRt { .. }) {
            tensorrt_fits(
                m,
                tile,
                batch,
                guidance > 1.0,
                (options.tile_mode == TileMode::Joint).then_some(context_margin),
            )?;
        }
        Ok(Settings {
            scale,
            output,
            steps,
            seed: options.seed.unwrap_or(d.seed),
            guidance,
            clip_input: options.clip_input.unwrap_or(m.clip.input),
            color_fix: options.color_fix.unwrap_or(d.color_fix),
            posterior: options.sample_posterior,
            mode: options.tile_mode,
            tile,
            overlap,
            batch,
            context_margin,
        })
    }
}

/// The output (width, height) the paper's test script restores a `width x height` input at ("the paper's
/// setting"): the long side becomes 1024 pixels and the short side keeps the aspect ratio (Python's floor division,
/// or truncation, as the script computes it), then each side is rounded to the nearest multiple of 8, halves to even
/// as NumPy rounds (at least 8).
pub fn paper_size(width: usize, height: usize) -> (usize, usize) {
    const LONG: f64 = 1024.0;
    let (w, h) = (width.max(1) as f64, height.max(1) as f64);
    let aspect = w / h;
    let (w, h) = if w >= h { (LONG, python_floor_div(LONG, aspect)) } else { ((LONG * aspect).trunc(), LONG) };
    let to_multiple = |v: f64| ((v / 8.0).round_ties_even() as usize * 8).max(8);
    (to_multiple(w), to_multiple(h))
}

/// Python's `a // b` for positive floats (CPython's float floor division), which may differ from `floor(a / b)`
/// in the last place.
fn python_floor_div(a: f64, b: f64) -> f64 {
    let div = (a - a % b) / b;
    let floor = div.floor();
    if div - floor > 0.5 {
        floor + 1.0
    } else {
        floor
    }
}

/// Refuses, before any work, what TensorRT engines are not built for (the shapes of `Manifest::profile`), which
/// would otherwise fail mid-restore: tiles over the default tile, transformer batches over
/// [`bundle::TENSORRT_MAX_BATCH`] samples, and joint-mode context margins over the VAE's.
fn tensorrt_fits(m: &Manifest, tile: usize, batch: usize, guided: bool, joint_margin: Option<usize>) -> Result<()> {
    let samples = batch * if guided { 2 } else { 1 };
    if samples > bundle::TENSORRT_MAX_BATCH {
        return Err(Error::InvalidOptions(format!(
            "on TensorRT a transformer call takes at most {} samples; tile batch {batch}{} makes {samples}",
            bundle::TENSORRT_MAX_BATCH,
            if guided { " with guidance" } else { "" }
        )));
    }
    if tile > m.tensorrt_tile() {
        return Err(Error::InvalidOptions(format!(
            "on TensorRT tiles are at most {} latent samples for this model (its engines' shapes), got {tile}",
            m.tensorrt_tile()
        )));
    }
    let most = VAE_MARGIN.max(m.defaults.latent_overlap) * m.latent.downscale;
    match joint_margin {
        Some(margin) if margin > most => Err(Error::InvalidOptions(format!(
            "on TensorRT the context margin is at most {most} pixels for this model, got {margin}"
        ))),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn paper_size_is_the_official_scripts() {
        // (input, output) as the script's keep_ratio_resize(long_size=1024) computes them, ties and floor division
        // included.
        for (input, output) in [
            ((1000, 750), (1024, 768)),
            ((750, 1000), (768, 1024)),
            ((1024, 1024), (1024, 1024)),
            ((512, 512), (1024, 1024)),
            ((4000, 3000), (1024, 768)),
            ((1920, 1080), (1024, 576)),
            ((1080, 1920), (576, 1024)),
            ((1000, 333), (1024, 336)),
            ((640, 427), (1024, 680)),
            ((427, 640), (680, 1024)),
            ((100, 99), (1024, 1016)),
            ((99, 100), (1016, 1024)),
            ((4096, 2731), (1024, 680)),
            ((1234, 567), (1024, 472)),
            ((567, 1234), (472, 1024)),
            ((7, 5), (1024, 728)),
            ((5, 1), (1024, 208)),
            ((7, 2), (1024, 288)),
            ((2, 7), (288, 1024)),
            ((8, 5), (1024, 640)),
            ((16, 11), (1024, 704)),
            ((11, 16), (704, 1024)),
        ] {
            assert_eq!(paper_size(input.0, input.1), output, "{input:?}");
        }
        assert_eq!(paper_size(60000, 1), (1024, 8), "never below 8 pixels");
    }

    #[test]
    fn tensorrt_refuses_shapes_its_engines_are_not_built_for() {
        let tiny = Manifest::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/bundles/tiny")).unwrap();
        // tiny: default tile 128 latent samples, overlap 16, downscale 8 (margins up to 128 pixels).
        assert!(tensorrt_fits(&tiny, 128, 1, true, Some(128)).is_ok());
        assert!(tensorrt_fits(&tiny, 64, 2, false, None).is_ok());
        let refused = |result: Result<()>| match result {
            Err(Error::InvalidOptions(message)) => message,
            other => panic!("expected an options error, got {other:?}"),
        };
        assert!(refused(tensorrt_fits(&tiny, 128, 2, true, None)).contains("makes 4"));
        assert!(refused(tensorrt_fits(&tiny, 136, 1, false, None)).contains("at most 128 latent samples"));
        assert!(refused(tensorrt_fits(&tiny, 128, 1, false, Some(136))).contains("at most 128 pixels"));
    }
}
