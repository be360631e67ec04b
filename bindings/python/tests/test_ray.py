"""dpir.ray on a local Ray cluster the test starts (CPU; the oracle and tiny bundles): every output equals the CLI's
for the same file, no file is lost or restored twice, and a failing file is reported without stopping the
others."""

import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import dpir.batch
import dpir.ray

ray = pytest.importorskip("ray")

ROOT = Path(__file__).resolve().parents[3]
BUNDLES = ROOT / "tests" / "fixtures" / "bundles"
CLI = ROOT / "target" / "release" / "dpir"


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=150 * 1024 * 1024, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.mark.parametrize("bundle, workers", [("oracle", 1), ("tiny", 1), ("tiny", 2)])
def test_a_folder_on_ray_equals_the_cli(cluster, tmp_path, bundle, workers):
    model = BUNDLES / bundle
    folder = tmp_path / "in"
    folder.mkdir()
    rng = np.random.default_rng(workers)
    for index in range(5):
        pixels = (rng.random((24 + 8 * index, 40, 3)) * 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"p{index}.png")
    (folder / "broken.png").write_bytes(b"not a picture")
    jobs = dpir.batch.files(folder, tmp_path / "out")
    assert len(jobs) == 6

    records = dpir.ray.restore(jobs, model, workers=workers, threads=1, steps=2, seed=5)
    assert [(r["input"], r["output"]) for r in records] == [(str(i), str(o)) for i, o in jobs], "none lost or twice"
    by_name = {Path(r["input"]).name: r for r in records}
    assert by_name["broken.png"]["status"] == "failed" and "cannot decode" in by_name["broken.png"]["error"]
    for index in range(5):
        name = f"p{index}.png"
        assert by_name[name]["status"] == "restored", by_name[name]
        cli = tmp_path / f"cli-{name}"
        command = [CLI, "restore", folder / name, cli, "--model", model, "--steps", "2", "--seed", "5", "--quiet"]
        subprocess.run(command, check=True)
        assert cli.read_bytes() == (tmp_path / "out" / name).read_bytes(), name

    again = dpir.ray.restore(jobs, model, workers=workers, threads=1, steps=2, seed=5)
    assert [r["status"] for r in again].count("skipped") == 5
