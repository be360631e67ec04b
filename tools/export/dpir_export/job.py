"""What a conversion is: the user's paths and options, and the bundle numbers read from the configs (JSON only).

The job is written to a JSON file and handed to every worker process (one per step: PyTorch does not give back
the memory of an exported 2-billion-parameter model, so each heavy step runs in its own process).
"""

import json
from pathlib import Path

CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]

GRAPHS = ("vae_encoder", "vae_decoder", "clip_local", "clip_global", "transformer")


class JobError(Exception):
    """Inconsistent inputs, found before any model is loaded."""


def _config(path, what):
    path = Path(path)
    if not path.is_file():
        raise JobError(f"{what}: {path} not found")
    return json.loads(path.read_text())


def transformer_config_path(args):
    dpir = Path(args["dpir_transformer"])
    if dpir.is_dir() and (dpir / "config.json").is_file():
        return dpir / "config.json"
    return Path(args["sd3"]) / "transformer" / "config.json"


def clip_vision_numbers(path, what):
    """(image_size, patch_size, hidden_size, projection_dim) of a CLIPModel or CLIPVisionModelWithProjection dir."""
    cfg = _config(Path(path) / "config.json", what)
    if cfg.get("model_type") == "clip":
        vision = cfg["vision_config"]
        projection = cfg.get("projection_dim", vision.get("projection_dim", 512))
    else:
        vision = cfg
        projection = cfg.get("projection_dim", 512)
    return vision.get("image_size", 224), vision.get("patch_size", 32), vision.get("hidden_size", 768), projection


def plan(args):
    """The bundle numbers and consistency checks, from the configs alone. `args` is a dict of CLI options."""
    sd3 = Path(args["sd3"])
    tcfg = _config(transformer_config_path(args), "transformer config")
    vcfg = _config(sd3 / "vae" / "config.json", "SD3 VAE config")
    scfg = _config(sd3 / "scheduler" / "scheduler_config.json", "SD3 scheduler config")
    enc = Path(args["vae_encoder"])
    ecfg = _config(enc / "config.json", "degradation-robust VAE config") if enc.is_dir() else vcfg

    channels = vcfg["latent_channels"]
    downscale = 2 ** (len(vcfg["block_out_channels"]) - 1)
    problems = []
    if ecfg["latent_channels"] != channels:
        problems.append(f"the degradation-robust VAE has {ecfg['latent_channels']} latent channels, SD3's VAE {channels}")
    if 2 ** (len(ecfg["block_out_channels"]) - 1) != downscale:
        problems.append("the degradation-robust VAE and SD3's VAE have different downscale factors")
    if tcfg["in_channels"] != channels or (tcfg.get("out_channels") or tcfg["in_channels"]) != channels:
        problems.append(f"the transformer takes {tcfg['in_channels']} channels, the VAE has {channels}")

    size_l, patch_l, hidden_l, _ = clip_vision_numbers(args["clip_b32"], "CLIP B/32 config")
    size_g, patch_g, hidden_g, proj_g = clip_vision_numbers(args["clip_bigg"], "CLIP bigG config")
    if size_l != size_g:
        problems.append(f"the CLIP towers take different image sizes ({size_l} and {size_g})")
    pooled = tcfg["pooled_projection_dim"]
    if hidden_l + proj_g != pooled:
        problems.append(f"CLIP local width {hidden_l} + global width {proj_g} != the transformer's "
                        f"pooled_projection_dim {pooled}")
    context_width = tcfg["joint_attention_dim"]
    if pooled > context_width:
        problems.append(f"pooled width {pooled} exceeds the context width {context_width}")

    t5_dir = args.get("t5")
    if (args.get("prompt") or args.get("export_t5")) and not t5_dir:
        default_t5 = sd3 / "text_encoder_3"
        if (default_t5 / "config.json").is_file():
            t5_dir = str(default_t5)
        else:
            problems.append("--prompt and --export-t5 need a T5 encoder: pass --t5 DIR (SD3's text_encoder_3)")
    text_width = _config(Path(t5_dir) / "config.json", "T5 config")["d_model"] if t5_dir else context_width
    if text_width > context_width:
        problems.append(f"T5 width {text_width} exceeds the context width {context_width}")

    prompts = {}
    for i, item in enumerate(args.get("prompt") or []):
        name, sep, text = item.partition("=")
        if not sep or not name.replace("_", "").replace("-", "").isalnum():
            name, text = f"prompt{i + 1}", item
        if name == "zeros" or name in prompts:
            problems.append(f"prompt name {name!r} is reserved or used twice")
        prompts[name] = text
    default_prompt = args.get("default_prompt") or "zeros"
    if default_prompt != "zeros" and default_prompt not in prompts:
        problems.append(f"--default-prompt {default_prompt!r} is neither 'zeros' nor a --prompt name")
    if problems:
        raise JobError("the inputs do not fit together:\n  " + "\n  ".join(problems))

    local_tokens = (size_l // patch_l) ** 2 + 1
    # What the runtime's memory estimate needs: the widths that size the activations (the larger CLIP tower's).
    towers = [(local_tokens, hidden_l), ((size_g // patch_g) ** 2 + 1, hidden_g)]
    clip_tokens, clip_width = max(towers, key=lambda t: t[0] * t[1])
    vae_channels = vcfg["block_out_channels"]
    architecture = {"transformer_heads": tcfg["num_attention_heads"],
                    "transformer_width": tcfg["num_attention_heads"] * tcfg["attention_head_dim"],
                    "vae_width": vae_channels[1] if len(vae_channels) > 1 else vae_channels[0],
                    "vae_attention": vcfg.get("mid_block_add_attention", True),
                    "clip_crop_tokens": clip_tokens, "clip_width": clip_width}
    return {
        "t5": t5_dir,
        "prompts": prompts,
        "manifest": {
            "format": "dpir-bundle",
            "format_version": 1,
            "name": args.get("name") or "dpir-sd3-medium",
            "description": "",
            "dtype": {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}[args["dtype"]],
            "latent": {"channels": channels, "downscale": downscale,
                       "scaling_factor": vcfg.get("scaling_factor", 1.0),
                       "shift_factor": vcfg.get("shift_factor") or 0.0},
            "transformer": {"patch_size": tcfg["patch_size"], "max_patches": tcfg["pos_embed_max_size"],
                            "context_width": context_width, "pooled_width": pooled},
            "clip": {"image_size": size_l, "resize": "bicubic", "mean": CLIP_MEAN, "std": CLIP_STD,
                     "local_tokens": local_tokens, "local_width": hidden_l, "global_width": proj_g,
                     "clip_tokens": args["clip_tokens"], "global_tile": args["global_tile"],
                     "global_overlap": args["global_overlap"], "input": args["clip_input"]},
            "text": {"tokens": args["text_tokens"], "width": text_width, "default": default_prompt,
                     "prompts": {name: f"prompts/{name}.npy" for name in prompts}},
            "scheduler": {"type": "flow_match_euler", "shift": float(scfg.get("shift", 3.0)),
                          "train_timesteps": int(scfg.get("num_train_timesteps", 1000)), "steps": args["steps"]},
            "defaults": {"guidance": args["guidance"], "seed": args["seed"], "color_fix": "wavelet",
                         "latent_tile": args["latent_tile"], "latent_overlap": args["latent_overlap"]},
            "architecture": architecture,
        },
    }


def save(job, path):
    Path(path).write_text(json.dumps(job, indent=2))


def load(path):
    return json.loads(Path(path).read_text())
