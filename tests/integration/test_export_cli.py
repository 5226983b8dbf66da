"""``fedge export`` / ``inspect`` / ``keys`` as commands (parsed in-process)."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

from fedge.exporter import cli
from fedge.protocol.errors import FedgeError

pytestmark = pytest.mark.integration


def run(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="fedge")
    cli.register(parser.add_subparsers())
    args = parser.parse_args(list(argv))
    return args.func(args)


def test_keys_export_inspect(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run("keys", "generate", "--out", str(tmp_path / "keys")) == 0
    model_file = tmp_path / "my_model.py"
    model_file.write_text(
        "import torch\n"
        "def build():\n"
        "    torch.manual_seed(0)\n"
        "    return torch.nn.Sequential(torch.nn.Linear(6, 3))\n"
    )
    out = tmp_path / "b"
    assert (
        run(
            "export",
            f"{model_file}:build",
            "--input-shape",
            "6",
            "--optimizer",
            "sgd",
            "--out",
            str(out),
            "--archive",
            "--sign-key",
            str(tmp_path / "keys/signing.key"),
            "--frozen",
            "0.bias",
        )
        == 0
    )
    text = capsys.readouterr().out
    assert "content hash:" in text and "signature:     verified:" in text  # was "unverified"
    assert (
        run("inspect", str(out) + ".fedge", "--public-key", str(tmp_path / "keys/signing.pub")) == 0
    )
    text = capsys.readouterr().out
    assert "signature:     verified:" in text
    assert "0.bias" in text and "no" in text.split("0.bias")[1].splitlines()[0]


def test_inspect_rejects_other_key(tmp_path: Path) -> None:
    run("keys", "generate", "--out", str(tmp_path), "--name", "a")
    run("keys", "generate", "--out", str(tmp_path), "--name", "b")
    run(
        "export",
        "fedge.demo.models:digits_mlp",
        "--input-shape",
        "64",
        "--out",
        str(tmp_path / "d"),
        "--sign-key",
        str(tmp_path / "a.key"),
        "--no-verify",
    )
    with pytest.raises(FedgeError, match="does not verify"):
        run("inspect", str(tmp_path / "d"), "--public-key", str(tmp_path / "b.pub"))


def test_bad_model_spec(tmp_path: Path) -> None:
    with pytest.raises(FedgeError, match="has no attribute 'nope'"):
        run("export", "fedge.demo.models:nope", "--input-shape", "64", "--out", str(tmp_path))


def test_help_has_examples_and_cli_module_does_not_import_torch() -> None:
    parser = argparse.ArgumentParser(prog="fedge")
    sub = parser.add_subparsers()
    cli.register(sub)
    for name in ("export", "inspect", "keys"):
        assert "Example:" in sub.choices[name].format_help()
    code = "import sys, fedge.exporter.cli; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_inspect_batchnorm_bundle_and_broken_copies(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model_file = tmp_path / "bn_model.py"
    model_file.write_text(
        "import torch\n"
        "def build():\n"
        "    torch.manual_seed(0)\n"
        "    return torch.nn.Sequential(torch.nn.Linear(6, 8, bias=False), "
        "torch.nn.BatchNorm1d(8), torch.nn.ReLU(), torch.nn.Linear(8, 3))\n"
    )
    out = tmp_path / "bn"
    assert run("export", f"{model_file}:build", "--input-shape", "6", "--out", str(out)) == 0
    capsys.readouterr()
    assert run("inspect", str(out)) == 0
    text = capsys.readouterr().out
    assert "backends:      ort-training" in text
    assert "1.running_mean" in text and "no (BatchNorm running stat)" in text
    assert "running_stats_max_abs_diff" in text and "BatchNorm" in text.split("patches:")[1]
    # a tampered file and a truncated file: each a clear error naming the file
    import shutil

    tampered = tmp_path / "tampered"
    shutil.copytree(out, tampered)
    data = bytearray((tampered / "eval_model.onnx").read_bytes())
    data[-1] ^= 0xFF
    (tampered / "eval_model.onnx").write_bytes(bytes(data))
    with pytest.raises(FedgeError, match="bundle file 'eval_model.onnx' has sha256"):
        run("inspect", str(tampered))
    truncated = tmp_path / "truncated"
    shutil.copytree(out, truncated)
    ckpt = truncated / "checkpoint"
    ckpt.write_bytes(ckpt.read_bytes()[:100])
    with pytest.raises(FedgeError, match=r"bundle file 'checkpoint' has sha256 .* \(100 bytes\)"):
        run("inspect", str(truncated))
    archive = tmp_path / "cut.fedge"
    assert run("export", f"{model_file}:build", "--input-shape", "6", "--out", str(archive)) == 0
    archive.write_bytes(archive.read_bytes()[:-200])
    with pytest.raises(FedgeError, match="not a bundle archive"):
        run("inspect", str(archive))


def test_custom_onnxblock_loss_from_the_command_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    zoo = Path(__file__).resolve().parents[1] / "zoo"
    out = tmp_path / "huber"
    code = run(
        "export", f"{zoo / 'models.py'}:regressor", "--input-shape", "8",
        "--loss", f"{zoo / 'losses.py'}:SmoothL1Loss",
        "--torch-loss", "torch.nn.functional:smooth_l1_loss",
        "--optimizer", "sgd", "--lr", "0.1", "--out", str(out),
    )  # fmt: skip
    assert code == 0
    from fedge.protocol.bundle import load_bundle

    manifest = load_bundle(out).manifest
    assert manifest.loss.type == "custom" and manifest.loss.block == "SmoothL1Loss"
    assert manifest.verification.step_max_abs_diff < 1e-5  # checked against the twin
    with pytest.raises(FedgeError, match="has no attribute 'NoSuchLoss'"):
        run("export", f"{zoo / 'models.py'}:regressor", "--input-shape", "8",
            "--loss", f"{zoo / 'losses.py'}:NoSuchLoss", "--out", str(tmp_path / "x"))  # fmt: skip
