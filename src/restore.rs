//! The restorer: a loaded bundle and its sessions, the public entry points, and the model-facing stages
//! (encode, prompts, velocity, decode) that the tile engine (`tiled`) drives.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ndarray::{concatenate, s, Array1, Array2, Array3, Array4, ArrayView3, ArrayView4, Axis, Zip};

use crate::bundle::{self, ClipInput, ColorFix, Manifest, Role};
use crate::error::{Error, Result};
use crate::noise::{latent_noise, Stream};
use crate::pixels::{Image, PixelLayout, Pixels, PixelsMut, MAX_SIDE};
use crate::plan::Rect;
use crate::prompt::{self, Conditioning, Features};
use crate::runtime::{
    self, ExecutionProvider, Graph, GraphHints, Resident, Runtime, RuntimeOptions, SessionTimer, TensorInfo,
};
use crate::source::{FrameSource, ImageSink, SourceData};
use crate::tiled;

/// What the restorer is doing, for progress reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Stage {
    /// Upsampling and encoding the input.
    Encode,
    /// Computing the CLIP prompts.
    Prompt,
    /// Denoising; `step` counts the steps done.
    Sample,
    /// Decoding the latent and fixing colour.
    Decode,
}

/// One progress report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// What is running.
    pub stage: Stage,
    /// Steps done so far in [`Stage::Sample`] (0 elsewhere).
    pub step: usize,
    /// Steps of this restore.
    pub steps: usize,
    /// Tile being processed, from 1.
    pub tile: usize,
    /// Tiles of this restore.
    pub tiles: usize,
}

/// Called with each progress report; returning `false` cancels the restore.
pub type ProgressFn = dyn Fn(&Progress) -> bool + Send + Sync;

/// A flag another thread sets to cancel a restore; it takes effect before the next model call.
#[derive(Debug, Clone, Default)]
pub struct CancelToken(Arc<AtomicBool>);

impl CancelToken {
    /// A token nobody has cancelled yet.
    pub fn new() -> CancelToken {
        CancelToken::default()
    }

    /// Requests cancellation. Safe from any thread, any number of times.
    pub fn cancel(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    /// Whether [`CancelToken::cancel`] was called.
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// Options of one restore. Unset fields take the bundle's defaults.
#[derive(Clone, Default)]
pub struct RestoreOptions {
    /// Output size / input size, > 0. Default 1.
    pub scale: Option<f32>,
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
    /// Joint-mode region renders: pixels of surrounding frame sampled with the region. Default: one tile
    /// overlap. No effect in independent mode, where a region needs only the tiles that touch it.
    pub context_margin: Option<usize>,
    /// Progress reports; returning false cancels.
    pub progress: Option<Arc<ProgressFn>>,
    /// Cancellation from another thread.
    pub cancel: Option<CancelToken>,
}

/// How an image larger than one tile is sampled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
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

impl std::fmt::Debug for RestoreOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RestoreOptions")
            .field("scale", &self.scale)
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

/// A finished restore with what went into it.
#[derive(Debug, Clone)]
pub struct Restoration {
    /// The restored image, at the requested scale.
    pub image: Image,
    /// The starting noise of the whole padded latent frame, (1, C, h, w).
    pub noise: Array4<f32>,
    /// Timings.
    pub stats: Stats,
}

/// Where the time went.
#[derive(Debug, Clone, Copy, Default)]
pub struct Stats {
    /// Wall time of the whole restore.
    pub total: Duration,
    /// Time inside ONNX Runtime session runs.
    pub in_session: Duration,
    /// Graph runs made.
    pub model_calls: usize,
    /// Time inside transformer runs, the part that grows with the step count.
    pub in_transformer: Duration,
    /// Transformer runs made (one per step and tile batch; guidance doubles the batch, not the runs).
    pub transformer_runs: usize,
    /// Sampling tiles rendered.
    pub tiles: usize,
}

/// A rectangle of a frame to restore, from a crop of the frame's pixels.
#[derive(Debug, Clone, Copy)]
pub struct Region<'a> {
    /// Input pixels covering at least [`Restorer::region_of_interest`] of `rect`.
    pub source: Pixels<'a>,
    /// Where `source`'s top-left pixel sits in the frame, in input pixels.
    pub origin: (usize, usize),
    /// The whole frame's (width, height) in input pixels.
    pub frame: (usize, usize),
    /// The rectangle to produce, in output-frame pixels (the frame times the scale).
    pub rect: Rect,
    /// The whole frame (any resolution) for the global prompt. `None`: the crop stands in for it, and the result
    /// then differs from a full-frame render.
    pub context: Option<Pixels<'a>>,
}

/// What a restore of a given size needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Requirements {
    /// The model works on multiples of this many pixels (inputs are padded to it).
    pub pixel_multiple: usize,
    /// The largest side one pass takes, in pixels; larger images are tiled.
    pub max_pass_size: usize,
    /// Output (width, height).
    pub output_size: (usize, usize),
    /// Sampling tiles.
    pub tiles: usize,
    /// Rough peak memory of the restore beyond the caller's buffers, in bytes (weights not included).
    pub estimated_bytes: u64,
}

