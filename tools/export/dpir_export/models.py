"""The PyTorch side: the DPIR transformer class, loaders for every component of the release, and the five graph
modules whose inputs and outputs are the bundle contract (shared/spec/bundle.md).

All loaders build the model on the meta device and assign the checkpoint's tensors (float32), so a 2-billion
parameter model costs its weights once, not twice.
"""

import inspect
from pathlib import Path

import torch
from torch import nn

from .weights import CheckpointError, load_strict, materialise, read_config, read_state_dict

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
MANIFEST_DTYPE = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


# ------------------------------------------------------------------------------------------ the DPIR transformer


def _sd3_class():
    from diffusers import SD3Transformer2DModel

    return SD3Transformer2DModel


def sd3_init_args():
    """Names of the constructor arguments of diffusers' SD3Transformer2DModel."""
    params = inspect.signature(_sd3_class().__init__).parameters
    return [name for name in params if name != "self"]


def make_dpir_transformer_class():
    SD3Transformer2DModel = _sd3_class()

    class DPIRTransformer(SD3Transformer2DModel):
        """SD3's MMDiT plus DPIR's LQ branch (`control_conv`) and its feature alignment after joint block 0.

        control_conv (spec section 3.1): three 3x3 convolutions on the scaled LQ latent, each followed by an affine
        GroupNorm (eps 1e-5) and no activation: C -> c1 (s1) + GN(g1), c1 -> c2 (s2) + GN(g2), c2 -> width (s1) +
        GN(g3). The real model has c1, c2 = 256, 512 and groups 4, 8, 8; an nn.Sequential, so the parameter names
        are those of the DPIR checkpoint (`control_conv.0.weight`, ..., `control_conv.5.bias`).

        eta (section 3.2): after block 0, h += ((c - mean(c)) / (std(c) + 1e-9) * std(h) + mean(h)) * scale, with
        scalar statistics per sample over tokens and channels together and the unbiased std; scale 1.
        """

        def __init__(self, control_channels=(256, 512), control_groups=(4, 8, 8), eta_scale=1.0, **sd3_config):
            super().__init__(**sd3_config)
            c1, c2 = control_channels
            g1, g2, g3 = control_groups
            cin = self.config.in_channels
            self.control_conv = nn.Sequential(
                nn.Conv2d(cin, c1, 3, 1, 1), nn.GroupNorm(g1, c1),
                nn.Conv2d(c1, c2, 3, 2, 1), nn.GroupNorm(g2, c2),
                nn.Conv2d(c2, self.inner_dim, 3, 1, 1), nn.GroupNorm(g3, self.inner_dim),
            )
            self.control_channels = (c1, c2)
            self.control_groups = (g1, g2, g3)
            self.eta_scale = float(eta_scale)

        def embed_patches(self, latent):
            """PatchEmbed with the centre-cropped position embedding. diffusers' own crop slices `[top:top+h]`,
            which the dynamo exporter turns into wrong shapes for odd patch counts; slicing in two steps is the
            same computation and exports correctly."""
            pe = self.pos_embed
            p = pe.patch_size
            h, w = latent.shape[-2] // p, latent.shape[-1] // p
            x = pe.proj(latent).flatten(2).transpose(1, 2)
            m = pe.pos_embed_max_size
            top, left = (m - h) // 2, (m - w) // 2
            grid = pe.pos_embed.reshape(1, m, m, -1)
            grid = grid[:, top:][:, :h]
            grid = grid[:, :, left:][:, :, :w]
            return (x + grid.reshape(1, h * w, -1)).to(x.dtype)

        def align(self, h, c):
            """eta: per-sample scalar statistics, computed in float32 whatever the model's dtype."""
            hf, cf = h.float(), c.float()
            mu_h = hf.mean(dim=(1, 2), keepdim=True)
            sd_h = hf.std(dim=(1, 2), keepdim=True)
            mu_c = cf.mean(dim=(1, 2), keepdim=True)
            sd_c = cf.std(dim=(1, 2), keepdim=True)
            return (hf + ((cf - mu_c) / (sd_c + 1e-9) * sd_h + mu_h) * self.eta_scale).to(h.dtype)

        def forward(self, hidden_states, timestep, lq_latent, encoder_hidden_states, pooled_projections):
            """velocity = transformer(z, sigma*1000, z_lq, context, pooled), all NCHW / (B, T, D)."""
            height, width = hidden_states.shape[-2:]
            x = self.embed_patches(hidden_states)
            temb = self.time_text_embed(timestep, pooled_projections)
            context = self.context_embedder(encoder_hidden_states)
            cond = self.control_conv(lq_latent).flatten(2).transpose(1, 2)
            for index, block in enumerate(self.transformer_blocks):
                context, x = block(hidden_states=x, encoder_hidden_states=context, temb=temb)
                if index == 0:
                    x = self.align(x, cond)
            x = self.proj_out(self.norm_out(x, temb))
            p = self.config.patch_size
            c = self.out_channels
            x = x.reshape(x.shape[0], height // p, width // p, p, p, c)
            x = x.permute(0, 5, 1, 3, 2, 4)
            return x.reshape(x.shape[0], c, height, width)

    return DPIRTransformer


def sincos_pos_embed(config):
    """The SD3 position-embedding buffer, regenerated from the config (diffusers' PatchEmbed construction)."""
    from diffusers.models.embeddings import get_2d_sincos_pos_embed

    width = config["num_attention_heads"] * config["attention_head_dim"]
    grid = get_2d_sincos_pos_embed(width, config["pos_embed_max_size"],
                                   base_size=config["sample_size"] // config["patch_size"],
                                   interpolation_scale=1, output_type="pt")
    return grid.float().unsqueeze(0)


def load_transformer(sd3_dir, dpir_path, log=print):
    """The DPIR transformer from `consolidated.00-of-01.pth` (keys prefixed `module.`) or a save_pretrained
    directory; the architecture comes from that directory's config.json, else from SD3's transformer/config.json.
    Widths of the LQ branch are read from the checkpoint's shapes. The position embedding is regenerated when the
    checkpoint lacks it."""
    dpir_path = Path(dpir_path)
    config_dir = dpir_path if dpir_path.is_dir() and (dpir_path / "config.json").is_file() else Path(sd3_dir) / "transformer"
    config = read_config(config_dir)
    sd3_config = {k: v for k, v in config.items() if k in sd3_init_args()}
    state = read_state_dict(dpir_path)
    log(f"  transformer: {len(state)} tensors from {dpir_path}, config {config_dir / 'config.json'}")
    c1 = state["control_conv.0.weight"].shape[0] if "control_conv.0.weight" in state else 256
    c2 = state["control_conv.2.weight"].shape[0] if "control_conv.2.weight" in state else 512
    cls = make_dpir_transformer_class()
    with torch.device("meta"):
        model = cls(control_channels=(c1, c2), **sd3_config)
    absent = load_strict(model, state, f"DPIR transformer ({dpir_path})", optional=("pos_embed.pos_embed",))
    full_config = dict(model.config)
    materialise(model, {"pos_embed.pos_embed": lambda: sincos_pos_embed(full_config)})
    if absent:
        model.pos_embed_source = {"pos_embed": "regenerated"}
        log("  transformer: pos_embed.pos_embed not in the checkpoint, regenerated from the config")
    else:
        # The official loader overwrites the buffer from a file the release does not ship (pos_embed.t5); keep the
        # checkpoint's, and say whether it is the sincos grid the architecture defines.
        difference = (model.pos_embed.pos_embed - sincos_pos_embed(full_config)).abs().max().item()
        model.pos_embed_source = {"pos_embed": "checkpoint", "pos_embed_vs_grid": difference}
        if difference > POS_EMBED_TOLERANCE:
            log(f"  transformer: warning: the checkpoint's pos_embed differs from the sincos grid by up to "
                f"{difference:.3g}; the bundle keeps the checkpoint's")
    return model.eval().requires_grad_(False)


# A saved position embedding that is the sincos grid, recomputed in float32 elsewhere, differs by rounding only.
POS_EMBED_TOLERANCE = 1e-5


# ---------------------------------------------------------------------------------------------------------- VAE


def _vae(config, meta=True):
    from diffusers import AutoencoderKL

    args = inspect.signature(AutoencoderKL.__init__).parameters
    kwargs = {k: v for k, v in config.items() if k in args and k != "self"}
    if meta:
        with torch.device("meta"):
            return AutoencoderKL(**kwargs)
    return AutoencoderKL(**kwargs)


def vae_config(sd3_dir):
    return read_config(Path(sd3_dir) / "vae")


def load_vae_decoder(sd3_dir, log=print):
    """SD3's VAE, whose decoder DPIR's training froze."""
    config = vae_config(sd3_dir)
    vae = _vae(config)
    state = read_state_dict(Path(sd3_dir) / "vae")
    log(f"  vae: {len(state)} tensors from {Path(sd3_dir) / 'vae'}")
    load_strict(vae, state, f"SD3 VAE ({Path(sd3_dir) / 'vae'})")
    return vae.eval().requires_grad_(False)


def load_vae_encoder(path, sd3_dir, log=print):
    """The degradation-robust VAE: a save_pretrained AutoencoderKL directory, or a checkpoint file holding an
    AutoencoderKL state dict, whole or encoder-only (`encoder.*`, `quant_conv.*`), with SD3's VAE config."""
    path = Path(path)
    config_dir = path if path.is_dir() and (path / "config.json").is_file() else Path(sd3_dir) / "vae"
    config = read_config(config_dir)
    vae = _vae(config)
    state = read_state_dict(path)
    log(f"  degradation-robust VAE: {len(state)} tensors from {path}")
    expected = vae.state_dict().keys()
    encoder_only = not any(k.startswith(("decoder.", "post_quant_conv.")) for k in state)
    optional = [k for k in expected if k.startswith(("decoder.", "post_quant_conv."))] if encoder_only else []
    load_strict(vae, state, f"degradation-robust VAE encoder ({path})", optional=optional)
    if encoder_only:
        vae.decoder = None
        vae.post_quant_conv = None
    return vae.eval().requires_grad_(False), config


# --------------------------------------------------------------------------------------------------------- CLIP


def load_clip(path, log=print):
    """A CLIP vision tower with projection from a transformers directory: a whole CLIPModel (as published for
    openai/clip-vit-base-patch32 and laion/CLIP-ViT-bigG-14-laion2B-39B-b160k; the text tower is skipped) or a
    CLIPVisionModelWithProjection (e.g. an `image_encoder` folder)."""
    from transformers import CLIPConfig, CLIPVisionConfig, CLIPVisionModelWithProjection

    path = Path(path)
    kind = read_config(path).get("model_type")
    if kind == "clip":
        whole = CLIPConfig.from_pretrained(str(path), local_files_only=True)
        cfg = whole.vision_config
        cfg.projection_dim = whole.projection_dim  # the vision config of a whole CLIPModel may omit it
        ignore = ("text_model.", "text_projection.", "logit_scale")
    elif kind == "clip_vision_model":
        cfg = CLIPVisionConfig.from_pretrained(str(path), local_files_only=True)
        ignore = ()
    else:
        raise CheckpointError(f"{path}: config.json model_type {kind!r}, expected 'clip' or 'clip_vision_model'")
    cfg._attn_implementation = "eager"
    with torch.device("meta"):
        model = CLIPVisionModelWithProjection(cfg)
    state = read_state_dict(path)
    log(f"  clip: {len(state)} tensors from {path} (hidden {cfg.hidden_size}, projection {cfg.projection_dim}, "
        f"image {cfg.image_size}, patch {cfg.patch_size})")
    load_strict(model, state, f"CLIP vision tower ({path})", ignore_prefixes=ignore,
                optional=("vision_model.embeddings.position_ids",))
    n = (cfg.image_size // cfg.patch_size) ** 2 + 1
    materialise(model, {"vision_model.embeddings.position_ids": lambda: torch.arange(n).expand((1, -1))})
    return model.eval().requires_grad_(False)


# ----------------------------------------------------------------------------------------------------------- T5


def load_t5_tokenizer(path):
    """The T5 tokenizer: in the T5 directory itself, or SD3's sibling `tokenizer_3`."""
    from transformers import AutoTokenizer

    path = Path(path)
    tok_dir = path if (path / "tokenizer_config.json").is_file() else path.parent / "tokenizer_3"
    if not (tok_dir / "tokenizer_config.json").is_file():
        raise CheckpointError(f"{path}: no tokenizer (looked in {path} and {tok_dir})")
    return AutoTokenizer.from_pretrained(str(tok_dir), local_files_only=True), tok_dir


def load_t5(path, log=print):
    """SD3's T5 encoder (`text_encoder_3`, float32) and its tokenizer."""
    from transformers import T5EncoderModel

    path = Path(path)
    tokenizer, tok_dir = load_t5_tokenizer(path)
    model = T5EncoderModel.from_pretrained(str(path), dtype=torch.float32, attn_implementation="eager",
                                           local_files_only=True)
    log(f"  t5: {path} (d_model {model.config.d_model}), tokenizer {tok_dir}")
    return model.eval().requires_grad_(False), tokenizer


def t5_embed(model, tokenizer, text, tokens):
    """(tokens, d_model) float32: SD3's T5 prompt embedding (max-length padding, truncation, no attention mask)."""
    ids = tokenizer(text, padding="max_length", max_length=tokens, truncation=True, add_special_tokens=True,
                    return_tensors="pt").input_ids
    with torch.no_grad():
        return model(ids)[0][0].float()


# ----------------------------------------------------------------------------------------------- graph modules


class GraphModule(nn.Module):
    """Base of the five bundle graphs: inputs arrive in `io_dtype` (those named in `float32_inputs` in float32
    whatever the dtype), are computed in the modules' own dtype, and the outputs leave in `io_dtype`."""

    io_dtype = torch.float32
    float32_inputs = ()

    def compute_dtype(self):
        return next(self.parameters()).dtype

    def inp(self, x):
        return x.to(self.compute_dtype())

    def out(self, x):
        return x.to(self.io_dtype)


class VaeEncoderGraph(GraphModule):
    """image (B,3,H,W) in [-1,1] -> mean, logvar (B,C,H/d,W/d); logvar clamped to [-30, 20] as diffusers does."""

    input_names = ["image"]
    output_names = ["mean", "logvar"]

    def __init__(self, vae):
        super().__init__()
        self.encoder = vae.encoder
        self.quant_conv = vae.quant_conv

    def forward(self, image):
        moments = self.encoder(self.inp(image))
        if self.quant_conv is not None:
            moments = self.quant_conv(moments)
        mean, logvar = torch.chunk(moments, 2, dim=1)
        return self.out(mean), self.out(torch.clamp(logvar, -30.0, 20.0))


class VaeDecoderGraph(GraphModule):
    """latent (B,C,h,w), already un-scaled -> image (B,3,h*d,w*d) in about [-1,1]."""

    input_names = ["latent"]
    output_names = ["image"]

    def __init__(self, vae):
        super().__init__()
        self.decoder = vae.decoder
        self.post_quant_conv = vae.post_quant_conv

    def forward(self, latent):
        z = self.inp(latent)
        if self.post_quant_conv is not None:
            z = self.post_quant_conv(z)
        return self.out(self.decoder(z))


class ClipLocalGraph(GraphModule):
    """pixel_values (N,3,S,S) -> last_hidden_state (N,T,D), before the post-layernorm (token 0 is CLS)."""

    input_names = ["pixel_values"]
    output_names = ["last_hidden_state"]

    def __init__(self, clip):
        super().__init__()
        self.clip = clip

    def forward(self, pixel_values):
        return self.out(self.clip.vision_model(pixel_values=self.inp(pixel_values)).last_hidden_state)


class ClipGlobalGraph(GraphModule):
    """pixel_values (N,3,S,S) -> image_embeds (N,Dg)."""

    input_names = ["pixel_values"]
    output_names = ["image_embeds"]

    def __init__(self, clip):
        super().__init__()
        self.clip = clip

    def forward(self, pixel_values):
        return self.out(self.clip(pixel_values=self.inp(pixel_values)).image_embeds)


class TransformerGraph(GraphModule):
    """hidden_states, timestep (sigma*1000), lq_latent (scaled), encoder_hidden_states, pooled_projections ->
    velocity. The timestep is float32 in every dtype, as in the official pipeline: diffusers computes the sinusoid
    from it in float32 and casts the projection to the model's dtype afterwards, so sigma*1000 is not rounded to
    float16 (steps of 0.5) or bfloat16 (steps of 4)."""

    input_names = ["hidden_states", "timestep", "lq_latent", "encoder_hidden_states", "pooled_projections"]
    output_names = ["velocity"]
    float32_inputs = ("timestep",)

    def __init__(self, transformer):
        super().__init__()
        self.transformer = transformer

    def forward(self, hidden_states, timestep, lq_latent, encoder_hidden_states, pooled_projections):
        v = self.transformer(self.inp(hidden_states), timestep.float(), self.inp(lq_latent),
                             self.inp(encoder_hidden_states), self.inp(pooled_projections))
        return self.out(v)


class T5Graph(GraphModule):
    """input_ids int64 (B, Tt) -> last_hidden_state (B, Tt, Dt): SD3's T5 text block (no attention mask)."""

    input_names = ["input_ids"]
    output_names = ["last_hidden_state"]

    def __init__(self, t5):
        super().__init__()
        self.t5 = t5

    def forward(self, input_ids):
        return self.out(self.t5(input_ids=input_ids).last_hidden_state)
