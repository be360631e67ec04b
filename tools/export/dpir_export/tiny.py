"""Tiny, randomly initialised models of the real classes, saved in the layouts of the real release.

    python -m dpir_export.tiny OUT_DIR [--seed N]

writes

    OUT_DIR/stable-diffusion-3-medium-diffusers/   model_index.json, scheduler/, transformer/, vae/,
                                                  text_encoder_3/ (T5EncoderModel), tokenizer_3/
    OUT_DIR/dpir/consolidated.00-of-01.pth         the DPIR transformer, keys prefixed `module.`, no pos-embed
    OUT_DIR/dr-vae/                                the degradation-robust VAE (AutoencoderKL, 16 latent channels)
    OUT_DIR/clip-vit-base-patch32/                 a whole CLIPModel (the converter takes its vision tower)
    OUT_DIR/CLIP-ViT-bigG-14-laion2B-39B-b160k/    likewise

and prints the conversion command (also written to OUT_DIR/convert.json, without --dtype and --out). The classes are exactly those of the real models (diffusers'
SD3Transformer2DModel with our LQ branch, AutoencoderKL, transformers' CLIPModel and T5EncoderModel); only the sizes
differ: 3 joint blocks of width 32, a 4-level VAE of downscale 8, 32 px CLIP towers, a 2-layer T5 of width 32.
The widths are chosen so that every padding of the context assembly is exercised: pooled 24 + 20 = 44 < context
width 48, text width 32 < 48.
"""

import argparse
import json
from pathlib import Path

import torch

TRANSFORMER = dict(sample_size=32, patch_size=2, in_channels=16, num_layers=3, attention_head_dim=8,
                   num_attention_heads=4, joint_attention_dim=48, caption_projection_dim=32,
                   pooled_projection_dim=44, out_channels=16, pos_embed_max_size=32, dual_attention_layers=[],
                   qk_norm=None)
CONTROL_CHANNELS = (16, 32)

VAE = dict(in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 4,
           up_block_types=["UpDecoderBlock2D"] * 4, block_out_channels=[8, 16, 16, 16], layers_per_block=1,
           act_fn="silu", latent_channels=16, norm_num_groups=4, sample_size=64, scaling_factor=1.5305,
           shift_factor=0.0609, use_quant_conv=False, use_post_quant_conv=False, mid_block_add_attention=True)

CLIP_B32 = dict(projection_dim=16,
                vision_config=dict(hidden_size=24, intermediate_size=48, num_hidden_layers=2, num_attention_heads=2,
                                   image_size=32, patch_size=8, hidden_act="quick_gelu", projection_dim=16),
                text_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                                 vocab_size=64, max_position_embeddings=16, projection_dim=16,
                                 bos_token_id=0, eos_token_id=1, pad_token_id=1))
CLIP_BIGG = dict(projection_dim=20,
                 vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                                    image_size=32, patch_size=4, hidden_act="gelu", projection_dim=20),
                 text_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                                  vocab_size=64, max_position_embeddings=16, projection_dim=20, hidden_act="gelu",
                                  bos_token_id=0, eos_token_id=1, pad_token_id=1))

T5 = dict(vocab_size=64, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4, relative_attention_num_buckets=8,
          relative_attention_max_distance=16, feed_forward_proj="gated-gelu", dense_act_fn="gelu_new",
          is_gated_act=True, tie_word_embeddings=False, dropout_rate=0.0, layer_norm_epsilon=1e-6)

WORDS = ["a", "photo", "high", "quality", "sharp", "detailed", "clean", "image", "of", "the", "landscape", "with",
         "trees", "sky", "face", "portrait", "city", "night", "film", "grain"]

# Options of the conversion command that size the bundle for these models (the real ones use the defaults).
CONVERT_OPTIONS = ["--clip-tokens", "20", "--text-tokens", "16", "--global-tile", "48", "--global-overlap", "8",
                   "--name", "dpir-tiny", "--prompt", "quality=a high quality sharp photo"]


def _write_json(path, data):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")


