//! What a restore needs in memory at its peak: the weights loaded at that moment, the activations of the
//! largest graph run of the stage (they grow with the tile: the attention scores with the square of its tokens),
//! and dpir's own buffers; and, within a budget, the largest tile whose peak fits.
//!
//! The activations follow the architecture ([`Architecture`]) with coefficients measured on ONNX Runtime's CPU
//! provider with the full-size random bundle (README, "Memory"). On a GPU the same figures are an upper bound:
//! the CUDA provider computes fp16 graphs in fp16, and at opset 23 it does not materialise the attention scores.

use crate::bundle::{Architecture, Manifest};
use crate::error::{Error, Result};
use crate::options::{Settings, TileMode};
use crate::plan::Plan;
use crate::prompt::global_tiles;
use crate::residency::Group;
use crate::runtime::ExecutionProvider;

// Coefficients measured with tools/bench/memory.py (graphs) on ONNX Runtime 1.31.1's CPU provider, fp32, each
// graph alone at three sizes, least squares; in float32 values per unit of the architecture's numbers.
/// Attention score matrices of a transformer step, per head and sample (fitted: 1.40).
const TRANSFORMER_SCORES: f64 = 1.4;
/// Token-wide activations of a transformer step, in units of its hidden width, per sample (fitted: 51.9).
const TRANSFORMER_TOKENS: f64 = 52.0;
/// The VAE decoder's full-resolution activations, in units of its full-resolution width (fitted: 5.30; the
/// encoder's are smaller).
const VAE_PIXELS: f64 = 5.3;
/// The VAE decoder's mid-block attention over the latent samples (fitted: 1.81).
const VAE_SCORES: f64 = 1.8;
/// The larger CLIP tower's activations per crop, in units of its hidden width per token (fitted: 24.3).
const CLIP_TOKENS: f64 = 24.0;
/// A whole restore's peak exceeds the weights plus the graphs' activations measured one at a time: by 14 to
/// 30% of the latter in the full-size bundle's restores (README, "Memory"), from ONNX Runtime's arenas rounding
/// their blocks up, the copies between dpir and the runs, and dpir's own buffers. The working memory is taken
/// this much larger.
const WORKING_HEADROOM: f64 = 1.3;
/// ONNX Runtime's CPU provider widens float16 and bfloat16 weights to float32 inside the graph; resident
/// weights then take this many times the bytes on disk (fp16 bundle, 512x512: 8.4 GiB for 4.95 on disk).
const CPU_HALF_WEIGHTS: f64 = 1.7;
/// The process's own: the program, ONNX Runtime's library and thread pools (the CLI restoring a small image with
/// the tiny bundle peaks at 43 MB).
const RUNTIME_BASE: u64 = 48 << 20;

/// The memory a restore needs beside the weights: what each group's sessions hold once they have run (ONNX
/// Runtime's arenas keep a session's largest run until the session is dropped), and dpir's buffers.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Need {
    /// The prompt encoders': the CLIP towers over the global crops.
    pub encoders: u64,
    /// The transformer's: one step over a tile.
    pub transformer: u64,
    /// The VAE's: a tile with its margins (the largest activations on the CPU).
    pub vae: u64,
    /// dpir's buffers and the runtime's own, through the whole restore.
    pub buffers: u64,
}

/// Bytes of the weights of each group of graphs as they sit in memory.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Weights {
    pub vae: u64,
    pub encoders: u64,
    pub transformer: u64,
}

impl Weights {
    fn all(&self) -> u64 {
        self.vae + self.encoders + self.transformer
    }

    pub(crate) fn of(&self, group: Group) -> u64 {
        match group {
            Group::Vae => self.vae,
            Group::Encoders => self.encoders,
            Group::Transformer => self.transformer,
        }
    }

    /// The resident bytes of `on_disk` weights of a `dtype` bundle on `provider`.
    pub(crate) fn resident(on_disk: u64, dtype: &str, provider: &ExecutionProvider) -> u64 {
        if !provider.is_gpu() && dtype != "float32" {
            (on_disk as f64 * CPU_HALF_WEIGHTS) as u64
        } else {
            on_disk
        }
    }
}

/// A restore's estimated peak and how it gets there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Peak {
    pub bytes: u64,
    /// Weights loaded at the peak.
    pub weights: u64,
    /// Whether the stages take turns: the encoders released for sampling, or the transformer for the prompts.
    pub staged: bool,
}

impl Need {
    /// What a restore with `settings` planned as `plan` needs on `provider`.
    pub(crate) fn of(manifest: &Manifest, settings: &Settings, plan: &Plan, provider: &ExecutionProvider) -> Need {
        let a = manifest.architecture();
        let element = element_bytes(&manifest.dtype, provider);
        let (tile_w, tile_h) = plan.tiles.first().map_or((0, 0), |t| (t.latent.width, t.latent.height));
        // The VAE sees a tile with its margins, which stop at the frame's edges.
        let d = manifest.latent.downscale;
        let widest = plan.tiles.iter().map(|t| plan.encode_rect(t.latent)).max_by_key(|r| r.width * r.height);
        let vae = widest.map_or(0.0, |r| vae_bytes(&a, manifest, (r.width / d, r.height / d), element));
        let guided = if settings.guidance > 1.0 { 2 } else { 1 };
        let samples = match settings.mode {
            TileMode::Joint => settings.batch.min(plan.tiles.len()).max(1),
            _ => 1,
        };
        let patch = manifest.transformer.patch_size;
        let tokens = (tile_w / patch) * (tile_h / patch) + manifest.context_tokens();
        let transformer = (samples * guided) as f64 * transformer_bytes(&a, tokens, element);
        let crops = global_tiles(plan.frame.0, plan.frame.1, &manifest.clip).len().max(1);
        let clip = crops as f64 * element * CLIP_TOKENS * (a.clip_crop_tokens * a.clip_width) as f64;
        let buffers = (plan.estimated_bytes(manifest, settings) + RUNTIME_BASE) as f64;
        let held = |bytes: f64| (WORKING_HEADROOM * bytes) as u64;
        Need { encoders: held(clip), transformer: held(transformer), vae: held(vae), buffers: held(buffers) }
    }

