"""A model with two inputs (int64 token ids + a float mask: Embedding, masked mean, Linear)
exported with ``fedge export --input NAME:DTYPE:SHAPE`` for both backends, then trained and
scored by the agent's backends and the inference runner on both inputs."""

from __future__ import annotations

import argparse
import contextlib
import io
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from fedge.agent.backends import create_backend
from fedge.exporter import cli
from fedge.exporter.errors import ExportError
from fedge.exporter.export import export_bundle
from fedge.exporter.inputs import InputArg
from fedge.protocol.bundle import load_bundle
from fedge.protocol.inference import InferenceRunner

pytestmark = pytest.mark.integration

SEQ, VOCAB = 6, 20
MODEL_FILE = '''
import torch
from torch import nn


class TokenMask(nn.Module):
    """Embedding over int64 tokens, mean-pooled over the unmasked positions, a Linear head."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(20, 8)
        self.head = nn.Linear(8, 2)

    def forward(self, tokens, mask):
        summed = (self.embed(tokens) * mask.unsqueeze(-1)).sum(dim=1)
        return self.head(summed / mask.sum(dim=1, keepdim=True).clamp(min=1.0))


def build():
    torch.manual_seed(0)
    return TokenMask()
'''


def run(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="fedge")
    cli.register(parser.add_subparsers())
    args = parser.parse_args(list(argv))
    return args.func(args)


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str]:
    """(model file, bundle, the command's output) exported once through the CLI."""
    tmp = tmp_path_factory.mktemp("multi")
    model_file = tmp / "text_mask.py"
    model_file.write_text(MODEL_FILE)
    out = tmp / "bundle"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = run(
            "export",
            f"{model_file}:build",
            "--input",
            f"tokens:int64:{SEQ}",
            "--input",
            f"mask:float32:{SEQ}",
            "--num-classes",
            "2",
            "--lr",
            "0.05",
            "--out",
            str(out),
        )
    assert code == 0
    return model_file, out, printed.getvalue()


def _batch(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, VOCAB, (n, SEQ)).astype(np.int64)
    mask = (np.arange(SEQ) < rng.integers(1, SEQ + 1, (n, 1))).astype(np.float32)
    y = ((tokens < 10) * mask).sum(1) > mask.sum(1) / 2
    return tokens, mask, y.astype(np.int64)


def test_both_backends_are_exported_with_every_input(exported):
    _, out, printed = exported
    m = load_bundle(out).manifest
    assert [(s.name, s.dtype, s.shape) for s in m.inputs] == [
        ("tokens", "int64", (None, SEQ)),
        ("mask", "float32", (None, SEQ)),
    ]
    assert m.backends == ("ort-training", "ort-portable"), m.portable
    assert m.portable is not None and m.portable.input_names == ("tokens", "mask")
    # the Embedding reading the tokens bounds them; the mask is no id
    assert [(s.ids_below, s.ids_module) for s in m.inputs] == [(20, "embed"), (None, "")]
    v = m.verification.values
    assert v["forward_max_abs_diff"] < 1e-4 and v["step_max_abs_diff"] < 1e-4, v
    assert v["portable"]["step_max_abs_diff"] < 1e-4, v["portable"]
    assert "inputs:        tokens int64[batch,6], mask float32[batch,6]" in printed
    assert "backends:      ort-training, ort-portable\n" in printed


def test_the_backends_train_alike_and_inference_reads_both_inputs(exported):
    model_file, out, _ = exported
    bundle = load_bundle(out)
    tokens, mask, y = _batch(64)
    params = {}
    for name in ("ort-training", "ort-portable"):
        backend = create_backend(name)
        backend.load(bundle)
        result = backend.train((tokens, mask), y, epochs=2, batch_size=16, seed=3)
        assert result.steps == 8 and np.isfinite(result.loss)
        params[name] = backend.get_parameters()
    for key, value in params["ort-training"].items():
        np.testing.assert_allclose(value, params["ort-portable"][key], atol=1e-4)
    # the inference model with the trained weights is the PyTorch model with them
    from fedge.exporter.loading import load_model

    model = load_model(f"{model_file}:build").eval()
    model.load_state_dict({k: torch.from_numpy(v) for k, v in params["ort-training"].items()})
    with torch.no_grad():
        want = model(torch.from_numpy(tokens), torch.from_numpy(mask)).numpy()
    got = InferenceRunner(bundle, params["ort-training"]).run((tokens, mask))
    np.testing.assert_allclose(got, want, atol=1e-5)
    # a padding position's token must not matter: the mask reaches the model
    changed = np.where(mask > 0, tokens, (tokens + 7) % VOCAB)
    np.testing.assert_allclose(
        InferenceRunner(bundle, params["ort-training"]).run((changed, mask)), got, atol=1e-6
    )


def test_bad_input_declarations_are_refused_with_the_fix(tmp_path, exported):
    model_file, _, _ = exported
    with pytest.raises(ExportError, match="must look like NAME:DTYPE:SHAPE"):
        run("export", f"{model_file}:build", "--input", "tokens:16", "--out", str(tmp_path / "a"))
    with pytest.raises(ExportError, match="not both"):
        run(
            "export",
            f"{model_file}:build",
            "--input-shape",
            "6",
            "--input",
            "tokens:int64:6",
            "--out",
            str(tmp_path / "b"),
        )
    with pytest.raises(ExportError, match="'labels' is taken by the training graph"):
        run(
            "export",
            f"{model_file}:build",
            "--input",
            "labels:int64:6",
            "--out",
            str(tmp_path / "c"),
        )

    class IgnoresMask(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed, self.head = nn.Embedding(VOCAB, 4), nn.Linear(4, 2)

        def forward(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
            return self.head(self.embed(tokens).mean(dim=1))

    with pytest.raises(
        ExportError, match="no input 'mask': the model's forward\\(\\) does not use"
    ):
        export_bundle(
            IgnoresMask(),
            inputs=[InputArg("tokens", "int64", (SEQ,)), InputArg("mask", "float32", (SEQ,))],
            out_dir=tmp_path / "d",
        )
    assert not (tmp_path / "d").exists()  # no half-written bundle
