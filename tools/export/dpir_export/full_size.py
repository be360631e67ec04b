"""Randomly initialised models with the real SD3-medium / DPIR shapes, for measuring at scale.

    python -m dpir_export.full_size OUT_DIR [--seed N]

writes the same layouts as `dpir_export.tiny` (SD3 diffusers folder with transformer/ and vae/ configs, the DPIR
checkpoint `dpir/consolidated.00-of-01.pth`, `dr-vae/`, two CLIPModel folders) with the real sizes: the transformer
is SD3-medium's (24 joint blocks of width 1536, 2.03 B parameters) plus the LQ branch (8.3 M), the VAE has SD3's
channels (128-256-512-512, 16 latent channels, downscale 8), CLIP one is ViT-B/32-shaped. CLIP two is a smaller
stand-in for ViT-bigG/14: ViT-L/14-shaped (0.3 B parameters instead of 1.8 B) with bigG's 1280-wide projection, so
that the runtime, the converter's checks and a PyTorch reference fit one 24 GiB machine together. No T5: bundles
made from these use the all-zero text block. Weights are random: results are noise, timings and memory are real.
"""

from pathlib import Path

import torch

from .tiny import _write_json, run

TRANSFORMER = dict(sample_size=128, patch_size=2, in_channels=16, num_layers=24, attention_head_dim=64,
                   num_attention_heads=24, joint_attention_dim=4096, caption_projection_dim=1536,
                   pooled_projection_dim=2048, out_channels=16, pos_embed_max_size=192, dual_attention_layers=[],
                   qk_norm=None)
CONTROL_CHANNELS = (256, 512)

VAE = dict(in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 4,
           up_block_types=["UpDecoderBlock2D"] * 4, block_out_channels=[128, 256, 512, 512], layers_per_block=2,
           act_fn="silu", latent_channels=16, norm_num_groups=32, sample_size=1024, scaling_factor=1.5305,
           shift_factor=0.0609, use_quant_conv=False, use_post_quant_conv=False, mid_block_add_attention=True)

TEXT = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=2, vocab_size=64,
            max_position_embeddings=16, bos_token_id=0, eos_token_id=1, pad_token_id=1)
CLIP_B32 = dict(projection_dim=512, text_config=dict(TEXT, projection_dim=512),
                vision_config=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                                   num_attention_heads=12, image_size=224, patch_size=32, hidden_act="quick_gelu",
                                   projection_dim=512))
CLIP_GLOBAL = dict(projection_dim=1280, text_config=dict(TEXT, projection_dim=1280, hidden_act="gelu"),
                   vision_config=dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                                      num_attention_heads=16, image_size=224, patch_size=14, hidden_act="gelu",
                                      projection_dim=1280))


def make(out, seed=0):
    """Write every component under `out`; returns the conversion arguments (without --dtype / --out)."""
    from diffusers import AutoencoderKL
    from transformers import CLIPConfig, CLIPModel

    from .models import make_dpir_transformer_class

    out = Path(out)
    sd3 = out / "stable-diffusion-3-medium-diffusers"
    torch.manual_seed(seed)
    _write_json(sd3 / "model_index.json", {"_class_name": "StableDiffusion3Pipeline"})
    _write_json(sd3 / "scheduler" / "scheduler_config.json",
                {"_class_name": "FlowMatchEulerDiscreteScheduler", "num_train_timesteps": 1000, "shift": 3.0})
    # The converter reads only the base transformer's config; the DPIR checkpoint holds every weight.
    _write_json(sd3 / "transformer" / "config.json", {"_class_name": "SD3Transformer2DModel", **TRANSFORMER})
    AutoencoderKL(**VAE).save_pretrained(sd3 / "vae")
    AutoencoderKL(**VAE).save_pretrained(out / "dr-vae")
    dpir = make_dpir_transformer_class()(control_channels=CONTROL_CHANNELS, **TRANSFORMER)
    state = {f"module.{k}": v for k, v in dpir.state_dict().items() if k != "pos_embed.pos_embed"}
    (out / "dpir").mkdir(parents=True, exist_ok=True)
    torch.save(state, out / "dpir" / "consolidated.00-of-01.pth")
    del dpir, state
    for name, cfg in (("clip-vit-base-patch32", CLIP_B32), ("clip-global-standin", CLIP_GLOBAL)):
        CLIPModel(CLIPConfig(**cfg)).save_pretrained(out / name)
    return ["--sd3", str(sd3), "--dpir-transformer", str(out / "dpir" / "consolidated.00-of-01.pth"),
            "--vae-encoder", str(out / "dr-vae"), "--clip-b32", str(out / "clip-vit-base-patch32"),
            "--clip-bigg", str(out / "clip-global-standin"), "--name", "dpir-full-size-random",
            "--description", "random weights with the real SD3-medium / DPIR shapes (global CLIP: a ViT-L/14-shaped "
            "stand-in for bigG); for measuring memory and time only"]


def main(argv=None):
    run(make, "random models with the real shapes", argv)


if __name__ == "__main__":
    main()
