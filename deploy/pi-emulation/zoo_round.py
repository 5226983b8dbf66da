"""One local training round of every test-zoo model with the ort-portable backend, host vs Pi.

Used by ``run-zoo.sh``; three steps, the middle one runs on both machines:

    zoo_round.py export OUT         host (torch): a bundle and a synthetic data set per model
    zoo_round.py train OUT RESULTS  host and emulated aarch64 (numpy + onnxruntime, no torch)
    zoo_round.py compare HOST PI    the table; exit status 1 if any model failed

Example: ``.venv/bin/python deploy/pi-emulation/zoo_round.py export /tmp/zoo``

``train`` runs ``TrainingBackend.train`` exactly as the agent does (shuffled mini-batches,
dropout seeds from the round's seed), so what it measures is the agent's portable backend on
that machine's ``onnxruntime``. The data are generated once on the host and copied, so both
machines train on the same bytes and only the runtime and the CPU differ.
"""

from __future__ import annotations

import argparse
import json
import pickle
import sys
import time
from pathlib import Path

import numpy as np

EPOCHS = 2
BATCH = 8
SAMPLES = 45  # 6 batches per epoch, the last one of 5: the short-batch path
SEED = 1234  # the round's seed: shuffling and the dropout masks
LR = 0.05
VOCAB = 20  # the zoo's token models embed 20 ids
TOLERANCE = 1e-4  # max abs difference of any parameter (and of the loss), host vs Pi
MANIFEST_PICKLE = "portable_manifest.pkl"  # portable-only models: no ort-training artifacts


# ---------------------------------------------------------------- export (host, torch)
def export_all(out: Path) -> None:
    import torch

    repo = Path(__file__).resolve().parents[2]
    sys.path.insert(0, str(repo / "tests"))
    from zoo.models import PORTABLE_ONLY, ZOO

    torch.set_num_threads(1)  # 2 shared cores: small models are fastest on one thread
    out.mkdir(parents=True, exist_ok=True)
    for kind, table in (("zoo", ZOO), ("portable-only", PORTABLE_ONLY)):
        for name, z in table.items():
            target = out / name
            if (target / "data.npz").exists():
                print(f"  {name}: already exported")
                continue
            t0 = time.perf_counter()
            if kind == "zoo":
                _export_zoo(z, target / "bundle")
            else:
                _export_portable_only(z, target / "bundle")
            _write_data(target, target / "bundle")
            print(f"  {name}: exported ({kind}) in {time.perf_counter() - t0:.1f} s", flush=True)


def _export_zoo(z, bundle_dir: Path) -> None:
    from fedge.exporter.export import export_bundle

    export_bundle(
        z.build(),
        input_shape=z.input_shape,
        input_dtype=z.input_dtype,
        loss=z.loss,
        optimizer=z.optimizers[0],
        lr=LR,
        out_dir=bundle_dir,
        model_name=z.name,
        **z.options,
    )


