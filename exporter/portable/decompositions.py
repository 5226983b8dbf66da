"""The decomposition table used to trace a training step into ops ONNX can express.

Core-ATen decompositions plus BatchNorm's (without them the traced BatchNorm runs in inference
mode and silently skips the running-statistics update) and a hand-written
``convolution_backward`` (onnxscript has no translation for it), for plain, grouped, depthwise
and transposed convolutions: the input gradient is a transposed convolution (a plain one for a
transposed forward), the weight gradient one grouped convolution of the input with the output
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


_TORCH_EMBEDDING_BACKWARD = core_aten_decompositions()[aten.embedding_dense_backward.default]


class UnsupportedBackward(NotImplementedError):
    """A backward the portable step cannot express; the message names the operator."""


def decomposition_table() -> dict[Any, Any]:
    """Core-ATen + BatchNorm decompositions + our ``convolution_backward``."""
    table = dict(core_aten_decompositions())
    table.update(get_decompositions(list(_BATCH_NORM_OPS)))
    table[aten.convolution_backward.default] = convolution_backward
    table[aten.avg_pool2d_backward.default] = avg_pool2d_backward
    table[aten._safe_softmax.default] = safe_softmax
    table[aten.embedding_dense_backward.default] = embedding_dense_backward
    table[aten.threshold_backward.default] = threshold_backward
    return table


def threshold_backward(
    grad_output: torch.Tensor, self: torch.Tensor, threshold: float
) -> torch.Tensor:
    """ReLU's (and ``F.threshold``'s) backward as a product with a 0/1 mask.

    torch's decomposition is ``where(self <= threshold, 0, grad)``; ONNX Runtime's ``Where``
    with a broadcast scalar is ~2.7x slower than Greater, Cast and Mul over the same tensor
    (32x8x8x8: 198 vs 73 us), and every ReLU of a model has one in its step. The values are
    the same for finite gradients.
    """
    return grad_output * (self > threshold).to(grad_output.dtype)


def embedding_dense_backward(
    grad_output: torch.Tensor,
    indices: torch.Tensor,
    num_weights: int,
    padding_idx: int,
    scale_grad_by_freq: bool,
) -> torch.Tensor:
    """Embedding's weight gradient; without a padding index, without torch's padding mask.

    torch's decomposition zeroes the rows of ``indices == padding_idx`` (Equal, Not and a
    ``Where`` over the whole (batch, L, dim) gradient, ~3% of the zoo transformer's step) even
    when there is no padding index (-1, which no valid index equals). Other cases keep it.
    """
    if padding_idx >= 0 or scale_grad_by_freq:
        return _TORCH_EMBEDDING_BACKWARD(
            grad_output, indices, num_weights, padding_idx, scale_grad_by_freq
        )
    zeros = grad_output.new_zeros((num_weights, *grad_output.shape[indices.dim() :]))
    return zeros.index_put([indices.long()], grad_output, accumulate=True)


def safe_softmax(x: torch.Tensor, dim: int, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Softmax with rows that are entirely -inf (fully masked attention) set to 0, not NaN.

    torch's decomposition finds those rows with ``all(x == -inf)``: Equal, Not, Cast, ReduceMax
    and Not over every attention score, most of a small transformer's forward. A row is all
    -inf exactly when its maximum is, so one ReduceMax and a comparison on the row maxima give
    the same mask (and the same values: NaN rows stay NaN, as in torch's).
    """
    out = torch.softmax(x, dim=dim, dtype=dtype)
    masked_rows = x.amax(dim=dim, keepdim=True) == float("-inf")
    return torch.where(masked_rows, torch.zeros((), dtype=out.dtype), out)


