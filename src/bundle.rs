//! Model bundles: the manifest (`dpir.json`), its graphs and precomputed prompts, checked against each other.
//!
//! The contract is the README's "Model bundle" section. Every model number the pipeline uses comes from here.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use ndarray::Array2;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::runtime::{Graph, Profile, ProfileInput, TensorInfo};

/// The manifest format this runtime reads.
pub const FORMAT_VERSION: u32 = 1;

/// File name of the manifest inside a bundle directory.
pub const MANIFEST_FILE: &str = "dpir.json";

/// The bundle to use when none is named: `$DPIR_MODEL` when set (named explicitly, so it is used and any problem
/// with it reported, never skipped), else the per-user place when that folder exists: `$XDG_DATA_HOME/dpir/model`
/// (by default `~/.local/share/dpir/model`), on Windows `%LOCALAPPDATA%\dpir\model`. The CLI and both host
/// plug-ins look here.
pub fn default_model_dir() -> Option<PathBuf> {
    default_model().map(|(dir, _)| dir)
}

/// Where a model bundle was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelSource {
    /// Named by the caller.
    Named,
    /// Named by `$DPIR_MODEL`.
    Environment,
    /// The per-user place: `$XDG_DATA_HOME/dpir/model` (`~/.local/share/dpir/model`), on Windows
    /// `%LOCALAPPDATA%\dpir\model`.
    DefaultPlace,
}

/// The per-user place for the model, whether or not it exists.
fn default_place() -> Option<PathBuf> {
    let set = |name| std::env::var_os(name).filter(|value| !value.is_empty()).map(PathBuf::from);
    // Local, not roaming, application data: a model is gigabytes that should not follow a user between machines.
    #[cfg(windows)]
    let data = set("LOCALAPPDATA").filter(|dir| dir.is_absolute());
    #[cfg(not(windows))]
    let data = set("XDG_DATA_HOME").filter(|dir| dir.is_absolute()).or_else(|| Some(set("HOME")?.join(".local/share")));
    data.map(|data| data.join("dpir").join("model"))
}

fn default_model() -> Option<(PathBuf, ModelSource)> {
    if let Some(dir) = std::env::var_os("DPIR_MODEL").filter(|value| !value.is_empty()) {
        return Some((PathBuf::from(dir), ModelSource::Environment));
    }
    default_place().filter(|dir| dir.is_dir()).map(|dir| (dir, ModelSource::DefaultPlace))
}

/// The bundle folder `path` names: the folder itself, or the folder of the `dpir.json` it names (what file
/// pickers that only pick files hand over).
pub fn bundle_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(parent) if path.file_name() == Some(MANIFEST_FILE.as_ref()) && path.is_file() => parent,
        _ => path,
    }
}

/// A model bundle found and its manifest read, without loading a graph or ONNX Runtime: what a host's dialog
/// shows before anything runs (which model, from where, and its defaults).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct BundleInfo {
    /// The bundle's folder.
    pub dir: PathBuf,
    /// How it was found.
    pub source: ModelSource,
    /// Its manifest, checked.
    pub manifest: Manifest,
}

impl BundleInfo {
    /// Finds the bundle `path` names (its folder or its `dpir.json`), or, when `path` is `None` or empty, dpir's
    /// default ([`default_model_dir`]), and reads its manifest.
    pub fn find(path: Option<&Path>) -> Result<BundleInfo> {
        let (dir, source) = match path.filter(|path| !path.as_os_str().is_empty()) {
            Some(path) => (bundle_dir(path).to_path_buf(), ModelSource::Named),
            None => default_model().ok_or_else(|| {
                let place = default_place().unwrap_or_else(|| PathBuf::from("~/.local/share/dpir/model"));
                Error::bundle(
                    place,
                    "no model here and DPIR_MODEL is not set (dpir's converter makes a model from the official \
                     weights)",
                )
            })?,
        };
        let manifest = Manifest::load(&dir)?;
        Ok(BundleInfo { dir, source, manifest })
    }

    /// Pixels per latent sample along each side.
    pub fn pixels_per_latent(&self) -> usize {
        self.manifest.latent.downscale
    }

