"""Restoring many files on a Ray cluster with Ray Data: each worker is an actor that loads the model once and
restores file after file, writing each output as `dpir restore` does.

    import ray, dpir.batch, dpir.ray
    ray.init()                                            # or ray.init(address="auto") on a cluster
    jobs = dpir.batch.files("scan/f_%04d.tif", "out/f_%04d.png", frames=(1, 2400))
    records = dpir.ray.restore(jobs, "/models/dpir", workers=8, gpus_per_worker=1)
    failed = [r for r in records if r["status"] == "failed"]

The same code runs on one machine and on a cluster; only `ray.init` and `workers` change. Ray is imported only
here, and only when used.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Tuple

import numpy as np

from . import Error, Restorer


class RestoreFiles:
    """A callable class for `ray.data.Dataset.map_batches` over rows of `input` and `output` paths. Each instance
    (one per Ray actor) loads the model once. An output that exists is skipped unless `overwrite`; a file that
    fails is reported in its row and the others go on. Returns, per row, `input`, `output`, `status`
    ("restored", "skipped" or "failed"), `error` and `seconds`."""

    def __init__(
        self,
        model: os.PathLike | str,
        *,
        provider: str = "cpu",
        threads: int = 0,
        overwrite: bool = False,
        **options: Any,
    ) -> None:
        self.restorer = Restorer(model, provider=provider, threads=threads)
        self.overwrite = overwrite
        self.options = options

    def __call__(self, batch: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        statuses, errors, seconds = [], [], []
        for input, output in zip(batch["input"], batch["output"]):
            started = time.monotonic()
            status, error = self._restore(str(input), str(output))
            statuses.append(status)
            errors.append(error)
            seconds.append(time.monotonic() - started)
        return {
            "input": batch["input"],
            "output": batch["output"],
            "status": np.array(statuses),
            "error": np.array(errors),
            "seconds": np.array(seconds),
        }

    def _restore(self, input: str, output: str) -> Tuple[str, str]:
        if not self.overwrite and os.path.exists(output):
            return "skipped", ""
        try:
            Path(output).parent.mkdir(parents=True, exist_ok=True)
            self.restorer.restore_file(input, output, **self.options)
        except (Error, OSError) as error:
            return "failed", str(error)
        return "restored", ""


def restore(
    jobs: Iterable[Tuple[os.PathLike | str, os.PathLike | str]],
    model: os.PathLike | str,
    *,
    workers: int = 1,
    gpus_per_worker: float = 0,
    provider: Optional[str] = None,
    threads: int = 0,
    overwrite: bool = False,
    **options: Any,
) -> List[Dict[str, Any]]:
    """Restores each (input, output) pair of `jobs` on the Ray cluster this process is connected to (`ray.init`
    connects or starts one), with `workers` actors, each holding the model (`gpus_per_worker` GPUs each; the
    provider is then "cuda" unless given). Ray Data shows its progress. Returns one record per job, in the jobs'
    order: input, output, status ("restored", "skipped" or "failed"), error and seconds. Options as for
    `Restorer.restore`; the model folder must be readable by every worker."""
    import ray.data

    items = [{"input": str(i), "output": str(o)} for i, o in jobs]
    if not items:
        return []
    if provider is None:
        provider = "cuda" if gpus_per_worker else "cpu"
    constructor = dict(model=str(model), provider=provider, threads=threads, overwrite=overwrite, **options)
    dataset = ray.data.from_items(items).map_batches(
        RestoreFiles,
        batch_size=1,
        batch_format="numpy",
        concurrency=workers,
        num_gpus=gpus_per_worker or None,
        fn_constructor_kwargs=constructor,
    )
    records = [
        {
            "input": str(row["input"]),
            "output": str(row["output"]),
            "status": str(row["status"]),
            "error": str(row["error"]),
            "seconds": float(row["seconds"]),
        }
        for row in dataset.take_all()
    ]
    order = {(item["input"], item["output"]): index for index, item in enumerate(items)}
    return sorted(records, key=lambda record: order[record["input"], record["output"]])
