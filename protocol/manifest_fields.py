"""A checked reader over one JSON object of the manifest: every error names the field's path.

Used only by the manifest parser (``manifest.py``, ``manifest_v1.py``): ``FieldReader(obj,
"loss").text("type", choices=...)`` returns the value or raises BundleError("manifest field
'loss.type' ..."); ``done()`` refuses keys nobody read, so a typo or a foreign field is reported
instead of silently ignored.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from .errors import BundleError

_MISSING = object()


def is_number(value: Any) -> bool:
    """A finite JSON number (bools are not numbers here)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


class FieldReader:
    """Typed access to the keys of one manifest object, ``where`` being its path for errors."""

    def __init__(self, data: Any, where: str = "") -> None:
        if not isinstance(data, dict):
            raise BundleError(
                f"manifest field '{where}' must be an object, got {type(data).__name__}"
            )
        self._data = data
        self._where = where
        self._read: set[str] = set()

    def path(self, key: str) -> str:
        """The dotted path of ``key`` inside this object."""
        return f"{self._where}.{key}" if self._where else key

    def has(self, key: str) -> bool:
        """Whether the object holds ``key`` (marks it as read)."""
        self._read.add(key)
        return key in self._data

    def raw(self, key: str, default: Any = _MISSING) -> Any:
        """The value of ``key`` unchecked; missing and no default raises."""
        self._read.add(key)
        if key not in self._data:
            if default is _MISSING:
                raise BundleError(f"manifest has no '{self.path(key)}' field")
            return default
        return self._data[key]

    def text(self, key: str, *, choices: Sequence[str] | None = None) -> str | None:
        """An optional string: absent or null gives None, anything else must be ``name``-valid."""
        if self.raw(key, None) is None:
            return None
        return self.name(key, choices=choices)

    def name(self, key: str, *, choices: Sequence[str] | None = None) -> str:
        """A required non-empty string (one of ``choices`` when given)."""
        value = self.raw(key)
        if choices is not None and value not in choices:
            raise BundleError(
                f"manifest field '{self.path(key)}' is {value!r}; expected one of {list(choices)}"
            )
        if not isinstance(value, str) or not value:
            raise BundleError(f"manifest field '{self.path(key)}' must be a non-empty string")
        return value

    def integer(self, key: str, *, minimum: int | None = None) -> int:
        """An integer (not a bool), at least ``minimum`` when given."""
        value = self.raw(key)
        if not isinstance(value, int) or isinstance(value, bool):
            raise BundleError(f"manifest field '{self.path(key)}' must be an integer")
        if minimum is not None and value < minimum:
            raise BundleError(
                f"manifest field '{self.path(key)}' must be >= {minimum}, got {value}"
            )
        return value

    def positive_number(self, key: str) -> float:
        """A finite number > 0."""
        value = self.raw(key)
        if not is_number(value) or value <= 0:
            raise BundleError(
                f"manifest field '{self.path(key)}' must be a positive number, got {value!r}"
            )
        return float(value)

    def flag(self, key: str) -> bool:
        """true or false."""
        value = self.raw(key)
        if not isinstance(value, bool):
            raise BundleError(f"manifest field '{self.path(key)}' must be true or false")
        return value

    def array(self, key: str, *, nonempty: bool = False) -> list[Any]:
        """A JSON array (non-empty when asked)."""
        value = self.raw(key)
        if not isinstance(value, list):
            raise BundleError(f"manifest field '{self.path(key)}' must be a list")
        if nonempty and not value:
            raise BundleError(f"manifest field '{self.path(key)}' must list at least one entry")
        return value

    def obj(self, key: str) -> FieldReader:
        """A nested object, as a reader of its own."""
        return FieldReader(self.raw(key), self.path(key))

    def mapping(self, key: str) -> dict[str, Any]:
        """A nested object as a plain dict (its values are the caller's to check)."""
        value = self.raw(key)
        if not isinstance(value, dict):
            raise BundleError(f"manifest field '{self.path(key)}' must be an object")
        return value

    def done(self) -> None:
        """Refuse keys that were never read: the format has no such field."""
        unknown = sorted(set(self._data) - self._read)
        if unknown:
            where = f"'{self._where}'" if self._where else "the manifest"
            raise BundleError(f"{where} has unknown field(s) {unknown}; is the bundle newer?")
