//! The restorer: a loaded bundle and its sessions, and the DPIR procedure for an image that fits one pass.
//!
//! Stages, in order: prepare (upsample, pad), encode (E_dr), condition (dual prompts), sample (flow-match Euler
//! with optional guidance), decode, colour fix, crop. Each is a function a tile planner can drive on its own.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ndarray::{s, Array2, Array3, Array4, ArrayView3, Axis, CowArray, Ix3};

use crate::bundle::{self, ClipInput, ColorFix, Manifest, Role};
use crate::colour::wavelet_fix;
use crate::error::{Error, Result};
use crate::noise::{latent_noise, Stream};
use crate::pixels::{Image, MAX_SIDE};
use crate::prompt::{self, Conditioning};
use crate::resample::{resize, Filter};
use crate::runtime::{ExecutionProvider, Graph, Runtime, RuntimeOptions, SessionTimer};
use crate::schedule;

/// What the restorer is doing, for progress reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Stage {
    /// Upsampling and encoding the input.
    Encode,
    /// Computing the CLIP prompts.
    Prompt,
    /// Denoising; `step` counts from 1.
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
    /// Which image CLIP sees. Default: the bundle's.
    pub clip_input: Option<ClipInput>,
    /// Colour fix. Default: the bundle's (wavelet).
    pub color_fix: Option<ColorFix>,
    /// Draw the LQ latent from the encoder's posterior (seeded) instead of taking its mean.
    pub sample_posterior: bool,
    /// Starting noise (1, C, h, w) for the padded latent, replacing the seeded draw (for parity tests).
    pub noise: Option<Array4<f32>>,
    /// Progress reports; returning false cancels.
    pub progress: Option<Arc<ProgressFn>>,
    /// Cancellation from another thread.
    pub cancel: Option<CancelToken>,
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
            .finish_non_exhaustive()
    }
}

/// A finished restore with what went into it.
#[derive(Debug, Clone)]
pub struct Restoration {
    /// The restored image, at the requested scale.
    pub image: Image,
    /// The starting noise that was used, (1, C, h, w).
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
}

/// The resolved settings of one restore.
struct Settings {
    scale: f32,
    steps: usize,
    seed: u64,
    guidance: f32,
    clip_input: ClipInput,
    color_fix: ColorFix,
    text: Array2<f32>,
}

/// A loaded model bundle, ready to restore images. Shareable between threads (`Send + Sync`); each restore's
/// state lives in the call.
pub struct Restorer {
    dir: PathBuf,
    manifest: Manifest,
    runtime: Runtime,
    graphs: [Graph; 5],
}

/// Per-call state: options, timers, progress.
struct Call<'a> {
    options: &'a RestoreOptions,
    timer: SessionTimer,
    calls: std::cell::Cell<usize>,
}

