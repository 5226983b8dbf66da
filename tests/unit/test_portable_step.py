"""Pieces of the portable training step: convolution backward, layout, losses, failure reasons."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fedge.agent.backends.ort_portable import mean_loss
from fedge.exporter.portable.attention import attention, plain_attention
from fedge.exporter.portable.decompositions import (
    avg_pool2d_backward,
    convolution_backward,
    decomposition_table,
    embedding_dense_backward,
    safe_softmax,
    threshold_backward,
)
from fedge.exporter.portable.failure import (
    Location,
    ModuleTracker,
    describe,
    location_of_slot,
    plain,
)
from fedge.exporter.portable.layout import build_layout
from fedge.exporter.portable.step import one_hot_cross_entropy
from fedge.exporter.portable.trace import trace_batch_size

aten = torch.ops.aten

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


GROUPED = [
    # (dims, in channels, out channels, groups, size, kernel, stride, padding, dilation)
    (2, 4, 6, 2, 7, 3, 1, 1, 1),
    (2, 8, 8, 8, 8, 3, 1, 1, 1),  # depthwise
    (2, 4, 8, 4, 9, 3, 2, 1, 1),  # depthwise with a channel multiplier, strided
    (1, 6, 3, 3, 11, 4, 3, 1, 2),
]


@pytest.mark.parametrize(
    ("dims", "cin", "cout", "groups", "size", "kernel", "stride", "padding", "dilation"), GROUPED
)
def test_grouped_convolution_backward_matches_autograd(
    dims, cin, cout, groups, size, kernel, stride, padding, dilation
):
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(3, cin, *[size] * dims, generator=gen, requires_grad=True)
    w = torch.randn(cout, cin // groups, *[kernel] * dims, generator=gen, requires_grad=True)
    conv = F.conv2d if dims == 2 else F.conv1d
    out = conv(x, w, None, stride=stride, padding=padding, dilation=dilation, groups=groups)
    grad_out = torch.randn(out.shape, generator=gen)
    want = torch.autograd.grad(out, (x, w), grad_out)
    got = convolution_backward(
        grad_out, x.detach(), w.detach(), None, [stride], [padding], [dilation],
        False, [0], groups, [True, True, False],
    )  # fmt: skip
    for g, e in zip(got[:2], want, strict=True):
        assert g.shape == e.shape
        torch.testing.assert_close(g, e, atol=1e-4, rtol=1e-4)


TRANSPOSED = [
    # (dims, in channels, out channels, groups, size, kernel, stride, padding, output padding)
    (2, 4, 6, 1, 5, 3, 1, 1, 0),
    (2, 4, 6, 1, 5, 3, 2, 1, 1),
    (2, 4, 4, 2, 4, 4, 2, 1, 0),
    (1, 6, 3, 3, 7, 3, 3, 0, 2),
]


@pytest.mark.parametrize(
    ("dims", "cin", "cout", "groups", "size", "kernel", "stride", "padding", "out_pad"), TRANSPOSED
)
def test_transposed_convolution_backward_matches_autograd(
    dims, cin, cout, groups, size, kernel, stride, padding, out_pad
):
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(2, cin, *[size] * dims, generator=gen, requires_grad=True)
    w = torch.randn(cin, cout // groups, *[kernel] * dims, generator=gen, requires_grad=True)
    b = torch.randn(cout, generator=gen, requires_grad=True)
    conv = F.conv_transpose2d if dims == 2 else F.conv_transpose1d
    out = conv(x, w, b, stride=stride, padding=padding, output_padding=out_pad, groups=groups)
    grad_out = torch.randn(out.shape, generator=gen)
    want = torch.autograd.grad(out, (x, w, b), grad_out)
    got = convolution_backward(
        grad_out, x.detach(), w.detach(), [cout], [stride], [padding], [1],
        True, [out_pad], groups, [True, True, True],
    )  # fmt: skip
    for g, e in zip(got, want, strict=True):
        assert g.shape == e.shape
        torch.testing.assert_close(g, e, atol=1e-4, rtol=1e-4)


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
        "adamw/step", "input", "labels", "lr", "weight_decay",
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


class _Dispatch(RuntimeError):
    pass


def _conversion_error() -> RuntimeError:
    """An exception chained like torch.onnx's: colourful boilerplate, the cause inside."""
    try:
        try:
            raise _Dispatch(
                "No ONNX function found for <OpOverload(op='aten.mkldnn_rnn_layer', "
                "overload='default')>. Failure message: No decompositions registered\n\n"
                "Traceback (most recent call last): ..."
            )
        except _Dispatch as inner:
            raise RuntimeError(
                "Failed to convert. \x1b[96mThis is step 3/3\x1b[0m of exporting.\n- advice"
            ) from inner
    except RuntimeError as outer:
        return outer