    /// The tile side, in pixels, when the options leave it unset.
    pub fn default_tile_pixels(&self) -> usize {
        self.manifest.default_tile() * self.pixels_per_latent()
    }

    /// The tile overlap, in pixels, when the options leave it unset.
    pub fn default_overlap_pixels(&self) -> usize {
        self.manifest.defaults.latent_overlap * self.pixels_per_latent()
    }
}

/// The folders just inside `dir` that are model bundles, by name: what a user who picked the folder above a
/// bundle meant.
fn bundles_inside(dir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut names: Vec<String> = entries
        .filter_map(|entry| entry.ok())
        .filter(|entry| entry.path().join(MANIFEST_FILE).is_file())
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Latent samples of context given to the VAE beyond a tile's edge (where the frame goes on), so its receptive
/// field sees real neighbours instead of padding. A multiple of every patch size in use.
pub(crate) const VAE_MARGIN: usize = 8;

/// The largest size field a manifest may hold (token counts, widths, patch and tile sizes).
const MAX_MANIFEST_SIZE: usize = 1 << 16;

/// Denoising steps a restore may take, from the options or the manifest's default.
pub(crate) const STEPS: std::ops::RangeInclusive<usize> = 1..=1000;

/// Guidance scales a restore may take, from the options or the manifest's default.
pub(crate) const GUIDANCE: std::ops::RangeInclusive<f32> = 1.0..=100.0;

/// The largest transformer batch that TensorRT engines are built for: one sample, doubled by guidance.
pub(crate) const TENSORRT_MAX_BATCH: usize = 2;

/// `dpir.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct Manifest {
    /// Always `"dpir-bundle"`.
    pub format: String,
    /// [`FORMAT_VERSION`] for the bundles this runtime reads.
    pub format_version: u32,
    /// Short name of the model.
    pub name: String,
    /// Free text: where the weights came from, what the bundle is for.
    #[serde(default)]
    pub description: String,
    /// Element type of the graphs' floating inputs and outputs: float32, float16 or bfloat16.
    pub dtype: String,
    /// The VAE's latent space.
    pub latent: LatentSpec,
    /// The transformer's input geometry and widths.
    pub transformer: TransformerSpec,
    /// The CLIP image prompts.
    pub clip: ClipSpec,
    /// The text block of the context.
    pub text: TextSpec,
    /// The sampling schedule.
    pub scheduler: SchedulerSpec,
    /// Defaults of the restore options.
    pub defaults: Defaults,
    /// Where the converter took the weights from where the release offers a choice; informational.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provenance: Option<Provenance>,
    /// The widths the memory estimate needs; bundles without them are taken for DPIR on SD3-medium
    /// ([`Manifest::architecture`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub architecture: Option<Architecture>,
}

/// What the memory estimate needs to know of the graphs beyond their inputs: the sizes that set how much memory
/// their activations take. Written by the converter; informational, never checked against the graphs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct Architecture {
    /// The transformer's attention heads (24 for SD3-medium).
    pub transformer_heads: usize,
    /// The transformer's hidden width (1536 for SD3-medium).
    pub transformer_width: usize,
    /// The VAE's channels at full resolution, where its largest activations are (256 for SD3's: the last
    /// upsampler's).
    pub vae_width: usize,
    /// Whether the VAE has self-attention over the latent samples (SD3's mid-block does).
    pub vae_attention: bool,
    /// Tokens per crop of the larger CLIP tower (257 for ViT-bigG/14 at 224 pixels).
    pub clip_crop_tokens: usize,
    /// Hidden width of the larger CLIP tower (1664 for ViT-bigG/14).
    pub clip_width: usize,
}

impl Architecture {
    /// DPIR's: SD3-medium's transformer and VAE, CLIP ViT-bigG/14 as the larger tower.
    pub const SD3_MEDIUM: Architecture = Architecture {
        transformer_heads: 24,
        transformer_width: 1536,
        vae_width: 256,
        vae_attention: true,
        clip_crop_tokens: 257,
        clip_width: 1664,
    };
}