def _tokenizer(directory):
    """A small T5-style Unigram tokenizer (SentencePiece-like: Metaspace, `</s>` appended, `<pad>` = 0)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    specials = ["<pad>", "</s>", "<unk>"]
    pieces = [(s, 0.0) for s in specials] + [("\u2581" + w, -2.0 - i * 0.1) for i, w in enumerate(WORDS)]
    pieces += [(c, -8.0) for c in "abcdefghijklmnopqrstuvwxyz"] + [("\u2581", -5.0)]
    tok = Tokenizer(models.Unigram(pieces, unk_id=2))
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="always")
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", pair="$A </s> $B </s>",
                                                       special_tokens=[("</s>", 1)])
    directory.mkdir(parents=True, exist_ok=True)
    tok.save(str(directory / "tokenizer.json"))
    _write_json(directory / "tokenizer_config.json",
                {"tokenizer_class": "T5Tokenizer", "model_max_length": 512, "pad_token": "<pad>",
                 "eos_token": "</s>", "unk_token": "<unk>", "extra_ids": 0, "additional_special_tokens": []})
    _write_json(directory / "special_tokens_map.json", {"pad_token": "<pad>", "eos_token": "</s>", "unk_token": "<unk>"})
    assert len(pieces) <= T5["vocab_size"], len(pieces)


def make(out, seed=0):
    """Write every tiny component under `out`; returns the conversion arguments (without --dtype / --out)."""
    from diffusers import AutoencoderKL, SD3Transformer2DModel
    from transformers import CLIPConfig, CLIPModel, T5Config, T5EncoderModel

    from .models import make_dpir_transformer_class

    out = Path(out)
    sd3 = out / "stable-diffusion-3-medium-diffusers"
    torch.manual_seed(seed)

    _write_json(sd3 / "model_index.json", {
        "_class_name": "StableDiffusion3Pipeline", "_diffusers_version": "0.29.0.dev0",
        "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
        "transformer": ["diffusers", "SD3Transformer2DModel"], "vae": ["diffusers", "AutoencoderKL"],
        "text_encoder_3": ["transformers", "T5EncoderModel"], "tokenizer_3": ["transformers", "T5TokenizerFast"]})
    _write_json(sd3 / "scheduler" / "scheduler_config.json",
                {"_class_name": "FlowMatchEulerDiscreteScheduler", "_diffusers_version": "0.29.0.dev0",
                 "num_train_timesteps": 1000, "shift": 3.0})

    # SD3 base transformer (DPIR fine-tunes all of it; the converter reads only its config).
    SD3Transformer2DModel(**TRANSFORMER).save_pretrained(sd3 / "transformer")

    # The VAE of SD3 (its decoder is used) and the degradation-robust VAE (its encoder is used).
    AutoencoderKL(**VAE).save_pretrained(sd3 / "vae")
    AutoencoderKL(**VAE).save_pretrained(out / "dr-vae")

    # The DPIR transformer: SD3 + control_conv, saved like the official training script (DDP-wrapped state dict).
    dpir = make_dpir_transformer_class()(control_channels=CONTROL_CHANNELS, **TRANSFORMER)
    with torch.no_grad():  # give the GroupNorm affines and biases non-trivial values
        for module in dpir.control_conv:
            module.weight.normal_(1.0 if isinstance(module, torch.nn.GroupNorm) else 0.0,
                                  0.2 if isinstance(module, torch.nn.GroupNorm) else 0.1)
            module.bias.normal_(0.0, 0.1)
    state = {f"module.{k}": v for k, v in dpir.state_dict().items() if k != "pos_embed.pos_embed"}
    (out / "dpir").mkdir(parents=True, exist_ok=True)
    torch.save(state, out / "dpir" / "consolidated.00-of-01.pth")

    # CLIP: whole CLIPModels, as published.
    for name, cfg in (("clip-vit-base-patch32", CLIP_B32), ("CLIP-ViT-bigG-14-laion2B-39B-b160k", CLIP_BIGG)):
        CLIPModel(CLIPConfig(**cfg)).save_pretrained(out / name)

    # T5 encoder and tokenizer.
    T5EncoderModel(T5Config(**T5)).save_pretrained(sd3 / "text_encoder_3")
    _tokenizer(sd3 / "tokenizer_3")

    return ["--sd3", str(sd3), "--dpir-transformer", str(out / "dpir" / "consolidated.00-of-01.pth"),
            "--vae-encoder", str(out / "dr-vae"), "--clip-b32", str(out / "clip-vit-base-patch32"),
            "--clip-bigg", str(out / "CLIP-ViT-bigG-14-laion2B-39B-b160k"),
            "--t5", str(sd3 / "text_encoder_3")] + CONVERT_OPTIONS


def run(make_models, what, argv=None):
    """The command line of a model maker: `OUT_DIR [--seed N]`, then the conversion command to run."""
    ap = argparse.ArgumentParser(description=f"Write {what} of the real DPIR classes.")
    ap.add_argument("out")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    from .worker import quiet

    quiet()
    command = make_models(args.out, args.seed)
    # The conversion arguments, for scripts that convert whichever models a folder holds (tools/bench).
    _write_json(Path(args.out) / "convert.json", command)
    print(f"wrote {what} to", args.out)
    print("convert with: python -m dpir_export " + " ".join(repr(a) if " " in a else a for a in command)
          + " --dtype fp32 --out BUNDLE")


def main(argv=None):
    run(make, "tiny random models", argv)


if __name__ == "__main__":
    main()
