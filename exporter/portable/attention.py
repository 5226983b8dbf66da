"""Attention without a mask traced as plain softmax (not ``_safe_softmax``'s masked-row check).

PyTorch's math attention kernel (the one the step is traced with) calls ``_safe_softmax``: rows
that are entirely -inf (fully masked) become 0 instead of NaN. Traced, that is a ReduceMax over
the scores, a comparison and a ``Where`` over the whole (batch, heads, L, L) attention matrix:
about 12% of the zoo transformer's step in ONNX Runtime (the ``Where`` alone costs as much as the
softmax). Without an attention mask and without a causal mask no score is -inf (scores are
finite products of finite inputs), so plain softmax gives the same values: while the step is
traced, ``plain_attention`` routes such calls of ``F.scaled_dot_product_attention`` (what
``nn.MultiheadAttention`` and ``nn.TransformerEncoderLayer`` call) to that math form. Masked
or causal calls keep PyTorch's own kernel.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F

_ORIGINAL = F.scaled_dot_product_attention


def attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attn_mask: torch.Tensor | None = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: float | None = None,
    enable_gqa: bool = False,
) -> torch.Tensor:
    """``F.scaled_dot_product_attention``, with the unmasked case as plain softmax."""
    if attn_mask is not None or is_causal or dropout_p != 0.0 or enable_gqa:
        return _ORIGINAL(
            query, key, value, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal,
            scale=scale, enable_gqa=enable_gqa,
        )  # fmt: skip
    factor = scale if scale is not None else 1.0 / math.sqrt(query.size(-1))
    # the scale on the (L, d) query, not on the (L, L) scores: fewer multiplications
    weights = torch.softmax((query * factor) @ key.transpose(-2, -1), dim=-1)
    return weights @ value


@contextlib.contextmanager
def plain_attention() -> Iterator[None]:
    """Within the block, unmasked ``F.scaled_dot_product_attention`` is traced as plain
    softmax (``seeded_dropout`` may replace it again inside, for attention dropout)."""
    current = F.scaled_dot_product_attention
    F.scaled_dot_product_attention = attention
    try:
        yield
    finally:
        F.scaled_dot_product_attention = current
