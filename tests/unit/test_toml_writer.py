"""protocol/toml_writer.py: what it writes reads back as the same data."""

from __future__ import annotations

import math

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

from fedge.protocol.errors import ConfigError
from fedge.protocol.toml_writer import render_toml, write_toml


def test_render_toml_round_trips_nested_tables_lists_and_odd_keys(tmp_path):
    data = {
        "id": "dev-0",
        "trusted_keys": ["/a/b.pub", 'c"d.pub'],
        "mqtt": {"url": "mqtt://127.0.0.1:1883", "protocol": "5", "qos": 1},
        "rounds": {"rounds": 3, "deadline_seconds": 60.0, "keep_deltas": False},
        "evaluation": {"enabled": True, "data": {"path": "t.db", "table": "samples"}},
        "a.b": {"x y": -1.5e-9},
    }
    path = write_toml(tmp_path / "c.toml", data, header="line one\n\nline three")
    text = path.read_text()
    assert text.startswith("# line one\n#\n# line three\n\nid = ")
    assert tomllib.loads(text) == data


def test_render_toml_writes_non_finite_floats_and_refuses_other_types():
    parsed = tomllib.loads(render_toml({"x": math.inf, "y": -math.inf}))
    assert parsed == {"x": math.inf, "y": -math.inf}
    with pytest.raises(ConfigError, match="cannot write None"):
        render_toml({"x": None})


def test_comments_go_above_keys_and_tables_and_commented_values_stay_examples():
    from fedge.protocol.toml_writer import Commented

    text = render_toml(
        {"a": 1, "t": {"b": Commented("x"), "sub": {"c": True}}},
        header="head",
        comments={"a": "about a", "t": "table t\nsecond line", "t.b": "b", "t.sub.c": "c"},
    )
    assert text == (
        '# head\n\n# about a\na = 1\n\n# table t\n# second line\n[t]\n# b\n# b = "x"\n\n'
        "[t.sub]\n# c\nc = true\n"
    )
    assert tomllib.loads(text) == {"a": 1, "t": {"sub": {"c": True}}}