impl Call<'_> {
    fn report(&self, progress: Progress) -> Result<()> {
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
        let (runtime, transformer) = Runtime::new(options, &dir.join(Role::Transformer.file_name()))?;
        let load = |role: Role| runtime.load(&dir.join(role.file_name()));
        let graphs = [
            load(Role::VaeEncoder)?,
            load(Role::VaeDecoder)?,
            load(Role::ClipLocal)?,
            load(Role::ClipGlobal)?,
            transformer,
        ];
        let restorer = Restorer { dir, manifest, runtime, graphs };
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
    pub fn signatures(&self) -> Vec<(&'static str, Vec<crate::runtime::TensorInfo>, Vec<crate::runtime::TensorInfo>)> {
        Role::ALL
            .iter()
            .map(|&role| {
                let graph = self.graph(role);
                (role.file_name(), graph.inputs().to_vec(), graph.outputs().to_vec())
            })
            .collect()
    }

    fn graph(&self, role: Role) -> &Graph {
        let index = Role::ALL.iter().position(|&r| r == role).expect("every role has a graph");
        &self.graphs[index]
    }

    /// Restores an image. See [`Restorer::restore_detailed`].
    pub fn restore(&self, image: &Image, options: &RestoreOptions) -> Result<Image> {
        self.restore_detailed(image, options).map(|r| r.image)
    }

    /// Restores an image that fits one pass, returning the result with its starting noise and timings.
    pub fn restore_detailed(&self, image: &Image, options: &RestoreOptions) -> Result<Restoration> {
        let started = Instant::now();
        let settings = self.settings(options)?;
        let call = Call { options, timer: SessionTimer::default(), calls: Default::default() };
        let m = &self.manifest;
        let (out_h, out_w) = self.output_size(image.height(), image.width(), settings.scale)?;
        let multiple = m.pixel_multiple();
        let (pad_h, pad_w) = (out_h.div_ceil(multiple) * multiple, out_w.div_ceil(multiple) * multiple);
        let latent_hw = (pad_h / m.latent.downscale, pad_w / m.latent.downscale);

        let noise = match &options.noise {
            Some(noise) => {
                let want = (1, m.latent.channels, latent_hw.0, latent_hw.1);
                if noise.dim() != want {
                    return Err(Error::InvalidOptions(format!(
                        "noise has shape {:?}; this image needs {want:?}",
                        noise.dim()
                    )));
                }
                noise.clone()
            }
            None => latent_noise(settings.seed, Stream::Start, m.latent.channels, (0, 0), latent_hw),
        };

        call.report(Progress { stage: Stage::Encode, step: 0, steps: settings.steps, tile: 1, tiles: 1 })?;
        let lq = upsample(image.rgb().view(), out_h, out_w);
        let z_lq = self.encode(encoder_input(lq.view(), pad_h, pad_w), &settings, options.sample_posterior, &call)?;

        call.report(Progress { stage: Stage::Prompt, step: 0, steps: settings.steps, tile: 1, tiles: 1 })?;
        let clip_image: CowArray<'_, f32, Ix3> = match settings.clip_input {
            ClipInput::Lq => CowArray::from(lq.view()),
            ClipInput::InitialRestoration => CowArray::from(self.decode(&z_lq, (out_h, out_w), &call)?),
        };
        let conditioning = prompt::condition(
            m,
            clip_image.view(),
            clip_image.view(),
            &settings.text,
            self.graph(Role::ClipLocal),
            self.graph(Role::ClipGlobal),
            call.counted(),
        )?;

        let latent = self.sample(noise.clone(), &z_lq, &conditioning, &settings, &call)?;

        call.report(Progress { stage: Stage::Decode, step: settings.steps, steps: settings.steps, tile: 1, tiles: 1 })?;
        let restored = self.decode(&latent, (out_h, out_w), &call)?;
        check_output(restored.view(), lq.view())?;
        let fixed = match settings.color_fix {
            ColorFix::Wavelet => wavelet_fix(restored, lq.view()),
            ColorFix::None => restored,
        };
        let alpha = image.alpha().map(|a| resize_alpha(a, out_h, out_w));
        let image = Image::from_planes(fixed, alpha)?;
        let stats = Stats { total: started.elapsed(), in_session: call.timer.total(), model_calls: call.calls.get() };
        Ok(Restoration { image, noise, stats })
    }

    fn settings(&self, options: &RestoreOptions) -> Result<Settings> {
        let d = &self.manifest.defaults;
        let scale = options.scale.unwrap_or(1.0);
        if !(scale.is_finite() && scale > 0.0) {
            return Err(Error::InvalidOptions(format!("scale must be a positive number, got {scale}")));
        }
        let steps = options.steps.unwrap_or(self.manifest.scheduler.steps);
        if !(1..=1000).contains(&steps) {
            return Err(Error::InvalidOptions(format!("steps must be between 1 and 1000, got {steps}")));
        }
        let guidance = options.guidance.unwrap_or(d.guidance);
        if !(guidance.is_finite() && (1.0..=100.0).contains(&guidance)) {
            return Err(Error::InvalidOptions(format!("guidance must be between 1 and 100, got {guidance}")));
        }
        let prompt = options.prompt.as_deref().unwrap_or(&self.manifest.text.default);
        Ok(Settings {
            scale,
            steps,
            seed: options.seed.unwrap_or(d.seed),
            guidance,
            clip_input: options.clip_input.unwrap_or(self.manifest.clip.input),
            color_fix: options.color_fix.unwrap_or(d.color_fix),
            text: bundle::load_prompt(&self.dir, &self.manifest, prompt)?,
        })
    }

    /// The output size for an input size and scale; refuses what one pass cannot take.
    pub fn output_size(&self, height: usize, width: usize, scale: f32) -> Result<(usize, usize)> {
        let scaled = |n: usize| ((n as f64 * scale as f64).round() as usize).max(1);
        let (h, w) = (scaled(height), scaled(width));
        if h > MAX_SIDE || w > MAX_SIDE {
            return Err(Error::TooLarge(format!("{w}x{h} exceeds the largest side of {MAX_SIDE} pixels")));
        }
        let max = self.manifest.max_pass_size();
        let multiple = self.manifest.pixel_multiple();
        if h.div_ceil(multiple) * multiple > max || w.div_ceil(multiple) * multiple > max {
            return Err(Error::TooLarge(format!(
                "output {w}x{h} exceeds the {max}x{max} pixels this model takes in one pass"
            )));
        }
        Ok((h, w))
    }

    /// `z_LQ = (mean - shift) * scaling` (or a seeded draw from the posterior), from the encoder's input.
    fn encode(&self, input: Array4<f32>, settings: &Settings, posterior: bool, call: &Call) -> Result<Array4<f32>> {
        let latent = &self.manifest.latent;
        let mut out = self.graph(Role::VaeEncoder).run(
            &[("image", input.view().into_dyn())],
            &["mean", "logvar"],
            call.counted(),
        )?;
        let logvar = out.pop().expect("two outputs");
        let mut z: Array4<f32> = out.pop().expect("two outputs").into_dimensionality().map_err(|_| bad_rank("mean"))?;
        if posterior {
            let (_, c, h, w) = z.dim();
            let eps = latent_noise(settings.seed, Stream::Posterior, c, (0, 0), (h, w));
            let logvar: Array4<f32> = logvar.into_dimensionality().map_err(|_| bad_rank("logvar"))?;
            ndarray::Zip::from(&mut z).and(&logvar).and(&eps).for_each(|z, &lv, &e| *z += (0.5 * lv).exp() * e);
        }
        z.mapv_inplace(|v| (v - latent.shift_factor) * latent.scaling_factor);
        Ok(z)
    }

    /// `clamp((D(z / scaling + shift) + 1) / 2, 0, 1)`, cropped to `(height, width)`, as (3, H, W).
    fn decode(&self, z: &Array4<f32>, (height, width): (usize, usize), call: &Call) -> Result<Array3<f32>> {
        let latent = &self.manifest.latent;
        let input = z.mapv(|v| v / latent.scaling_factor + latent.shift_factor);
        let graph = self.graph(Role::VaeDecoder);
        graph.run_with(&[("latent", input.view().into_dyn())], &["image"], call.counted(), |outputs| {
            let image = outputs[0].view().into_dimensionality::<ndarray::Ix4>().map_err(|_| bad_rank("image"))?;
            let mut finite = true;
            let pixels = image.slice(s![0, .., ..height, ..width]).mapv(|v| {
                finite &= v.is_finite();
                ((v + 1.0) / 2.0).clamp(0.0, 1.0)
            });
            if !finite {
                return Err(Error::BadOutput("the decoder returned NaN or infinity".into()));
            }
            Ok(pixels)
        })
    }

    /// The Euler loop over the shifted flow-matching schedule, with guidance when > 1.
    fn sample(
        &self,
        mut z: Array4<f32>,
        z_lq: &Array4<f32>,
        cond: &Conditioning,
        settings: &Settings,
        call: &Call,
    ) -> Result<Array4<f32>> {
        let sigmas = schedule::sigmas(&self.manifest.scheduler, settings.steps);
        let uncond = (settings.guidance > 1.0).then(|| cond.zeros_like());
        let transformer = self.graph(Role::Transformer);
        let velocity = |z: &Array4<f32>, sigma: f32, c: &Conditioning| -> Result<Array4<f32>> {
            let timestep = ndarray::arr1(&[sigma * 1000.0]);
            let out = transformer.run(
                &[
                    ("hidden_states", z.view().into_dyn()),
                    ("timestep", timestep.view().into_dyn()),
                    ("lq_latent", z_lq.view().into_dyn()),
                    ("encoder_hidden_states", c.context.view().into_dyn()),
                    ("pooled_projections", c.pooled.view().into_dyn()),
                ],
                &["velocity"],
                call.counted(),
            )?;
            out.into_iter().next().expect("one output").into_dimensionality().map_err(|_| bad_rank("velocity"))
        };
        for (i, pair) in sigmas.windows(2).enumerate() {
            call.report(Progress { stage: Stage::Sample, step: i, steps: settings.steps, tile: 1, tiles: 1 })?;
            let (sigma, next) = (pair[0], pair[1]);
            let mut v = velocity(&z, sigma, cond)?;
            if let Some(uncond) = &uncond {
                call.report(Progress { stage: Stage::Sample, step: i, steps: settings.steps, tile: 1, tiles: 1 })?;
                let v_u = velocity(&z, sigma, uncond)?;
                let g = settings.guidance;
                ndarray::Zip::from(&mut v).and(&v_u).for_each(|v, &u| *v = u + g * (*v - u));
            }
            let dt = next - sigma;
            ndarray::Zip::from(&mut z).and(&v).for_each(|z, &v| *z += dt * v);
            if z.iter().any(|v| !v.is_finite()) {
                return Err(Error::BadOutput(format!("the latent became NaN or infinite at step {}", i + 1)));
            }
        }
        Ok(z)
    }
}

