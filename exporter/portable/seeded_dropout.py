"""Dropout whose masks come from a seed input, so a portable step is reproducible.

ONNX's random operators (``RandomUniformLike``, ``Dropout``) take their seed as a fixed
attribute or from the runtime's own generator: a step traced with them would give another
mask on every run and on every device, and could not be checked against PyTorch. Here each
dropout mask is a pure function of an int64 ``dropout_seed`` graph input, the element's index
and the call's position in the forward pass (a small counter-based hash in int64 arithmetic
that ONNX Runtime computes exactly): the agent feeds a seed derived from the round's seed and
the step number, and the same seed in PyTorch gives the same mask, bit for bit.

While a step is traced (and while the exporter's PyTorch reference runs), ``seeded_dropout``
replaces ``torch.nn.functional``'s dropout entry points -- what ``nn.Dropout``, ``nn.Dropout1d/
2d/3d`` and ``nn.MultiheadAttention``/``nn.TransformerEncoderLayer`` call -- with the seeded
version. Randomness outside them (``torch.rand`` in a model's own forward) stays random; the
exporter refuses such a step (``random_operators``).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from fedge.protocol.portable_seed import MODULUS, SEED_NAME

from .attention import attention as plain_softmax_attention

__all__ = ["SEED_NAME", "needs_seed", "seeded_dropout", "uniform"]
RANDOM_ONNX_OPS = frozenset(
    {"RandomUniform", "RandomUniformLike", "RandomNormal", "RandomNormalLike", "Bernoulli"}
)


def needs_seed(model: nn.Module) -> bool:
    """True when training ``model`` applies dropout (a layer or attention with p > 0)."""
    for m in model.modules():
        if isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0:
            return True
        if isinstance(m, nn.MultiheadAttention) and m.dropout > 0:
            return True
    return False


def uniform(seed: torch.Tensor, shape: torch.Size | tuple[int, ...], stream: int) -> torch.Tensor:
    """Values in [0, 1) of ``shape``, a function of (seed, element index, stream) only.

    Two rounds of a nonlinear mix (square plus constant, then a MINSTD multiply) modulo
    2^31 - 1: a linear generator alone would make neighbouring elements' values a lattice.
    """
    numel = math.prod(shape) if shape else 1
    index = torch.arange(numel, dtype=torch.int64, device=seed.device)
    h = (index + (seed.to(torch.int64) % MODULUS) * 40_503 + stream * 7_919 + 1) % MODULUS
    for constant in (12_345, 67_891):
        h = (h * h + constant) % MODULUS
        h = (h * 48_271) % MODULUS
    return (h.to(torch.float32) / float(MODULUS)).reshape(shape)


class _Seeded:
    """The replacement functions for one forward pass; counts calls to vary the stream."""

    def __init__(self, seed: torch.Tensor) -> None:
        self.seed = seed
        self.calls = 0

    def mask(self, shape: tuple[int, ...], p: float, dtype: torch.dtype) -> torch.Tensor:
        self.calls += 1
        keep = uniform(self.seed, shape, self.calls) >= p
        return keep.to(dtype) / (1.0 - p)

    def dropout(
        self, input: torch.Tensor, p: float = 0.5, training: bool = True, inplace: bool = False
    ) -> torch.Tensor:
        if not training or p == 0.0:
            return input
        if p >= 1.0:
            return input * 0.0
        return input * self.mask(tuple(input.shape), p, input.dtype)

    def channel_dropout(self, dims: int) -> Any:
        """``F.dropout1d/2d/3d``: one mask value per (sample, channel), as PyTorch does."""

        def drop(
            input: torch.Tensor, p: float = 0.5, training: bool = True, inplace: bool = False
        ) -> torch.Tensor:
            if not training or p == 0.0:
                return input
            batched = input.dim() == dims + 2
            shape = tuple(input.shape[: 2 if batched else 1]) + (1,) * dims
            return input * self.mask(shape, p, input.dtype)

        return drop

    def attention(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attn_mask: torch.Tensor | None = None,
        dropout_p: float = 0.0,
        is_causal: bool = False,
        scale: float | None = None,
        enable_gqa: bool = False,
    ) -> torch.Tensor:
        """The math form of ``F.scaled_dot_product_attention`` with seeded dropout."""
        if dropout_p == 0.0:  # (an unmasked one as plain softmax: attention.py)
            return plain_softmax_attention(
                query, key, value, attn_mask=attn_mask, is_causal=is_causal, scale=scale
            )
        factor = scale if scale is not None else 1.0 / math.sqrt(query.size(-1))
        scores = query @ key.transpose(-2, -1) * factor
        if is_causal:
            n, s = query.size(-2), key.size(-2)
            causal = torch.ones(n, s, dtype=torch.bool, device=query.device).tril()
            scores = scores.masked_fill(~causal, float("-inf"))
        if attn_mask is not None:
            if attn_mask.dtype == torch.bool:
                scores = scores.masked_fill(~attn_mask, float("-inf"))
            else:
                scores = scores + attn_mask
        weights = self.dropout(torch.softmax(scores, dim=-1), dropout_p)
        return weights @ value


_ORIGINAL: dict[str, Any] = {
    name: getattr(F, name)
    for name in ("dropout", "dropout1d", "dropout2d", "dropout3d", "scaled_dot_product_attention")
}


@contextlib.contextmanager
def seeded_dropout(seed: torch.Tensor | None) -> Iterator[None]:
    """Within the block, dropout masks come from ``seed`` (``None``: no change)."""
    if seed is None:
        yield
        return
    seeded = _Seeded(seed)
    replacements = {
        "dropout": seeded.dropout,
        "dropout1d": seeded.channel_dropout(1),
        "dropout2d": seeded.channel_dropout(2),
        "dropout3d": seeded.channel_dropout(3),
        "scaled_dot_product_attention": seeded.attention,
    }
    for name, function in replacements.items():
        setattr(F, name, function)
    try:
        yield
    finally:
        for name, function in _ORIGINAL.items():
            setattr(F, name, function)
