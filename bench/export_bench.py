"""Export time and bundle size per zoo model (tests/zoo/models.py).

Usage: .venv/bin/python bench/export_bench.py [--runs 5] [--portable] [MODEL ...]

Prints, per model: median export wall time over --runs exports (AdamW, verification on), the
bundle size on disk (all files) and the parity numbers. Baseline in the same run: the plain MLP
(ratios are relative to it). Without --portable the portable step is left out.
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

import onnxruntime  # noqa: E402
import torch  # noqa: E402
from zoo.models import ZOO  # noqa: E402

from fedge.exporter.export import export_bundle  # noqa: E402
from fedge.protocol.bundle import load_bundle  # noqa: E402
from fedge.protocol.manifest import Verification  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="*", default=list(ZOO))
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--portable", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(
        f"machine: {os.cpu_count()} cores, Python {platform.python_version()}, torch "
        f"{torch.__version__}, onnxruntime-training {onnxruntime.__version__}, runs {args.runs}"
    )
    names = ["mlp", *[n for n in args.models if n != "mlp"]]
    print(
        f"{'model':<17}{'export s':>9}{'x mlp':>7}{'bundle KiB':>12}{'fwd diff':>10}"
        f"{'step diff':>11}{'BN stats':>10}"
    )
    base = None
    for name in names:
        z = ZOO[name]
        times, size, ver = [], 0, Verification()
        for _ in range(args.runs):
            tmp = Path(tempfile.mkdtemp(prefix="fedge-bench-"))
            started = time.perf_counter()
            path = export_bundle(
                z.build(),
                input_shape=z.input_shape,
                input_dtype=z.input_dtype,
                loss=z.loss,
                optimizer="adamw",
                out_dir=tmp / "b",
                portable=args.portable,
            )
            times.append(time.perf_counter() - started)
            bundle = load_bundle(path)
            size = sum(f.size for f in bundle.manifest.files.values())
            ver = bundle.manifest.verification
            shutil.rmtree(tmp)
        median = statistics.median(times)
        base = base or median
        step = ver.step_max_abs_diff
        stats = ver.values.get("running_stats_max_abs_diff")
        print(
            f"{name:<17}{median:>9.2f}{median / base:>7.2f}{size / 1024:>12.1f}"
            f"{ver.forward_max_abs_diff or 0.0:>10.1e}"
            f"{(f'{step:.1e}' if step is not None else 'skipped'):>11}"
            f"{(f'{stats:.1e}' if stats is not None else '-'):>10}"
        )


if __name__ == "__main__":
    main()
