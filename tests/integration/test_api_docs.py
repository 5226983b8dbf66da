"""docs/api.md: every ```python block runs, in order, in one namespace, in an empty folder."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

DOC = Path(__file__).resolve().parents[2] / "docs" / "api.md"


def python_blocks(text: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```$", text, flags=re.S | re.M)


@pytest.mark.timeout(240)
def test_api_page_examples_run(tmp_path, monkeypatch, capsys):
    blocks = python_blocks(DOC.read_text())
    assert len(blocks) >= 6
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {"__name__": "api_docs"}
    for i, block in enumerate(blocks, 1):
        try:
            exec(compile(block, f"{DOC.name} block {i}", "exec"), namespace)
        except Exception as exc:
            raise AssertionError(f"block {i} of {DOC.name} failed:\n{block}") from exc
    printed = capsys.readouterr().out
    assert "True ['committed', 'committed']" in printed, printed
    result = namespace["result"]
    assert len(result.committed) == 2  # type: ignore[attr-defined]
    assert result.final_metrics["test_accuracy"] > 0.6  # type: ignore[attr-defined]