/// The resolved settings of one restore.
pub(crate) struct Settings {
    pub scale: f32,
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

/// A loaded model bundle, ready to restore images. Shareable between threads (`Send + Sync`); each restore's
/// state lives in the call, so several threads can restore with one model at once (graph runs are serialised
/// per graph; ONNX Runtime parallelises inside each run).
pub struct Restorer {
    dir: PathBuf,
    manifest: Manifest,
    runtime: Runtime,
    graphs: [Graph; 5],
    text_encoder: Option<TextEncoder>,
}

/// The bundle's optional text encoder: T5 and its tokenizer.
struct TextEncoder {
    graph: Graph,
    tokenizer: tokenizers::Tokenizer,
}

impl TextEncoder {
    /// Loads `t5.onnx` and `tokenizer.json` when the bundle has them; padding and truncation to the text block.
    fn load(dir: &Path, manifest: &Manifest, runtime: &Runtime, bundle_key: &str) -> Result<Option<TextEncoder>> {
        let file = dir.join(bundle::TEXT_ENCODER_FILE);
        if !file.is_file() {
            return Ok(None);
        }
        let graph = runtime.load(&file, &GraphHints { bundle_key: bundle_key.to_string(), ..Default::default() })?;
        manifest.check_text_encoder(&graph)?;
        let path = dir.join(bundle::TOKENIZER_FILE);
        let mut tokenizer = tokenizers::Tokenizer::from_file(&path)
            .map_err(|e| Error::bundle(&path, format!("cannot read the text encoder's tokenizer: {e}")))?;
        let length = manifest.text.tokens;
        let pad_id = tokenizer.token_to_id("<pad>").unwrap_or(0);
        let truncation = tokenizers::TruncationParams { max_length: length, ..Default::default() };
        tokenizer.with_truncation(Some(truncation)).map_err(|e| Error::bundle(&path, e.to_string()))?;
        tokenizer.with_padding(Some(tokenizers::PaddingParams {
            strategy: tokenizers::PaddingStrategy::Fixed(length),
            pad_id,
            pad_token: "<pad>".into(),
            ..Default::default()
        }));
        Ok(Some(TextEncoder { graph, tokenizer }))
    }

    /// The text block of a caption: (text tokens, text width).
    fn encode(&self, text: &str, manifest: &Manifest, timer: &SessionTimer) -> Result<Array2<f32>> {
        let encoding = self
            .tokenizer
            .encode(text, true)
            .map_err(|e| Error::InvalidOptions(format!("cannot tokenize the prompt text: {e}")))?;
        let ids: Vec<i64> = encoding.get_ids().iter().map(|&id| id as i64).collect();
        let shape = [1, manifest.text.tokens];
        let hidden = self.graph.run_ids("input_ids", ids, &shape, "last_hidden_state", timer)?;
        let hidden: Array3<f32> = hidden.into_dimensionality().map_err(|_| bad_rank("last_hidden_state"))?;
        Ok(hidden.index_axis_move(Axis(0), 0))
    }
}

/// Per-call state: options, timers, progress.
pub(crate) struct Call<'a> {
    options: &'a RestoreOptions,
    timer: SessionTimer,
    calls: std::cell::Cell<usize>,
    transformer: std::cell::Cell<(Duration, usize)>,
    tiles: std::cell::Cell<usize>,
}

