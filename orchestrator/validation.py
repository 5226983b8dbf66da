"""Checks every update must pass before it counts."""

from __future__ import annotations

import numpy as np

from fedge.protocol.compression import decode_delta
from fedge.protocol.errors import CodecError, FedgeError
from fedge.protocol.tensors import check_finite, l2_norm


class UpdateRejected(FedgeError):
    """An update failed validation; the message says why."""


def validate_delta(
    blob: bytes,
    reference: dict[str, np.ndarray],
    *,
    max_norm: float = 0.0,
    omittable: frozenset[str] = frozenset(),
    fill_omitted: bool = True,
) -> dict[str, np.ndarray]:
    """Decode a delta and check names, shapes, dtypes, finiteness and (optionally) its norm.

    Names in ``omittable`` (frozen parameters training never changes:
    ``fedge.protocol.parameter_travel.static_names``) may be missing: they count as zero
    deltas and are filled in with zeros in the returned delta, unless ``fill_omitted`` is
    False (then the result is exactly ``decode_delta(blob)``, what the aggregation reads)."""
    try:
        delta = decode_delta(blob, max_elements=sum(int(r.size) for r in reference.values()))
        check_finite(delta)
    except CodecError as exc:
        raise UpdateRejected(str(exc)) from None
    missing = sorted(set(reference) - set(delta) - omittable)
    extra = sorted(set(delta) - set(reference))
    if missing or extra:
        raise UpdateRejected(f"parameter names differ: missing {missing[:5]}, unknown {extra[:5]}")
    for name, ref in reference.items():
        if name not in delta:  # an omittable frozen parameter: a zero delta
            if fill_omitted:
                delta[name] = np.zeros_like(ref)
            continue
        got = delta[name]
        if got.shape != ref.shape:
            raise UpdateRejected(
                f"'{name}' has shape {list(got.shape)}, expected {list(ref.shape)}"
            )
        if got.dtype != ref.dtype:
            raise UpdateRejected(f"'{name}' has dtype {got.dtype}, expected {ref.dtype}")
    if max_norm > 0:
        norm = l2_norm(delta)
        if norm > max_norm:
            raise UpdateRejected(f"update norm {norm:.4g} exceeds the bound {max_norm:.4g}")
    return delta
