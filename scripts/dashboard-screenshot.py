#!/usr/bin/env python
"""Re-make docs/dashboard.png: a screenshot of `fedge dashboard` in headless Chromium during a
real run (`fedge demo`: orchestrator and agent processes over MQTT).

Usage: .venv/bin/python scripts/dashboard-screenshot.py [--out docs/dashboard.png]
Needs the dev extra (selenium) and Debian's chromium + chromium-driver (scripts/test.sh
installs them). Takes about 30 s on an idle 2-core machine.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the same Chromium and dashboard helpers as the tests

from support.browser import headless_chromium  # noqa: E402
from support.dashboard import DashboardProcess  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "docs" / "dashboard.png"))
    parser.add_argument("--devices", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--at-version", type=int, default=15, help="take it once this many show")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="fedge-dashboard-shot-"))
    db = work / "demo" / "orchestrator.db"
    demo_log = (work / "demo.log").open("w")
    demo = subprocess.Popen(
        [sys.executable, "-m", "fedge", "demo", "--devices", str(args.devices)]
        + ["--rounds", str(args.rounds), "--local-epochs", "1", "--out", str(work / "demo")],
        stdout=demo_log,
        stderr=subprocess.STDOUT,
    )
    dash = None
    browser = None
    try:
        deadline = time.monotonic() + 600  # export and 2 cores shared: can be slow
        while not db.exists():
            if demo.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the demo wrote no database; see {work / 'demo.log'}")
            time.sleep(0.2)
        dash = DashboardProcess(db, "--interval", "0.5")
        browser = headless_chromium(1400, 1080)
        browser.get(dash.url)
        while True:
            shown = browser.execute_script(
                "return +document.getElementById('version-count').textContent"
            )
            if shown >= args.at_version:
                break
            if demo.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"only {shown} versions shown; see {work / 'demo.log'}")
            time.sleep(0.2)
        time.sleep(0.6)  # one more poll, so the open round's counters are current
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        browser.save_screenshot(args.out)
        print(f"Wrote {args.out} ({shown} versions shown, run still going: {demo.poll() is None})")
        demo.wait(180)
    finally:
        if browser is not None:
            browser.quit()
        if dash is not None:
            dash.stop()
        if demo.poll() is None:
            demo.terminate()
            demo.wait(30)
        demo_log.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