impl Call<'_> {
    /// Reports progress; an error when the caller cancelled.
    pub(crate) fn report(&self, progress: Progress) -> Result<()> {
        if self.options.cancel.as_ref().is_some_and(CancelToken::is_cancelled) {
            return Err(Error::Cancelled);
        }
        if let Some(callback) = &self.options.progress {
            if !callback(&progress) {
                return Err(Error::Cancelled);
            }
        }
        Ok(())
    }

    fn counted(&self) -> &SessionTimer {
        self.calls.set(self.calls.get() + 1);
        &self.timer
    }

    pub(crate) fn tile_done(&self) {
        self.tiles.set(self.tiles.get() + 1);
    }

    pub(crate) fn options(&self) -> &RestoreOptions {
        self.options
    }
}

impl Restorer {
    /// Loads the bundle in `dir` with the given runtime options, validating the manifest against every graph.
    pub fn load(dir: impl AsRef<Path>, options: &RuntimeOptions) -> Result<Restorer> {
        let dir = dir.as_ref().to_path_buf();
        let manifest = Manifest::load(&dir)?;
        for role in Role::ALL {
            let file = dir.join(role.file_name());
            if !file.is_file() {
                return Err(Error::bundle(&file, "graph file is missing"));
            }
        }
        let files: Vec<PathBuf> = Role::ALL.iter().map(|role| dir.join(role.file_name())).collect();
        let bundle_key = runtime::bundle_key(&dir, &manifest.name, &manifest.dtype, &files);
        let hints = |role: Role| GraphHints {
            profile: manifest.profile(role, tiled::VAE_MARGIN),
            bundle_key: bundle_key.clone(),
        };
        let (runtime, transformer) =
            Runtime::new(options, &dir.join(Role::Transformer.file_name()), &hints(Role::Transformer))?;
        let load = |role: Role| runtime.load(&dir.join(role.file_name()), &hints(role));
        let graphs = [
            load(Role::VaeEncoder)?,
            load(Role::VaeDecoder)?,
            load(Role::ClipLocal)?,
            load(Role::ClipGlobal)?,
            transformer,
        ];
        let text_encoder = TextEncoder::load(&dir, &manifest, &runtime, &bundle_key)?;
        let restorer = Restorer { dir, manifest, runtime, graphs, text_encoder };
        for role in Role::ALL {
            restorer.manifest.check_graph(role, restorer.graph(role))?;
        }
        bundle::load_prompt(&restorer.dir, &restorer.manifest, &restorer.manifest.text.default)?;
        Ok(restorer)
    }

    /// The bundle's manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// The bundle's directory.
    pub fn bundle_dir(&self) -> &Path {
        &self.dir
    }

    /// The execution provider in use (what `auto` chose).
    pub fn execution_provider(&self) -> &ExecutionProvider {
        &self.runtime.provider
    }

    /// The ONNX Runtime library in use.
    pub fn onnxruntime_library(&self) -> &Path {
        &self.runtime.library
    }

    /// Each graph's declared inputs and outputs, by file name.
    pub fn signatures(&self) -> Vec<(&'static str, Vec<TensorInfo>, Vec<TensorInfo>)> {
        let graphs = Role::ALL.iter().map(|&role| (role.file_name(), self.graph(role)));
        let text = self.text_encoder.as_ref().map(|t| (bundle::TEXT_ENCODER_FILE, &t.graph));
        graphs.chain(text).map(|(file, graph)| (file, graph.inputs().to_vec(), graph.outputs().to_vec())).collect()
    }

    /// Whether the bundle can encode captions ([`RestoreOptions::prompt_text`]).
    pub fn has_text_encoder(&self) -> bool {
        self.text_encoder.is_some()
    }

    pub(crate) fn graph(&self, role: Role) -> &Graph {
        let index = Role::ALL.iter().position(|&r| r == role).expect("every role has a graph");
        &self.graphs[index]
    }

    /// Restores a whole image. See [`Restorer::restore_detailed`].
    pub fn restore(&self, image: &Image, options: &RestoreOptions) -> Result<Image> {
        self.restore_detailed(image, options).map(|r| r.image)
    }

