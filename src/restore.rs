//! The restorer: the public entry points over a loaded model. Each restore prepares a [`Frame`] (settings, tile
//! plan, global prompt) and renders the wanted rectangle of it with the tile engine.

use std::path::Path;
use std::sync::Arc;

use ndarray::Array4;

use crate::bundle::Manifest;
use crate::error::{Error, Result};
use crate::frame::{check_region_call, Frame};
use crate::memory::{self, Need};
use crate::model::Model;
use crate::noise::{latent_noise, Stream};
use crate::options::{RestoreOptions, Settings};
use crate::pixels::{Image, Pixels, PixelsMut};
use crate::plan::{Plan, Rect};
use crate::progress::{Call, Stats};
use crate::runtime::{ExecutionProvider, RuntimeOptions, TensorInfo};
use crate::source::{FrameSource, ImageSink, SourceData};

/// A finished restore with what went into it.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Restoration {
    /// The restored image, at the requested scale.
    pub image: Image,
    /// The starting noise of the whole padded latent frame, (1, C, h, w).
    pub noise: Array4<f32>,
    /// Timings.
    pub stats: Stats,
}

/// A rectangle of a frame to restore, from a crop of the frame's pixels.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
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

impl<'a> Region<'a> {
    /// `rect` of a `frame` (width, height) from `source`, the crop whose top-left pixel sits at `origin`; the crop
    /// stands in for the global context until [`Region::with_context`] gives one.
    pub fn new(source: Pixels<'a>, origin: (usize, usize), frame: (usize, usize), rect: Rect) -> Region<'a> {
        Region { source, origin, frame, rect, context: None }
    }

    /// The same region with `context`, the whole frame (any resolution), for the global prompt.
    pub fn with_context(self, context: Pixels<'a>) -> Region<'a> {
        Region { context: Some(context), ..self }
    }
}

/// What a restore of a given size needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Requirements {
    /// The model works on multiples of this many pixels (inputs are padded to it).
    pub pixel_multiple: usize,
    /// The largest side one pass takes, in pixels; larger images are tiled.
    pub max_pass_size: usize,
    /// Output (width, height).
    pub output_size: (usize, usize),
    /// Sampling tiles.
    pub tiles: usize,
    /// Estimated peak memory of the restore beyond the caller's buffers, in bytes: the weights loaded at that
    /// moment, the largest model run's activations for the chosen tile, and dpir's own buffers. Resident memory
    /// on the CPU; device memory on a GPU, where it is an upper bound.
    pub estimated_bytes: u64,
    /// The part of `estimated_bytes` that is weights.
    pub weights_bytes: u64,
    /// The tile size, in pixels: the options' (or the bundle's default), or within a memory budget the largest
    /// that fits; the value to pass as the tile size to plan the same tiles. A frame smaller than it is one tile.
    pub tile_size: usize,
    /// Whether, within the memory budget, the prompt encoders and the transformer take turns in memory.
    pub releases_graphs: bool,
}

/// A loaded model bundle, ready to restore images. Shareable between threads (`Send + Sync`); each restore's
/// state lives in the call, so several threads can restore with one model at once (graph runs are serialised
/// per graph; ONNX Runtime parallelises inside each run).
pub struct Restorer {
    model: Arc<Model>,
}

impl Restorer {
    /// Loads the bundle in `dir` with the given runtime options, validating the manifest against every graph.
    pub fn load(dir: impl AsRef<Path>, options: &RuntimeOptions) -> Result<Restorer> {
        Ok(Restorer { model: Arc::new(Model::load(dir.as_ref(), options)?) })
    }

    /// The bundle's manifest: its defaults (steps, seed, guidance, tile size and overlap) among the rest.
    pub fn manifest(&self) -> &Manifest {
        self.model.manifest()
    }

    /// The bundle's directory.
    pub fn bundle_dir(&self) -> &Path {
        self.model.dir()
    }

    /// The execution provider in use (what `auto` chose).
    pub fn execution_provider(&self) -> &ExecutionProvider {
        self.model.execution_provider()
    }

    /// The ONNX Runtime library in use.
    pub fn onnxruntime_library(&self) -> &Path {
        self.model.onnxruntime_library()
    }

    /// Each graph's declared inputs and outputs, by file name.
    pub fn signatures(&self) -> Vec<(&'static str, Vec<TensorInfo>, Vec<TensorInfo>)> {
        self.model.signatures()
    }

    /// Runs of each graph since the bundle was loaded, by file name, from every thread.
    pub fn graph_runs(&self) -> Vec<(&'static str, u64)> {
        self.model.slots().iter().map(|slot| (slot.name, slot.runs())).collect()
    }

    /// Times each graph was loaded since the bundle was, by file name: 1 each, unless a memory budget
    /// ([`RuntimeOptions::memory_budget`]) had graphs released and loaded again.
    pub fn graph_loads(&self) -> Vec<(&'static str, u64)> {
        self.model.slots().iter().map(|slot| (slot.name, slot.loads())).collect()
    }

