"""Pieces of the portable training step: the convolution backward, the layout, numpy losses."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fedge.agent.backends.ort_portable import mean_loss
from fedge.exporter.portable.decompositions import UnsupportedBackward, convolution_backward
from fedge.exporter.portable.layout import build_layout

CASES = [
    # (spatial dims, input size, kernel, stride, padding, dilation)
    (2, 8, 3, 1, 1, 1),
    (2, 9, 3, 2, 1, 1),  # the floor in the output size drops a row
    (2, 8, 2, 2, 0, 1),
    (2, 10, 3, 1, 2, 2),
    (1, 11, 4, 3, 1, 1),
]


@pytest.mark.parametrize(("dims", "size", "kernel", "stride", "padding", "dilation"), CASES)
def test_convolution_backward_matches_autograd(dims, size, kernel, stride, padding, dilation):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, 4, *[size] * dims, generator=gen, requires_grad=True)
    w = torch.randn(5, 4, *[kernel] * dims, generator=gen, requires_grad=True)
    b = torch.randn(5, generator=gen, requires_grad=True)
    conv = F.conv2d if dims == 2 else F.conv1d
    out = conv(x, w, b, stride=stride, padding=padding, dilation=dilation)
    grad_out = torch.randn(out.shape, generator=gen)
    want = torch.autograd.grad(out, (x, w, b), grad_out)
    got = convolution_backward(
        grad_out, x.detach(), w.detach(), [5], [stride], [padding], [dilation],
        False, [0], 1, [True, True, True],
    )  # fmt: skip
    for g, e in zip(got, want, strict=True):
        assert g.shape == e.shape
        torch.testing.assert_close(g, e, atol=1e-4, rtol=1e-4)


def test_grouped_and_transposed_convolution_backward_are_refused():
    x, w, g = torch.zeros(1, 4, 5, 5), torch.zeros(4, 2, 3, 3), torch.zeros(1, 4, 3, 3)
    with pytest.raises(UnsupportedBackward, match="groups=2"):
        convolution_backward(g, x, w, None, [1], [0], [1], False, [0], 2, [True, True, False])
    with pytest.raises(UnsupportedBackward, match="transposed"):
        convolution_backward(g, x, w, None, [1], [0], [1], True, [0], 1, [True, True, False])


def test_layout_orders_slots_and_names_outputs():
    layout = build_layout(
        parameters={"w": ((2, 3), "float32"), "b": ((2,), "float32"), "f": ((1,), "float32")},
        trainable=["w", "b"],
        buffers={"bn.running_mean": ((2,), "float32")},
        optimizer="adamw",
        input_name="input",
        label_name="labels",
    )
    assert layout.input_names == [
        "w", "b", "f", "bn.running_mean",
        "adamw/exp_avg/w", "adamw/exp_avg/b", "adamw/exp_avg_sq/w", "adamw/exp_avg_sq/b",
        "adamw/step", "input", "labels", "lr",
    ]  # fmt: skip
    assert "new/f" not in layout.output_names  # frozen parameters are not outputs
    assert layout.output_names[:3] == ["loss", "new/w", "new/b"]


@pytest.mark.parametrize("loss", ["cross_entropy", "mse", "l1", "bce_with_logits"])
def test_numpy_losses_match_torch(loss):
    gen = torch.Generator().manual_seed(1)
    out = torch.randn(6, 4, generator=gen)
    if loss == "cross_entropy":
        y = torch.randint(0, 4, (6,), generator=gen)
        want = F.cross_entropy(out, y)
    else:
        y = torch.rand(6, 4, generator=gen)
        fn = {
            "mse": F.mse_loss,
            "l1": F.l1_loss,
            "bce_with_logits": F.binary_cross_entropy_with_logits,
        }
        want = fn[loss](out, y)
    assert mean_loss(loss, out.numpy(), y.numpy()) == pytest.approx(float(want), abs=1e-6)
