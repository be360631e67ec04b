"""DPIR diffusion image restoration on ONNX Runtime: NumPy arrays (or Pillow images) in, new arrays out.

    import dpir, numpy as np
    restorer = dpir.Restorer("~/models/dpir", provider="cuda")
    restored = restorer.restore(np.asarray(picture), steps=28, scale=2)

Restores release the GIL (threads may share one restorer), report progress to a callable, and stop on Ctrl-C
(raising KeyboardInterrupt) or a `CancelToken`. Failures raise `dpir.Error`, whose `kind` names the class.
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path
from typing import Any, Callable, Optional, Tuple

import numpy as np

from . import _dpir
from ._dpir import Error, Progress, paper_size

__all__ = ["Restorer", "CancelToken", "Error", "Progress", "paper_size", "onnxruntime_library", "default_model",
           "__version__"]
__version__ = _dpir.__version__

# Cancels the restores it is passed to, from any thread, before their next model call.
CancelToken = _dpir.CancelFlag


def onnxruntime_library() -> Optional[Path]:
    """The ONNX Runtime C library of an installed `onnxruntime-gpu` or `onnxruntime` package, found without
    importing it; None when neither is installed (dpir then looks where it always does, see its README)."""
    for package in ("onnxruntime",):  # onnxruntime-gpu installs the same import name
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            continue
        for folder in spec.submodule_search_locations:
            for name in _dpir.ONNXRUNTIME_LIBRARY_NAMES:  # and a Linux wheel's versioned name, libonnxruntime.so.1.x
                found = sorted((Path(folder) / "capi").glob(name + "*"))
                if found:
                    return found[0]
    return None


def default_model() -> Optional[Path]:
    """The model bundle dpir uses without one named: $DPIR_MODEL, else the per-user folder when it exists,
    $XDG_DATA_HOME/dpir/model (by default ~/.local/share/dpir/model), on Windows %LOCALAPPDATA%\\dpir\\model."""
    folder = _dpir.default_model()
    return None if folder is None else Path(folder).expanduser()


class Restorer:
    """A loaded model bundle.

    model: the bundle's folder (default: `default_model()`).
    provider: "cpu", "cuda", "cuda:N", "tensorrt", "tensorrt:N" or "auto" (the first that works).
    threads: ONNX Runtime threads per graph, 0 for one per core.
    onnxruntime: the ONNX Runtime library to load. Default: $DPIR_ORT_LIB or $ORT_DYLIB_PATH when set, else the
        library of an installed `onnxruntime` / `onnxruntime-gpu` package, else dpir's usual lookup.
    gpu_memory_limit: on CUDA and TensorRT, the most bytes each graph's memory arena may take.
    max_memory: the most bytes a restore may take (resident memory on the CPU, device memory on a GPU): the
        graphs a stage does not need are released and tiles made smaller to fit, or the restore is refused
        with an `Error` of kind "out_of_memory" naming what it needs. Default: no limit.
    """

    def __init__(
        self,
        model: Optional[os.PathLike | str] = None,
        *,
        provider: str = "cpu",
        threads: int = 0,
        onnxruntime: Optional[os.PathLike | str] = None,
        gpu_memory_limit: Optional[int] = None,
        max_memory: Optional[int] = None,
    ) -> None:
        if model is None:
            model = default_model()  # None: the native side raises an Error naming where it looked
        if onnxruntime is None and not (os.environ.get("DPIR_ORT_LIB") or os.environ.get("ORT_DYLIB_PATH")):
            onnxruntime = onnxruntime_library()
        self._native = _dpir.Restorer(
            None if model is None else Path(model).expanduser(),
            provider,
            threads,
            None if onnxruntime is None else Path(onnxruntime),
            gpu_memory_limit,
            max_memory,
        )
        self.manifest: dict = json.loads(self._native.manifest_json())
        """The bundle's manifest (`dpir.json`): its model sizes and defaults."""

    @property
    def defaults(self) -> dict:
        """What a restore uses when an option is not given: steps, seed, guidance, tile_size and tile_overlap
        (latent samples), pixels_per_latent, prompt, clip_input and color_fix."""
        return self._native.defaults()

    @property
    def bundle(self) -> Path:
        """The bundle's folder."""
        return self._native.bundle()

    @property
    def provider(self) -> str:
        """The execution provider in use (what "auto" chose)."""
        return self._native.execution_provider()

    @property
    def onnxruntime(self) -> Path:
        """The ONNX Runtime library in use."""
        return self._native.onnxruntime_library()

    @property
    def has_text_encoder(self) -> bool:
        """Whether the bundle encodes captions (`prompt_text`)."""
        return self._native.has_text_encoder()

    def output_size(self, width: int, height: int, scale: float = 1.0) -> Tuple[int, int]:
        """The output (width, height) of a `width x height` input at `scale`."""
        return self._native.output_size(width, height, scale)

    def requirements(self, width: int, height: int, **options: Any) -> dict:
        """What restoring a `width x height` image with these options needs: pixel_multiple, max_pass_size,
        output_size, tiles, tile_size (pixels), estimated_bytes (the peak, weights included), weights_bytes and
        releases_graphs (whether the prompt encoders and the transformer take turns within max_memory)."""
        return self._native.requirements(width, height, options)

    def restore(
        self,
        image: Any,
        *,
        progress: Optional[Callable[[Progress], Optional[bool]]] = None,
        cancel: Optional[CancelToken] = None,
        **options: Any,
    ) -> Any:
        """Restores a whole image: an (H, W) or (H, W, C) array of uint8, uint16, float16 or float32 with 1, 3
        or 4 channels (colour in [0, 1] for floats, sRGB-encoded; alpha carried through untouched), or a Pillow
        image. Returns a new array of the same dtype and channels (a Pillow image for a Pillow image), sized by
        `scale`.

        Options (unset ones take the bundle's defaults, see `defaults`): scale, paper_size (True sizes the output
        as the paper's test script does, long side 1024 and sides multiples of 8, instead of scale), steps, seed,
        guidance, prompt,
        prompt_text, clip_input ("lq" or "initial-restoration"), color_fix ("wavelet" or "none"),
        sample_posterior, tile_mode ("independent" or "joint"), tile_size, tile_overlap (latent samples),
        tile_batch, context_margin (pixels).

        progress(report) is called as the restore goes (report.stage, .step, .steps, .tile, .tiles, .fraction);
        returning False or raising cancels it (the exception propagates). Ctrl-C cancels it too and raises
        KeyboardInterrupt. The array is read where it lies when its rows are packed; otherwise a copy is made.
        """
        _check_sizing(options)
        array, back = _as_array(image)
        out = self._native.restore(array, options, progress, cancel)
        return back(out)

    def restore_file(
        self,
        input: os.PathLike | str,
        output: os.PathLike | str,
        *,
        progress: Optional[Callable[[Progress], Optional[bool]]] = None,
        cancel: Optional[CancelToken] = None,
        **options: Any,
    ) -> Tuple[int, int]:
        """Restores the image file `input` (PNG, JPEG, TIFF; 8 or 16 bit) into `output` exactly as
        `dpir restore` does: the format of output's extension, the input's channels and bit depth, alpha carried
        through, the file written whole or not at all (an existing one is replaced). Returns the output's
        (width, height). Options as for `restore`."""
        _check_sizing(options)
        return self._native.restore_file(Path(input), Path(output), options, progress, cancel)

    def restore_region(
        self,
        image: Any,
        rect: Tuple[int, int, int, int],
        *,
        origin: Tuple[int, int] = (0, 0),
        frame: Optional[Tuple[int, int]] = None,
        context: Any = None,
        progress: Optional[Callable[[Progress], Optional[bool]]] = None,
        cancel: Optional[CancelToken] = None,
        **options: Any,
    ) -> Any:
        """Restores `rect` (x, y, width, height, in output pixels) of a frame of `frame` (width, height) input
        pixels (default: the image's size) from `image`, a crop of the frame whose top-left pixel sits at
        `origin`. `context` is the whole frame at any resolution, for the global prompt (default: the crop). In
        the default independent tile mode the result equals that rectangle of a whole restore when `context` is
        the frame. Options as for `restore`."""
        array, back = _as_array(image)
        if frame is None:
            frame = (array.shape[1], array.shape[0])
        context_array = None if context is None else _as_array(context)[0]
        out = self._native.restore_region(array, rect, origin, frame, context_array, options, progress, cancel)
        return back(out)

    def __repr__(self) -> str:
        return f"dpir.Restorer({str(self.bundle)!r}, provider={self.provider!r})"


