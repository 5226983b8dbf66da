"""The decomposition table used to trace a training step into ops ONNX can express.

Core-ATen decompositions plus BatchNorm's (without them the traced BatchNorm runs in inference
mode and silently skips the running-statistics update) and a hand-written
``convolution_backward`` (onnxscript has no translation for it): the input gradient is a
transposed convolution, the weight gradient a convolution of the input with the output
gradient, the bias gradient a sum.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch._decomp import core_aten_decompositions, get_decompositions

aten = torch.ops.aten

_BATCH_NORM_OPS = (
    aten.native_batch_norm,
    aten._native_batch_norm_legit,
    aten._native_batch_norm_legit_functional,
    aten._native_batch_norm_legit_no_training,
    aten.native_batch_norm_backward,
)


class UnsupportedBackward(NotImplementedError):
    """A backward the portable step cannot express (e.g. grouped or transposed convolution)."""


def decomposition_table() -> dict[Any, Any]:
    """Core-ATen + BatchNorm decompositions + our ``convolution_backward``."""
    table = dict(core_aten_decompositions())
    table.update(get_decompositions(list(_BATCH_NORM_OPS)))
    table[aten.convolution_backward.default] = convolution_backward
    return table


def convolution_backward(
    grad_output: torch.Tensor,
    input: torch.Tensor,
    weight: torch.Tensor,
    bias_sizes: Sequence[int] | None,
    stride: Sequence[int],
    padding: Sequence[int],
    dilation: Sequence[int],
    transposed: bool,
    output_padding: Sequence[int],
    groups: int,
    output_mask: Sequence[bool],
) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """Gradients of a (non-transposed, ungrouped) N-d convolution as plain convolutions."""
    if transposed:
        raise UnsupportedBackward("transposed convolution (ConvTranspose) backward")
    if groups != 1:
        raise UnsupportedBackward(f"grouped convolution backward (groups={groups})")
    spatial = weight.dim() - 2
    stride, padding, dilation = (_expand(v, spatial) for v in (stride, padding, dilation))
    kernel = [int(k) for k in weight.shape[2:]]
    grad_input = grad_weight = grad_bias = None
    if output_mask[0]:
        # The forward maps in -> out = (in + 2p - d(k-1) - 1) // s + 1; the floor loses up to
        # s-1 rows, which the transposed convolution restores as output padding.
        extra = []
        for i in range(spatial):
            covered = (int(grad_output.shape[2 + i]) - 1) * stride[i] - 2 * padding[i]
            covered += dilation[i] * (kernel[i] - 1) + 1
            extra.append(int(input.shape[2 + i]) - covered)
        grad_input = aten.convolution.default(
            grad_output, weight, None, stride, padding, dilation, True, extra, 1
        )
    if output_mask[1]:
        # Swap batch and channel axes: the input becomes C_in "images" of N channels and the
        # output gradient C_out filters of N channels; stride and dilation trade places.
        swapped = aten.convolution.default(
            input.transpose(0, 1),
            grad_output.transpose(0, 1),
            None,
            dilation,
            padding,
            stride,
            False,
            [0] * spatial,
            1,
        ).transpose(0, 1)
        for i, k in enumerate(kernel):  # strided forwards leave extra rows at the far edge
            swapped = swapped.narrow(2 + i, 0, k)
        grad_weight = swapped
    if output_mask[2]:
        grad_bias = grad_output.sum(dim=[0, *range(2, grad_output.dim())])
    return grad_input, grad_weight, grad_bias


def _expand(values: Sequence[int], n: int) -> list[int]:
    values = [int(v) for v in values]
    return values * n if len(values) == 1 else values