    /// Restores a whole image of any size (tiled when it exceeds one tile), returning the result with the whole
    /// frame's starting noise and timings.
    pub fn restore_detailed(&self, image: &Image, options: &RestoreOptions) -> Result<Restoration> {
        let started = Instant::now();
        let settings = self.settings(options)?;
        let frame_in = (image.width(), image.height());
        let (width, height) = self.output_size(frame_in.0, frame_in.1, settings.scale)?;
        let source = FrameSource::new(SourceData::Image(image), (0, 0), frame_in, (width, height));
        let mut sink = ImageSink::new(width, height, image.alpha().is_some());
        let call = Call::new(options);
        let frame = tiled::Frame { source: &source, context: None, rect: Rect::new(0, 0, width, height) };
        let text = self.text_block(options, &call)?;
        tiled::render(self, &frame, &settings, &text, &mut sink, &call)?;
        let image = sink.finish();
        let noise = match &options.noise {
            Some(noise) => noise.clone(),
            None => self.starting_noise(frame_in.0, frame_in.1, options)?,
        };
        Ok(Restoration { image, noise, stats: call.stats(started) })
    }

    /// The starting noise a restore of a `width x height` input draws over the whole padded latent frame,
    /// (1, C, h, w): what `--save-noise` writes and [`RestoreOptions::noise`] accepts.
    pub fn starting_noise(&self, width: usize, height: usize, options: &RestoreOptions) -> Result<Array4<f32>> {
        let settings = self.settings(options)?;
        let (w, h) = self.output_size(width, height, settings.scale)?;
        let (lw, lh) = self.latent_size(w, h);
        Ok(latent_noise(settings.seed, Stream::Start, self.manifest.latent.channels, (0, 0), (lh, lw)))
    }

    /// Restores a whole frame from an interleaved buffer into another, sized to the output
    /// ([`Restorer::requirements`] says how large). Neither buffer is held beyond what the current tiles need.
    pub fn restore_pixels(
        &self,
        source: &Pixels<'_>,
        dest: &mut PixelsMut<'_>,
        options: &RestoreOptions,
    ) -> Result<Stats> {
        let layout = source.layout();
        let region = Region {
            source: *source,
            origin: (0, 0),
            frame: (layout.width, layout.height),
            rect: {
                let scale = options.scale.unwrap_or(1.0);
                let (w, h) = self.output_size(layout.width, layout.height, scale)?;
                Rect::new(0, 0, w, h)
            },
            context: None,
        };
        self.restore_region(&region, dest, options)
    }

    /// Restores `region.rect` of a frame into `dest` (sized to the rectangle). In independent mode the result
    /// equals the same rectangle of a full-frame render when `region.context` is the whole frame (or the crop is).
    /// On error or cancellation `dest` is left untouched.
    pub fn restore_region(
        &self,
        region: &Region<'_>,
        dest: &mut PixelsMut<'_>,
        options: &RestoreOptions,
    ) -> Result<Stats> {
        let started = Instant::now();
        let settings = self.settings(options)?;
        let (width, height) = self.output_size(region.frame.0, region.frame.1, settings.scale)?;
        let rect = region.rect;
        tiled::check_region(rect, (width, height))?;
        let layout = dest.layout();
        if (layout.width, layout.height) != (rect.width, rect.height) {
            return Err(Error::InvalidImage(format!(
                "destination is {}x{}, the region {}x{}",
                layout.width, layout.height, rect.width, rect.height
            )));
        }
        let source_layout = region.source.layout();
        if region.origin.0 + source_layout.width > region.frame.0
            || region.origin.1 + source_layout.height > region.frame.1
        {
            return Err(Error::InvalidImage("the source crop extends past the frame".into()));
        }
        let source = FrameSource::new(SourceData::Pixels(region.source), region.origin, region.frame, (width, height));
        let context =
            match (&region.context, source_layout.width == region.frame.0 && source_layout.height == region.frame.1) {
                (Some(context), _) => Some(self.context_source(SourceData::Pixels(*context), settings.scale)?),
                (None, true) => None,
                (None, false) => Some(self.context_source(SourceData::Pixels(region.source), settings.scale)?),
            };
        let call = Call::new(options);
        let frame = tiled::Frame { source: &source, context: context.as_ref(), rect };
        // Rows are finished tile by tile; they land in a scratch copy so that an error or a cancel leaves the
        // caller's buffer as it was.
        let staged_layout = PixelLayout { stride: layout.row_bytes().expect("validated") as isize, ..*layout };
        let mut staged = vec![0u8; staged_layout.validate()?];
        let text = self.text_block(options, &call)?;
        tiled::render(self, &frame, &settings, &text, &mut PixelsMut::new(staged_layout, &mut staged)?, &call)?;
        dest.copy_rows_from(&staged);
        Ok(call.stats(started))
    }