/// Where a converted bundle's weights came from, as the converter records it. Later converters may add fields.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Provenance {
    /// Whose decoder `vae_decoder.onnx` holds: "dpir" (the degradation-robust VAE's own, which the official
    /// script decodes with) or "sd3" (SD3's, which DPIR's training froze).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vae_decoder: Option<String>,
    /// The transformer's position embedding: "checkpoint" (saved with the weights) or "regenerated" (the sincos
    /// grid of the architecture, for checkpoints without it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pos_embed: Option<String>,
    /// How far a saved position embedding is from the regenerated grid (largest absolute difference).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pos_embed_vs_grid: Option<f64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
/// The VAE's latent space: `z = (mean - shift_factor) * scaling_factor`.
#[non_exhaustive]
pub struct LatentSpec {
    /// Latent channels (16 for SD3).
    pub channels: usize,
    /// Pixels per latent sample along each axis (8 for SD3).
    pub downscale: usize,
    /// 1.5305 for SD3.
    pub scaling_factor: f32,
    /// 0.0609 for SD3.
    pub shift_factor: f32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
/// The transformer's input geometry and widths.
#[non_exhaustive]
pub struct TransformerSpec {
    /// Latent samples per patch along each axis (2 for SD3).
    pub patch_size: usize,
    /// Largest number of patches per side in one pass (the position-embedding grid).
    pub max_patches: usize,
    /// Width of `encoder_hidden_states` (4096 for SD3).
    pub context_width: usize,
    /// Width of `pooled_projections`: `clip.local_width + clip.global_width`.
    pub pooled_width: usize,
}

/// Which image CLIP sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ClipInput {
    /// The (upsampled) low-quality input, as the released script does.
    Lq,
    /// `D(E_dr(LQ))`, as the paper's figure does.
    InitialRestoration,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
/// The CLIP image prompts and their preprocessing.
#[non_exhaustive]
pub struct ClipSpec {
    /// Side of the square CLIP input (224).
    pub image_size: usize,
    /// Resampling of the shortest side to `image_size`: `"bicubic"`.
    pub resize: String,
    /// Per-channel normalisation mean.
    pub mean: [f32; 3],
    /// Per-channel normalisation standard deviation.
    pub std: [f32; 3],
    /// Tokens of `clip_local`'s `last_hidden_state` (50 for ViT-B/32).
    pub local_tokens: usize,
    /// Width of those tokens (768).
    pub local_width: usize,
    /// Width of `clip_global`'s `image_embeds` (1280 for bigG).
    pub global_width: usize,
    /// Rows of the CLIP block of the context (77).
    pub clip_tokens: usize,
    /// Side of a global tile in pixels (1024).
    pub global_tile: usize,
    /// Overlap of neighbouring global tiles in pixels (64).
    pub global_overlap: usize,
    /// Which image CLIP sees by default.
    pub input: ClipInput,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
/// The text block of the context.
#[non_exhaustive]
pub struct TextSpec {
    /// Rows of the text block (256 for T5).
    pub tokens: usize,
    /// Width of the text block (4096 for T5-XXL).
    pub width: usize,
    /// `"zeros"` or a key of `prompts`.
    pub default: String,
    /// Precomputed text blocks: name to a float32 `.npy` of (tokens, width), relative to the bundle.
    #[serde(default)]
    pub prompts: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
/// The sampling schedule.
#[non_exhaustive]
pub struct SchedulerSpec {
    /// `"flow_match_euler"`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Timestep shift (3.0 for SD3).
    pub shift: f64,
    /// Training timesteps (1000).
    pub train_timesteps: u32,
    /// Default number of steps (28).
    pub steps: usize,
}

/// How the colour of the result is tied back to the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ColorFix {
    /// High frequencies of the result + low frequencies of the input (StableSR's wavelet fix).
    Wavelet,
    /// The decoder's output as it is.
    None,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
/// Defaults of the restore options.
#[non_exhaustive]
pub struct Defaults {
    /// Guidance scale; 1 is off.
    pub guidance: f32,
    /// Seed of the starting noise.
    pub seed: u64,
    /// Colour fix.
    pub color_fix: ColorFix,
    /// Tile side in latent samples, for images larger than one pass.
    pub latent_tile: usize,
    /// Overlap of neighbouring tiles in latent samples.
    pub latent_overlap: usize,
}

/// The graphs of a bundle, by role.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    VaeEncoder,
    VaeDecoder,
    ClipLocal,
    ClipGlobal,
    Transformer,
}

impl Role {
    pub(crate) const ALL: [Role; 5] =
        [Role::VaeEncoder, Role::VaeDecoder, Role::ClipLocal, Role::ClipGlobal, Role::Transformer];

