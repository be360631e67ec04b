"""Which files a batch restores: every image of a folder, or the frames of a numbered sequence, as `dpir restore`
takes them (see the project's README, "Folders and frame sequences")."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import List, Optional, Tuple

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
_PATTERN = re.compile(r"%(0\d{1,2})?d")


def files(
    input: os.PathLike | str, output: os.PathLike | str, frames: Optional[Tuple[int, int]] = None
) -> List[Tuple[Path, Path]]:
    """The (input, output) pairs of a batch: for a sequence (`input` and `output` hold a frame number pattern,
    `%d` or `%04d`), each frame of `frames` (first, last, inclusive); for a folder, each image in it (by name)
    into the folder `output` under the same name."""
    input, output = str(input), str(output)
    if _PATTERN.search(input):
        if not _PATTERN.search(output):
            raise ValueError(f"{input} is a frame sequence: the output needs a frame number pattern too")
        if frames is None:
            raise ValueError("a frame sequence needs frames=(first, last)")
        first, last = frames
        return [(Path(_number(input, n)), Path(_number(output, n))) for n in range(first, last + 1)]
    folder = Path(input)
    if not folder.is_dir():
        raise ValueError(f"{input} is neither a folder nor a frame sequence")
    names = sorted(p.name for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    return [(folder / name, Path(output) / name) for name in names]


def _number(pattern: str, frame: int) -> str:
    return _PATTERN.sub(lambda m: f"{frame:{m.group(1) or ''}d}", pattern, count=1)
