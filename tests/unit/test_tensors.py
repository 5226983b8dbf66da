import numpy as np
import pytest

from fedge.protocol.errors import CodecError
from fedge.protocol.tensors import check_finite, decode_tensors, encode_tensors


def test_round_trip_keeps_names_shapes_dtypes_and_values():
    rng = np.random.default_rng(0)
    tensors = {
        "0.weight": rng.standard_normal((4, 3)).astype(np.float32),
        "bn.num_batches_tracked": np.array(7, dtype=np.int64),
        "emb": rng.integers(0, 255, (5,), dtype=np.uint8),
    }
    back = decode_tensors(encode_tensors(tensors))
    assert set(back) == set(tensors)
    for name, arr in tensors.items():
        assert back[name].dtype == arr.dtype and back[name].shape == arr.shape
        np.testing.assert_array_equal(back[name], arr)
    back["0.weight"][0, 0] = 99.0  # decoded arrays are writable copies


def test_encoding_is_deterministic_regardless_of_insertion_order():
    a = {"b": np.ones(3, np.float32), "a": np.zeros(2, np.float32)}
    b = {"a": np.zeros(2, np.float32), "b": np.ones(3, np.float32)}
    assert encode_tensors(a) == encode_tensors(b)


@pytest.mark.parametrize(
    "payload", [b"", b"garbage", b"\xff" * 16, encode_tensors({"x": np.ones(4, np.float32)})[:-3]]
)
def test_malformed_payload_raises_codec_error(payload):
    with pytest.raises(CodecError):
        decode_tensors(payload)


def test_refuses_object_and_complex_dtypes():
    with pytest.raises(CodecError, match="complex"):
        encode_tensors({"z": np.ones(2, np.complex64)})


def test_check_finite_names_the_tensor():
    with pytest.raises(CodecError, match="'w'.*1 non-finite"):
        check_finite({"ok": np.ones(2, np.float32), "w": np.array([1.0, np.nan], np.float32)})
    check_finite({"ids": np.array([1, 2], np.int64)})


def test_safetensors_header_reads_metadata_and_refuses_lengths_past_the_end():
    from fedge.protocol.tensors import header_metadata, safetensors_header

    data = encode_tensors({"w": np.zeros((2, 3), np.float32)}, {"k": "v"})
    assert safetensors_header(data)["w"]["shape"] == [2, 3]
    assert header_metadata(data) == {"k": "v"}
    cut = data[:20]  # the declared header length runs past the end
    assert safetensors_header(cut) == {} and header_metadata(cut) == {}
    assert safetensors_header(b"\x01") == {}


def test_l2_norm_is_the_norm_of_all_tensors_as_one_vector():
    from fedge.protocol.tensors import l2_norm

    tensors = {"a": np.array([3.0], np.float32), "b": np.array([[4.0]], np.float16)}
    assert l2_norm(tensors) == 5.0
    assert l2_norm({}) == 0.0