    pub(crate) fn file_name(self) -> &'static str {
        match self {
            Role::VaeEncoder => "vae_encoder.onnx",
            Role::VaeDecoder => "vae_decoder.onnx",
            Role::ClipLocal => "clip_local.onnx",
            Role::ClipGlobal => "clip_global.onnx",
            Role::Transformer => "transformer.onnx",
        }
    }
}

/// An expected tensor: name and, per axis, a fixed size or `None` for a dynamic axis.
struct Expected {
    name: &'static str,
    shape: Vec<Option<usize>>,
}

fn fixed(name: &'static str, shape: &[Option<usize>]) -> Expected {
    Expected { name, shape: shape.to_vec() }
}

impl Manifest {
    /// Reads and checks `DIR/dpir.json`.
    pub fn load(dir: &Path) -> Result<Manifest> {
        let path = dir.join(MANIFEST_FILE);
        if !dir.is_dir() {
            let why = if dir.exists() {
                "not a directory (a model bundle is a directory holding dpir.json)"
            } else {
                "no such folder"
            };
            return Err(Error::bundle(dir, why));
        }
        if !path.is_file() {
            let hint = match bundles_inside(dir).as_slice() {
                [] => String::new(),
                [one] => format!("; did you mean {}?", dir.join(one).display()),
                several => format!("; did you mean one of its folders {}?", several.join(", ")),
            };
            return Err(Error::bundle(dir, format!("not a dpir model bundle: it has no {MANIFEST_FILE}{hint}")));
        }
        let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
        let manifest: Manifest =
            serde_json::from_str(&text).map_err(|e| Error::bundle(&path, format!("invalid manifest: {e}")))?;
        manifest.check(&path)?;
        Ok(manifest)
    }