def avg_pool2d_backward(
    grad_output: torch.Tensor,
    input: torch.Tensor,
    kernel_size: Sequence[int],
    stride: Sequence[int],
    padding: Sequence[int],
    ceil_mode: bool,
    count_include_pad: bool,
    divisor_override: int | None,
) -> torch.Tensor:
    """AvgPool2d's input gradient: a transposed depthwise convolution with a 1/(kh*kw) kernel.

    Exact when every window divides by kh*kw (``count_include_pad=True``, torch's default, or
    no padding; no ``ceil_mode``, no ``divisor_override``); other settings are refused.
    """
    if input.dim() != 4 or ceil_mode or divisor_override is not None:
        raise UnsupportedBackward(
            "avg_pool2d backward with ceil_mode=True, divisor_override or unbatched input"
        )
    kernel = _expand(kernel_size, 2)
    stride_ = _expand(stride, 2) if len(stride) else kernel
    padding_ = _expand(padding, 2)
    if not count_include_pad and any(padding_):
        raise UnsupportedBackward("avg_pool2d backward with count_include_pad=False and padding")
    channels = int(input.shape[1])
    weight = torch.full(
        (channels, 1, *kernel), 1.0 / (kernel[0] * kernel[1]), dtype=grad_output.dtype
    )
    extra = _output_padding(grad_output, input, weight, stride_, padding_, [1, 1])
    return aten.convolution.default(
        grad_output, weight, None, stride_, padding_, [1, 1], True, extra, channels
    )


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
    """Gradients of an N-d convolution (grouped, depthwise or transposed) as plain convolutions."""
    spatial = weight.dim() - 2
    stride, padding, dilation = (_expand(v, spatial) for v in (stride, padding, dilation))
    groups = int(groups)
    grad_input = grad_weight = grad_bias = None
    if transposed:
        # y = conv_transpose(x, w) is the adjoint of x' = conv(y', w): the input gradient is a
        # plain convolution of the output gradient, and the weight gradient is that
        # convolution's weight gradient with the roles of input and output gradient swapped.
        if output_mask[0]:
            grad_input = aten.convolution.default(
                grad_output, weight, None, stride, padding, dilation, False, [0] * spatial, groups
            )
        if output_mask[1]:
            grad_weight = _weight_gradient(
                grad_output, input, weight, stride, padding, dilation, groups
            )
    else:
        if output_mask[0]:
            grad_input = aten.convolution.default(
                grad_output,
                weight,
                None,
                stride,
                padding,
                dilation,
                True,
                _output_padding(grad_output, input, weight, stride, padding, dilation),
                groups,
            )
        if output_mask[1]:
            grad_weight = _weight_gradient(
                input, grad_output, weight, stride, padding, dilation, groups
            )
    if output_mask[2]:
        grad_bias = grad_output.sum(dim=[0, *range(2, grad_output.dim())])
    return grad_input, grad_weight, grad_bias


def _output_padding(
    grad_output: torch.Tensor,
    input: torch.Tensor,
    weight: torch.Tensor,
    stride: list[int],
    padding: list[int],
    dilation: list[int],
) -> list[int]:
    """Rows the forward's floor dropped: in -> out = (in + 2p - d(k-1) - 1) // s + 1 loses up
    to s-1 of them, which the transposed convolution restores as output padding."""
    extra = []
    for i in range(weight.dim() - 2):
        covered = (int(grad_output.shape[2 + i]) - 1) * stride[i] - 2 * padding[i]
        covered += dilation[i] * (int(weight.shape[2 + i]) - 1) + 1
        extra.append(int(input.shape[2 + i]) - covered)
    return extra


def _weight_gradient(
    source: torch.Tensor,
    grad: torch.Tensor,
    weight: torch.Tensor,
    stride: list[int],
    padding: list[int],
    dilation: list[int],
    groups: int,
) -> torch.Tensor:
    """Gradient of ``conv(source, weight)`` w.r.t. ``weight`` for the output gradient ``grad``.

    ``weight`` is (A, B/groups, *k) for a convolution from B to A channels. Batch and channel
    axes trade places: each group's B/groups source channels become "images" whose channels
    are (group, sample), and each group's output gradients become A/groups filters over those
    channels, so one grouped convolution computes every group's cross-correlation; stride and
    dilation trade places too.
    """
    spatial = weight.dim() - 2
    n = source.shape[0]
    per_in = int(source.shape[1]) // groups
    per_out = int(weight.shape[0]) // groups
    src_sizes, grad_sizes = list(source.shape[2:]), list(grad.shape[2:])
    images = source.reshape(n, groups, per_in, *src_sizes).movedim(2, 0).movedim(2, 1)
    images = images.reshape(per_in, groups * n, *src_sizes)  # (per_in, (g, n), ...)
    filters = grad.reshape(n, groups, per_out, *grad_sizes).movedim(0, 2)
    filters = filters.reshape(groups * per_out, n, *grad_sizes)  # ((g, o), n, ...)
    out = aten.convolution.default(
        images, filters, None, dilation, padding, stride, False, [0] * spatial, groups
    )  # (per_in, (g, o), k'...)
    for i in range(spatial):  # strided forwards leave extra rows at the far edge
        out = out.narrow(2 + i, 0, int(weight.shape[2 + i]))
    return out.transpose(0, 1)  # ((g, o), per_in, k...) == weight's layout


def _expand(values: Sequence[int], n: int) -> list[int]:
    values = [int(v) for v in values]
    return values * n if len(values) == 1 else values
