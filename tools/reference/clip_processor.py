#!/usr/bin/env python3
"""The official CLIP preprocessing, for tests: what transformers' CLIPImageProcessor (the 4.x, Pillow-based class
the official code ran, with its defaults: shortest side to SIZE with bicubic, centre crop, 1/255, OpenAI mean and
std) makes of 8-bit RGB images.

    clip_processor.py --size S --mean M M M --std S S S IMAGE.npy ...

Each IMAGE.npy is an (H, W, 3) uint8 array; its (3, S, S) float32 result is written beside it as IMAGE.clip.npy.
"""

import argparse
from pathlib import Path

import numpy as np
import transformers
from PIL import Image
from transformers import CLIPImageProcessor


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--mean", type=float, nargs=3, default=[0.48145466, 0.4578275, 0.40821073])
    ap.add_argument("--std", type=float, nargs=3, default=[0.26862954, 0.26130258, 0.27577711])
    ap.add_argument("images", nargs="+", type=Path)
    args = ap.parse_args()
    assert transformers.__version__.startswith("4."), f"compare with transformers 4.x, not {transformers.__version__}"
    processor = CLIPImageProcessor(size={"shortest_edge": args.size},
                                   crop_size={"height": args.size, "width": args.size},
                                   image_mean=args.mean, image_std=args.std)
    for path in args.images:
        image = Image.fromarray(np.load(path), "RGB")
        pixels = processor(images=image, return_tensors="np")["pixel_values"][0]
        np.save(path.with_suffix(".clip.npy"), pixels.astype(np.float32))


if __name__ == "__main__":
    main()
