"""Typed settings from one TOML file, every key overridable by ``FEDGE_...`` or ``--set``.

Precedence: dataclass defaults < TOML file < environment (``FEDGE_MQTT_URL`` for ``mqtt.url``)
< ``--set mqtt.url=...`` on the command line. Unknown keys are errors, not silently ignored.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

from .errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

T = TypeVar("T")


def _convert(text: str, hint: Any, key: str) -> Any:
    """Turn an override string into the field's type."""
    origin = typing.get_origin(hint)
    try:
        if hint is bool:
            if text.lower() in ("1", "true", "yes", "on"):
                return True
            if text.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(text)
        if hint is int:
            return int(text)
        if hint is float:
            return float(text)
        if origin is list:
            value = (
                json.loads(text)
                if text.strip().startswith("[")
                else [s for s in text.split(",") if s]
            )
            (item,) = typing.get_args(hint) or (str,)
            return [_convert(str(v), item, key) if not isinstance(v, item) else v for v in value]
    except ValueError:
        raise ConfigError(
            f"setting '{key}': cannot read {text!r} as {getattr(hint, '__name__', hint)}"
        ) from None
    return text


def _check_value(value: Any, hint: Any, key: str) -> Any:
    origin = typing.get_origin(hint)
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"setting '{key}' must be a list, got {value!r}")
        return value
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"setting '{key}' must be a table, got {value!r}")
        return value
    if isinstance(hint, type) and not isinstance(value, hint):
        raise ConfigError(f"setting '{key}' must be {hint.__name__}, got {value!r}")
    return value


def _apply(obj: Any, data: Mapping[str, Any], where: str) -> None:
    hints = typing.get_type_hints(type(obj))
    names = {f.name for f in dataclasses.fields(obj)}
    for key, value in data.items():
        full = f"{where}{key}"
        if key not in names:
            raise ConfigError(f"unknown setting '{full}'; known here: {', '.join(sorted(names))}")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, Mapping):
                raise ConfigError(f"setting '{full}' must be a table")
            _apply(current, value, f"{full}.")
        else:
            setattr(obj, key, _check_value(value, hints[key], full))


def _set_path(obj: Any, dotted: str, text: str) -> None:
    parts = dotted.split(".")
    target = obj
    for part in parts[:-1]:
        if not dataclasses.is_dataclass(target) or not hasattr(target, part):
            raise ConfigError(f"unknown setting '{dotted}'")
        target = getattr(target, part)
    hints = typing.get_type_hints(type(target))
    if parts[-1] not in hints or dataclasses.is_dataclass(getattr(target, parts[-1])):
        raise ConfigError(f"unknown setting '{dotted}'")
    setattr(target, parts[-1], _convert(text, hints[parts[-1]], dotted))


def _env_keys(obj: Any, prefix: str) -> dict[str, str]:
    """Map FEDGE_SECTION_KEY environment names to dotted keys."""
    out: dict[str, str] = {}
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            for env, dotted in _env_keys(value, f"{prefix}{f.name.upper()}_").items():
                out[env] = f"{f.name}.{dotted}"
        else:
            out[f"{prefix}{f.name.upper()}"] = f.name
    return out


def load_settings(
    cls: type[T],
    path: str | Path | None,
    *,
    overrides: list[str] | None = None,
    env: Mapping[str, str] | None = None,
) -> T:
    """Build ``cls`` from defaults, the TOML file, ``FEDGE_*`` variables and ``--set`` items."""
    settings = cls()
    if path:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {p} not found")
        try:
            data = tomllib.loads(p.read_text())
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"config file {p} is not valid TOML: {exc}") from None
        _apply(settings, data, "")
    env = os.environ if env is None else env
    for env_name, dotted in _env_keys(settings, "FEDGE_").items():
        if env_name in env:
            _set_path(settings, dotted, env[env_name])
    for item in overrides or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"--set takes key=value, got {item!r}")
        _set_path(settings, key.strip(), value)
    return settings
