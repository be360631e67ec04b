import os
from pathlib import Path
from typing import Callable, Literal, Optional, Tuple, TypeVar, Union, overload

import numpy as np
import numpy.typing as npt

__version__: str

Pixels = TypeVar("Pixels", bound=np.ndarray)

class Error(Exception):
    """A failed load or restore. `kind`: "onnxruntime", "execution_provider", "bundle", "inference",
    "invalid_image", "invalid_options", "too_large", "out_of_memory", "io", "bad_output" or "cancelled"."""

    kind: str

class Progress:
    """One progress report of a restore."""

    stage: Literal["encode", "prompt", "sample", "decode", "other"]
    step: int
    steps: int
    tile: int
    tiles: int
    fraction: float

class CancelToken:
    """Cancels the restores it is passed to, from any thread, before their next model call."""

    def __init__(self) -> None: ...
    def cancel(self) -> None: ...
    def is_cancelled(self) -> bool: ...

ProgressCallback = Callable[[Progress], Optional[bool]]

def onnxruntime_library() -> Optional[Path]: ...
def paper_size(width: int, height: int) -> Tuple[int, int]: ...
def default_model() -> Optional[Path]: ...

class Restorer:
    manifest: dict
    def __init__(
        self,
        model: Union[os.PathLike, str, None] = None,
        *,
        provider: str = "cpu",
        threads: int = 0,
        onnxruntime: Union[os.PathLike, str, None] = None,
        gpu_memory_limit: Optional[int] = None,
        max_memory: Optional[int] = None,
    ) -> None: ...
    @property
    def defaults(self) -> dict: ...
    @property
    def bundle(self) -> Path: ...
    @property
    def provider(self) -> str: ...
    @property
    def onnxruntime(self) -> Path: ...
    @property
    def has_text_encoder(self) -> bool: ...
    def output_size(self, width: int, height: int, scale: float = 1.0) -> Tuple[int, int]: ...
    def requirements(
        self,
        width: int,
        height: int,
        *,
        scale: Optional[float] = None,
        paper_size: bool = False,
        steps: Optional[int] = None,
        guidance: Optional[float] = None,
        tile_mode: Optional[Literal["independent", "joint"]] = None,
        tile_size: Optional[int] = None,
        tile_overlap: Optional[int] = None,
        tile_batch: Optional[int] = None,
        context_margin: Optional[int] = None,
    ) -> dict: ...
    @overload
    def restore(
        self,
        image: Pixels,
        *,
        progress: Optional[ProgressCallback] = None,
        cancel: Optional[CancelToken] = None,
        scale: Optional[float] = None,
        paper_size: bool = False,
        steps: Optional[int] = None,
        seed: Optional[int] = None,
        guidance: Optional[float] = None,
        prompt: Optional[str] = None,
        prompt_text: Optional[str] = None,
        clip_input: Optional[Literal["lq", "initial-restoration"]] = None,
        color_fix: Optional[Literal["wavelet", "none"]] = None,
        sample_posterior: bool = False,
        tile_mode: Optional[Literal["independent", "joint"]] = None,
        tile_size: Optional[int] = None,
        tile_overlap: Optional[int] = None,
        tile_batch: Optional[int] = None,
        context_margin: Optional[int] = None,
    ) -> Pixels: ...
    @overload
    def restore(self, image: object, **options: object) -> object: ...
    def restore_file(
        self,
        input: Union[os.PathLike, str],
        output: Union[os.PathLike, str],
        *,
        progress: Optional[ProgressCallback] = None,
        cancel: Optional[CancelToken] = None,
        **options: object,
    ) -> Tuple[int, int]: ...
    def restore_region(
        self,
        image: npt.NDArray,
        rect: Tuple[int, int, int, int],
        *,
        origin: Tuple[int, int] = (0, 0),
        frame: Optional[Tuple[int, int]] = None,
        context: Optional[npt.NDArray] = None,
        progress: Optional[ProgressCallback] = None,
        cancel: Optional[CancelToken] = None,
        **options: object,
    ) -> npt.NDArray: ...
