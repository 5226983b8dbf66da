"""What the orchestrator tells the fleet, built as plain values (the server publishes them).

The retained round task says which round is open (or that none is, or that the run finished)
and how devices should pace themselves; each invited device gets its own retained invitation
(it names no other device: protocol/invitations.py); the round event is the progress line a person or the
demo follows. Building them here keeps the server's code to "decide, store, publish".
"""

from __future__ import annotations

from dataclasses import replace

from fedge.protocol.invitations import Invitation
from fedge.protocol.messages import BlobRef, RoundEvent, RoundTask, Standardization, TrainConfig

from .config import RoundSettings
from .round_machine import LiveRound
from .store import RoundRecord
from .strategies import Strategy


def train_config(rounds: RoundSettings, strategy: Strategy) -> TrainConfig:
    """The local training every device does this round (the strategy may adjust it)."""
    base = TrainConfig(
        local_epochs=rounds.local_epochs,
        batch_size=rounds.batch_size,
        max_samples=rounds.max_samples,
        seed=rounds.seed,
        learning_rate=rounds.learning_rate,
        optimizer=rounds.optimizer,
        weight_decay=rounds.weight_decay,
        compression=rounds.compression,
        topk_fraction=rounds.topk_fraction,
        clip_norm=rounds.clip_norm,
        noise_multiplier=rounds.noise_multiplier,
    )
    return strategy.configure_train(base)


def round_task(
    *,
    state: str,
    live: LiveRound | None,
    run_id: str,
    version: int,
    bundle_hash: str,
    bundle: BlobRef,
    params: BlobRef,
    config: TrainConfig,
    rounds: RoundSettings,
    now: float,
    next_round_at: float,
    standardize: Standardization | None = None,
) -> RoundTask:
    """The retained task: ``live`` is the open round (None when closed or finished);
    ``standardize``: the run's feature statistics once combined (every later task has them)."""
    if live is not None:
        retry_after = max(1.0, live.deadline - now)  # check back when this round is over
    elif state == "finished":
        retry_after = rounds.check_back_seconds
    else:
        retry_after = max(1.0, next_round_at - now)
    return RoundTask(
        run_id=run_id,
        round=live.round if live else 0,
        model_version=version,
        state=state,
        bundle_hash=bundle_hash,
        bundle=bundle,
        params=params,
        invited=len(live.participants) if live else 0,
        deadline=live.deadline if live else 0.0,
        config=replace(
            config,
            evaluate_only=bool(live and live.kind == "evaluate"),
            statistics_only=bool(live and live.kind == "statistics"),
        ),
        retry_after=round(retry_after, 1),
        standardize=standardize or Standardization(),
        # small parameters go to each participant unasked (server._push_params)
        params_pushed=live is not None and 0 < params.size <= rounds.inline_max_bytes,
        inline_max_bytes=rounds.inline_max_bytes,
    )


def invitations(live: LiveRound, skip: set[str] | None = None) -> list[tuple[str, bytes]]:
    """(agent id, encoded Invitation) for every participant of ``live`` not in ``skip``."""
    skip = skip or set()
    return [
        (agent, Invitation(run_id=live.run_id, round=live.round, agent=agent).encode())
        for agent in live.participants
        if agent not in skip
    ]


def round_event(
    kind: str, run_id: str, version: int, r: RoundRecord | None, now: float
) -> RoundEvent:
    """A progress event (round_started, round_committed, ..., run_finished)."""
    return RoundEvent(
        run_id=run_id,
        kind=kind,
        round=r.round if r else 0,
        model_version=version,
        reports=r.reports if r else 0,
        participants=len(r.participants) if r else 0,
        metrics={k: float(v) for k, v in (r.metrics if r else {}).items()},
        ts=now,
    )