def _export_portable_only(z, bundle_dir: Path) -> None:
    """The portable step alone (ORT-training cannot build these), with a hand-made manifest.

    Same arguments as tests/integration/test_export_zoo.py; the manifest is what
    ``export_bundle`` would write minus the ort-training files, pickled because
    ``manifest.json`` requires them.
    """
    import torch

    from fedge.exporter.artifacts import OptimizerSpec
    from fedge.exporter.portable import add_portable_step
    from fedge.protocol.manifest import LossSpec, Manifest, ParameterSpec, TensorSpec
    from fedge.protocol.manifest_specs import FileEntry
    from fedge.protocol.manifest_task import TaskSpec
    from fedge.protocol.tensors import encode_tensors

    model = z.build()
    bundle_dir.mkdir(parents=True)
    opt = OptimizerSpec(z.optimizers[0], LR, 0.01, (0.9, 0.999), 1e-8)
    input_spec = TensorSpec("input", z.input_dtype, (None, *z.input_shape))
    label_spec = TensorSpec("labels", "int64", (None,))
    trainable = [n for n, _ in model.named_parameters()]
    section, numbers = add_portable_step(
        model=model,
        bundle_dir=bundle_dir,
        loss=z.loss,
        optimizers=[opt],
        trainable=trainable,
        input_spec=input_spec,
        label_spec=label_spec,
        num_classes=3,
    )
    if not section.available:
        raise SystemExit(f"{z.name}: no portable step: {section.reason}")
    print(f"    export-time step parity {numbers[opt.type]['step_max_abs_diff']:.2e}")
    params = {n: p.detach().numpy().copy() for n, p in model.named_parameters()}
    (bundle_dir / "parameters.safetensors").write_bytes(encode_tensors(params))
    with torch.no_grad():
        example = torch.zeros((2, *z.input_shape), dtype=getattr(torch, z.input_dtype))
        output = model.eval()(example)
    files = [section.file, "parameters.safetensors"] + (
        [section.buffers_file] if section.buffers_file else []
    )
    manifest = Manifest(
        model_name=z.name,
        task=TaskSpec.derive(z.loss, tuple(output.shape[1:])),
        inputs=(input_spec,),
        outputs=(TensorSpec("logits", "float32", (None, *output.shape[1:])),),
        label=label_spec,
        loss=LossSpec(z.loss, reduction="mean"),
        optimizers=(opt.to_manifest(),),
        parameters=tuple(
            ParameterSpec(n, tuple(a.shape), a.dtype.name, True) for n, a in params.items()
        ),
        opset=section.opset,
        ir_version=section.ir_version,
        versions={},
        backends=("ort-portable",),
        portable=section,
        files={f: FileEntry("", (bundle_dir / f).stat().st_size) for f in files},
    )
    (bundle_dir / MANIFEST_PICKLE).write_bytes(pickle.dumps(manifest))


def _write_data(target: Path, bundle_dir: Path) -> None:
    """Deterministic inputs and labels of the bundle's shapes and dtypes."""
    m = _load(bundle_dir).manifest
    rng = np.random.default_rng(7)
    shape = (SAMPLES, *m.input.sample_shape)
    if m.input.dtype.startswith("int"):
        x = rng.integers(0, VOCAB, size=shape).astype(m.input.dtype)
    else:
        x = rng.standard_normal(shape).astype(m.input.dtype)
    label_shape = (SAMPLES, *m.label.sample_shape)
    if m.loss.type == "cross_entropy":
        y = rng.integers(0, m.task.num_classes, size=label_shape).astype(m.label.dtype)
    elif m.loss.type == "bce_with_logits":
        y = rng.integers(0, 2, size=label_shape).astype(m.label.dtype)
    else:
        y = rng.standard_normal(label_shape).astype(m.label.dtype)
    np.savez(target / "data.npz", x=x, y=y)


# ---------------------------------------------------------------- train (both machines)
def _load(bundle_dir: Path):
    from fedge.protocol.bundle import Bundle, load_bundle

    pickled = bundle_dir / MANIFEST_PICKLE
    if pickled.exists():
        return Bundle(bundle_dir, pickle.loads(pickled.read_bytes()))
    return load_bundle(bundle_dir)  # a real bundle: hashes checked


def train_all(zoo: Path, results: Path) -> None:
    import platform

    from fedge.agent.backends import create_backend

    results.mkdir(parents=True, exist_ok=True)
    failures = 0
    for target in sorted(p for p in zoo.iterdir() if (p / "data.npz").exists()):
        name = target.name
        record: dict = {"model": name, "machine": platform.machine()}
        try:
            backend = create_backend("ort-portable", threads=1)
            record["runtime"] = backend.runtime
            backend.load(_load(target / "bundle"))
            data = np.load(target / "data.npz")
            before = backend.get_parameters()
            t0 = time.perf_counter()
            res = backend.train(data["x"], data["y"], epochs=EPOCHS, batch_size=BATCH, seed=SEED)
            record["seconds"] = time.perf_counter() - t0
            after = backend.get_parameters()
            record.update(loss=res.loss, steps=res.steps, samples=res.samples)
            record["changed"] = max(float(np.abs(after[n] - before[n]).max()) for n in after)
            record["finite"] = bool(
                np.isfinite(res.loss) and all(np.isfinite(v).all() for v in after.values())
            )
            np.savez(results / f"{name}.npz", **after)
        except Exception as exc:  # recorded, and the table says FAIL with the message
            failures += 1
            record["error"] = f"{type(exc).__name__}: {exc}"
        (results / f"{name}.json").write_text(json.dumps(record))
        status = record.get("error") or f"{record['steps']} steps, loss {record['loss']:.4f}"
        print(f"  {name}: {status} ({record.get('seconds', 0):.2f} s)", flush=True)
    print(f"trained on {platform.machine()}; {failures} failed")