def test_failure_reason_is_one_complete_colour_free_line_with_module_and_operator():
    reason = describe("exporting the step", _conversion_error(), Location("rnn", "LSTM"))
    assert reason == (
        "exporting the step failed in module 'rnn' (LSTM) at operator "
        "aten.mkldnn_rnn_layer.default: _Dispatch: No ONNX function found for "
        "<OpOverload(op='aten.mkldnn_rnn_layer', overload='default')>. Failure message: "
        "No decompositions registered"
    )
    assert "\x1b" not in reason and "\n" not in reason
    assert plain("a \x1b[96mb\x1b[0m\n c") == "a b c"


def test_module_tracker_names_the_innermost_module_an_exception_escaped():
    class Boom(torch.nn.Module):
        def forward(self, x):
            raise ValueError("no")

    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Sequential(torch.nn.ReLU(), Boom()))
    tracker = ModuleTracker(model)
    with pytest.raises(ValueError):
        model(torch.zeros(1, 2))
    assert tracker.innermost == Location("1.1", "Boom")
    tracker.reset()
    model[0](torch.zeros(1, 2))
    assert tracker.innermost is None  # a forward that returns leaves nothing behind


def test_slot_names_map_to_their_modules():
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
    assert location_of_slot(model, "1.running_var") == Location("1", "BatchNorm1d")
    assert location_of_slot(model, "adamw/exp_avg/0.weight") == Location("0", "Linear")


def test_trace_batch_collides_with_no_dimension():
    args = [torch.zeros(11, 13), torch.zeros(8, 17, 19)]
    assert trace_batch_size(args) == 23
    assert trace_batch_size([torch.zeros(8, 8)]) == 11


def test_module_tracker_maps_an_operator_and_its_backward_to_the_calling_module():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.AdaptiveMaxPool1d(2))
    tracker = ModuleTracker(model)
    with tracker:
        model(torch.randn(2, 3, 4))
    want = Location("1", "AdaptiveMaxPool1d")
    assert tracker.caller_of("aten.adaptive_max_pool2d.default") == want  # 1-d runs the 2-d op
    assert tracker.caller_of("aten.adaptive_max_pool2d_backward.default") == want
    assert tracker.caller_of("aten.cumsum.default") is None


@pytest.mark.parametrize(
    ("size", "kernel", "stride", "padding"),
    [(8, 2, 2, 0), (9, 3, 2, 1), (7, 3, 1, 1), (10, 2, 3, 0)],
)
def test_avg_pool2d_backward_matches_autograd(size, kernel, stride, padding):
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(2, 3, size, size, generator=gen, requires_grad=True)
    out = F.avg_pool2d(x, kernel, stride, padding)
    grad_out = torch.randn(out.shape, generator=gen)
    (want,) = torch.autograd.grad(out, (x,), grad_out)
    got = avg_pool2d_backward(
        grad_out, x.detach(), [kernel], [stride], [padding], False, True, None
    )
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_seeded_dropout_masks_have_the_rate_and_depend_only_on_seed_and_stream():
    import torch

    from fedge.exporter.portable.seeded_dropout import seeded_dropout, uniform

    seed = torch.tensor(123, dtype=torch.int64)
    u = uniform(seed, (200_000,), 1)
    assert 0.0 <= float(u.min()) and float(u.max()) < 1.0
    assert abs(float(u.mean()) - 0.5) < 0.005
    assert abs(float((u < 0.3).float().mean()) - 0.3) < 0.005  # the mask rate of p = 0.3
    # neighbouring elements are not a lattice: the lag-1 correlation is near zero
    v = u.double() - u.double().mean()
    assert abs(float((v[1:] * v[:-1]).mean() / (v * v).mean())) < 0.01
    assert torch.equal(u, uniform(torch.tensor(123), (200_000,), 1))
    for other in (uniform(torch.tensor(124), (200_000,), 1), uniform(seed, (200_000,), 2)):
        assert float((u - other).abs().mean()) > 0.2  # another seed or call: another mask
    x = torch.ones(4, 1000)
    original = torch.nn.functional.dropout
    with seeded_dropout(seed):
        a = torch.nn.functional.dropout(x, 0.5)
    with seeded_dropout(seed):
        b = torch.nn.functional.dropout(x, 0.5)
    assert torch.equal(a, b) and set(a.unique().tolist()) == {0.0, 2.0}
    assert torch.nn.functional.dropout is original  # restored after the block


