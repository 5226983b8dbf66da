"""A site aggregator: one process beside a site's Mosquitto, a device upstream and an
orchestrator downstream.

Upstream it is an ordinary agent (agent/daemon.py: journal, outbox, chunked uploads, acks)
of the central federation, reached through the site broker's bridge; its "training" is a site
round (``SiteRunner.train``), run by the ``SiteOrchestrator`` over the site's own devices on
the same broker. One thread: while a site round runs, the upstream agent waits inside
``train`` as it would for ONNX Runtime, and the site orchestrator is polled there.

Example::

    site = SiteAggregator(load_settings(SiteConfig, "site.toml"))
    site.run()
"""

from __future__ import annotations

import logging
import threading
import time

from fedge.agent.config import AgentConfig
from fedge.agent.daemon import Agent
from fedge.agent.local_training import LocalUpdate
from fedge.agent.round_runner import RoundRunner
from fedge.protocol.errors import FedgeError
from fedge.protocol.messages import RoundTask
from fedge.protocol.mqtt_link import MqttLink
from fedge.protocol.parameter_travel import travelling_delta
from fedge.protocol.transport import Transport

from .site import SiteOrchestrator, request_from_task
from .site_config import SiteConfig

log = logging.getLogger(__name__)

POLL_SECONDS = 0.05  # each side's wait per turn of the loop
# the site round closes this long before the central deadline (the aggregate's upload), or
# a quarter of the central round's time if that is shorter
UPLOAD_MARGIN_SECONDS = 5.0


class SiteBackend:
    """What the upstream agent reports as its backend: a site, not an ONNX Runtime."""

    name = "site"
    runtime = "fedge site aggregator"


class SiteRunner(RoundRunner):
    """The upstream agent's local work: a site round instead of training on local rows."""

    def __init__(self, site: SiteAggregator, agent: Agent) -> None:
        super().__init__(
            agent.cfg,
            agent.backend,  # a SiteBackend: never trains
            agent.state,
            agent.policy,
            agent.clock,
            stopping=lambda: agent.stopping,
            on_decision=lambda _decision: None,
        )
        self.site = site

    @property
    def num_samples(self) -> int:
        """The site's rows as its status announces them: its devices' announced samples (the
        central orchestrator's ceiling on what the site may claim)."""
        registry = self.site.orch.registry
        return sum(registry.registered_samples(a) or 0 for a in registry.devices)

    @num_samples.setter
    def num_samples(self, _value: int) -> None:  # RoundRunner.__init__ sets it
        pass

    def read_local(self, bundle, standardize=None):
        if standardize is not None and standardize.enabled:
            raise FedgeError(
                "a site does not take part in standardized runs yet (rounds.standardize)"
            )
        return None  # the rows are on the site's devices

    def train(self, task: RoundTask, bundle, params_bytes: bytes, samples) -> LocalUpdate:
        if bundle.content_hash != self.site.orch.bundle.content_hash:
            raise FedgeError(
                f"the central round trains bundle {bundle.content_hash[:12]}, this site's "
                f"orchestrator has {self.site.orch.bundle.content_hash[:12]}: give the site "
                "the same bundle (its `bundle` setting)"
            )
        update = self.site.run_site_round(task, params_bytes)
        if update.delta:
            update.delta = travelling_delta(bundle.manifest, update.delta)
        return update

    def evaluate(self, task, bundle, params_bytes):
        raise FedgeError("a site does not take part in federated evaluation rounds yet")

    def statistics(self, task, bundle):
        raise FedgeError("a site does not take part in feature statistics rounds yet")


class SiteAggregator:
    """The site process: ``run()`` until ``stop()``."""

    def __init__(
        self,
        config: SiteConfig,
        *,
        down: Transport | None = None,
        up: Transport | None = None,
    ) -> None:
        self.cfg = config
        queue_bytes = config.limits.receive_queue_mib << 20
        down = down or MqttLink(
            config.mqtt, client_id=config.client_id, max_queued_bytes=queue_bytes
        )
        self.orch = SiteOrchestrator(config, transport=down)
        s = config.site
        mqtt = s.mqtt
        if not mqtt.username:
            mqtt.username = s.id
        agent_cfg = AgentConfig(
            id=s.id,
            federation=s.federation,
            state_dir=s.state_dir,
            offer_retry_seconds=s.offer_retry_seconds,
            nice=0,
            mqtt=mqtt,
        )
        up = up or MqttLink(mqtt, client_id=s.id)
        self.agent = Agent(agent_cfg, transport=up, backend=SiteBackend())  # type: ignore[arg-type]
        self.agent.runner = SiteRunner(self, self.agent)
        self._stop = threading.Event()

    def stop(self) -> None:
        self._stop.set()
        self.agent.stop()

    def run_site_round(self, task: RoundTask, params: bytes) -> LocalUpdate:
        """One site round for the central ``task``, starting from ``params``; returns when it
        commits (the site's update), or with a ``problem`` when it cannot in time."""
        now = time.time()
        margin = min(UPLOAD_MARGIN_SECONDS, max(0.0, task.deadline - now) / 4)
        request = request_from_task(task, params, now=now, margin=margin)
        result = self.orch.begin(request)
        while result is None:
            if self.agent.stopping:
                self.orch.give_up()
                return LocalUpdate(problem="training stopped: site stopping")
            if time.time() > task.deadline:
                self.orch.give_up()
                return LocalUpdate(problem="the site round did not commit before the deadline")
            self.orch.poll(POLL_SECONDS)
            result = self.orch.result
        self.orch.request = None
        metrics = dict(result.metrics)
        return LocalUpdate(
            "",
            result.delta,
            metrics,
            num_samples=result.num_samples,
            loss=metrics.get("train_loss", 0.0),
        )

    def run(self) -> None:
        orch, agent = self.orch, self.agent
        orch.start()
        agent.start()
        try:
            while not self._stop.is_set():
                orch.poll(POLL_SECONDS)
                item = agent.transport.get(timeout=POLL_SECONDS)
                while item is not None:
                    agent.handle(*item)
                    item = agent.transport.get(timeout=0) if agent.transport.pending() else None
                agent.tick()
        finally:
            try:
                agent.close()
            finally:
                orch.transport.stop()
                orch.registry.flush(everything=True)
                orch.store.close()
