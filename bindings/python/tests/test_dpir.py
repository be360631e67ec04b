"""The dpir Python package against the repository's test bundles: the oracle (a restore returns its input) and
the tiny model (the same numbers as the CLI). Run by tools/test.sh after installing the wheel it builds."""

import os
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import dpir

ROOT = Path(__file__).resolve().parents[3]
BUNDLES = ROOT / "tests" / "fixtures" / "bundles"
CLI = ROOT / "target" / "release" / "dpir"


@pytest.fixture(scope="module")
def oracle():
    return dpir.Restorer(BUNDLES / "oracle", threads=1)


@pytest.fixture(scope="module")
def tiny():
    return dpir.Restorer(BUNDLES / "tiny", threads=1)


def picture(height, width, channels, dtype):
    """A smooth picture with detail, values inside (0, 1) before scaling to the dtype."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    planes = [0.1 + 0.8 * (0.5 + 0.5 * np.sin(x / 3 + c) * np.cos(y / 4 - c)) for c in range(channels)]
    unit = np.stack(planes, axis=-1)
    if channels == 4:
        unit[..., 3] = (x + y) / (width + height)  # alpha, carried through exactly
    if dtype == np.uint8:
        array = np.round(unit * 255).astype(np.uint8)
    elif dtype == np.uint16:
        array = np.round(unit * 65535).astype(np.uint16)
    else:
        array = unit.astype(dtype)
    return array[..., 0] if channels == 1 else array


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float16, np.float32])
@pytest.mark.parametrize("channels", [1, 3, 4])
def test_the_oracle_returns_every_dtype_and_channel_count(oracle, dtype, channels):
    image = picture(19, 26, channels, dtype)
    restored = oracle.restore(image, steps=2)
    assert restored.dtype == image.dtype and restored.shape == image.shape
    scale = {np.uint8: 255, np.uint16: 65535}.get(dtype, 1)
    difference = np.abs(restored.astype(np.float64) - image.astype(np.float64)).max() / scale
    assert difference <= (1e-3 if dtype != np.float16 else 2e-3), difference
    if channels == 4:
        assert np.array_equal(restored[..., 3], image[..., 3]), "alpha is carried exactly"


def test_views_and_copies_give_the_same_result(oracle):
    image = picture(40, 50, 3, np.uint8)
    crop = image[5:30, 7:41]  # rows at the full image's stride: read where it lies
    assert not crop.flags.c_contiguous
    assert np.array_equal(oracle.restore(crop, steps=2), oracle.restore(np.ascontiguousarray(crop), steps=2))
    strided = image[::2, ::3]  # pixels not packed: copied first
    assert np.array_equal(oracle.restore(strided, steps=2), oracle.restore(strided.copy(), steps=2))
    fortran = np.asfortranarray(image)
    assert np.array_equal(oracle.restore(fortran, steps=2), oracle.restore(image, steps=2))
    assert oracle.restore(image, steps=2, scale=1.5).shape == (60, 75, 3)


def test_the_tiny_model_matches_the_cli_bit_for_bit(tiny, tmp_path):
    image = picture(48, 64, 3, np.uint8)
    source = tmp_path / "in.png"
    Image.fromarray(image).save(source)
    options = dict(steps=3, seed=7, guidance=2.0, prompt="quality", scale=1.25)
    cli = tmp_path / "cli.png"
    arguments = ["--steps", "3", "--seed", "7", "--guidance", "2", "--prompt", "quality", "--scale", "1.25"]
    subprocess.run([CLI, "restore", source, cli, "--model", BUNDLES / "tiny", "--quiet", *arguments], check=True)
    restored = tiny.restore(image, **options)
    assert np.array_equal(restored, np.asarray(Image.open(cli)))
    # A file restored into a file is the CLI's, byte for byte.
    assert tiny.restore_file(source, tmp_path / "file.png", **options) == (80, 60)
    assert (tmp_path / "file.png").read_bytes() == cli.read_bytes()
    # A Pillow image comes back as one, with the same pixels.
    from_pillow = tiny.restore(Image.open(source), **options)
    assert isinstance(from_pillow, Image.Image) and from_pillow.mode == "RGB"
    assert np.array_equal(np.asarray(from_pillow), restored)


def test_a_region_equals_that_part_of_the_whole_restore(tiny):
    image = picture(48, 64, 3, np.float32)
    options = dict(steps=2, tile_size=4, tile_overlap=1)
    whole = tiny.restore(image, **options)
    region = tiny.restore_region(image, (9, 13, 30, 20), context=image, **options)
    assert np.array_equal(region, whole[13:33, 9:39])


def test_the_papers_size(oracle):
    assert dpir.paper_size(1000, 750) == (1024, 768) and dpir.paper_size(1080, 1920) == (576, 1024)
    restored = oracle.restore(picture(75, 100, 3, np.uint8), paper_size=True, steps=1)
    assert restored.shape == (768, 1024, 3)
    with pytest.raises(ValueError, match="exclude each other"):
        oracle.restore(picture(75, 100, 3, np.uint8), paper_size=True, scale=2)


def test_defaults_and_info(tiny):
    defaults = tiny.defaults
    assert defaults["steps"] == tiny.manifest["scheduler"]["steps"]
    assert defaults["seed"] == tiny.manifest["defaults"]["seed"]
    assert tiny.provider == "cpu"
    assert tiny.onnxruntime.name.startswith("libonnxruntime.so")
    assert tiny.output_size(100, 50, 2.0) == (200, 100)
    assert tiny.requirements(100, 50, scale=2)["output_size"] == (200, 100)


def test_the_default_model_is_the_one_dpir_looks_for(oracle, tmp_path, monkeypatch):
    monkeypatch.delenv("DPIR_MODEL", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    place = tmp_path / "dpir" / "model"
    assert dpir.default_model() is None
    with pytest.raises(dpir.Error) as raised:
        dpir.Restorer(threads=1)
    assert raised.value.kind == "bundle" and str(place) in str(raised.value)
    shutil.copytree(BUNDLES / "oracle", place)
    assert dpir.default_model() == place
    assert dpir.Restorer(threads=1).manifest == oracle.manifest
    monkeypatch.setenv("DPIR_MODEL", str(BUNDLES / "tiny"))
    assert dpir.default_model() == BUNDLES / "tiny"


def test_a_memory_budget(tiny):
    needs = tiny.requirements(128, 96)
    assert needs["tile_size"] == 1024 and not needs["releases_graphs"]
    assert needs["estimated_bytes"] > needs["weights_bytes"] > 0
    tight = dpir.Restorer(BUNDLES / "tiny", threads=1, max_memory=needs["estimated_bytes"] - 1)
    assert tight.requirements(128, 96)["releases_graphs"]
    image = picture(96, 128, 3, np.uint8)
    assert np.array_equal(tight.restore(image, steps=1), tiny.restore(image, steps=1))
    with pytest.raises(dpir.Error) as raised:
        dpir.Restorer(BUNDLES / "tiny", threads=1, max_memory=16 << 20).restore(image, steps=1)
    assert raised.value.kind == "out_of_memory" and "needs about" in str(raised.value)


def test_errors_carry_dpir_s_kind(oracle, tmp_path):
    image = picture(8, 8, 3, np.uint8)
    for options, kind in [
        (dict(steps=0), "invalid_options"),
        (dict(guidance=0.5), "invalid_options"),
        (dict(prompt="nope"), "invalid_options"),
        (dict(scale=float("inf")), "invalid_options"),
        (dict(scale=10000), "too_large"),
    ]:
        with pytest.raises(dpir.Error) as raised:
            oracle.restore(image, **options)
        assert raised.value.kind == kind, (options, str(raised.value))
    with pytest.raises(dpir.Error) as raised:
        dpir.Restorer(tmp_path / "no-bundle")
    assert raised.value.kind == "bundle" and "no-bundle" in str(raised.value)
    with pytest.raises(TypeError, match="unknown restore option"):
        oracle.restore(image, stepz=3)
    with pytest.raises(ValueError, match="tile_mode"):
        oracle.restore(image, tile_mode="sideways")
    with pytest.raises(TypeError, match="uint8, uint16, float16 or float32"):
        oracle.restore(image.astype(np.int64))
    with pytest.raises(TypeError, match="dimensions"):
        oracle.restore(np.zeros(5, np.uint8))
    with pytest.raises(dpir.Error) as raised:
        oracle.restore(np.zeros((8, 8, 2), np.uint8))
    assert raised.value.kind == "invalid_image"


def test_threads_share_a_restorer_while_python_runs(tiny):
    images = [picture(128, 128 + 8 * i, 3, np.uint8) for i in range(4)]
    alone = [tiny.restore(image, steps=30) for image in images]
    results = [None] * len(images)

    def work(index):
        results[index] = tiny.restore(images[index], steps=30)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(images))]
    ticks = 0
    for thread in threads:
        thread.start()
    while any(thread.is_alive() for thread in threads):
        ticks += 1  # the GIL is free while the restores run
        time.sleep(0.001)
    for thread in threads:
        thread.join()
    assert all(np.array_equal(a, b) for a, b in zip(alone, results))
    assert ticks > 10


def test_progress_and_cancellation(tiny):
    image = picture(32, 32, 3, np.uint8)
    reports = []
    tiny.restore(image, steps=4, progress=lambda p: reports.append(p.fraction))
    assert reports == sorted(reports) and reports[-1] == 1.0

    stop_at_sample = lambda p: p.stage != "sample" or p.step < 2  # noqa: E731
    with pytest.raises(dpir.Error) as raised:
        tiny.restore(image, steps=50, progress=stop_at_sample)
    assert raised.value.kind == "cancelled"

    def fails(_):
        raise RuntimeError("from the callback")

    with pytest.raises(RuntimeError, match="from the callback"):
        tiny.restore(image, steps=4, progress=fails)

    token = dpir.CancelToken()
    threading.Timer(0.2, token.cancel).start()
    started = time.monotonic()
    with pytest.raises(dpir.Error) as raised:
        tiny.restore(picture(256, 256, 3, np.uint8), steps=1000, cancel=token)
    assert raised.value.kind == "cancelled" and time.monotonic() - started < 5


def test_ctrl_c_stops_a_restore_with_keyboard_interrupt(tiny):
    reports = []
    threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGINT)).start()
    started = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        tiny.restore(picture(256, 256, 3, np.uint8), steps=1000, progress=lambda p: reports.append(p.step))
    assert time.monotonic() - started < 5 and max(reports) < 1000
