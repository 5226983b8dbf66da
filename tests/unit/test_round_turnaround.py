"""Between two rounds, nothing waits that need not: the next round's task replaces the
commit's "closed" one at once, and central evaluation is off the critical path: the next round
opens (its task is published) before the last version is evaluated, and the metrics still land
on that version.
A real Orchestrator and SQLite store on the in-memory transport; the evaluator is a recorder
(the toy bundle holds no runnable model; the real CentralEvaluator has its integration tests)."""

from __future__ import annotations

import numpy as np
from support.memory_device import MemoryFederation

from fedge.protocol.messages import RoundEvent, RoundTask, parse_message


class RecordingEvaluator:
    """Returns fixed metrics and records what the fleet had been told when it was called."""

    def __init__(self, fed: MemoryFederation) -> None:
        self.fed = fed
        self.calls: list[tuple[float, RoundTask | None]] = []

    def evaluate(self, params: dict[str, np.ndarray]) -> dict[str, float]:
        # the retained task as a device connecting now would get it
        retained = self.fed.broker.retained.get(self.fed.orch.topics.round_current)
        seen = parse_message(retained, RoundTask) if retained else None
        self.calls.append((float(params["fc.weight"].flat[0]), seen))
        return {"test_accuracy": 0.5 + 0.1 * len(self.calls), "test_samples": 7.0}


def _train_round(fed: MemoryFederation, value: float) -> None:
    for d in fed.devices:
        if d.params is None:  # not pushed (an orchestrator that does not push): pull them
            d.fetch_params()
            fed.settle()
        template = d.params
        assert template is not None
        d.offer({n: np.full(a.shape, value, a.dtype) for n, a in template.items()}, inline=True)
    fed.settle()


def test_the_next_round_opens_before_the_evaluation_and_the_metrics_land_on_the_version(
    tmp_path,
):
    fed = MemoryFederation(tmp_path, 2, rounds=2)
    watcher = fed.broker.client("watcher")
    watcher.subscribe(fed.orch.topics.orchestrator_events)
    watcher.start()
    evaluator = RecordingEvaluator(fed)
    fed.orch.evaluator = evaluator

    _train_round(fed, 0.1)
    v1 = fed.version(1)
    (first,) = evaluator.calls
    assert first[0] == v1["fc.weight"].flat[0]  # it evaluated version 1 ...
    seen = first[1]
    assert seen is not None and (seen.state, seen.round) == ("open", 2)  # ... after round 2 opened
    run = fed.orch.run_id
    r1 = fed.orch.store.get_round(run, 1)
    assert r1.metrics["test_accuracy"] == 0.6 and "train_loss" in r1.metrics
    versions = dict(
        fed.orch.store.db.execute(
            "SELECT version, metrics FROM model_versions WHERE run_id=?", (run,)
        ).fetchall()
    )
    assert '"test_accuracy": 0.6' in versions[1]

    _train_round(fed, 0.2)  # the last round: evaluated before the run finishes
    assert len(evaluator.calls) == 2
    assert fed.orch.store.get_round(run, 2).metrics["test_accuracy"] == 0.7
    assert fed.devices[0].task is not None and fed.devices[0].task.state == "finished"
    events = []
    while (item := watcher.get(timeout=0)) is not None:
        events.append(parse_message(item[1], RoundEvent))
    kinds = [e.kind for e in events]
    assert kinds.index("version_evaluated") > kinds.index(
        "round_started", kinds.index("round_committed")
    )
    evaluated = [e for e in events if e.kind == "version_evaluated"]
    assert [(e.model_version, e.metrics["test_accuracy"]) for e in evaluated] == [
        (1, 0.6),
        (2, 0.7),
    ]
    assert kinds[-1] == "run_finished"


def _task_states(watcher) -> list[tuple[str, int]]:
    out = []
    while (item := watcher.get(timeout=0)) is not None:
        task = parse_message(item[1], RoundTask)
        assert isinstance(task, RoundTask)
        out.append((task.state, task.round))
    return out


def _watch_tasks(fed: MemoryFederation):
    watcher = fed.broker.client("task-watcher")
    watcher.subscribe(fed.orch.topics.round_current)
    watcher.start()
    return watcher


def test_the_next_task_replaces_the_closed_one_when_it_opens_at_once(tmp_path):
    fed = MemoryFederation(tmp_path, 2, rounds=2)
    watcher = _watch_tasks(fed)  # the retained task: round 1 open
    _train_round(fed, 0.1)
    _train_round(fed, 0.2)
    assert _task_states(watcher) == [("open", 1), ("open", 2), ("finished", 0)]


def test_a_commit_is_announced_closed_when_no_round_can_open_yet(tmp_path):
    fed = MemoryFederation(tmp_path, 2, rounds=2)
    watcher = _watch_tasks(fed)
    fed.devices[1].status("ineligible")  # round 2 will lack its second device
    _train_round(fed, 0.1)
    assert fed.round(1).state == "committed" and fed.orch.current is None
    assert _task_states(watcher) == [("open", 1), ("closed", 0)]
