"""Export time and bundle size per zoo model (tests/zoo/models.py).

Usage: .venv/bin/python bench/export_bench.py [--runs 5] [--portable] [MODEL ...]

Prints, per model: median export wall time over --runs exports (AdamW, verification on), the
bundle size on disk (all files) and the parity numbers. Baseline in the same run: the plain MLP
(ratios are relative to it). Without --portable the portable step is left out.

With --portable it prints, per model, the ort-training artifacts alone ("plain"), the same
plus the portable step with the export cache off ("+step"), and with a warm cache ("+step,
cached": the same architecture exported before, as after a retrain), each a median of --runs,
and each with its ratio to "plain"; all with the default optimizers (AdamW and SGD).
"""

from __future__ import annotations

import argparse
import contextlib
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
from fedge.exporter.portable import trace_cache  # noqa: E402
from fedge.protocol.bundle import load_bundle  # noqa: E402
from fedge.protocol.manifest import Verification  # noqa: E402


def export_once(name: str, *, portable: bool) -> tuple[float, Verification, int]:
    """Seconds, verification numbers and bundle bytes of one export of zoo model ``name``
    with the default optimizers (AdamW and SGD), as ``fedge export`` does."""
    z = ZOO[name]
    tmp = Path(tempfile.mkdtemp(prefix="fedge-bench-"))
    try:
        started = time.perf_counter()
        path = export_bundle(
            z.build(),
            input_shape=z.input_shape,
            input_dtype=z.input_dtype,
            loss=z.loss,
            out_dir=tmp / "b",
            portable=portable,
        )
        seconds = time.perf_counter() - started
        manifest = load_bundle(path).manifest
        size = sum(f.size for f in manifest.files.values())
        return seconds, manifest.verification, size
    finally:
        shutil.rmtree(tmp)


@contextlib.contextmanager
def export_cache(value: str):
    old = os.environ.get(trace_cache.ENV)
    os.environ[trace_cache.ENV] = value
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(trace_cache.ENV, None)
        else:
            os.environ[trace_cache.ENV] = old


def portable_table(names: list[str], runs: int) -> None:
    print(
        f"{'model':<17}{'plain s':>9}{'+step s':>9}{'x plain':>9}{'+step, cached s':>17}"
        f"{'x plain':>9}{'bundle KiB':>11}{'step diff':>11}"
    )
    with tempfile.TemporaryDirectory(prefix="fedge-export-cache-") as cache:
        for name in names:
            plain = statistics.median(export_once(name, portable=False)[0] for _ in range(runs))
            with export_cache("off"):
                cold = [export_once(name, portable=True) for _ in range(runs)]
            with export_cache(cache):
                export_once(name, portable=True)  # fills the cache
                warm = statistics.median(export_once(name, portable=True)[0] for _ in range(runs))
            step_s = statistics.median(c[0] for c in cold)
            ver = cold[-1][1].values.get("portable") or {}
            diff = cold[-1][1].portable_step_max_abs_diff
            print(
                f"{name:<17}{plain:>9.2f}{step_s:>9.2f}{step_s / plain:>9.1f}{warm:>17.2f}"
                f"{warm / plain:>9.1f}{cold[-1][2] / 1024:>11.1f}"
                f"{(f'{diff:.1e}' if diff is not None else ver.get('reason', 'skipped')[:30]):>11}"
            )


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
    if args.portable:
        portable_table(names, args.runs)
        return
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
                portable=False,
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