    fn check(&self, path: &Path) -> Result<()> {
        let bad = |field: &str, why: String| Error::bundle(path, format!("{field}: {why}"));
        if self.format != "dpir-bundle" {
            return Err(bad("format", format!("expected \"dpir-bundle\", found {:?}", self.format)));
        }
        if self.format_version != FORMAT_VERSION {
            return Err(bad(
                "format_version",
                format!("this runtime reads version {FORMAT_VERSION}, found {}", self.format_version),
            ));
        }
        if !["float32", "float16", "bfloat16"].contains(&self.dtype.as_str()) {
            return Err(bad("dtype", format!("expected float32, float16 or bfloat16, found {:?}", self.dtype)));
        }
        let positive = [
            ("latent.channels", self.latent.channels),
            ("latent.downscale", self.latent.downscale),
            ("transformer.patch_size", self.transformer.patch_size),
            ("transformer.max_patches", self.transformer.max_patches),
            ("transformer.context_width", self.transformer.context_width),
            ("clip.image_size", self.clip.image_size),
            ("clip.local_tokens", self.clip.local_tokens),
            ("clip.local_width", self.clip.local_width),
            ("clip.global_width", self.clip.global_width),
            ("clip.clip_tokens", self.clip.clip_tokens),
            ("clip.global_tile", self.clip.global_tile),
            ("text.tokens", self.text.tokens),
            ("text.width", self.text.width),
            ("scheduler.steps", self.scheduler.steps),
        ];
        for (field, value) in positive {
            if value == 0 {
                return Err(bad(field, "must be at least 1".into()));
            }
            // Every buffer the runtime sizes from the manifest stays sane: the real model's largest value here is
            // 4096 (its context width), and a manifest cannot make dpir allocate terabytes.
            if value > MAX_MANIFEST_SIZE {
                return Err(bad(field, format!("must be at most {MAX_MANIFEST_SIZE}, found {value}")));
            }
        }
        for (field, value) in [
            ("clip.global_overlap", self.clip.global_overlap),
            ("defaults.latent_tile", self.defaults.latent_tile),
            ("defaults.latent_overlap", self.defaults.latent_overlap),
        ] {
            if value > MAX_MANIFEST_SIZE {
                return Err(bad(field, format!("must be at most {MAX_MANIFEST_SIZE}, found {value}")));
            }
        }
        // The defaults must be values the options would accept, or every restore that leaves them unset would fail
        // with an options error blamed on its caller.
        if !STEPS.contains(&self.scheduler.steps) {
            return Err(bad("scheduler.steps", format!("must be between 1 and 1000, found {}", self.scheduler.steps)));
        }
        let guidance = self.defaults.guidance;
        if !(guidance.is_finite() && GUIDANCE.contains(&guidance)) {
            return Err(bad("defaults.guidance", format!("must be between 1 and 100, found {guidance}")));
        }
        let patch = self.transformer.patch_size;
        if self.default_tile() < patch {
            return Err(bad(
                "defaults.latent_tile",
                format!("must be at least transformer.patch_size ({patch}), found {}", self.defaults.latent_tile),
            ));
        }
        let tile = self.default_tile() / patch * patch;
        if self.defaults.latent_overlap >= tile {
            return Err(bad(
                "defaults.latent_overlap",
                format!("must be smaller than the default tile ({tile}), found {}", self.defaults.latent_overlap),
            ));
        }
        if self.transformer.pooled_width != self.clip.local_width + self.clip.global_width {
            return Err(bad(
                "transformer.pooled_width",
                format!(
                    "must equal clip.local_width + clip.global_width = {}, found {}",
                    self.clip.local_width + self.clip.global_width,
                    self.transformer.pooled_width
                ),
            ));
        }
        if self.transformer.pooled_width > self.transformer.context_width
            || self.text.width > self.transformer.context_width
        {
            return Err(bad("transformer.context_width", "must be at least pooled_width and text.width".into()));
        }
        if self.clip.global_overlap >= self.clip.global_tile {
            return Err(bad("clip.global_overlap", "must be smaller than clip.global_tile".into()));
        }
        if self.clip.resize != "bicubic" {
            return Err(bad("clip.resize", format!("only \"bicubic\" is supported, found {:?}", self.clip.resize)));
        }
        if self.clip.std.iter().any(|&s| s <= 0.0) {
            return Err(bad("clip.std", "must be positive".into()));
        }
        if self.scheduler.kind != "flow_match_euler" {
            return Err(bad(
                "scheduler.type",
                format!("only \"flow_match_euler\" is supported, found {:?}", self.scheduler.kind),
            ));
        }
        if self.scheduler.shift.is_nan() || self.scheduler.shift <= 0.0 || self.scheduler.train_timesteps == 0 {
            return Err(bad("scheduler", "shift must be positive and train_timesteps at least 1".into()));
        }
        if self.text.default != "zeros" && !self.text.prompts.contains_key(&self.text.default) {
            return Err(bad(
                "text.default",
                format!("{:?} is neither \"zeros\" nor a key of text.prompts", self.text.default),
            ));
        }
        if !(self.latent.scaling_factor.is_finite()
            && self.latent.scaling_factor != 0.0
            && self.latent.shift_factor.is_finite())
        {
            return Err(bad("latent", "scaling_factor must be finite and non-zero, shift_factor finite".into()));
        }
        Ok(())
    }

    /// Pixel sizes of one pass must be multiples of this.
    pub fn pixel_multiple(&self) -> usize {
        self.latent.downscale * self.transformer.patch_size
    }

    /// Largest pixel size per side of one pass.
    pub fn max_pass_size(&self) -> usize {
        self.pixel_multiple() * self.transformer.max_patches
    }

    /// Context tokens: CLIP block + text block.
    pub fn context_tokens(&self) -> usize {
        self.clip.clip_tokens + self.text.tokens
    }

