"""``fedge dashboard`` as a real process: the JSON endpoint, live updates from a writer that
keeps the database open, tokens on non-loopback binds, and that it never writes the file."""

from __future__ import annotations

import hashlib
import http.cookiejar
import json
import subprocess
import sys
import time
import urllib.request

import pytest
from support.dashboard import DashboardProcess, fill_sync_run, open_round

from fedge.orchestrator.store import Store

pytestmark = pytest.mark.integration


def test_snapshot_endpoint_follows_a_writer_without_blocking_it(tmp_path):
    db = tmp_path / "o.db"
    writer = Store(db)  # stays open, like a running orchestrator
    fill_sync_run(writer)
    dash = DashboardProcess(db, "--interval", "0.5")
    try:
        s = dash.snapshot()
        assert s["poll_seconds"] == 0.5
        assert [v["version"] for v in s["versions"]] == [0, 1, 2]
        assert s["fleet"]["devices"][0]["reason"] == "on battery"
        assert s["refused"][0]["reason"] == "norm too large in round 2"
        # the writer commits round 3 while the dashboard reads: no lock waits, seen at once
        for _ in range(20):
            dash.snapshot()
        t0 = time.monotonic()
        writer.accept_update("r1", 3, "dev-0", "sha", 100, {"train_loss": 0.3}, b"y" * 4096)
        writer.commit_round("r1", 3, 3, b"p", "sha", {"test_accuracy": 0.8})
        open_round(writer, 4, goal=2)
        assert time.monotonic() - t0 < 1.0
        s = dash.snapshot()
        assert [v["version"] for v in s["versions"]] == [0, 1, 2, 3]
        assert s["round"]["round"] == 4 and s["bytes"][-1] == {
            "round": 3,
            "accepted": 4096,
            "refused": 0,
            "down": None,  # this commit's metrics have no bytes_down
        }
        status, body, headers = dash.get("/")
        assert status == 200 and b"accuracy-chart" in body
        assert "default-src 'self'" in headers["Content-Security-Policy"]
        status, body, _ = dash.get("/static/vendor/uPlot.iife.min.js")
        assert status == 200 and b"uPlot" in body[:200]
        # read-only: no route takes a write, and a foreign Host (DNS rebinding) is refused
        req = urllib.request.Request(dash.base + "/api/snapshot", data=b"{}", method="POST")
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(req, timeout=5)
        assert err.value.code == 405
        assert dash.get("/api/snapshot", {"Host": "attacker.example"})[0] == 400
    finally:
        out = dash.stop()
        writer.close()
    assert "Traceback" not in out, out


def test_the_dashboard_never_writes_the_database(tmp_path):
    db = tmp_path / "o.db"
    writer = Store(db)
    fill_sync_run(writer)
    writer.close()  # a finished run: WAL checkpointed and removed
    before = hashlib.sha256(db.read_bytes()).hexdigest()
    dash = DashboardProcess(db)
    try:
        assert len(dash.snapshot()["versions"]) == 3
    finally:
        dash.stop()
    assert hashlib.sha256(db.read_bytes()).hexdigest() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.db"]  # no -wal, no -shm


def test_a_non_loopback_bind_needs_the_token_it_prints(tmp_path):
    db = tmp_path / "o.db"
    fill_sync_run(Store(db))
    # 0.0.0.0 is not loopback; the test still only connects to 127.0.0.1
    dash = DashboardProcess(db, "--host", "0.0.0.0")
    try:
        assert "?token=" in dash.url
        token = dash.url.split("?token=")[1]
        for path in ("/", "/api/snapshot", "/static/dashboard.js"):
            assert dash.get(path)[0] == 401, path
            assert dash.get(path + "?token=wrong-token-0123456789")[0] == 401, path
            assert dash.get(path, {"Authorization": "Bearer nope"})[0] == 401, path
        assert dash.get("/api/snapshot", {"Authorization": f"Bearer {token}"})[0] == 200
        # the URL's token opens the page and is kept in a cookie for what the page loads
        jar = http.cookiejar.CookieJar()
        opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
        with opener.open(f"{dash.base}/?token={token}", timeout=5) as resp:
            assert resp.status == 200 and "HttpOnly" in resp.headers["Set-Cookie"]
        with opener.open(f"{dash.base}/api/snapshot", timeout=5) as resp:
            assert json.loads(resp.read())["run"]["run_id"] == "r1"
    finally:
        out = dash.stop()
    assert "A token was generated" in out, out

    # a token given on loopback is required too
    dash = DashboardProcess(db, "--token", "t" * 20)
    try:
        assert dash.get("/api/snapshot")[0] == 401
        assert dash.get("/api/snapshot?token=" + "t" * 20)[0] == 200
    finally:
        dash.stop()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--database", "missing.db"], "not found; pass --database PATH"),
        (["--database", "o.db", "--host", "0.0.0.0", "--token", "short"], "at least 16"),
        (["--database", "o.db", "--interval", "0"], "--interval 0.0 must be between"),
    ],
)
def test_bad_arguments_get_one_clear_error(tmp_path, args, message):
    fill_sync_run(Store(tmp_path / "o.db"))
    proc = subprocess.run(
        [sys.executable, "-m", "fedge", "dashboard", "--port", "0", *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 1 and message in proc.stderr, proc.stderr
    assert proc.stderr.startswith("Error: ") and "Traceback" not in proc.stderr


def test_started_before_the_orchestrator_it_follows_the_run_and_reports_a_lost_file(tmp_path):
    db = tmp_path / "o.db"
    writer = Store(db)
    fill_sync_run(writer)
    writer.close()  # no -wal: a reader opened now reads the file as immutable
    dash = DashboardProcess(db)
    try:
        assert len(dash.snapshot()["versions"]) == 3
        writer = Store(db)  # the orchestrator (re)starts and commits a round
        writer.accept_update("r1", 3, "dev-0", "sha", 100, {}, b"z" * 100)
        writer.commit_round("r1", 3, 3, b"p", "sha", {"test_accuracy": 0.9})
        assert [v["version"] for v in dash.snapshot()["versions"]] == [0, 1, 2, 3]
        writer.close()
        for p in tmp_path.glob("o.db*"):
            p.unlink()
        status, body, _ = dash.get("/api/snapshot")
        assert status == 503 and "does not exist" in json.loads(body)["error"]
    finally:
        out = dash.stop()
    assert "Traceback" not in out, out