    /// A context image read as its own frame at the restore's scale.
    fn context_source<'a>(&self, data: SourceData<'a>, scale: f32) -> Result<FrameSource<'a>> {
        let (w, h) = data.size();
        let out = self.output_size(w, h, scale)?;
        Ok(FrameSource::new(data, (0, 0), (w, h), out))
    }

    /// The input pixels (frame coordinates) a render of `rect` (output-frame pixels) reads, for a frame of
    /// `frame` (width, height) input pixels. Hosts that render in tiles ask for this much around each tile.
    pub fn region_of_interest(&self, frame: (usize, usize), rect: Rect, options: &RestoreOptions) -> Result<Rect> {
        let settings = self.settings(options)?;
        let out = self.output_size(frame.0, frame.1, settings.scale)?;
        tiled::region_of_interest(self, frame, out, rect, &settings)
    }

    /// What restoring a `width x height` image with these options needs.
    pub fn requirements(&self, width: usize, height: usize, options: &RestoreOptions) -> Result<Requirements> {
        let settings = self.settings(options)?;
        let output_size = self.output_size(width, height, settings.scale)?;
        let plan = tiled::Plan::new(self, output_size, &settings);
        Ok(Requirements {
            pixel_multiple: self.manifest.pixel_multiple(),
            max_pass_size: self.manifest.max_pass_size(),
            output_size,
            tiles: plan.tiles.len(),
            estimated_bytes: plan.estimated_bytes(self, &settings),
        })
    }

    pub(crate) fn settings(&self, options: &RestoreOptions) -> Result<Settings> {
        let m = &self.manifest;
        let d = &m.defaults;
        let scale = options.scale.unwrap_or(1.0);
        if !(scale.is_finite() && scale > 0.0) {
            return Err(Error::InvalidOptions(format!("scale must be a positive number, got {scale}")));
        }
        let steps = options.steps.unwrap_or(m.scheduler.steps);
        if !(1..=1000).contains(&steps) {
            return Err(Error::InvalidOptions(format!("steps must be between 1 and 1000, got {steps}")));
        }
        let guidance = options.guidance.unwrap_or(d.guidance);
        if !(guidance.is_finite() && (1.0..=100.0).contains(&guidance)) {
            return Err(Error::InvalidOptions(format!("guidance must be between 1 and 100, got {guidance}")));
        }
        let patch = m.transformer.patch_size;
        let max_tile = m.transformer.max_patches * patch;
        let tile = options.tile_size.unwrap_or(d.latent_tile.min(max_tile));
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
        if options.prompt_text.is_some() && self.text_encoder.is_none() {
            return Err(Error::InvalidOptions(format!(
                "this bundle has no text encoder ({}); use one of its precomputed prompts {:?} or \"zeros\"",
                bundle::TEXT_ENCODER_FILE,
                m.text.prompts.keys().collect::<Vec<_>>()
            )));
        }
        let batch = options.tile_batch.unwrap_or(1);
        if !(1..=64).contains(&batch) {
            return Err(Error::InvalidOptions(format!("tile batch must be between 1 and 64, got {batch}")));
        }
        let context_margin = options.context_margin.unwrap_or(overlap * m.latent.downscale);
        if matches!(self.runtime.provider, ExecutionProvider::TensorRt { .. }) {
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

    /// The text block of a restore: the caption through the text encoder, a precomputed prompt, or zeros.
    fn text_block(&self, options: &RestoreOptions, call: &Call) -> Result<Array2<f32>> {
        let m = &self.manifest;
        match (&options.prompt_text, &self.text_encoder) {
            (Some(caption), Some(encoder)) => encoder.encode(caption, m, call.counted()),
            (Some(_), None) => unreachable!("settings() refuses a caption without a text encoder"),
            (None, _) => bundle::load_prompt(&self.dir, m, options.prompt.as_deref().unwrap_or(&m.text.default)),
        }
    }

    /// The output (width, height) for an input size and scale.
    pub fn output_size(&self, width: usize, height: usize, scale: f32) -> Result<(usize, usize)> {
        if width == 0 || height == 0 {
            return Err(Error::InvalidImage(format!("{width}x{height} has no pixels")));
        }
        let scaled = |n: usize| ((n as f64 * scale as f64).round() as usize).max(1);
        let (w, h) = (scaled(width), scaled(height));
        if w > MAX_SIDE || h > MAX_SIDE {
            return Err(Error::TooLarge(format!("{w}x{h} exceeds the largest side of {MAX_SIDE} pixels")));
        }
        Ok((w, h))
    }

    /// The padded latent frame (width, height) of an output frame.
    pub(crate) fn latent_size(&self, width: usize, height: usize) -> (usize, usize) {
        let m = &self.manifest;
        let (multiple, patch) = (m.pixel_multiple(), m.transformer.patch_size);
        (width.div_ceil(multiple) * patch, height.div_ceil(multiple) * patch)
    }

    /// `z_LQ = (mean - shift) * scaling` of LQ pixels (3, h, w) in [0, 1], w and h multiples of the downscale;
    /// with a posterior draw, its noise sits at `latent_origin` (y, x) of the frame.
    pub(crate) fn encode(
        &self,
        lq: ArrayView3<'_, f32>,
        latent_origin: (usize, usize),
        settings: &Settings,
        call: &Call,
    ) -> Result<Array4<f32>> {
        let latent = &self.manifest.latent;
        let input = lq.mapv(|v| 2.0 * v - 1.0).insert_axis(Axis(0));
        let mut out = self.graph(Role::VaeEncoder).run(
            &[("image", input.view().into_dyn())],
            &["mean", "logvar"],
            call.counted(),
        )?;
        let logvar = out.pop().expect("two outputs");
        let mut z: Array4<f32> = out.pop().expect("two outputs").into_dimensionality().map_err(|_| bad_rank("mean"))?;
        if settings.posterior {
            let (_, c, h, w) = z.dim();
            let origin = (latent_origin.0 as i64, latent_origin.1 as i64);
            let eps = latent_noise(settings.seed, Stream::Posterior, c, origin, (h, w));
            let logvar: Array4<f32> = logvar.into_dimensionality().map_err(|_| bad_rank("logvar"))?;
            Zip::from(&mut z).and(&logvar).and(&eps).for_each(|z, &lv, &e| *z += (0.5 * lv).exp() * e);
        }
        z.mapv_inplace(|v| (v - latent.shift_factor) * latent.scaling_factor);
        Ok(z)
    }

    /// `clamp((D(z / scaling + shift) + 1) / 2, 0, 1)` of a (1, C, h, w) latent, the pixels of `keep` (relative
    /// to the decoded image), as (3, H, W).
    pub(crate) fn decode(&self, z: ArrayView4<'_, f32>, keep: Rect, call: &Call) -> Result<Array3<f32>> {
        let latent = &self.manifest.latent;
        let input = z.mapv(|v| v / latent.scaling_factor + latent.shift_factor);
        let graph = self.graph(Role::VaeDecoder);
        graph.run_with(&[("latent", input.view().into_dyn())], &["image"], call.counted(), |outputs| {
            let image = outputs[0].view().into_dimensionality::<ndarray::Ix4>().map_err(|_| bad_rank("image"))?;
            let mut finite = true;
            let pixels = image.slice(s![0, .., keep.y..keep.bottom(), keep.x..keep.right()]).mapv(|v| {
                finite &= v.is_finite();
                ((v + 1.0) / 2.0).clamp(0.0, 1.0)
            });
            if !finite {
                return Err(Error::BadOutput("the decoder returned NaN or infinity".into()));
            }
            Ok(pixels)
        })
    }

    /// CLIP features of preprocessed crops ([`prompt::preprocess`]).
    pub(crate) fn clip_features(&self, crops: &[Array3<f32>], call: &Call) -> Result<Vec<Features>> {
        call.counted(); // the second of the two graph runs
        prompt::features(crops, self.graph(Role::ClipLocal), self.graph(Role::ClipGlobal), call.counted())
    }

    /// The transformer inputs that stay the same through the denoising steps of a batch of samples: the LQ
    /// latents (B, C, h, w) and one conditioning each, doubled with all-zero prompts when guidance is on. They
    /// are converted, and on a GPU uploaded, once here rather than at every step.
    pub(crate) fn step_inputs(
        &self,
        z_lq: ArrayView4<'_, f32>,
        conditions: &[&Conditioning],
        settings: &Settings,
        call: &Call,
    ) -> Result<StepInputs> {
        let guided = settings.guidance > 1.0;
        let contexts: Vec<_> = conditions.iter().map(|c| c.context.view()).collect();
        let pooled: Vec<_> = conditions.iter().map(|c| c.pooled.view()).collect();
        let mut context = concatenate(Axis(0), &contexts).expect("one context shape");
        let mut pooled = concatenate(Axis(0), &pooled).expect("one pooled shape");
        let mut lq = z_lq.to_owned();
        if guided {
            context = concatenate![Axis(0), context, Array3::zeros(context.raw_dim())];
            pooled = concatenate![Axis(0), pooled, Array2::zeros(pooled.raw_dim())];
            lq = concatenate![Axis(0), lq, z_lq];
        }
        let graph = self.graph(Role::Transformer);
        let timer = call.counted();
        Ok(StepInputs {
            samples: conditions.len(),
            lq_latent: graph.resident("lq_latent", lq.into_dyn().view(), timer)?,
            context: graph.resident("encoder_hidden_states", context.into_dyn().view(), timer)?,
            pooled: graph.resident("pooled_projections", pooled.into_dyn().view(), timer)?,
        })
    }

    /// The guided velocity of a batch of samples `z` (B, C, h, w) at `sigma`, with the batch's [`StepInputs`].
    /// With guidance > 1 the batch is doubled with all-zero prompts and `v_u + g (v_c - v_u)` returned.
    pub(crate) fn velocity(
        &self,
        z: ArrayView4<'_, f32>,
        fixed: &StepInputs,
        sigma: f32,
        settings: &Settings,
        call: &Call,
    ) -> Result<Array4<f32>> {
        let guided = settings.guidance > 1.0;
        let n = fixed.samples;
        let z_in = if guided { concatenate![Axis(0), z, z] } else { z.to_owned() };
        let timestep = Array1::from_elem(z_in.dim().0, sigma * 1000.0);
        let before = call.timer.total();
        let out = self.graph(Role::Transformer).run_resident(
            &[("hidden_states", z_in.view().into_dyn()), ("timestep", timestep.view().into_dyn())],
            &[
                ("lq_latent", &fixed.lq_latent),
                ("encoder_hidden_states", &fixed.context),
                ("pooled_projections", &fixed.pooled),
            ],
            &["velocity"],
            call.counted(),
        )?;
        let (time, runs) = call.transformer.get();
        call.transformer.set((time + (call.timer.total() - before), runs + 1));
        let v: Array4<f32> =
            out.into_iter().next().expect("one output").into_dimensionality().map_err(|_| bad_rank("velocity"))?;
        if !guided {
            return Ok(v);
        }
        let g = settings.guidance;
        let (conditional, unconditional) = (v.slice(s![..n, .., .., ..]), v.slice(s![n.., .., .., ..]));
        Ok(Zip::from(&conditional).and(&unconditional).map_collect(|&c, &u| u + g * (c - u)))
    }
}

impl<'a> Call<'a> {
    fn new(options: &'a RestoreOptions) -> Call<'a> {
        Call {
            options,
            timer: SessionTimer::default(),
            calls: Default::default(),
            transformer: Default::default(),
            tiles: Default::default(),
        }
    }

    #[cfg(test)]
    pub(crate) fn for_tests(options: &'a RestoreOptions) -> Call<'a> {
        Call::new(options)
    }

    fn stats(&self, started: Instant) -> Stats {
        Stats {
            total: started.elapsed(),
            in_session: self.timer.total(),
            model_calls: self.calls.get(),
            in_transformer: self.transformer.get().0,
            transformer_runs: self.transformer.get().1,
            tiles: self.tiles.get(),
        }
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
    let most = tiled::VAE_MARGIN.max(m.defaults.latent_overlap) * m.latent.downscale;
    match joint_margin {
        Some(margin) if margin > most => Err(Error::InvalidOptions(format!(
            "on TensorRT the context margin is at most {most} pixels for this model, got {margin}"
        ))),
        _ => Ok(()),
    }
}

/// What [`Restorer::step_inputs`] prepares for a batch's denoising steps.
pub(crate) struct StepInputs {
    /// Samples in the batch, before guidance doubles it.
    samples: usize,
    lq_latent: Resident,
    context: Resident,
    pooled: Resident,
}

fn bad_rank(name: &str) -> Error {
    Error::BadOutput(format!("output `{name}` has an unexpected rank"))
}

#[cfg(test)]
mod tests {
    use super::*;

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
