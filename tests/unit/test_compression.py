"""Delta compression: error bounds, error feedback, bytes saved, and hostile payloads."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fedge.protocol.compression import compression_of, decode_delta, encode_delta, topk_select
from fedge.protocol.errors import CodecError
from fedge.protocol.tensors import encode_tensors


def _delta(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "fc1.weight": rng.normal(0, 0.01, (64, 64)).astype(np.float32),
        "fc1.bias": rng.normal(0, 0.01, (64,)).astype(np.float32),
        "fc2.weight": rng.normal(0, 0.05, (10, 64)).astype(np.float32),
        "scale": np.float32(0.5).reshape(()),
    }


def test_plain_roundtrip_is_the_tensor_codec():
    d = _delta()
    blob, residual = encode_delta(d)
    assert blob == encode_tensors(d) and residual == {}
    out = decode_delta(blob)
    assert compression_of(blob) == ""
    for k in d:
        np.testing.assert_array_equal(out[k], d[k])


def test_int8_error_is_at_most_half_a_step_and_4x_smaller():
    d = _delta()
    blob, _ = encode_delta(d, "int8")
    out = decode_delta(blob)
    assert compression_of(blob) == "int8"
    for k, v in d.items():
        assert out[k].dtype == v.dtype and out[k].shape == v.shape
        step = np.abs(v).max() / 127
        assert np.abs(out[k] - v).max() <= step / 2 + 1e-9
    assert len(blob) < 0.3 * len(encode_tensors(d))


def test_topk_keeps_the_largest_entries_and_is_small():
    d = _delta()
    blob, residual = encode_delta(d, "topk", 0.1)
    out = decode_delta(blob)
    w = d["fc1.weight"]
    kept = out["fc1.weight"] != 0
    assert kept.sum() == int(np.ceil(0.1 * w.size))
    assert np.abs(w[kept]).min() >= np.abs(w[~kept]).max()
    for k in d:  # sent + residual == the delta exactly
        np.testing.assert_allclose(out[k] + residual[k], d[k], atol=1e-7)
    assert len(blob) < 0.25 * len(encode_tensors(d))


def test_error_feedback_delivers_what_was_left_out():
    """Over rounds, the sum sent equals the sum of deltas minus the last residual."""
    sent_total = {k: np.zeros(np.shape(v), np.float64) for k, v in _delta().items()}
    true_total = {k: np.zeros(np.shape(v), np.float64) for k, v in _delta().items()}
    residual = None
    for r in range(20):
        d = _delta(r)
        blob, residual = encode_delta(d, "topk", 0.05, residual=residual)
        out = decode_delta(blob)
        for k in d:
            sent_total[k] += out[k]
            true_total[k] += d[k]
    for k in true_total:
        np.testing.assert_allclose(sent_total[k] + residual[k], true_total[k], atol=1e-5)
    # without feedback the error is the sum of all dropped parts; with it, only the last residual
    no_fb = sum(
        np.abs(d - decode_delta(encode_delta({"w": d}, "topk", 0.05)[0])["w"]).sum()
        for d in (_delta(r)["fc1.weight"] for r in range(20))
    )
    fb = np.abs(sent_total["fc1.weight"] - true_total["fc1.weight"]).sum()
    assert fb < 0.5 * no_fb


def test_topk_select_edge_cases():
    idx, vals = topk_select(np.array([1.0, -5.0, 3.0]), 0.01)
    assert idx.tolist() == [1] and vals.tolist() == [-5.0]
    idx, _ = topk_select(np.array([1.0, 2.0]), 1.0)
    assert idx.tolist() == [0, 1]


def _forge(tensors, meta) -> bytes:
    return encode_tensors(tensors, {"fedge.compression": json.dumps(meta)})


def test_hostile_payloads_are_refused():
    entry = {"name": "w", "shape": [4], "dtype": "float32"}
    bad_idx = _forge(
        {"0.idx": np.array([7], np.int32), "0.val": np.array([1.0], np.float32)},
        {"method": "topk", "tensors": {"0": entry}},
    )
    with pytest.raises(CodecError, match="out of range"):
        decode_delta(bad_idx)
    huge = _forge(
        {"0.idx": np.array([0], np.int32), "0.val": np.array([1.0], np.float32)},
        {"method": "topk", "tensors": {"0": dict(entry, shape=[1 << 20, 1 << 20])}},
    )
    with pytest.raises(CodecError, match="expands past"):
        decode_delta(huge, max_elements=1000)
    with pytest.raises(CodecError, match="unknown compression"):
        decode_delta(_forge({"0": np.zeros(1, np.int8)}, {"method": "zip", "tensors": {}}))
    no_scale = _forge({"0": np.zeros(4, np.int8)}, {"method": "int8", "tensors": {"0": entry}})
    with pytest.raises(CodecError, match="scale"):
        decode_delta(no_scale)
    with pytest.raises(CodecError, match="only floats"):
        encode_delta({"n": np.arange(3)}, "int8")
    with pytest.raises(CodecError, match="fraction"):
        encode_delta(_delta(), "topk", 0.0)