    /// Whether the bundle can encode captions ([`RestoreOptions::prompt_text`]).
    pub fn has_text_encoder(&self) -> bool {
        self.model.has_text_encoder()
    }

    /// Restores a whole image. See [`Restorer::restore_detailed`].
    pub fn restore(&self, image: &Image, options: &RestoreOptions) -> Result<Image> {
        self.restore_detailed(image, options).map(|r| r.image)
    }

    /// Restores a whole image of any size (tiled when it exceeds one tile), returning the result with the whole
    /// frame's starting noise and timings.
    pub fn restore_detailed(&self, image: &Image, options: &RestoreOptions) -> Result<Restoration> {
        let frame_in = (image.width(), image.height());
        let settings = self.settings(options, frame_in)?;
        let (width, height) = settings.output;
        let source = FrameSource::new(SourceData::Image(image), (0, 0), frame_in, (width, height));
        let control = options.control();
        let call = Call::new(&control);
        let restored = self.retrying(settings, &call, |settings| {
            let mut sink = ImageSink::new(width, height, image.alpha().is_some())?;
            let frame = Frame::prepare(&self.model, settings, frame_in, &source, true, options, &call)?;
            frame.render(&source, Rect::new(0, 0, width, height), &mut sink, &call)?;
            Ok(sink.finish())
        })?;
        let image = restored;
        let noise = match &options.noise {
            Some(noise) => noise.clone(),
            None => self.starting_noise(frame_in.0, frame_in.1, options)?,
        };
        Ok(Restoration { image, noise, stats: call.stats() })
    }

    /// The starting noise a restore of a `width x height` input draws over the whole padded latent frame,
    /// (1, C, h, w): what `--save-noise` writes and [`RestoreOptions::noise`] accepts.
    pub fn starting_noise(&self, width: usize, height: usize, options: &RestoreOptions) -> Result<Array4<f32>> {
        let settings = self.settings(options, (width, height))?;
        let (w, h) = settings.output;
        let (lw, lh) = self.manifest().latent_size(w, h);
        latent_noise(settings.seed, Stream::Start, self.manifest().latent.channels, (0, 0), (lh, lw))
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
        let frame = (layout.width, layout.height);
        let (w, h) = self.settings(options, frame)?.output;
        let region = Region::new(*source, (0, 0), frame, Rect::new(0, 0, w, h));
        self.restore_region(&region, dest, options)
    }

    /// Restores `region.rect` of a frame into `dest` (sized to the rectangle). In independent mode the result
    /// equals the same rectangle of a full-frame render when `region.context` is the whole frame (or the crop is).
    /// On error or cancellation `dest` is left untouched. A host that restores one frame as many regions should
    /// make a [`Frame`] once instead ([`Restorer::frame`]): this call computes the frame's global prompt each time.
    pub fn restore_region(
        &self,
        region: &Region<'_>,
        dest: &mut PixelsMut<'_>,
        options: &RestoreOptions,
    ) -> Result<Stats> {
        let settings = self.settings(options, region.frame)?;
        let (width, height) = settings.output;
        check_region_call(region.frame, (width, height), &region.source, region.origin, region.rect, dest)?;
        let crop = region.source.layout();
        let whole_crop = (crop.width, crop.height) == region.frame;
        let control = options.control();
        let call = Call::new(&control);
        self.retrying(settings, &call, |settings| {
            let frame = match (&region.context, whole_crop) {
                (Some(context), _) => self.prepare(region.frame, *context, settings, options, &call)?,
                (None, true) => {
                    let source =
                        FrameSource::new(SourceData::Pixels(region.source), (0, 0), region.frame, (width, height));
                    Frame::prepare(&self.model, settings, region.frame, &source, true, options, &call)?
                }
                (None, false) => self.prepare(region.frame, region.source, settings, options, &call)?,
            };
            frame.restore_into(&region.source, region.origin, region.rect, dest, &call)
        })?;
        Ok(call.stats())
    }

    /// The settings of a restore of a `frame` (width, height): the options resolved against the model and,
    /// within a memory budget, the largest tile that fits.
    fn settings(&self, options: &RestoreOptions, frame: (usize, usize)) -> Result<Settings> {
        let mut settings = Settings::resolve(&self.model, options, frame)?;
        if let Some(budget) = self.model.budget() {
            let (m, weights, provider) = (self.manifest(), self.model.weights(), self.execution_provider());
            settings.tile = memory::fitting_tile(m, &settings, weights, provider, budget)?;
        }
        Ok(settings)
    }

