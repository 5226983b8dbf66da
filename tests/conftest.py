"""Shared fixtures: real Mosquitto brokers, demo data federations, a default test timeout."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from support.mosquitto import MosquittoBroker, free_port, make_users

from fedge.demo.data import FederationData, make_federation

DEFAULT_TEST_TIMEOUT_S = 300

__all__ = ["free_port"]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Give every test a pytest-timeout limit unless one is configured or marked."""
    if config.getoption("timeout", None) is not None or os.environ.get("PYTEST_TIMEOUT"):
        return
    try:
        if config.getini("timeout"):
            return
    except ValueError:  # pytest-timeout is not installed: nothing to configure
        return
    for item in items:
        if item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(DEFAULT_TEST_TIMEOUT_S))


@pytest.fixture(autouse=True)
def _restore_root_logging() -> Iterator[None]:
    """A test that runs a CLI entry point configures the root logger with a handler on the
    stderr pytest captured for *that* test; a later test's log call would then write to a
    closed stream ("--- Logging error ---" in its output). Put the root logger back."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture
def mosquitto_factory(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Callable[..., MosquittoBroker]]:
    """Yield ``make(**kwargs) -> MosquittoBroker`` (started); every broker stops at teardown.

    kwargs go to ``MosquittoBroker`` (users, federation, orchestrator_user, port, persistence).
    """
    brokers: list[MosquittoBroker] = []

    def make(**kwargs: Any) -> MosquittoBroker:
        broker = MosquittoBroker(tmp_path_factory.mktemp("mosquitto"), **kwargs)
        brokers.append(broker)
        return broker.start()

    yield make
    for broker in reversed(brokers):
        broker.stop()


@pytest.fixture
def mosquitto(mosquitto_factory: Callable[..., MosquittoBroker]) -> MosquittoBroker:
    """A running broker, federation ``demo``; users fedge-orchestrator and dev-0..dev-4."""
    return mosquitto_factory(users=make_users(5))


@pytest.fixture(scope="session")
def digits_federation(tmp_path_factory: pytest.TempPathFactory) -> FederationData:
    """Digits split over 3 devices (Dirichlet alpha=0.5, seed 0) in SQLite, plus test.db."""
    out: Path = tmp_path_factory.mktemp("digits-federation")
    return make_federation(out, dataset="digits", n_devices=3, alpha=0.5, seed=0)


_BUNDLES: dict[tuple[str, float], Path] = {}


@pytest.fixture(scope="session")
def digits_bundle_factory(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """``make(optimizer="adamw", lr=0.01) -> Path``: the digits MLP bundle (with the portable
    step), exported once per session for each optimizer/lr: exports dominate integration setup."""

    def make(optimizer: str = "adamw", lr: float = 0.01) -> Path:
        key = (optimizer, lr)
        if key not in _BUNDLES:
            from fedge.demo.models import digits_mlp
            from fedge.exporter.export import export_bundle

            out = tmp_path_factory.mktemp("digits-bundle") / f"{optimizer}-{lr}"
            _BUNDLES[key] = export_bundle(
                digits_mlp(),
                input_shape=(64,),
                out_dir=out,
                optimizer=optimizer,
                lr=lr,
                num_classes=10,
                model_name="digits-mlp",
            )
        return _BUNDLES[key]

    return make
