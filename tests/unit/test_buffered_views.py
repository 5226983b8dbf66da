"""fedge status / history / plot of an asynchronous run, read from its database read-only."""

from __future__ import annotations

from support.async_federation import AsyncFederation

from fedge.orchestrator.buffered_views import async_history_table, plot_async
from fedge.orchestrator.history import status_text
from fedge.orchestrator.store import Store


def test_status_history_and_plot_show_versions_staleness_and_devices_training(tmp_path):
    fed = AsyncFederation(tmp_path, 3, versions=5, buffer_size=1, staleness="polynomial")
    slow = fed.ask(0)
    slow.fetch_params()
    fed.settle()
    fed.train(fed.ask(1), 0.1)  # v1 (fresh)
    slow.offer({n: a * 0 + 0.1 for n, a in slow.params.items()})  # v2, staleness 1
    fed.settle()
    fed.ask(2)  # training now
    store = Store.open_read_only(tmp_path / "o.db")
    run = fed.orch.run_id
    text = status_text(store, run)
    assert "mode: async" in text and "latest v2" in text
    assert "devices training now: 1: dev-2 (v2)" in text
    assert "    0:      1 " in text and "    1:      1 " in text  # the staleness histogram
    table = async_history_table(store, run).splitlines()
    assert len(table) == 4 and table[3].split()[:4] == ["2", table[3].split()[1], "1", "0.707"]
    out = plot_async(store, run, tmp_path / "a.png", title="t")
    assert out.stat().st_size > 1000
    # a synchronous run's status has no async lines
    assert "rounds:" not in text
