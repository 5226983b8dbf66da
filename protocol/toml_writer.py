"""Write fedge's TOML configuration files (reading them is ``settings.py``'s job).

One small writer for the values fedge's config files hold: str, bool, int, float, lists of
those, and nested tables, with optional comments above keys and tables and keys written
commented out as examples. Used by ``fedge broker init`` / ``fedge device add``, the demo and
the tests. Keys that are not TOML bare keys are quoted.

Example::

    render_toml({"id": "dev-0", "mqtt": {"url": "mqtt://127.0.0.1:1883"}}, header="agent")
    # '# agent\\nid = "dev-0"\\n\\n[mqtt]\\nurl = "mqtt://127.0.0.1:1883"\\n'
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from .errors import ConfigError

_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def toml_value(value: object) -> str:
    """A TOML literal for str, bool, int, float or a list/tuple of those."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # JSON string escapes are valid TOML basic-string escapes
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    raise ConfigError(
        f"cannot write {value!r} ({type(value).__name__}) to TOML: use str, bool, int, float, "
        "a list of those, or a table (dict)"
    )


@dataclass(frozen=True)
class Commented:
    """A key written commented out (``# key = value``): an example, not a setting."""

    value: object


def toml_key(key: str) -> str:
    """``key`` as written in TOML: bare when it can be, quoted otherwise."""
    return key if _BARE_KEY.match(key) else json.dumps(key)


def _comment_lines(text: str) -> list[str]:
    return [f"# {line}" if line else "#" for line in text.splitlines()]


def render_toml(
    data: Mapping[str, object],
    *,
    header: str = "",
    comments: Mapping[str, str] | None = None,
) -> str:
    """TOML text: an optional ``# comment`` header, top-level keys, then ``[tables]`` (nested).

    Within each table the plain keys come first, then its sub-tables as ``[a.b]``.
    ``comments`` maps a dotted key (``rounds.min_devices``, or a table such as ``rounds``) to the
    comment written above it; a :class:`Commented` value is written commented out.
    """
    notes = comments or {}
    lines = [*_comment_lines(header), ""] if header else []

    def emit(table: Mapping[str, object], dotted: str, name: str) -> None:
        # dotted: the key path for `comments`; name: the same path as a TOML table header
        for key, value in table.items():
            if isinstance(value, Mapping):
                continue
            literal = (
                f"# {toml_key(key)} = {toml_value(value.value)}"
                if isinstance(value, Commented)
                else f"{toml_key(key)} = {toml_value(value)}"
            )
            note = notes.get(f"{dotted}.{key}" if dotted else key, "")
            lines.extend([*_comment_lines(note), literal])
        for key, value in table.items():
            if isinstance(value, Mapping):
                sub = f"{dotted}.{key}" if dotted else key
                sub_name = f"{name}.{toml_key(key)}" if name else toml_key(key)
                lines.extend(["", *_comment_lines(notes.get(sub, "")), f"[{sub_name}]"])
                emit(value, sub, sub_name)

    emit(data, "", "")
    while lines and lines[0] == "":
        lines.pop(0)
    return "\n".join(lines) + "\n"


def write_toml(
    path: str | Path,
    data: Mapping[str, object],
    *,
    header: str = "",
    comments: Mapping[str, str] | None = None,
) -> Path:
    """Write ``render_toml(data, header=header, comments=comments)`` to ``path``; return it."""
    target = Path(path)
    target.write_text(render_toml(data, header=header, comments=comments))
    return target
