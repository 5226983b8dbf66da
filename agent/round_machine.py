"""The agent's round decisions as plain functions: given what the device knows, what to do next.

No I/O here. The daemon (agent/daemon.py) gathers the facts -- the open round's task, that
round's journal entry, whether the bundle and the parameters are at hand, the eligibility
decision, the outbox -- asks these functions for the next step and carries it out. Every fact
the decisions depend on survives a restart (journal, outbox, bundle cache), so a restarted agent
reaches the same decision: an offered delta is offered again, an interrupted round is trained
again, a finished one is left alone.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum

from fedge.protocol.async_messages import AsyncAnnounce
from fedge.protocol.messages import RoundTask

from .eligibility import Decision
from .pacing import resend_due, resend_interval
from .state import OutboxItem

# Journal statuses after which a round needs nothing more from this device. "training" (killed
# mid-round) and "interrupted" (stopped mid-round) are not final: the round is trained again.
FINAL_STATES = frozenset({"offered", "acked", "rejected", "aborted", "evaluated", "expired"})
INTERRUPTED = "interrupted"
# an outbox entry is dropped this long after its round's deadline (tolerates clock skew between
# the device and the orchestrator, which closes the round at the deadline by its own clock)
OUTBOX_GRACE_SECONDS = 30.0
EXPIRED_DETAIL = "the round's deadline passed unacknowledged"


class Action(str, Enum):
    IGNORE = "ignore"  # the task needs nothing from this device (the reason says why)
    WAIT = "wait"  # the round needs this device but cannot progress now (offline)
    ABORT = "abort"  # tell the orchestrator this device will not report, and why
    FETCH_BUNDLE = "fetch_bundle"  # start/continue the bundle download; install it when done
    FETCH_PARAMS = "fetch_params"  # start/continue the download of the round's parameters
    TRAIN = "train"
    EVALUATE = "evaluate"  # federated evaluation round: evaluate the global model, no training
    STATISTICS = "statistics"  # standardization: report per-feature statistics, no training
    OFFER = "offer"  # publish an outbox entry's offer (first time, or after a reconnect)
    REOFFER = "reoffer"  # publish it again: no ack came within the re-send interval
    EXPIRE = "expire"  # drop an outbox entry whose round closed long ago
    INTERRUPT = "interrupt"  # journal the round as interrupted: trained again after a restart


@dataclass(frozen=True)
class Step:
    action: Action
    reason: str = ""
    sha256: str = ""  # the outbox entry an OFFER/REOFFER/EXPIRE step is about


@dataclass(frozen=True)
class RoundFacts:
    """What the daemon knows about the current task without asking sensors or the cache."""

    task: RoundTask | None
    agent_id: str
    journal: str  # status of the task's round in the journal ("" if it has no entry)
    now: float  # wall clock, the orchestrator's time base for deadlines
    connected: bool
    stopping: bool = False  # the agent was asked to stop: start nothing new


def next_step(
    facts: RoundFacts,
    *,
    eligibility: Callable[[], Decision],
    bundle_ready: Callable[[], bool],
    params_ready: Callable[[], bool],
) -> Step:
    """The next thing to do for the current task.

    The callables are consulted only once the round needs this device, in this order (sensor
    reads and cache checks are not free): eligibility, bundle, parameters.
    """
    task = facts.task
    if task is None:
        return Step(Action.IGNORE, "no round")
    if task.state != "open":
        return Step(Action.IGNORE, f"round {task.round} is {task.state}")
    if facts.agent_id not in task.participants:
        return Step(Action.IGNORE, f"not a participant of round {task.round}")
    if facts.journal in FINAL_STATES:
        return Step(Action.IGNORE, f"round {task.round} already {facts.journal}")
    if task.deadline and facts.now > task.deadline:
        return Step(Action.IGNORE, f"the deadline of round {task.round} has passed")
    if facts.stopping:
        return Step(Action.WAIT, "agent stopping")
    if not facts.connected:
        return Step(Action.WAIT, "offline")
    decision = eligibility()
    if not decision.eligible:
        return Step(Action.ABORT, f"not eligible: {decision.reason}")
    if not bundle_ready():
        return Step(Action.FETCH_BUNDLE)
    if not params_ready():
        return Step(Action.FETCH_PARAMS)
    if task.config.statistics_only:
        return Step(Action.STATISTICS)
    return Step(Action.EVALUATE if task.config.evaluate_only else Action.TRAIN)


def objects_to_keep(task: RoundTask | None, agent_id: str, journal: str) -> set[str]:
    """The sha256s of downloads worth continuing: the round's parameters only while the round
    still needs this device; the bundle while any round uses it (the next one will need it)."""
    if task is None:
        return set()
    keep = {task.bundle.sha256}
    if task.state == "open" and agent_id in task.participants and journal not in FINAL_STATES:
        keep.add(task.params.sha256)
    return keep


def after_training(problem: str, *, stopping: bool) -> Step:
    """What to do with a finished (or stopped) training run.

    A run stopped because the agent itself is stopping (SIGTERM) is not the round's fault: it
    is journaled as interrupted and not reported, so the restarted agent trains the round again.
    A run that completed is offered even if a stop came meanwhile.
    """
    if not problem:
        return Step(Action.OFFER)
    if stopping:
        return Step(Action.INTERRUPT, problem)
    return Step(Action.ABORT, problem)


def outbox_steps(
    items: Sequence[OutboxItem],
    *,
    task: RoundTask | None,
    agent_id: str,
    now: float,
    mono_now: float,
    last_sent: Mapping[str, float],
    base_interval: float,
    connected: bool,
) -> list[Step]:
    """EXPIRE, OFFER or REOFFER steps for the unacknowledged deltas (``now``: wall clock for
    deadlines; ``mono_now`` and ``last_sent``: monotonic times of the last sends)."""
    steps: list[Step] = []
    for item in items:
        if 0 < item.deadline < now - OUTBOX_GRACE_SECONDS:
            steps.append(Step(Action.EXPIRE, EXPIRED_DETAIL, item.sha256))
            continue
        if not connected:
            continue
        every = resend_interval(task, agent_id, item.run_id, item.round, base_interval)
        last = last_sent.get(item.sha256)
        if resend_due(last, mono_now, every):
            action = Action.OFFER if last is None else Action.REOFFER
            steps.append(Step(action, "", item.sha256))
    return steps


def report_step(
    task: RoundTask | None,
    *,
    agent_id: str,
    journal: str,
    acked: bool,
    connected: bool,
    mono_now: float,
    last_sent: float | None,
    base_interval: float,
) -> Step:
    """Whether to (re)send the open evaluation (or statistics) round's report (journaled as
    ``evaluated``)."""
    reports = task is not None and (task.config.evaluate_only or task.config.statistics_only)
    if task is None or task.state != "open" or not reports:
        return Step(Action.IGNORE, "no open evaluation round")
    if acked or journal != "evaluated" or not connected:
        return Step(Action.IGNORE, "report acked, not made, or offline")
    every = resend_interval(task, agent_id, task.run_id, task.round, base_interval)
    if not resend_due(last_sent, mono_now, every):
        return Step(Action.IGNORE, "sent recently")
    return Step(Action.OFFER if last_sent is None else Action.REOFFER)


def task_changed(old: RoundTask | None, new: RoundTask) -> bool:
    """Whether ``new`` moves the round on (a QoS 1 redelivery of the same task does not)."""
    return old is None or (new.run_id, new.round, new.state) != (old.run_id, old.round, old.state)


def round_news(seen: RoundTask | None, task: RoundTask, agent_id: str, now: float) -> str:
    """The log line a new round task is worth for this device, or "" when it says nothing new.

    ``seen`` is the last task received. A round's opening is news; its closing only after this
    device saw it open (the orchestrator publishes "closed" also between rounds and after a
    restart, with round 0); a run's end once. Redeliveries of the same task are never news.
    """
    if seen is not None and not task_changed(seen, task):
        return ""
    if task.state == "open":
        invited = task.invited or len(task.participants)  # invitations travel per device
        if agent_id in task.participants:
            return (
                f"round {task.round} of run {task.run_id} open: this device is one of "
                f"{invited} invited (deadline in {task.deadline - now:.0f} s)"
            )
        return (
            f"round {task.round} of run {task.run_id} open without this device ({invited} invited)"
        )
    if task.state == "closed":
        if seen is not None and seen.state == "open" and seen.run_id == task.run_id:
            return f"round {seen.round} of run {task.run_id} closed"
        return ""
    if seen is not None and seen.state == "finished" and seen.run_id == task.run_id:
        return ""
    return (
        f"run {task.run_id} finished at model v{task.model_version}; "
        "the agent stays connected for the next run"
    )


def slot_request_due(
    announce: AsyncAnnounce | None,
    task: RoundTask | None,
    *,
    agent_id: str,
    journal: str,
    now: float,
    mono_now: float,
    last_request: float | None,
    outbox_busy: bool,
    eligible: bool,
    connected: bool,
    stopping: bool = False,
) -> bool:
    """Asynchronous runs: whether to ask the orchestrator for a training slot now.

    Only an idle device asks: connected, eligible, not stopping, nothing in its outbox (one
    delta in flight at a time), and not still working on a slot of this run (a slot is done
    once its journal entry is final or its deadline passed). It asks at most once per the
    announcement's ``retry_after`` and not while the announcement says no slot is free.
    """
    if announce is None or announce.state != "open" or announce.slots_free <= 0:
        return False
    if not connected or stopping or not eligible or outbox_busy:
        return False
    holding = (
        task is not None
        and task.state == "open"
        and task.run_id == announce.run_id
        and agent_id in task.participants
        and journal not in FINAL_STATES
        and not (task.deadline and now > task.deadline)
    )
    if holding:
        return False
    return resend_due(last_request, mono_now, max(0.05, announce.retry_after))
