"""Federated standardization on the in-memory transport: a real Orchestrator and SQLite Store,
scripted devices that report statistics of their own rows, a fake clock. The combined mean
and std must be numpy's over the union of the devices' rows; they survive a restart; bad
reports are refused with the reason; the exported inference model takes raw features."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from support.memory_device import FakeClock, MemoryDevice, settle, start_orchestrator
from support.toy_bundle import PARAMS, toy_manifest, write_toy_bundle

from fedge.orchestrator.config import OrchestratorConfig, RobustSettings, RoundSettings
from fedge.orchestrator.history import status_text
from fedge.orchestrator.model_export import export_version
from fedge.orchestrator.server import Orchestrator
from fedge.protocol.bundle import load_bundle, write_manifest
from fedge.protocol.errors import ConfigError, MessageError
from fedge.protocol.inference import InferenceRunner
from fedge.protocol.messages import StatsReport, new_msg_id, parse_message
from fedge.protocol.standardization import local_stats, standardize
from fedge.protocol.tensors import decode_tensors, encode_tensors
from fedge.protocol.transport import InMemoryBroker

ROBUST_OFF = RobustSettings(sample_cap_multiple=0, max_claimed_samples=0, norm_multiple=0)
# three devices whose features live on very different scales (breast_cancer-like)
SCALES = np.array([1e-3, 1.0, 4e3])


def rows(seed: int, n: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.normal(loc=SCALES * (seed + 1), scale=SCALES, size=(n, 3))


def stats_report(device: MemoryDevice, x: np.ndarray, **fields) -> StatsReport:
    task = device.task
    assert task is not None and task.config.statistics_only, task
    s = local_stats(x)
    base = dict(
        msg_id=new_msg_id(),
        agent=device.id,
        run_id=task.run_id,
        round=task.round,
        model_version=task.model_version,
        num_samples=len(x),
        count=s.count,
        sum=s.sum,
        sumsq=s.sumsq,
    )
    return StatsReport(**(base | fields))


class Federation:
    def __init__(self, tmp_path: Path, devices: int, bundle: Path | None = None, **rounds) -> None:
        self.broker = InMemoryBroker()
        self.clock = FakeClock()
        self.bundle = load_bundle(bundle or write_toy_bundle(tmp_path / "bundle"))
        settings = {"rounds": 1, "min_devices": devices, "standardize": True} | rounds
        self.cfg = OrchestratorConfig(
            database=str(tmp_path / "o.db"), rounds=RoundSettings(**settings), robust=ROBUST_OFF
        )
        self.devices = [MemoryDevice(self.broker, f"dev-{i}") for i in range(devices)]
        self.orch = self.new_orchestrator()

    def new_orchestrator(self) -> Orchestrator:
        self.orch = start_orchestrator(
            Orchestrator, self.cfg, self.broker, self.bundle, self.clock, self.devices
        )
        return self.orch

    def settle(self) -> None:
        settle(self.orch, self.devices)

    def report(self, device: MemoryDevice, x: np.ndarray, **fields) -> None:
        device.send(stats_report(device, x, **fields))
        self.settle()


def test_the_statistics_round_combines_numpy_mean_and_std_over_all_rows(tmp_path):
    fed = Federation(tmp_path, 3)
    task = fed.devices[0].task
    assert task is not None and task.state == "open" and task.round == 1
    assert task.config.statistics_only and not task.config.evaluate_only
    assert sorted(d.id for d in fed.devices if d.invited) == ["dev-0", "dev-1", "dev-2"]
    assert not task.standardize.enabled  # nothing combined yet
    data = [rows(i, n) for i, n in enumerate((40, 7, 113))]
    for device, x in zip(fed.devices, data, strict=True):
        fed.report(device, x)
    union = np.concatenate(data)
    mean, std = fed.orch.store.standardization(fed.orch.run_id)
    np.testing.assert_allclose(mean, union.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(std, union.std(axis=0), rtol=1e-9)  # population std (ddof 0)
    r = fed.orch.store.get_round(fed.orch.run_id, 1)
    assert (r.kind, r.state, r.reports, r.metrics["stat_rows"]) == (
        "statistics",
        "combined",
        3,
        160,
    )
    assert all(a.accepted for d in fed.devices for a in d.acks)
    status = status_text(fed.orch.store, fed.orch.run_id)
    assert "features standardized: 3 features, statistics of 160 rows on 3 devices" in status
    # the next round trains, and its task carries the statistics to every device
    nxt = fed.devices[1].task
    assert nxt.round == 2 and nxt.state == "open" and not nxt.config.statistics_only
    assert nxt.standardize.mean == mean and nxt.standardize.std == std
    assert parse_message(nxt.encode()) == nxt  # bounded fields round-trip exactly


def test_a_restart_after_the_statistics_round_keeps_them_and_runs_no_second_one(tmp_path):
    fed = Federation(tmp_path, 2)
    for i, device in enumerate(fed.devices):
        fed.report(device, rows(i, 20))
    kept = fed.orch.store.standardization(fed.orch.run_id)
    run_id = fed.orch.run_id
    fed.orch.store.close()
    orch = fed.new_orchestrator()  # same database: resumes the run
    assert orch.run_id == run_id
    assert orch.standardization is not None
    assert (orch.standardization.mean, orch.standardization.std) == kept
    task = fed.devices[0].task
    assert task.round == 2 and not task.config.statistics_only  # the training round continues
    assert (task.standardize.mean, task.standardize.std) == kept
    kinds = [r.kind for r in orch.store.rounds(run_id)]
    assert kinds == ["statistics", "train"]


def test_a_device_that_joins_later_trains_with_the_stored_statistics(tmp_path):
    fed = Federation(tmp_path, 2, rounds=2)
    for i, device in enumerate(fed.devices):
        fed.report(device, rows(i, 20))
    kept = fed.orch.store.standardization(fed.orch.run_id)
    late = MemoryDevice(fed.broker, "dev-late")
    fed.devices.append(late)
    fed.settle()
    assert (late.task.standardize.mean, late.task.standardize.std) == kept  # retained task
    for device in fed.devices[:2]:  # round 2 trains without it (it was not eligible yet)
        device.fetch_params()
        fed.settle()
        device.offer(encode_tensors({"fc.weight": np.zeros((2, 3), np.float32)}))
        fed.settle()
    task = late.task
    assert task.round == 3 and late.invited
    assert not task.config.statistics_only  # no second statistics round for a newcomer
    assert (task.standardize.mean, task.standardize.std) == kept
    assert [r.kind for r in fed.orch.store.rounds(fed.orch.run_id)] == [
        "statistics",
        "train",
        "train",
    ]


def test_a_restart_during_the_statistics_round_keeps_the_counted_reports(tmp_path):
    fed = Federation(tmp_path, 2)
    a, b = rows(0, 30), rows(1, 50)
    fed.report(fed.devices[0], a)
    fed.orch.store.close()
    fed.new_orchestrator()
    fed.report(fed.devices[1], b)
    mean, _std = fed.orch.store.standardization(fed.orch.run_id)
    np.testing.assert_allclose(mean, np.concatenate([a, b]).mean(axis=0), rtol=1e-12)


def test_a_feature_count_mismatch_is_refused_with_the_reason(tmp_path):
    fed = Federation(tmp_path, 2)
    good, bad = fed.devices
    fed.report(bad, rows(1, 10)[:, :2])  # two features; the model's input has three
    (ack,) = bad.acks
    assert not ack.accepted
    assert "statistics for 2 features, but the model's input has 3" in ack.reason
    fed.report(good, rows(0, 10))  # the round closes on the good report alone
    r = fed.orch.store.get_round(fed.orch.run_id, 1)
    assert (r.state, r.reports, r.rejected) == ("combined", 1, 1)
    (row,) = fed.orch.store.db.execute(
        "SELECT reason FROM updates WHERE agent_id='dev-1' AND status='rejected'"
    ).fetchall()
    assert "2 features" in row[0]
    mean, _ = fed.orch.store.standardization(fed.orch.run_id)
    np.testing.assert_allclose(mean, rows(0, 10).mean(axis=0))


def test_statistics_no_real_rows_can_give_are_refused_with_the_reason(tmp_path):
    fed = Federation(tmp_path, 1)
    (device,) = fed.devices
    x = rows(0, 10)
    s = local_stats(x)
    fed.report(device, x, sumsq=[v / 100 for v in s.sumsq])  # sum^2 > n * sumsq
    assert not device.acks[-1].accepted
    assert "sum of squares is smaller than real rows allow" in device.acks[-1].reason
    r = fed.orch.store.get_round(fed.orch.run_id, 1)
    assert (r.state, r.note) == ("abandoned", "no statistics reports")
    fed.clock.advance(fed.cfg.rounds.retry_seconds)
    fed.settle()
    assert device.task.round == 2 and device.task.config.statistics_only  # tried again
    fed.report(device, x, num_samples=5)  # counts above the rows reported
    assert "a feature count is outside 1..5" in device.acks[-1].reason
    assert fed.orch.store.standardization(fed.orch.run_id) is None  # nothing combined
    fed.clock.advance(fed.cfg.rounds.retry_seconds)
    fed.settle()
    fed.report(device, x)
    assert fed.orch.store.standardization(fed.orch.run_id) is not None


def test_non_finite_statistics_never_reach_the_orchestrator():
    report = StatsReport("m", "dev-0", "r", 1, 0, 2, [2, 2], [1.0, 2.0], [1.0, 4.0])
    assert parse_message(report.encode()) == report
    data = json.loads(report.encode())
    data["sum"][1] = float("nan")
    with pytest.raises(MessageError, match=r"stats.sum\[1\] must be a finite number"):
        parse_message(json.dumps(data).encode())
    data["sum"][1] = 2.0
    data["sumsq"] = [1.0]
    with pytest.raises(MessageError, match="stats lists differ in length"):
        parse_message(json.dumps(data).encode())


def test_standardize_is_refused_with_client_dp_and_for_id_inputs(tmp_path):
    with pytest.raises(ConfigError, match="cannot be combined with client-level DP"):
        RoundSettings(standardize=True, clip_norm=1.0).validate()
    root = write_toy_bundle(tmp_path / "ids")
    manifest = toy_manifest()
    manifest["inputs"][0]["dtype"] = "int64"
    write_manifest(root, manifest)
    with pytest.raises(ConfigError, match="takes int64 values .* not standardized"):
        Federation(tmp_path, 1, bundle=root)
    # a model with two inputs (token ids + a mask): statistics cover one input
    root = write_toy_bundle(tmp_path / "two")
    manifest = toy_manifest()
    manifest["inputs"].append({"name": "mask", "dtype": "float32", "shape": [None, 3]})
    write_manifest(root, manifest)
    with pytest.raises(ConfigError, match="the model has 2 inputs; federated standardization"):
        Federation(tmp_path, 1, bundle=root)


def _bundle_with_real_inference(root: Path) -> Path:
    """The toy bundle with a real inference.onnx: logits = input @ fc.weight^T + fc.bias."""
    from onnx import TensorProto, helper, numpy_helper, save

    write_toy_bundle(root)
    graph = helper.make_graph(
        [
            helper.make_node("Gemm", ["input", "fc.weight", "fc.bias"], ["logits"], transB=1),
        ],
        "toy",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [None, 3])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [None, 2])],
        [numpy_helper.from_array(v, k) for k, v in PARAMS.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    save(model, str(root / "inference.onnx"))
    write_manifest(root, toy_manifest())  # the hashes of the real file
    return root


def test_the_exported_model_takes_raw_features_like_the_trained_model_standardized(tmp_path):
    from fedge.protocol.ort_runtime import import_onnxruntime

    fed = Federation(tmp_path, 2, bundle=_bundle_with_real_inference(tmp_path / "bundle"))
    data = [rows(0, 25), rows(1, 35)]
    for device, x in zip(fed.devices, data, strict=True):
        fed.report(device, x)
    for device in fed.devices:  # one training round: version 1 is a trained model
        device.fetch_params()
        fed.settle()
        delta = {"fc.weight": np.full((2, 3), 0.25, np.float32)}
        device.offer(encode_tensors(delta))
        fed.settle()
    run_id = fed.orch.run_id
    assert fed.orch.store.latest_version(run_id)[0] == 1
    out = export_version(fed.orch.store, run_id, 1, fed.bundle, tmp_path / "model.onnx")
    ort = import_onnxruntime()
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    raw = rows(2, 16)  # rows no device had
    got = session.run(None, {"input": raw.astype(np.float32)})[0]
    mean, std = fed.orch.store.standardization(run_id)
    params = decode_tensors(fed.orch.store.version_params(run_id, 1))
    want = InferenceRunner(fed.bundle, params).run(standardize(raw, mean, std).astype(np.float32))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    unstandardized = InferenceRunner(fed.bundle, params).run(raw.astype(np.float32))
    assert not np.allclose(got, unstandardized, atol=1e-2)  # the step really is inside
