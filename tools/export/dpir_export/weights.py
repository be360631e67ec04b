"""Reading checkpoints in the layouts the real release uses, and loading them strictly.

A component is given as a directory (diffusers / transformers `save_pretrained` layout: `config.json` plus
`*.safetensors`, sharded with an `*.index.json`, or `pytorch_model.bin`) or as a single checkpoint file
(`.safetensors`, `.pth`, `.pt`, `.bin`). Nothing is ever fetched from a model hub: every path is local.
"""

import json
from pathlib import Path

import torch

# Weight files tried in a directory, in order. An index file names the shards of a sharded checkpoint.
WEIGHT_FILES = (
    "diffusion_pytorch_model.safetensors.index.json",
    "diffusion_pytorch_model.safetensors",
    "model.safetensors.index.json",
    "model.safetensors",
    "diffusion_pytorch_model.bin",
    "pytorch_model.bin.index.json",
    "pytorch_model.bin",
    "consolidated.00-of-01.pth",
)


class CheckpointError(Exception):
    """A checkpoint that cannot be used: missing files, or keys and shapes that do not match the model."""


def read_config(directory):
    path = Path(directory) / "config.json"
    if not path.is_file():
        raise CheckpointError(f"{directory}: no config.json (expected a save_pretrained directory)")
    return json.loads(path.read_text())


def weight_file(directory):
    """The first known weight file of a save_pretrained directory."""
    directory = Path(directory)
    for name in WEIGHT_FILES:
        if (directory / name).is_file():
            return directory / name
    raise CheckpointError(f"{directory}: no weight file (looked for {', '.join(WEIGHT_FILES)})")


def _load_file(path):
    path = Path(path)
    if path.name.endswith(".index.json"):
        shards = sorted(set(json.loads(path.read_text())["weight_map"].values()))
        state = {}
        for shard in shards:
            state.update(_load_file(path.parent / shard))
        return state
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    state = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
    # Training scripts often wrap the weights: {"state_dict": {...}}, {"model": {...}}, {"module": {...}}.
    for key in ("state_dict", "model", "module"):
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: not a state dict ({type(state).__name__})")
    return state


def read_state_dict(path):
    """All tensors of a checkpoint file or save_pretrained directory, with a leading `module.` stripped."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such file or directory")
    file = weight_file(path) if path.is_dir() else path
    state = _load_file(file)
    out = {}
    for key, value in state.items():
        if not torch.is_tensor(value):
            continue
        out[key[len("module."):] if key.startswith("module.") else key] = value
    return out


def load_strict(model, state, what, optional=(), ignore_prefixes=(), dtype=torch.float32):
    """Put `state` into `model` (built on the meta device or not), refusing any missing or unexpected key and any
    shape mismatch. Floating tensors are converted to `dtype`.

    optional: keys the model may lack in the checkpoint (e.g. a buffer the caller regenerates from the config);
    they are returned when absent. ignore_prefixes: checkpoint keys that belong to another model (e.g. a CLIP text
    tower) and are skipped. Raises CheckpointError listing every problem."""
    expected = model.state_dict(keep_vars=True)
    state = {k: v for k, v in state.items() if not any(k.startswith(p) for p in ignore_prefixes)}
    missing = [k for k in expected if k not in state and k not in optional]
    unexpected = [k for k in state if k not in expected]
    shapes = [f"{k}: checkpoint {tuple(state[k].shape)}, model {tuple(expected[k].shape)}"
              for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
    if missing or unexpected or shapes:
        lines = [f"{what}: the checkpoint does not match the model"]
        for title, items in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", shapes)):
            if items:
                lines.append(f"  {title} ({len(items)}):")
                lines.extend(f"    {item}" for item in items[:50])
                if len(items) > 50:
                    lines.append(f"    ... and {len(items) - 50} more")
        raise CheckpointError("\n".join(lines))
    kept = {}
    for k in expected:
        if k in state:
            v = state[k]
            kept[k] = v.to(dtype) if v.is_floating_point() else v
    model.load_state_dict(kept, strict=False, assign=True)
    return [k for k in optional if k not in state]


def materialise(model, regenerate):
    """Replace what is still on the meta device after loading: `regenerate` maps a parameter or buffer name to a
    function returning its value. Anything else left on the meta device is an error."""
    left = []
    for name, tensor in list(model.named_parameters()) + list(model.named_buffers()):
        if tensor.device.type != "meta":
            continue
        if name not in regenerate:
            left.append(name)
            continue
        module_name, _, attr = name.rpartition(".")
        module = model.get_submodule(module_name) if module_name else model
        value = regenerate[name]()
        if isinstance(getattr(module, attr), torch.nn.Parameter):
            setattr(module, attr, torch.nn.Parameter(value, requires_grad=False))
        else:
            persistent = attr not in module._non_persistent_buffers_set
            module.register_buffer(attr, value, persistent=persistent)
    if left:
        raise CheckpointError(f"{type(model).__name__}: no value for {', '.join(left)}")
