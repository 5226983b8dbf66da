"""Every part reads the manifest through the typed objects: no raw-key access outside the parser."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FOLDERS = ("agent", "orchestrator", "exporter", "fedge", "provision", "protocol")
# The parser modules read the raw JSON object: they are the one place allowed to.
PARSER = {"protocol/manifest.py", "protocol/manifest_v1.py", "protocol/manifest_fields.py"}
RAW_ACCESS = re.compile(r"manifest\[|manifest\.get\(|\.manifest\[")


def _offenders() -> list[str]:
    found = []
    for folder in FOLDERS:
        for path in sorted((ROOT / folder).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            if rel in PARSER:
                continue
            for number, line in enumerate(path.read_text().splitlines(), 1):
                if RAW_ACCESS.search(line):
                    found.append(f"{rel}:{number}: {line.strip()}")
    return found


def test_no_raw_manifest_access_outside_the_parser() -> None:
    offenders = _offenders()
    assert not offenders, "read the typed Manifest instead:\n" + "\n".join(offenders)


def test_the_check_sees_raw_access(tmp_path: Path) -> None:
    assert RAW_ACCESS.search('lr = bundle.manifest["optimizer"]["lr"]')
    assert RAW_ACCESS.search('task = manifest.get("task")')
    assert not RAW_ACCESS.search("lr = bundle.manifest.optimizer.lr")
    assert (ROOT / "protocol" / "manifest.py").is_file()  # the paths above are the real tree