def _check_sizing(options: dict) -> None:
    if options.get("paper_size") and options.get("scale") is not None:
        raise ValueError("scale and paper_size exclude each other: paper_size sets the output size")


def _as_array(image: Any) -> Tuple[np.ndarray, Callable[[np.ndarray], Any]]:
    """An array dpir reads in place, and how to give the result back in the caller's terms."""
    if not isinstance(image, np.ndarray):
        converted = _from_pillow(image)
        if converted is not None:
            return converted
        image = np.asarray(image)
    if image.ndim in (2, 3) and image.strides[-1] == image.itemsize and image.strides[0] > 0:
        packed = image.ndim == 2 or image.strides[1] == image.shape[2] * image.itemsize
        if packed and image.dtype.isnative:
            return image, lambda out: out
    return np.ascontiguousarray(image, dtype=image.dtype.newbyteorder("=")), lambda out: out


def _from_pillow(image: Any) -> Optional[Tuple[np.ndarray, Callable[[np.ndarray], Any]]]:
    """A Pillow image as an array (8-bit modes, 16-bit gray, float gray), and the result back as one; None for
    anything that is not a Pillow image. Pillow is only imported when one is passed."""
    if type(image).__module__.split(".")[0] != "PIL":
        return None
    from PIL import Image

    mode = image.mode
    if mode in ("L", "RGB", "RGBA"):
        return np.asarray(image), lambda out: Image.fromarray(out, mode)
    if mode == "LA":
        return np.asarray(image.convert("RGBA")), lambda out: Image.fromarray(out, "RGBA").convert("LA")
    if mode in ("I;16", "I;16L", "I;16B"):
        return np.asarray(image).astype(np.uint16), lambda out: Image.fromarray(out)
    if mode == "F":
        return np.asarray(image, dtype=np.float32), lambda out: Image.fromarray(out, "F")
    if mode in ("P", "PA", "1", "CMYK", "YCbCr", "LAB", "HSV", "La", "RGBa", "RGBX"):
        wanted = "RGBA" if "A" in mode or "a" in mode else "RGB"
        converted = image.convert(wanted)
        return np.asarray(converted), lambda out: Image.fromarray(out, wanted)
    raise TypeError(f"Pillow mode {mode!r} is not supported; convert it to RGB or RGBA first")
