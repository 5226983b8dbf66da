"""Export-time cost of carrying a second optimizer (adamw + sgd, the default) vs adamw alone.

Usage: .venv/bin/python bench/optimizers_export_bench.py [--runs 5] [MODEL ...]

Per zoo model (tests/zoo/models.py; default mlp and cnn2d), medians of --runs exports
(verification on), the baseline (adamw alone) measured in the same run:
- "ort only": no portable step; the second optimizer adds one onnxblock optimizer graph and
  its one-step check against torch.optim.SGD;
- "cold": with the portable step, export cache off: the second optimizer adds a second trace
  and ONNX export of the step (the update is part of the traced function) and its check;
- "warm": the cache holds both steps' graphs (a re-export after training): the traces remain.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import onnxruntime  # noqa: E402
import torch  # noqa: E402
from export_bench import export_cache  # noqa: E402
from zoo.models import ZOO  # noqa: E402

from fedge.exporter.export import export_bundle  # noqa: E402

ONE, TWO = ("adamw",), ("adamw", "sgd")


def seconds(name: str, optimizers: tuple[str, ...], *, portable: bool) -> float:
    z = ZOO[name]
    tmp = Path(tempfile.mkdtemp(prefix="fedge-bench-"))
    try:
        started = time.perf_counter()
        export_bundle(
            z.build(),
            input_shape=z.input_shape,
            input_dtype=z.input_dtype,
            loss=z.loss,
            optimizer=optimizers,
            out_dir=tmp / "b",
            portable=portable,
        )
        return time.perf_counter() - started
    finally:
        shutil.rmtree(tmp)


def median(name: str, optimizers: tuple[str, ...], runs: int, *, portable: bool) -> float:
    return statistics.median(seconds(name, optimizers, portable=portable) for _ in range(runs))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="*", default=["mlp", "cnn2d"])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(
        f"machine: {os.cpu_count()} cores, Python {platform.python_version()}, torch "
        f"{torch.__version__}, onnxruntime-training {onnxruntime.__version__}, runs {args.runs}"
    )
    print(f"{'model':<9}{'mode':<10}{'adamw s':>9}{'adamw+sgd s':>13}{'ratio':>7}{'+s':>7}")
    for name in args.models:
        rows = [("ort only", None, False), ("cold", "off", True)]
        with tempfile.TemporaryDirectory(prefix="fedge-opt-cache-") as cache:
            rows.append(("warm", cache, True))
            for mode, cache_value, portable in rows:
                with export_cache(cache_value or "off"):
                    if mode == "warm":
                        seconds(name, TWO, portable=True)  # fills the cache with both steps
                    one = median(name, ONE, args.runs, portable=portable)
                    two = median(name, TWO, args.runs, portable=portable)
                print(
                    f"{name:<9}{mode:<10}{one:>9.2f}{two:>13.2f}{two / one:>7.2f}{two - one:>7.2f}"
                )


if __name__ == "__main__":
    main()