    /// What each graph must declare, in the manifest's numbers.
    fn expected(&self, role: Role) -> (Vec<Expected>, Vec<Expected>) {
        let c = Some(self.latent.channels);
        let clip = Some(self.clip.image_size);
        match role {
            Role::VaeEncoder => (
                vec![fixed("image", &[None, Some(3), None, None])],
                vec![fixed("mean", &[None, c, None, None]), fixed("logvar", &[None, c, None, None])],
            ),
            Role::VaeDecoder => {
                (vec![fixed("latent", &[None, c, None, None])], vec![fixed("image", &[None, Some(3), None, None])])
            }
            Role::ClipLocal => (
                vec![fixed("pixel_values", &[None, Some(3), clip, clip])],
                vec![fixed("last_hidden_state", &[None, Some(self.clip.local_tokens), Some(self.clip.local_width)])],
            ),
            Role::ClipGlobal => (
                vec![fixed("pixel_values", &[None, Some(3), clip, clip])],
                vec![fixed("image_embeds", &[None, Some(self.clip.global_width)])],
            ),
            Role::Transformer => (
                vec![
                    fixed("hidden_states", &[None, c, None, None]),
                    fixed("timestep", &[None]),
                    fixed("lq_latent", &[None, c, None, None]),
                    fixed(
                        "encoder_hidden_states",
                        &[None, Some(self.context_tokens()), Some(self.transformer.context_width)],
                    ),
                    fixed("pooled_projections", &[None, Some(self.transformer.pooled_width)]),
                ],
                vec![fixed("velocity", &[None, c, None, None])],
            ),
        }
    }

    /// The shapes dpir feeds `role`'s inputs, as a TensorRT optimisation profile. Batches: 1, or up to 2 for
    /// the transformer (guidance doubles it) and up to the CLIP block for the CLIP towers (a crop per global tile
    /// and the local one). Sides, in latent samples: from one patch to the default tile (larger tiles and joint
    /// tile batches are refused on TensorRT), plus for the VAE the margins the tile engine gives it: [`VAE_MARGIN`]
    /// latent samples, or the default overlap in joint mode, on each side. Engines sized for one pass instead
    /// would reserve gigabytes for shapes dpir does not feed them by default.
    pub(crate) fn profile(&self, role: Role) -> Profile {
        let patch = self.transformer.patch_size;
        let tile = self.tensorrt_tile();
        let with_margins = tile + 2 * VAE_MARGIN.max(self.defaults.latent_overlap);
        let d = self.latent.downscale;
        // (batch, side) as (min, opt, max)
        let (batch, side) = match role {
            Role::Transformer => ([1, 1, TENSORRT_MAX_BATCH], [patch, tile, tile]),
            Role::VaeDecoder => ([1, 1, 1], [patch, tile, with_margins]),
            Role::VaeEncoder => ([1, 1, 1], [patch * d, tile * d, with_margins * d]),
            Role::ClipLocal | Role::ClipGlobal => ([1, 1, self.clip.clip_tokens], [0; 3]),
        };
        let inputs = self.expected(role).0.into_iter().map(|input| {
            let dims = |k: usize| -> Vec<usize> {
                input
                    .shape
                    .iter()
                    .enumerate()
                    .map(|(axis, d)| d.unwrap_or(if axis == 0 { batch[k] } else { side[k] }))
                    .collect()
            };
            ProfileInput { name: input.name.to_string(), min: dims(0), opt: dims(1), max: dims(2) }
        });
        Profile { inputs: inputs.collect() }
    }

    /// The padded latent frame (width, height) of an output frame of `width x height` pixels.
    pub fn latent_size(&self, width: usize, height: usize) -> (usize, usize) {
        let (multiple, patch) = (self.pixel_multiple(), self.transformer.patch_size);
        (width.div_ceil(multiple) * patch, height.div_ceil(multiple) * patch)
    }

    /// The widths of the graphs that set their activations' memory: the manifest's, or SD3-medium's when it
    /// has none.
    pub fn architecture(&self) -> Architecture {
        self.architecture.unwrap_or(Architecture::SD3_MEDIUM)
    }

    /// The tile side, in latent samples, when the options leave it unset: `latent_tile`, capped at one pass.
    pub fn default_tile(&self) -> usize {
        self.defaults.latent_tile.min(self.transformer.max_patches * self.transformer.patch_size)
    }

    /// The largest tile, in latent samples, that TensorRT engines are built for: the default tile.
    pub(crate) fn tensorrt_tile(&self) -> usize {
        self.default_tile()
    }

