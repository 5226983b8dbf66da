"""``fedge export --lora``: adapters over frozen Linear weights train on both real backends, only
they (and the heads kept trainable) travel, bad options are refused clearly, and ``fedge model
export`` deploys a plain model whose outputs equal the adapter model's."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pytest
from zoo.models import ZOO

from fedge.exporter import cli
from fedge.exporter.errors import ExportError
from fedge.exporter.export import export_bundle
from fedge.exporter.lora import LoraOptions
from fedge.protocol.bundle import Bundle, load_bundle
from fedge.protocol.parameter_travel import static_names, travelling_delta

pytestmark = pytest.mark.integration

SEQ, VOCAB, CLASSES = 6, 20, 3
ADAPTED = ("encoder.self_attn.out_proj", "encoder.linear1", "encoder.linear2")


def token_data(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Token ids whose class is the most frequent token group (id % 3): content decides."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, VOCAB, size=(n, SEQ), dtype=np.int64)
    counts = np.stack([(x % CLASSES == c).sum(axis=1) for c in range(CLASSES)], axis=1)
    return x, counts.argmax(axis=1).astype(np.int64)


@pytest.fixture(scope="module")
def lora_bundle(tmp_path_factory: pytest.TempPathFactory) -> Bundle:
    out = tmp_path_factory.mktemp("lora") / "bundle"
    export_bundle(
        ZOO["transformer_encoder"].build(),
        input_shape=(SEQ,),
        input_dtype="int64",
        out_dir=out,
        lr=0.02,
        trainable=["head.*"],
        lora=LoraOptions(rank=2, targets=("encoder.*",), alpha=4.0, seed=7),
    )
    return load_bundle(out)


def test_only_adapters_and_the_head_are_trainable(lora_bundle: Bundle) -> None:
    m = lora_bundle.manifest
    adapters = {f"{p}.lora_{k}" for p in ADAPTED for k in "AB"}
    assert set(m.trainable_names) == adapters | {"head.weight", "head.bias"}
    assert {f"{p}.base_weight" for p in ADAPTED} <= set(m.frozen_names)
    assert "embed.weight" in m.frozen_names and "encoder.linear1.bias" in m.frozen_names
    assert m.backends == ("ort-training", "ort-portable")
    assert m.lora is not None and (m.lora.rank, m.lora.alpha, m.lora.seed) == (2, 4.0, 7)
    assert [a.module for a in m.lora.adapters] == list(ADAPTED)
    initial = lora_bundle.initial_parameters()
    for a in m.lora.adapters:  # B starts at zero, A small and seeded
        assert not initial[a.lora_b].any() and 0 < np.abs(initial[a.lora_a]).max() <= 1.0
    assert m.verification.values["lora_merge_max_abs_diff"] <= 1e-4


@pytest.mark.parametrize("backend_name", ["ort-training", "ort-portable"])
def test_both_backends_train_adapters_and_only_they_travel(
    lora_bundle: Bundle, backend_name: str
) -> None:
    from fedge.agent.backends import create_backend

    m = lora_bundle.manifest
    x, y = token_data(192, seed=1)
    backend = create_backend(backend_name)
    backend.load(lora_bundle)
    initial = lora_bundle.initial_parameters()
    backend.set_parameters(initial)
    before = backend.evaluate(x, y).loss
    backend.train(x, y, epochs=8, batch_size=32, seed=0)
    after = backend.evaluate(x, y).loss
    assert after < 0.8 * before, (before, after)
    trained = backend.get_parameters()
    delta = {n: trained[n] - initial[n] for n in initial}
    for name in static_names(m):  # the frozen base did not move, so leaving it home loses nothing
        assert not delta[name].any(), name
    sent = travelling_delta(m, delta)
    assert set(sent) == set(m.trainable_names)
    assert all(sent[f"{p}.lora_B"].any() for p in ADAPTED)  # the adapters did learn


def test_model_export_merges_adapters_into_a_plain_model(
    lora_bundle: Bundle, tmp_path: Path
) -> None:
    from fedge.agent.backends import create_backend
    from fedge.cli import main
    from fedge.orchestrator.store import Store
    from fedge.protocol.inference import InferenceRunner
    from fedge.protocol.ort_runtime import import_onnxruntime
    from fedge.protocol.tensors import encode_tensors

    backend = create_backend("ort-training")
    backend.load(lora_bundle)
    x, y = token_data(128, seed=2)
    backend.train(x, y, epochs=4, batch_size=32, seed=0)
    trained = backend.get_parameters()
    assert all(trained[a.lora_b].any() for a in lora_bundle.manifest.lora.adapters)
    db = tmp_path / "orchestrator.db"
    store = Store(db)
    store.create_run("run-1", lora_bundle.content_hash, {}, encode_tensors(trained), "0" * 64)
    store.close()
    out = tmp_path / "model.onnx"
    argv = ["model", "export", "--database", str(db), "--bundle", str(lora_bundle.root)]
    assert main([*argv, "--version", "0", "--out", str(out)]) == 0

    import onnx

    names = {i.name for i in onnx.load(str(out)).graph.initializer}
    assert not any("lora" in n or "base_weight" in n for n in names), sorted(names)
    assert {f"{p}.weight" for p in ADAPTED} <= names
    ort = import_onnxruntime()
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    probe, _ = token_data(16, seed=3)
    merged = session.run(None, {session.get_inputs()[0].name: probe})[0]
    with_adapters = InferenceRunner(lora_bundle, trained).run(probe)
    assert np.abs(with_adapters).max() > 0.1
    np.testing.assert_allclose(merged, with_adapters, rtol=1e-5, atol=1e-5)


def run_cli(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="fedge")
    cli.register(parser.add_subparsers())
    args = parser.parse_args(list(argv))
    return args.func(args)


def _export_args(tmp_path: Path, *extra: str) -> list[str]:
    model = tmp_path / "text.py"
    model.write_text(
        "import torch\n"
        "from torch import nn\n"
        "def build():\n"
        "    torch.manual_seed(0)\n"
        "    return nn.Sequential(nn.Linear(6, 4), nn.ReLU(), nn.Linear(4, 3))\n"
    )
    return ["export", f"{model}:build", "--input-shape", "6", "--out", str(tmp_path / "b"), *extra]


def test_a_glob_matching_no_linear_layer_names_the_linear_layers(tmp_path: Path) -> None:
    with pytest.raises(ExportError) as err:
        run_cli(*_export_args(tmp_path, "--lora", "2", "--lora-targets", "encoder.*"))
    text = str(err.value)
    assert "'encoder.*' matches no Linear layer" in text
    assert "0 (6->4), 2 (4->3)" in text
    assert not (tmp_path / "b").exists()


@pytest.mark.parametrize(
    ("rank", "message"),
    [
        ("0", "--lora rank must be a positive integer, got 0"),
        ("-3", "--lora rank must be a positive integer, got -3"),
        ("5", "--lora 5 is larger than Linear layer '0' allows (6 -> 4: rank at most 4)"),
    ],
)
def test_a_rank_out_of_range_is_refused(tmp_path: Path, rank: str, message: str) -> None:
    with pytest.raises(ExportError, match=message.replace("(", r"\(").replace(")", r"\)")):
        run_cli(*_export_args(tmp_path, "--lora", rank, "--lora-targets", "0"))


def test_lora_options_need_lora_and_heads_may_not_train_a_wrapped_base(tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="--lora-targets and --lora-alpha need --lora RANK"):
        run_cli(*_export_args(tmp_path, "--lora-targets", "0"))
    with pytest.raises(ExportError, match="would train the frozen base weight of LoRA layer '0'"):
        run_cli(*_export_args(tmp_path, "--lora", "2", "--lora-targets", "0", "--trainable", "0.*"))