fn bad_rank(name: &str) -> Error {
    Error::BadOutput(format!("output `{name}` has an unexpected rank"))
}

/// Lanczos-3 to the output size, clamped to [0, 1]; the image itself when the size is unchanged.
fn upsample(rgb: ArrayView3<'_, f32>, height: usize, width: usize) -> CowArray<'_, f32, Ix3> {
    if rgb.dim() == (3, height, width) {
        return CowArray::from(rgb);
    }
    let mut out = resize(rgb, height, width, Filter::Lanczos3);
    out.mapv_inplace(|v| v.clamp(0.0, 1.0));
    CowArray::from(out)
}

/// Alpha follows the colour's resize (Lanczos-3, clamped); untouched at scale 1.
fn resize_alpha(alpha: &Array2<f32>, height: usize, width: usize) -> Array2<f32> {
    if alpha.dim() == (height, width) {
        return alpha.clone();
    }
    let mut out = resize(alpha.view().insert_axis(Axis(0)), height, width, Filter::Lanczos3);
    out.mapv_inplace(|v| v.clamp(0.0, 1.0));
    out.index_axis_move(Axis(0), 0)
}

/// The encoder's input: `2 * lq - 1`, padded bottom and right to `(height, width)` by repeating edge pixels.
fn encoder_input(lq: ArrayView3<'_, f32>, height: usize, width: usize) -> Array4<f32> {
    let (channels, h, w) = lq.dim();
    let mut out = Array4::<f32>::zeros((1, channels, height, width));
    for c in 0..channels {
        for y in 0..height {
            let src = lq.slice(s![c, y.min(h - 1), ..]);
            for (x, d) in out.slice_mut(s![0, c, y, ..]).iter_mut().enumerate() {
                *d = 2.0 * src[x.min(w - 1)] - 1.0;
            }
        }
    }
    out
}

/// A black result from an input that is not black means the model failed, not that the photo is dark.
fn check_output(restored: ArrayView3<'_, f32>, lq: ArrayView3<'_, f32>) -> Result<()> {
    const BLACK: f32 = 1.0 / 255.0;
    let brightest = |a: ArrayView3<'_, f32>| a.iter().copied().fold(0.0f32, f32::max);
    if brightest(restored) < BLACK && brightest(lq) > 8.0 * BLACK {
        return Err(Error::BadOutput("the decoded image is black where the input is not".into()));
    }
    Ok(())
}