    /// Checks a loaded graph's inputs and outputs against the manifest.
    pub(crate) fn check_graph(&self, role: Role, graph: &Graph) -> Result<()> {
        let (inputs, outputs) = self.expected(role);
        check_tensors(graph.file(), "input", &inputs, graph.inputs(), &self.dtype)?;
        check_tensors(graph.file(), "output", &outputs, graph.outputs(), &self.dtype)
    }
}

fn check_tensors(file: &Path, what: &str, expected: &[Expected], found: &[TensorInfo], dtype: &str) -> Result<()> {
    let mismatch = |field: String, expected: String, found: String| Error::GraphMismatch {
        file: file.to_path_buf(),
        field,
        expected,
        found,
    };
    for want in expected {
        let Some(have) = found.iter().find(|t| t.name == want.name) else {
            let names: Vec<&str> = found.iter().map(|t| t.name.as_str()).collect();
            return Err(mismatch(format!("{what} `{}`", want.name), "present".into(), format!("only {names:?}")));
        };
        // `timestep` may stay float32 in any dtype: rounding sigma * 1000 to float16 (steps of 0.5) or bfloat16
        // (steps of 4) before the sinusoidal embedding would move its fastest channels by up to radians.
        let timestep_in_f32 = want.name == "timestep" && have.element == "float32";
        if have.element != dtype && !timestep_in_f32 {
            return Err(mismatch(format!("{what} `{}` element type", want.name), dtype.into(), have.element.clone()));
        }
        if have.shape.len() != want.shape.len() {
            return Err(mismatch(
                format!("{what} `{}` rank", want.name),
                want.shape.len().to_string(),
                have.shape.len().to_string(),
            ));
        }
        for (axis, (w, h)) in want.shape.iter().zip(&have.shape).enumerate() {
            if let (Some(w), Some(h)) = (w, h) {
                if *w as i64 != *h {
                    return Err(mismatch(format!("{what} `{}` axis {axis}", want.name), w.to_string(), h.to_string()));
                }
            }
        }
    }
    Ok(())
}

/// File names of the optional text encoder and its tokenizer.
pub(crate) const TEXT_ENCODER_FILE: &str = "t5.onnx";
pub(crate) const TOKENIZER_FILE: &str = "tokenizer.json";

impl Manifest {
    /// Checks the optional text encoder: `input_ids` int64 (batch, text.tokens) to `last_hidden_state`
    /// (batch, text.tokens, text.width).
    pub(crate) fn check_text_encoder(&self, graph: &Graph) -> Result<()> {
        let tokens = Some(self.text.tokens);
        let inputs = [fixed("input_ids", &[None, tokens])];
        let outputs = [fixed("last_hidden_state", &[None, tokens, Some(self.text.width)])];
        check_tensors(graph.file(), "input", &inputs, graph.inputs(), "int64")?;
        check_tensors(graph.file(), "output", &outputs, graph.outputs(), &self.dtype)
    }
}

/// A loaded text block (text.tokens, text.width), float32.
pub(crate) fn load_prompt(dir: &Path, manifest: &Manifest, name: &str) -> Result<Array2<f32>> {
    let shape = (manifest.text.tokens, manifest.text.width);
    if name == "zeros" {
        return Ok(Array2::zeros(shape));
    }
    let relative = manifest.text.prompts.get(name).ok_or_else(|| {
        let known: Vec<&String> = manifest.text.prompts.keys().collect();
        Error::InvalidOptions(format!("prompt {name:?} is not in the bundle (it has \"zeros\" and {known:?})"))
    })?;
    let path: PathBuf = dir.join(relative);
    crate::npy::checked_shape(&path)
        .map_err(|why| Error::bundle(&path, format!("cannot read prompt embedding: {why}")))?;
    let array: Array2<f32> =
        ndarray_npy::read_npy(&path).map_err(|e| Error::bundle(&path, format!("cannot read prompt embedding: {e}")))?;
    if array.dim() != shape {
        return Err(Error::GraphMismatch {
            file: path,
            field: "prompt embedding shape".into(),
            expected: format!("{shape:?} (text.tokens, text.width)"),
            found: format!("{:?}", array.dim()),
        });
    }
    Ok(array)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bundle_is_named_by_its_folder_or_its_manifest_and_read_in_pixels() {
        let bundles = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/bundles");
        let tiny = bundles.join("tiny");
        for named in [tiny.clone(), tiny.join(MANIFEST_FILE)] {
            let info = BundleInfo::find(Some(&named)).unwrap();
            assert_eq!((info.dir.as_path(), info.source), (tiny.as_path(), ModelSource::Named));
            // tiny: 8 pixels per latent sample, tiles of 128 latent samples overlapping by 16.
            assert_eq!((info.default_tile_pixels(), info.default_overlap_pixels()), (1024, 128));
        }
        let message = BundleInfo::find(Some(&bundles)).unwrap_err().to_string();
        assert!(
            message.ends_with(
                "it has no dpir.json; did you mean one of its folders broken_black, broken_nan, oracle, tiny?"
            ),
            "{message}"
        );
        let above_one = tempfile::tempdir().unwrap();
        std::fs::create_dir(above_one.path().join("tiny")).unwrap();
        std::fs::copy(tiny.join(MANIFEST_FILE), above_one.path().join("tiny").join(MANIFEST_FILE)).unwrap();
        let message = BundleInfo::find(Some(above_one.path())).unwrap_err().to_string();
        assert!(message.ends_with(&format!("did you mean {}?", above_one.path().join("tiny").display())), "{message}");
    }

    #[test]
    fn provenance_is_optional_and_open_to_new_fields() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/bundles/tiny");
        let mut json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("dpir.json")).unwrap()).unwrap();
        let without: Manifest = serde_json::from_value(json.clone()).unwrap();
        assert!(without.provenance.is_none());
        assert!(!serde_json::to_string(&without).unwrap().contains("provenance"));
        json["provenance"] =
            serde_json::json!({"vae_decoder": "dpir", "pos_embed": "checkpoint", "pos_embed_vs_grid": 0.0, "later": 1});
        let with: Manifest = serde_json::from_value(json).unwrap();
        let provenance = with.provenance.unwrap();
        assert_eq!(provenance.vae_decoder.as_deref(), Some("dpir"));
        assert_eq!((provenance.pos_embed.as_deref(), provenance.pos_embed_vs_grid), (Some("checkpoint"), Some(0.0)));
    }

    #[test]
    fn tensorrt_profiles_cover_the_shapes_dpir_feeds() {
        let tiny = Manifest::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/bundles/tiny")).unwrap();
        // tiny: 4 latent channels, downscale 8, patch 2, default tile 128 and overlap 16, 12 + 8 context tokens
        // of width 48, pooled width 40, CLIP images of 32 and a block of 12.
        let shapes = |role| {
            let p = tiny.profile(role);
            p.inputs.into_iter().map(|i| (i.name, i.min, i.opt, i.max)).collect::<Vec<_>>()
        };
        let s = |name: &str, min: &[usize], opt: &[usize], max: &[usize]| {
            (name.to_string(), min.to_vec(), opt.to_vec(), max.to_vec())
        };
        assert_eq!(
            shapes(Role::Transformer),
            vec![
                s("hidden_states", &[1, 4, 2, 2], &[1, 4, 128, 128], &[2, 4, 128, 128]),
                s("timestep", &[1], &[1], &[2]),
                s("lq_latent", &[1, 4, 2, 2], &[1, 4, 128, 128], &[2, 4, 128, 128]),
                s("encoder_hidden_states", &[1, 20, 48], &[1, 20, 48], &[2, 20, 48]),
                s("pooled_projections", &[1, 40], &[1, 40], &[2, 40]),
            ]
        );
        assert_eq!(
            shapes(Role::VaeEncoder),
            vec![s("image", &[1, 3, 16, 16], &[1, 3, 1024, 1024], &[1, 3, 1280, 1280])]
        );
        assert_eq!(shapes(Role::VaeDecoder), vec![s("latent", &[1, 4, 2, 2], &[1, 4, 128, 128], &[1, 4, 160, 160])]);
        assert_eq!(
            shapes(Role::ClipLocal),
            vec![s("pixel_values", &[1, 3, 32, 32], &[1, 3, 32, 32], &[12, 3, 32, 32])]
        );
        assert_eq!(tiny.profile(Role::ClipGlobal), tiny.profile(Role::ClipLocal));
    }
}
