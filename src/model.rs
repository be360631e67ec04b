//! The model: a bundle's graphs by name, loaded on one runtime, and the four things the stages ask of them
//! (encode, decode, CLIP features, velocity) plus the text block.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use ndarray::{concatenate, s, Array1, Array2, Array3, Array4, ArrayView3, ArrayView4, Axis, Zip};

use crate::bundle::{self, Manifest, Role};
use crate::error::{Error, Result};
use crate::memory::{Need, Weights};
use crate::noise::{latent_noise, Stream};
use crate::pixels::MAX_SIDE;
use crate::progress::Call;
use crate::rect::Rect;
use crate::residency::{Group, Phase, Residency, Slot};
use crate::runtime::{
    self, ExecutionProvider, Graph, GraphHints, Resident, Runtime, RuntimeOptions, SessionTimer, TensorInfo,
};

/// A loaded bundle. Shareable between threads: graph runs are serialised per graph, and everything else is
/// read-only but which graphs are loaded ([`Residency`]).
pub(crate) struct Model {
    dir: PathBuf,
    manifest: Manifest,
    runtime: Runtime,
    graphs: Residency,
    /// The text encoder's tokenizer, when the bundle has one (its graph is the last slot).
    tokenizer: Option<tokenizers::Tokenizer>,
    weights: Weights,
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

/// The transformer's conditioning for one sample.
#[derive(Debug, Clone)]
pub(crate) struct Conditioning {
    /// (1, context tokens, context width).
    pub context: Array3<f32>,
    /// (1, pooled width).
    pub pooled: Array2<f32>,
}

/// What [`Model::step_inputs`] prepares for a batch's denoising steps.
pub(crate) struct StepInputs {
    /// Samples in the batch, before guidance doubles it.
    samples: usize,
    /// Whether the batch is doubled with all-zero prompts.
    guided: bool,
    lq_latent: Resident,
    context: Resident,
    pooled: Resident,
}

impl Model {
    /// Loads the bundle in `dir`, validating the manifest against every graph. Within a memory budget, graphs
    /// that do not fit beside the ones loaded before them are released once checked.
    pub(crate) fn load(dir: &Path, options: &RuntimeOptions) -> Result<Model> {
        let dir = crate::bundle::bundle_dir(dir).to_path_buf();
        let manifest = Manifest::load(&dir)?;
        for role in Role::ALL {
            let file = dir.join(role.file_name());
            if !file.is_file() {
                return Err(Error::bundle(&file, "graph file is missing"));
            }
        }
        let mut files: Vec<PathBuf> = Role::ALL.iter().map(|role| dir.join(role.file_name())).collect();
        let text_file = dir.join(bundle::TEXT_ENCODER_FILE);
        let has_text = text_file.is_file();
        if has_text {
            files.push(text_file.clone());
        }
        let bundle_key = runtime::bundle_key(&dir, &manifest.name, &manifest.dtype[..], &files[..Role::ALL.len()]);
        let hints = |role: Option<Role>| GraphHints {
            profile: role.map(|role| manifest.profile(role)).unwrap_or_default(),
            bundle_key: bundle_key.clone(),
        };
        let mut graphs = Residency::new(options.memory_budget);
        // The transformer first: its session settles the execution provider.
        let (runtime, transformer) =
            Runtime::new(options, &dir.join(Role::Transformer.file_name()), &hints(Some(Role::Transformer)))?;
        manifest.check_graph(Role::Transformer, &transformer)?;
        let transformer_hints = hints(Some(Role::Transformer));
        graphs.add(Slot::new(Role::Transformer.file_name(), Group::Transformer, transformer_hints, transformer));
        for role in [Role::VaeEncoder, Role::VaeDecoder, Role::ClipLocal, Role::ClipGlobal] {
            let graph = runtime.load(&dir.join(role.file_name()), &hints(Some(role)))?;
            manifest.check_graph(role, &graph)?;
            let group = if matches!(role, Role::VaeEncoder | Role::VaeDecoder) { Group::Vae } else { Group::Encoders };
            graphs.add(Slot::new(role.file_name(), group, hints(Some(role)), graph));
        }
        let tokenizer = if has_text {
            let graph = runtime.load(&text_file, &hints(None))?;
            manifest.check_text_encoder(&graph)?;
            graphs.add(Slot::new(bundle::TEXT_ENCODER_FILE, Group::Encoders, hints(None), graph));
            Some(load_tokenizer(&dir, &manifest)?)
        } else {
            None
        };
        let resident = |group| Weights::resident(graphs.weights(group), &manifest.dtype, &runtime.provider);
        let weights = Weights {
            vae: resident(Group::Vae),
            encoders: resident(Group::Encoders),
            transformer: resident(Group::Transformer),
        };
        bundle::load_prompt(&dir, &manifest, &manifest.text.default)?;
        Ok(Model { dir, manifest, runtime, graphs, tokenizer, weights })
    }

