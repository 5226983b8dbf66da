"""Site rounds on an in-memory transport: a real SiteOrchestrator and Store, scripted devices.

The central FedAvg over two sites' aggregates equals the flat FedAvg over their four devices
(plain FedAvg, robust weighting off); a site restarted mid-round keeps its counted update and
still yields one aggregate; asked again after committing, it gives the same one back.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from support.memory_device import FakeClock, MemoryDevice, settle, start_orchestrator
from support.toy_bundle import write_toy_bundle

from fedge.orchestrator.config import OrchestratorConfig, RobustSettings, RoundSettings
from fedge.orchestrator.server import Orchestrator
from fedge.orchestrator.site import SiteOrchestrator, SiteRequest, local_run_id
from fedge.orchestrator.site_config import SiteConfig, SiteSettings
from fedge.orchestrator.strategies import FedAvg
from fedge.protocol.bundle import load_bundle
from fedge.protocol.messages import TrainConfig
from fedge.protocol.tensors import decode_tensors, encode_tensors
from fedge.protocol.transport import InMemoryBroker

ROBUST_OFF = RobustSettings(sample_cap_multiple=0, max_claimed_samples=0, norm_multiple=0)
SAMPLES = {"dev-0": 37, "dev-1": 210, "dev-2": 5, "dev-3": 91}
SITES = {"site-a": ["dev-0", "dev-1"], "site-b": ["dev-2", "dev-3"]}


def _deltas(params: dict[str, np.ndarray]) -> dict[str, dict[str, np.ndarray]]:
    rng = np.random.default_rng(7)
    return {
        dev: {n: rng.standard_normal(a.shape).astype(a.dtype) for n, a in params.items()}
        for dev in SAMPLES
    }


def _train(orch, devices: list[MemoryDevice], deltas) -> None:
    for d in devices:
        d.fetch_params()
        settle(orch, devices)
        assert d.params is not None, f"{d.id} got no parameters"
        d.offer(deltas[d.id])
        settle(orch, devices)


class SiteUnderTest:
    def __init__(self, tmp: Path, name: str, bundle, clock: FakeClock) -> None:
        self.broker = InMemoryBroker()
        self.cfg = SiteConfig(
            federation=f"{name}-local",
            database=str(tmp / f"{name}.db"),
            rounds=RoundSettings(min_devices=2, deadline_seconds=60.0),
            robust=ROBUST_OFF,
            site=SiteSettings(id=name, federation="central"),
        )
        self.devices = [
            MemoryDevice(self.broker, d, federation=f"{name}-local", samples=SAMPLES[d])
            for d in SITES[name]
        ]
        self.bundle, self.clock = bundle, clock
        self.orch = self.restart()

    def restart(self) -> SiteOrchestrator:
        self.orch = start_orchestrator(
            SiteOrchestrator, self.cfg, self.broker, self.bundle, self.clock, self.devices
        )
        return self.orch

    def begin(self, request: SiteRequest):
        result = self.orch.begin(request)
        settle(self.orch, self.devices)
        return result


def _request(params: bytes) -> SiteRequest:
    return SiteRequest("central-run", 4, params, TrainConfig(), deadline_seconds=50.0)


def _flat_v1(tmp: Path, bundle, clock, deltas) -> dict[str, np.ndarray]:
    broker = InMemoryBroker()
    cfg = OrchestratorConfig(
        database=str(tmp / "flat.db"),
        rounds=RoundSettings(rounds=1, min_devices=4, deadline_seconds=60.0),
        robust=ROBUST_OFF,
    )
    devices = [MemoryDevice(broker, d, samples=n) for d, n in SAMPLES.items()]
    orch = start_orchestrator(Orchestrator, cfg, broker, bundle, clock, devices)
    _train(orch, devices, deltas)
    return decode_tensors(orch.store.version_params(orch.run_id, 1))


def test_central_fedavg_over_sites_equals_flat_fedavg_over_devices(tmp_path: Path) -> None:
    bundle = load_bundle(write_toy_bundle(tmp_path / "bundle"))
    clock = FakeClock()
    g = bundle.initial_parameters()
    deltas = _deltas(g)
    flat = _flat_v1(tmp_path, bundle, clock, deltas)

    central = FedAvg().start_aggregation(g)
    params = encode_tensors(g)
    for name in SITES:
        site = SiteUnderTest(tmp_path, name, bundle, clock)
        assert site.begin(_request(params)) is None
        task = site.devices[0].task
        assert task is not None and task.round == 4  # the central round's number
        _train(site.orch, site.devices, deltas)
        result = site.orch.result
        assert result is not None and result.devices == 2
        assert result.num_samples == sum(SAMPLES[d] for d in SITES[name])
        central.add(result.delta, result.num_samples)
    via_sites = central.result()
    assert via_sites is not None
    for n in g:
        assert not np.allclose(flat[n], g[n])  # the round moved the model
        np.testing.assert_allclose(via_sites[n], flat[n], rtol=1e-6, atol=1e-6)


def test_a_restarted_site_keeps_its_counted_update_and_answers_once(tmp_path: Path) -> None:
    bundle = load_bundle(write_toy_bundle(tmp_path / "bundle"))
    clock = FakeClock()
    g = bundle.initial_parameters()
    deltas = _deltas(g)
    request = _request(encode_tensors(g))
    site = SiteUnderTest(tmp_path, "site-a", bundle, clock)
    site.begin(request)
    _train(site.orch, site.devices[:1], deltas)  # dev-0 counted, then the site dies
    run_id = local_run_id(request.run_id, request.round)
    assert site.orch.store.accepted_claims(run_id, 4) == [("dev-0", SAMPLES["dev-0"])]
    site.orch.store.close()

    site.restart()
    assert site.begin(request) is None  # resumed, not answered yet
    assert site.orch.current is not None and site.orch.current.reports == 1
    _train(site.orch, site.devices[1:], deltas)
    result = site.orch.result
    assert result is not None and result.devices == 2
    expected = {
        n: (SAMPLES["dev-0"] * deltas["dev-0"][n] + SAMPLES["dev-1"] * deltas["dev-1"][n])
        / (SAMPLES["dev-0"] + SAMPLES["dev-1"])
        for n in g
    }
    for n in g:
        np.testing.assert_allclose(result.delta[n], expected[n], rtol=1e-5, atol=1e-6)
    site.orch.store.close()

    site.restart()  # killed after the commit, before the upload was safe: asked again
    again = site.begin(request)
    assert again is not None and again.num_samples == result.num_samples
    for n in g:
        np.testing.assert_array_equal(again.delta[n], result.delta[n])
    assert [r["run_id"] for r in site.orch.store.runs()] == [run_id]  # no second site round


def test_site_config_refuses_one_federation_for_both_sides(tmp_path: Path) -> None:
    from fedge.protocol.errors import ConfigError
    from fedge.protocol.settings import load_settings

    path = tmp_path / "site.toml"
    path.write_text('federation = "clinics"\n[site]\nid = "site-a"\nfederation = "clinics"\n')
    with pytest.raises(ConfigError, match="need a federation name of their own"):
        load_settings(SiteConfig, path)
    path.write_text('federation = "a-local"\n[site]\nid = "site-a"\nfederation = "clinics"\n')
    with pytest.raises(ConfigError, match="must be the site id"):
        load_settings(SiteConfig, path, overrides=["site.mqtt.username=someone"])
    assert load_settings(SiteConfig, path).site.federation == "clinics"