def test_safe_softmax_matches_torch_on_masked_unmasked_and_nan_rows():
    aten = torch.ops.aten
    assert decomposition_table()[aten._safe_softmax.default] is safe_softmax
    x = torch.randn(2, 3, 4, 5)
    x[0, 1, 2] = float("-inf")  # a fully masked row: 0, not NaN
    x[1, 0, 1, :3] = float("-inf")  # partly masked
    x[1, 2, 3, 1] = float("nan")  # NaN stays NaN, as in torch's
    expected = aten._safe_softmax.default(x, -1)
    got = safe_softmax(x, -1)
    assert torch.equal(got.isnan(), expected.isnan())
    assert torch.equal(torch.nan_to_num(got), torch.nan_to_num(expected))
    assert torch.equal(got[0, 1, 2], torch.zeros(5))


@pytest.mark.parametrize("shape", [(7, 5), (4, 3, 6)])
def test_one_hot_cross_entropy_value_and_gradient_match_torch(shape):
    torch.manual_seed(1)
    logits = (torch.randn(*shape, dtype=torch.float64) * 3).requires_grad_(True)
    labels = torch.randint(0, shape[1], (shape[0], *shape[2:]))
    mine = one_hot_cross_entropy(logits, labels)
    (grad_mine,) = torch.autograd.grad(mine * 2.5, logits)
    ref = F.cross_entropy(logits, labels)
    (grad_ref,) = torch.autograd.grad(ref * 2.5, logits)
    assert torch.allclose(mine, ref, atol=1e-12)
    assert torch.allclose(grad_mine, grad_ref, atol=1e-12)


def test_threshold_backward_is_a_mask_product_equal_to_autograd():
    assert decomposition_table()[aten.threshold_backward.default] is threshold_backward
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(4, 3, 5, generator=gen).requires_grad_(True)
    grad = torch.randn(4, 3, 5, generator=gen)
    for threshold in (0.0, 0.3):
        out = F.threshold(x, threshold, 0.0) if threshold else F.relu(x)
        (expected,) = torch.autograd.grad(out, x, grad)
        source = x.detach() if threshold else out.detach()  # relu saves its result
        got = threshold_backward(grad, source, threshold)
        assert torch.equal(got, expected)


@pytest.mark.parametrize("padding_idx", [-1, 2])
def test_embedding_backward_matches_torch_with_and_without_padding(padding_idx):
    assert decomposition_table()[aten.embedding_dense_backward.default] is (
        embedding_dense_backward
    )
    gen = torch.Generator().manual_seed(0)
    indices = torch.randint(0, 6, (4, 7), generator=gen)
    grad = torch.randn(4, 7, 3, generator=gen)
    expected = aten.embedding_dense_backward.default(grad, indices, 6, padding_idx, False)
    got = embedding_dense_backward(grad, indices, 6, padding_idx, False)
    assert torch.allclose(got, expected, atol=1e-6)
    if padding_idx >= 0:
        assert torch.equal(got[padding_idx], torch.zeros(3))


def test_unmasked_attention_is_plain_softmax_and_masked_keeps_torch():
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 2, 5, 4, generator=gen) for _ in range(3))
    assert torch.allclose(attention(q, k, v), F.scaled_dot_product_attention(q, k, v), atol=1e-6)
    mask = torch.ones(5, 5, dtype=torch.bool).tril()
    mask[0] = False  # a fully masked row: torch's kernel gives 0 there, plain softmax NaN
    want = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    assert torch.equal(attention(q, k, v, attn_mask=mask), want)
    original = F.scaled_dot_product_attention
    with plain_attention():
        assert F.scaled_dot_product_attention is attention
    assert F.scaled_dot_product_attention is original