    pub(crate) fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    pub(crate) fn execution_provider(&self) -> &ExecutionProvider {
        &self.runtime.provider
    }

    pub(crate) fn onnxruntime_library(&self) -> &Path {
        &self.runtime.library
    }

    pub(crate) fn has_text_encoder(&self) -> bool {
        self.tokenizer.is_some()
    }

    /// The memory budget, if any.
    pub(crate) fn budget(&self) -> Option<u64> {
        self.graphs.budget()
    }

    /// The weights' resident bytes, by group.
    pub(crate) fn weights(&self) -> &Weights {
        &self.weights
    }

    /// Makes room for `phase` within the budget, for a restore that needs `need`.
    pub(crate) fn enter(&self, phase: Phase, need: &Need) {
        self.graphs.enter(phase, |group| self.weights.of(group), |group| need.held(group), need.buffers)
    }

    /// A graph by file name, loaded if it was released.
    fn graph(&self, name: &str) -> Result<Arc<Graph>> {
        let index = self.graphs.slots().iter().position(|s| s.name == name).expect("a graph of the bundle");
        self.graphs.graph(index, &self.runtime)
    }

    /// Each graph's slot, the optional text encoder last: its runs and loads.
    pub(crate) fn slots(&self) -> &[Slot] {
        self.graphs.slots()
    }

    /// Each graph's declared inputs and outputs, by file name.
    pub(crate) fn signatures(&self) -> Vec<(&'static str, Vec<TensorInfo>, Vec<TensorInfo>)> {
        self.slots().iter().map(|slot| (slot.name, slot.inputs.clone(), slot.outputs.clone())).collect()
    }