    /// What `group`'s sessions hold beside their weights once they have run.
    pub(crate) fn held(&self, group: Group) -> u64 {
        match group {
            Group::Vae => self.vae,
            Group::Encoders => self.encoders,
            Group::Transformer => self.transformer,
        }
    }

    /// The peak of a restore with `weights`, within `budget` if any: every graph loaded through both stages
    /// when they fit, else each stage with its own graphs and those of the other stage that still fit beside them
    /// (as [`Residency::enter`](crate::residency::Residency::enter) decides). A loaded graph counts with what its
    /// sessions hold (a frame after the first finds the other stage's arenas grown).
    pub(crate) fn peak(&self, weights: &Weights, budget: Option<u64>) -> Peak {
        let cost = |group: Group| weights.of(group) + self.held(group);
        let groups = [Group::Vae, Group::Encoders, Group::Transformer];
        let together = groups.iter().map(|&g| cost(g)).sum::<u64>() + self.buffers;
        let Some(budget) = budget.filter(|&b| together > b) else {
            return Peak { bytes: together, weights: weights.all(), staged: false };
        };
        let stage = |own: Group, other: Group| {
            let mut bytes = cost(Group::Vae) + cost(own) + self.buffers;
            let mut loaded = weights.vae + weights.of(own);
            if bytes + cost(other) <= budget {
                bytes += cost(other);
                loaded += weights.of(other);
            }
            (bytes, loaded)
        };
        let prompt = stage(Group::Encoders, Group::Transformer);
        let sample = stage(Group::Transformer, Group::Encoders);
        let (bytes, weights) = if prompt.0 >= sample.0 { prompt } else { sample };
        Peak { bytes, weights, staged: true }
    }
}

/// The largest tile side (latent samples), from `settings.tile` down, whose restore fits `budget`; refused,
/// naming the smallest budget that would do, when none does.
pub(crate) fn fitting_tile(
    manifest: &Manifest,
    settings: &Settings,
    weights: &Weights,
    provider: &ExecutionProvider,
    budget: u64,
) -> Result<usize> {
    let patch = manifest.transformer.patch_size;
    let smallest = (settings.overlap / patch + 1) * patch;
    let mut least = (u64::MAX, smallest);
    for tile in (smallest..=settings.tile).rev().step_by(patch) {
        let candidate = Settings { tile, ..settings.clone() };
        let plan = Plan::new(manifest, settings.output, &candidate)?;
        let peak = Need::of(manifest, &candidate, &plan, provider).peak(weights, Some(budget));
        if peak.bytes <= budget {
            return Ok(tile);
        }
        least = least.min((peak.bytes, tile));
    }
    Err(Error::OutOfMemory(format!(
        "a memory budget of {} is too small for this model: this restore needs about {} at the least (with a tile \
         size of {} pixels); allow at least that much",
        gib(budget),
        gib(least.0),
        least.1 * manifest.latent.downscale
    )))
}

/// The tile to retry with after running out of memory with `tile`: three quarters of it, or `None` when that
/// is no larger than the overlap.
pub(crate) fn smaller_tile(manifest: &Manifest, settings: &Settings) -> Option<usize> {
    let patch = manifest.transformer.patch_size;
    let tile = (settings.tile * 3 / 4) / patch * patch;
    (tile > settings.overlap && tile < settings.tile).then_some(tile)
}

/// `bytes` in GiB with two decimals, for messages.
pub(crate) fn gib(bytes: u64) -> String {
    format!("{:.2} GiB", bytes as f64 / (1u64 << 30) as f64)
}

/// The bytes of one value of the graphs' activations: ONNX Runtime's CPU provider computes in float32 whatever
/// the bundle's dtype.
fn element_bytes(dtype: &str, provider: &ExecutionProvider) -> f64 {
    match dtype {
        "float16" | "bfloat16" if provider.is_gpu() => 2.0,
        _ => 4.0,
    }
}

/// One sample's activations in a transformer block over `tokens` tokens (image patches and context).
fn transformer_bytes(a: &Architecture, tokens: usize, element: f64) -> f64 {
    let t = tokens as f64;
    element
        * (TRANSFORMER_SCORES * a.transformer_heads as f64 * t * t
            + TRANSFORMER_TOKENS * t * a.transformer_width as f64)
}

/// The VAE's activations over a (width, height) latent area: the full-resolution layers and the mid-block's
/// attention over the latent samples.
fn vae_bytes(a: &Architecture, manifest: &Manifest, (w, h): (usize, usize), element: f64) -> f64 {
    let samples = (w * h) as f64;
    let d = manifest.latent.downscale as f64;
    let attention = if a.vae_attention { VAE_SCORES * samples * samples } else { 0.0 };
    element * (VAE_PIXELS * a.vae_width as f64 * samples * d * d + attention)
}
