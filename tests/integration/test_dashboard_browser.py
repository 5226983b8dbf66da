"""The dashboard in a real headless Chromium against a live run: Mosquitto, an orchestrator
process and 3 agent processes. The page shows the devices and the accuracy curve, and updates
by itself when further rounds commit. Also: the page of a run with refusals and an ineligible
device, and of an asynchronous run, and the page behind a token."""

from __future__ import annotations

import time

import pytest
from support.async_federation import AsyncFederation
from support.browser import headless_chromium
from support.dashboard import DashboardProcess, fill_sync_run
from support.fleet import Fleet, agent_config, orchestrator_config

from fedge.orchestrator.store import Store

pytestmark = pytest.mark.integration

DEVICES = 3


@pytest.fixture(scope="module")
def digits_bundle(digits_bundle_factory):
    return digits_bundle_factory("adamw", 0.01)


def wait_for(what: str, check, timeout: float, diagnostics=lambda: ""):
    """check()'s first truthy value within timeout seconds, else a failure saying what."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"{what} not within {timeout} s\n{diagnostics()}")


def test_the_page_shows_a_live_run_and_updates_without_reloading(
    mosquitto, digits_federation, digits_bundle, tmp_path
):
    headless = headless_chromium()  # fails with "install chromium" before the fleet starts
    fleet = Fleet(tmp_path)
    db = tmp_path / "orchestrator.db"
    dash = None
    try:
        for i, data in enumerate(digits_federation.device_paths[:DEVICES]):
            fleet.start(
                f"dev-{i}", "agent", agent_config(f"dev-{i}", mosquitto, data, tmp_path / f"s{i}")
            )
        rounds = {
            "rounds": 500,  # more than the test waits for: the run is still going at the end
            "min_devices": DEVICES,
            "min_reports": DEVICES,
            "deadline_seconds": 60,
            "local_epochs": 1,
            "batch_size": 32,
        }
        cfg = orchestrator_config(mosquitto, digits_bundle, db, digits_federation.test_path, rounds)
        fleet.start("orchestrator", "orchestrator", cfg)
        wait_for("the orchestrator's database", db.exists, 30, fleet.all_logs)
        dash = DashboardProcess(db, "--interval", "0.5")

        headless.get(dash.url)
        headless.execute_script("window.fedgeTestMarker = 'same page';")

        def rows():
            return headless.execute_script(
                "return [...document.querySelectorAll('#fleet tbody tr')]"
                ".map(tr => [...tr.cells].map(td => td.textContent));"
            )

        def page_state():
            return headless.execute_script(
                "return {versions: +document.getElementById('version-count').textContent,"
                " points: +document.getElementById('accuracy-chart').dataset.points,"
                " updates: +(document.body.dataset.updates || 0),"
                " canvas: (document.querySelector('#accuracy-chart canvas') || {}).width || 0,"
                " marker: window.fedgeTestMarker || null};"
            )

        def logs():
            return f"page: {page_state()}\n{fleet.all_logs()}\n{dash.stop()}"

        wait_for(f"{DEVICES} devices in the fleet table", lambda: len(rows()) == DEVICES, 30, logs)
        first = wait_for(
            "an accuracy curve of 2+ versions",
            lambda: (s := page_state())["points"] >= 2 and s["canvas"] > 0 and s,
            30,
            logs,
        )
        table = rows()
        assert sorted(r[0] for r in table) == [f"dev-{i}" for i in range(DEVICES)]
        assert all(r[2] == "yes" for r in table), table  # eligible
        assert all(r[3].startswith("ort-") for r in table), table  # the backend each reported
        headless.save_screenshot(str(tmp_path / "dashboard.png"))

        # a further round commits: the page shows more versions, in the same page (no reload)
        later = wait_for(
            "a further committed version on the page",
            lambda: (s := page_state())["versions"] > first["versions"] and s,
            20,
            logs,
        )
        assert later["marker"] == "same page" and later["updates"] > first["updates"]
        assert later["points"] > first["points"]
        assert fleet.procs["orchestrator"].poll() is None, "the run should still be going"
        errors = [e for e in headless.get_log("browser") if e["level"] == "SEVERE"]
        assert not errors, errors  # no script error, no CSP violation, nothing failed to load
    finally:
        headless.quit()
        if dash is not None:
            dash.stop()
        fleet.stop_all()


def table_text(browser, table_id: str) -> list[list[str]]:
    return browser.execute_script(
        f"return [...document.querySelectorAll('#{table_id} tbody tr')]"
        ".map(tr => [...tr.cells].map(td => td.textContent));"
    )


def test_the_page_shows_reasons_and_an_async_buffer_and_needs_its_token(tmp_path):
    sync_db, async_db = tmp_path / "sync" / "o.db", tmp_path / "async" / "o.db"
    sync_db.parent.mkdir()
    async_db.parent.mkdir()
    fill_sync_run(Store(sync_db))
    fed = AsyncFederation(async_db.parent, 3, versions=5, buffer_size=2)
    fed.train(fed.ask(0), 0.1)  # one delta in the buffer
    fed.ask(1)  # dev-1 training now
    browser = headless_chromium()
    dashes = []
    try:
        dash = DashboardProcess(sync_db, "--host", "0.0.0.0", "--interval", "0.5")
        dashes.append(dash)
        browser.get(dash.base + "/")  # without the token: nothing but the 401 text
        assert "needs its token" in browser.find_element("tag name", "body").text
        browser.get(dash.base + "/?token=" + dash.url.split("?token=")[1])
        wait_for("the refused updates", lambda: table_text(browser, "refused"), 15)
        fleet = table_text(browser, "fleet")
        assert fleet[0][:3] == ["dev-1", "online", "no: on battery"], fleet
        refused = table_text(browser, "refused")
        assert [r[:4] for r in refused] == [
            ["2", "dev-1", "rejected", "norm too large in round 2"],
            ["1", "dev-1", "rejected", "norm too large in round 1"],
        ]
        now = browser.find_element("id", "progress").text
        assert (
            "open round\n3" in now
            and "0 / 2 (2 invited)" in now
            and "test accuracy (v2)\n0.7000" in now
        ), now

        dash = DashboardProcess(async_db, "--interval", "0.5")
        dashes.append(dash)
        browser.get(dash.url)
        wait_for("the async buffer", lambda: "buffered" in browser.page_source, 15)
        now = browser.find_element("id", "progress").text
        assert "buffered deltas\n1" in now and "devices training\n1" in now, now
        assert "async" in browser.find_element("id", "run").text
        errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
        assert [e for e in errors if "401" not in e["message"]] == [], errors
    finally:
        browser.quit()
        for d in dashes:
            d.stop()