# ---------------------------------------------------------------- compare (host)
def compare(host: Path, pi: Path) -> int:
    rows, bad = [], 0
    for path in sorted(host.glob("*.json")):
        h = json.loads(path.read_text())
        p = json.loads((pi / path.name).read_text()) if (pi / path.name).exists() else {}
        name, diff, why = h["model"], float("nan"), ""
        if "error" in h:
            why = f"host: {h['error']}"
        elif not p:
            why = "no result from the emulated run"
        elif "error" in p:
            why = f"aarch64: {p['error']}"
        else:
            hp, pp = np.load(host / f"{name}.npz"), np.load(pi / f"{name}.npz")
            if set(hp.files) != set(pp.files):
                why = "parameter names differ"
            else:
                diffs = {n: float(np.abs(hp[n] - pp[n]).max()) for n in hp.files}
                diff = max(diffs.values())
                loss_diff = abs(h["loss"] - p["loss"])
                if not p["finite"]:
                    why = "non-finite loss or parameters on aarch64"
                elif p["changed"] <= 0:
                    why = "parameters did not change on aarch64"
                elif p["steps"] != h["steps"]:
                    why = f"steps differ: {h['steps']} vs {p['steps']}"
                elif not diff <= TOLERANCE or not loss_diff <= TOLERANCE:
                    why = _beyond_tolerance(diffs, loss_diff)
        bad += bool(why)
        rows.append((name, h, p, diff, why))
    runtimes = {h.get("runtime", "?") for _, h, _, _, _ in rows}
    pi_runtimes = {p.get("runtime", "?") for _, _, p, _, _ in rows if p}
    print(f"host: {', '.join(sorted(runtimes))}; aarch64: {', '.join(sorted(pi_runtimes))}")
    print(
        f"{EPOCHS} epochs, batch {BATCH}, {SAMPLES} samples, seed {SEED}, tolerance {TOLERANCE:g}"
    )
    print("| model | backend | steps | loss | s x86 | s aarch64 (qemu) | max param diff | result |")
    print("|---|---|---|---|---:|---:|---:|---|")
    for name, h, p, diff, why in rows:
        print(
            f"| {name} | ort-portable | {h.get('steps', '-')} | {h.get('loss', float('nan')):.4f} "
            f"| {h.get('seconds', float('nan')):.3f} | {p.get('seconds', float('nan')):.2f} "
            f"| {diff:.1e} | {'FAIL: ' + why if why else 'OK'} |"
        )
    print(f"{len(rows) - bad}/{len(rows)} OK")
    return 1 if bad or not rows else 0


def _beyond_tolerance(diffs: dict[str, float], loss_diff: float) -> str:
    """Which parameters disagree, by how much, and how close the rest are."""
    over = sorted((n for n in diffs if not diffs[n] <= TOLERANCE), key=lambda n: -diffs[n])
    rest = [d for n, d in diffs.items() if n not in over]
    parts = [", ".join(f"{n} {diffs[n]:.2e}" for n in over) or "no parameter"]
    if rest:
        parts.append(f"other parameters <= {max(rest):.1e}")
    parts.append(f"loss diff {loss_diff:.1e} (tolerance {TOLERANCE:g})")
    return "; ".join(parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("export", help="host: export the zoo and its data").add_argument(
        "out", type=Path
    )
    train = sub.add_parser("train", help="one round per model with ort-portable")
    train.add_argument("zoo", type=Path)
    train.add_argument("results", type=Path)
    cmp = sub.add_parser("compare", help="host vs aarch64 table")
    cmp.add_argument("host", type=Path)
    cmp.add_argument("pi", type=Path)
    args = parser.parse_args(argv)
    if args.command == "export":
        export_all(args.out)
        return 0
    if args.command == "train":
        train_all(args.zoo, args.results)
        return 0
    return compare(args.host, args.pi)


if __name__ == "__main__":
    sys.exit(main())
