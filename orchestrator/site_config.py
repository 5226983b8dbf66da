"""Settings of a site aggregator (``fedge orchestrator --role site``): an orchestrator's
settings for the site's own devices plus ``[site]``, the face it shows the central federation.

The site's devices form a federation of their own on the site's broker (``federation``, e.g.
``hospital-a``); ``[site]`` names the site as one device of the central federation
(``site.federation``) and the broker login it uses for that on the same site broker, whose
bridge carries exactly that device's topics to and from the central broker (docs/sites.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated

from fedge.protocol.errors import ConfigError
from fedge.protocol.fields import MAX_SECONDS, NAME, Len, Range
from fedge.protocol.mqtt_link import MqttSettings

from .config import OrchestratorConfig


@dataclass
class SiteSettings:
    """The ``[site]`` table: who the site is to the central orchestrator."""

    id: Annotated[str, NAME] = "site-0"  # the site's device id in the central federation
    federation: Annotated[str, NAME] = "demo"  # the central federation's name
    state_dir: Annotated[str, Len(1, 4096)] = "./fedge-site-state"  # outbox, journal, bundles
    offer_retry_seconds: Annotated[float, Range(0, MAX_SECONDS, lo_open=True)] = 15.0
    # the site's login on its own broker for the central federation's topics (username = id)
    mqtt: MqttSettings = field(default_factory=MqttSettings)


@dataclass
class SiteConfig(OrchestratorConfig):
    site: SiteSettings = field(default_factory=SiteSettings)

    def validate(self) -> None:
        super().validate()
        if self.mode != "sync":
            raise ConfigError(
                'a site aggregator runs synchronous rounds (mode = "sync"): it answers the '
                "central orchestrator's round with one site round"
            )
        if self.site.federation == self.federation:
            raise ConfigError(
                f"site.federation and federation are both {self.federation!r}: the site's own "
                "devices need a federation name of their own on the site broker (e.g. "
                f"'{self.federation}-{self.site.id}'), or its rounds would collide with the "
                "central ones the bridge brings in"
            )
        if self.site.mqtt.username and self.site.mqtt.username != self.site.id:
            raise ConfigError(
                f"site.mqtt.username must be the site id {self.site.id!r} (the broker ACL ties "
                f"topics to the login), got {self.site.mqtt.username!r}"
            )
