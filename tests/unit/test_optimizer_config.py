"""``[rounds] optimizer`` / ``weight_decay``: checked at start against what the bundle carries,
and carried to the devices in the round task."""

from __future__ import annotations

from pathlib import Path

import pytest
from support.toy_bundle import toy_manifest, write_toy_bundle

from fedge.orchestrator.announcements import train_config
from fedge.orchestrator.config import OrchestratorConfig, RoundSettings
from fedge.orchestrator.optimizer_check import check_optimizer
from fedge.orchestrator.server import Orchestrator
from fedge.orchestrator.strategies import create_strategy
from fedge.protocol.errors import ConfigError
from fedge.protocol.manifest import Manifest
from fedge.protocol.messages import RoundTask, parse_message
from fedge.protocol.settings import load_settings
from fedge.protocol.transport import InMemoryBroker


def two_optimizers(*, portable_decay: bool = True) -> Manifest:
    body = toy_manifest()
    body["optimizers"] = [
        {"type": "adamw", "lr": 0.01, "hyperparameters": {"weight_decay": 0.01},
         "files": {"ort-training": "optimizer_model.onnx", "ort-portable": "portable_step.onnx"}},
        {"type": "sgd", "lr": 0.05, "hyperparameters": {"weight_decay": 0.0},
         "files": {"ort-training": "o_sgd.onnx", "ort-portable": "p_sgd.onnx"}},
    ]  # fmt: skip
    body["portable"] = {
        "available": True, "file": "portable_step.onnx", "buffers_file": None, "state": [],
        "inputs": {"input": "input", "label": "labels", "lr": "lr",
                   **({"weight_decay": "weight_decay"} if portable_decay else {})},
        "outputs": ["loss"], "dynamic_batch": True, "opset": 18, "ir_version": 10,
    }  # fmt: skip
    body["backends"] = ["ort-training", "ort-portable"]
    return Manifest.from_dict(body, draft=True)


def test_the_default_is_the_bundles_first_optimizer() -> None:
    assert check_optimizer(RoundSettings(), two_optimizers()).type == "adamw"
    assert check_optimizer(RoundSettings(optimizer="sgd"), two_optimizers()).type == "sgd"


@pytest.mark.parametrize(
    ("rounds", "fragment"),
    [
        (RoundSettings(optimizer="adam"), "bundle 'toy' carries adamw, sgd; got 'adam'"),
        (
            RoundSettings(optimizer="sgd", weight_decay=0.1),
            "rounds.weight_decay: weight decay 0.1 with optimizer sgd: .* neither weight decay nor momentum",
        ),
    ],
)
def test_a_choice_the_bundle_cannot_run_is_refused(rounds: RoundSettings, fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        check_optimizer(rounds, two_optimizers())


def test_a_portable_step_with_built_in_decay_refuses_another_decay() -> None:
    old = two_optimizers(portable_decay=False)
    assert check_optimizer(RoundSettings(weight_decay=0.01), old).type == "adamw"  # its own
    with pytest.raises(ConfigError, match="re-export it, or leave rounds.weight_decay at -1"):
        check_optimizer(RoundSettings(weight_decay=0.1), old)


def test_weight_decay_out_of_range_is_refused_at_load(tmp_path: Path) -> None:
    for toml, fragment in (
        ("[rounds]\nweight_decay = -0.5", "rounds.weight_decay must be >= 0, or -1"),
        ("[rounds]\nweight_decay = 20.0", "rounds.weight_decay must be <= 10"),
    ):
        cfg = tmp_path / "o.toml"
        cfg.write_text(toml + "\n")
        with pytest.raises(ConfigError, match=fragment):
            load_settings(OrchestratorConfig, cfg, env={})


def test_the_orchestrator_refuses_at_start_and_names_what_the_bundle_carries(tmp_path: Path):
    cfg = OrchestratorConfig(
        bundle=str(write_toy_bundle(tmp_path / "bundle")), database=str(tmp_path / "o.db")
    )
    cfg.rounds.optimizer = "adamw"  # the toy bundle carries sgd only
    with pytest.raises(ConfigError, match="bundle 'toy' carries sgd; got 'adamw'"):
        Orchestrator(cfg, transport=InMemoryBroker().client("orch"))


def test_the_choice_travels_in_the_round_task(tmp_path: Path) -> None:
    cfg = tmp_path / "o.toml"
    cfg.write_text('[rounds]\noptimizer = "sgd"\nlearning_rate = 0.2\n')
    rounds = load_settings(OrchestratorConfig, cfg, env={"FEDGE_ROUNDS_WEIGHT_DECAY": "0"}).rounds
    config = train_config(rounds, create_strategy("fedavg", None))
    assert (config.optimizer, config.learning_rate, config.weight_decay) == ("sgd", 0.2, 0.0)
    task = RoundTask(
        run_id="r", round=1, model_version=0, state="open", bundle_hash="", bundle=_ref(),
        params=_ref(), config=config,
    )  # fmt: skip
    assert parse_message(task.encode()).config == config


def _ref():
    from fedge.protocol.messages import BlobRef

    return BlobRef("0" * 64, 1, 1)