    /// The output (width, height) for an input size and scale.
    pub(crate) fn output_size(&self, width: usize, height: usize, scale: f32) -> Result<(usize, usize)> {
        check_scale(scale)?;
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

    /// The text block of a restore: a caption through the text encoder, else a precomputed prompt by name (the
    /// bundle's default when `None`), or zeros.
    pub(crate) fn text_block(&self, prompt: Option<&str>, caption: Option<&str>, call: &Call) -> Result<Array2<f32>> {
        let m = &self.manifest;
        match (caption, &self.tokenizer) {
            (Some(caption), Some(tokenizer)) => {
                let graph = self.graph(bundle::TEXT_ENCODER_FILE)?;
                encode_text(&graph, tokenizer, caption, m, call.counted())
            }
            (Some(_), None) => Err(self.no_text_encoder()),
            (None, _) => bundle::load_prompt(&self.dir, m, prompt.unwrap_or(&m.text.default)),
        }
    }

    /// The error of a caption given to a bundle without a text encoder.
    pub(crate) fn no_text_encoder(&self) -> Error {
        Error::InvalidOptions(format!(
            "this bundle has no text encoder ({}); use one of its precomputed prompts {:?} or \"zeros\"",
            bundle::TEXT_ENCODER_FILE,
            self.manifest.text.prompts.keys().collect::<Vec<_>>()
        ))
    }

    /// `z_LQ = (mean - shift) * scaling` of LQ pixels (3, h, w) in [0, 1], w and h multiples of the downscale.
    /// With `posterior` (a seed), the latent is drawn from the encoder's posterior instead of taking its mean, the
    /// draw's noise sitting at `latent_origin` (y, x) of the frame.
    pub(crate) fn encode(
        &self,
        lq: ArrayView3<'_, f32>,
        latent_origin: (usize, usize),
        posterior: Option<u64>,
        call: &Call,
    ) -> Result<Array4<f32>> {
        let latent = &self.manifest.latent;
        let input = lq.mapv(|v| 2.0 * v - 1.0).insert_axis(Axis(0));
        let encoder = self.graph(Role::VaeEncoder.file_name())?;
        let mut out = encoder.run(&[("image", input.view().into_dyn())], &["mean", "logvar"], call.counted())?;
        let logvar = out.pop().expect("two outputs");
        let mut z: Array4<f32> = out.pop().expect("two outputs").into_dimensionality().map_err(|_| bad_rank("mean"))?;
        if let Some(seed) = posterior {
            let (_, c, h, w) = z.dim();
            let origin = (latent_origin.0 as i64, latent_origin.1 as i64);
            let eps = latent_noise(seed, Stream::Posterior, c, origin, (h, w))?;
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
        let decoder = self.graph(Role::VaeDecoder.file_name())?;
        decoder.run_with(&[("latent", input.view().into_dyn())], &["image"], call.counted(), |outputs| {
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

    /// Runs both CLIP towers on preprocessed crops (`prompt::preprocess`), one batch per tower.
    pub(crate) fn clip(&self, crops: &[Array3<f32>], call: &Call) -> Result<Vec<Features>> {
        let views: Vec<_> = crops.iter().map(|c| c.view().insert_axis(Axis(0))).collect();
        let batch: Array4<f32> = concatenate(Axis(0), &views).expect("crops share one shape");
        let input = [("pixel_values", batch.view().into_dyn())];
        let tokens = self.graph(Role::ClipLocal.file_name())?.run(&input, &["last_hidden_state"], call.counted())?;
        let embeds = self.graph(Role::ClipGlobal.file_name())?.run(&input, &["image_embeds"], call.counted())?;
        let tokens: Array3<f32> = tokens.into_iter().next().unwrap().into_dimensionality().expect("validated rank 3");
        let embeds: Array2<f32> = embeds.into_iter().next().unwrap().into_dimensionality().expect("validated rank 2");
        Ok(tokens
            .outer_iter()
            .zip(embeds.outer_iter())
            .map(|(t, e)| Features { tokens: t.to_owned(), embed: e.to_owned() })
            .collect())
    }

    /// The transformer inputs that stay the same through the denoising steps of a batch of samples: the LQ
    /// latents (B, C, h, w) and one conditioning each, doubled with all-zero prompts when `guided`. They are
    /// converted, and on a GPU uploaded, once here rather than at every step.
    pub(crate) fn step_inputs(
        &self,
        z_lq: ArrayView4<'_, f32>,
        conditions: &[&Conditioning],
        guided: bool,
        call: &Call,
    ) -> Result<StepInputs> {
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
        let graph = self.graph(Role::Transformer.file_name())?;
        let timer = call.counted();
        Ok(StepInputs {
            samples: conditions.len(),
            guided,
            lq_latent: graph.resident("lq_latent", lq.into_dyn().view(), timer)?,
            context: graph.resident("encoder_hidden_states", context.into_dyn().view(), timer)?,
            pooled: graph.resident("pooled_projections", pooled.into_dyn().view(), timer)?,
        })
    }

    /// The velocity of a batch of samples `z` (B, C, h, w) at `sigma`, with the batch's [`StepInputs`]. When
    /// they are guided, the batch is doubled with all-zero prompts and `v_u + guidance (v_c - v_u)` returned.
    pub(crate) fn velocity(
        &self,
        z: ArrayView4<'_, f32>,
        fixed: &StepInputs,
        sigma: f32,
        guidance: f32,
        call: &Call,
    ) -> Result<Array4<f32>> {
        let guided = fixed.guided;
        let n = fixed.samples;
        let z_in = if guided { concatenate![Axis(0), z, z] } else { z.to_owned() };
        let timestep = Array1::from_elem(z_in.dim().0, sigma * 1000.0);
        let before = call.in_session();
        let out = self.graph(Role::Transformer.file_name())?.run_resident(
            &[("hidden_states", z_in.view().into_dyn()), ("timestep", timestep.view().into_dyn())],
            &[
                ("lq_latent", &fixed.lq_latent),
                ("encoder_hidden_states", &fixed.context),
                ("pooled_projections", &fixed.pooled),
            ],
            &["velocity"],
            call.counted(),
        )?;
        call.transformer_ran(call.in_session() - before);
        let v: Array4<f32> =
            out.into_iter().next().expect("one output").into_dimensionality().map_err(|_| bad_rank("velocity"))?;
        if !guided {
            return Ok(v);
        }
        let g = guidance;
        let (conditional, unconditional) = (v.slice(s![..n, .., .., ..]), v.slice(s![n.., .., .., ..]));
        Ok(Zip::from(&conditional).and(&unconditional).map_collect(|&c, &u| u + g * (c - u)))
    }
}

/// The text encoder's tokenizer (`tokenizer.json`), padding and truncating to the text block.
fn load_tokenizer(dir: &Path, manifest: &Manifest) -> Result<tokenizers::Tokenizer> {
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
    Ok(tokenizer)
}

/// The text block of a caption through the text encoder `graph`: (text tokens, text width).
fn encode_text(
    graph: &Graph,
    tokenizer: &tokenizers::Tokenizer,
    text: &str,
    manifest: &Manifest,
    timer: &SessionTimer,
) -> Result<Array2<f32>> {
    let encoding = tokenizer
        .encode(text, true)
        .map_err(|e| Error::InvalidOptions(format!("cannot tokenize the prompt text: {e}")))?;
    let ids: Vec<i64> = encoding.get_ids().iter().map(|&id| id as i64).collect();
    let shape = [1, manifest.text.tokens];
    let hidden = graph.run_ids("input_ids", ids, &shape, "last_hidden_state", timer)?;
    let hidden: Array3<f32> = hidden.into_dimensionality().map_err(|_| bad_rank("last_hidden_state"))?;
    Ok(hidden.index_axis_move(Axis(0), 0))
}

/// Refuses a scale that is not a positive finite number: an invalid option from every entry point, before any
/// size is computed with it.
pub(crate) fn check_scale(scale: f32) -> Result<()> {
    if scale.is_finite() && scale > 0.0 {
        Ok(())
    } else {
        Err(Error::InvalidOptions(format!("scale must be a positive number, got {scale}")))
    }
}

fn bad_rank(name: &str) -> Error {
    Error::BadOutput(format!("output `{name}` has an unexpected rank"))
}