    /// Runs `attempt` with `settings` and, when ONNX Runtime runs out of memory, once more with a smaller tile,
    /// saying so on stderr and in the call's stats. A second failure names the memory the smaller tile needs.
    fn retrying<T>(
        &self,
        settings: Settings,
        call: &Call,
        mut attempt: impl FnMut(Settings) -> Result<T>,
    ) -> Result<T> {
        let failure = match attempt(settings.clone()) {
            Err(Error::OutOfMemory(failure)) => failure,
            other => return other,
        };
        let d = self.manifest().latent.downscale;
        let Some(tile) = memory::smaller_tile(self.manifest(), &settings) else {
            return Err(Error::OutOfMemory(format!("{failure} (tiles of {} pixels, the smallest)", settings.tile * d)));
        };
        eprintln!(
            "dpir: out of memory with tiles of {} pixels; retrying with tiles of {} pixels",
            settings.tile * d,
            tile * d
        );
        call.retried_with_tile(tile * d);
        let smaller = Settings { tile, ..settings.clone() };
        let need = self.estimate(&smaller)?;
        attempt(smaller).map_err(|error| match error {
            Error::OutOfMemory(again) => Error::OutOfMemory(format!(
                "{again}; it ran out with tiles of {} pixels and again with {} pixels, which need about {} \
                 (estimate): free that much memory, or set a memory budget (--max-memory) that dpir can hold",
                settings.tile * d,
                tile * d,
                memory::gib(need)
            )),
            other => other,
        })
    }

    /// The estimated peak bytes of a restore with `settings`.
    fn estimate(&self, settings: &Settings) -> Result<u64> {
        let plan = Plan::new(self.manifest(), settings.output, settings)?;
        let need = Need::of(self.manifest(), settings, &plan, self.execution_provider());
        Ok(need.peak(self.model.weights(), self.model.budget()).bytes)
    }

    /// Prepares a frame of `frame` (width, height) input pixels whose global prompt comes from `context`, the
    /// whole frame at any resolution (a proxy will do). Each [`Frame::restore_region`] then pays only for the
    /// tiles it needs, and equals [`Restorer::restore_region`] with the same context bit for bit: a host that
    /// renders one frame as many tiles computes the global prompt (many CLIP passes on the real model) once.
    pub fn frame(&self, frame: (usize, usize), context: Pixels<'_>, options: &RestoreOptions) -> Result<Frame> {
        let settings = self.settings(options, frame)?;
        let control = options.control();
        self.prepare(frame, context, settings, options, &Call::new(&control))
    }

    /// A frame whose global prompt comes from `context` read as its own frame at the restore's scale.
    fn prepare(
        &self,
        frame: (usize, usize),
        context: Pixels<'_>,
        settings: Settings,
        options: &RestoreOptions,
        call: &Call,
    ) -> Result<Frame> {
        let data = SourceData::Pixels(context);
        let (w, h) = data.size();
        let out = self.output_size(w, h, settings.scale)?;
        let source = FrameSource::new(data, (0, 0), (w, h), out);
        let is_frame = false;
        Frame::prepare(&self.model, settings, frame, &source, is_frame, options, call)
    }

    /// The input pixels (frame coordinates) a render of `rect` (output-frame pixels) reads, for a frame of
    /// `frame` (width, height) input pixels. Hosts that render in tiles ask for this much around each tile.
    pub fn region_of_interest(&self, frame: (usize, usize), rect: Rect, options: &RestoreOptions) -> Result<Rect> {
        let settings = self.settings(options, frame)?;
        let plan = Plan::new(self.manifest(), settings.output, &settings)?;
        crate::tiled::region_of_interest(&plan, frame, rect, &settings)
    }

    /// What restoring a `width x height` image with these options needs.
    pub fn requirements(&self, width: usize, height: usize, options: &RestoreOptions) -> Result<Requirements> {
        let settings = self.settings(options, (width, height))?;
        let output_size = settings.output;
        let plan = Plan::new(self.manifest(), output_size, &settings)?;
        let peak = Need::of(self.manifest(), &settings, &plan, self.execution_provider())
            .peak(self.model.weights(), self.model.budget());
        Ok(Requirements {
            pixel_multiple: self.manifest().pixel_multiple(),
            max_pass_size: self.manifest().max_pass_size(),
            output_size,
            tiles: plan.tiles.len(),
            estimated_bytes: peak.bytes,
            weights_bytes: peak.weights,
            tile_size: settings.tile * self.manifest().latent.downscale,
            releases_graphs: peak.staged,
        })
    }

    /// The output (width, height) for an input size and scale.
    pub fn output_size(&self, width: usize, height: usize, scale: f32) -> Result<(usize, usize)> {
        self.model.output_size(width, height, scale)
    }

    /// The output (width, height) a restore of a `width x height` input with these options makes: the input's
    /// times the scale, or [`paper_size`](crate::paper_size) with [`RestoreOptions::paper_size`].
    pub fn output_size_for(&self, width: usize, height: usize, options: &RestoreOptions) -> Result<(usize, usize)> {
        Ok(self.settings(options, (width, height))?.output)
    }
}
