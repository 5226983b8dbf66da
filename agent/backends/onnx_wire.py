"""Just enough of protobuf's wire format to rewrite an ONNX model without the ``onnx`` package.

The agent must not import onnx (or torch): it runs on plain ``onnxruntime`` on a Raspberry Pi.
To wrap the bundle's step graph in an ONNX ``Loop`` (``portable_epoch.py``) it needs to read a
model's top-level fields, a graph's inputs and outputs, and write a few new messages (nodes,
value infos, attributes). Every message is kept as its encoded fields: unknown or untouched
fields pass through byte for byte, so nothing the exporter wrote is re-interpreted.

Field numbers are ONNX's (onnx/onnx.proto3), named in the constants below.
"""

from __future__ import annotations

from collections.abc import Iterator

from fedge.protocol.errors import FedgeError

VARINT, LENGTH = 0, 2
_FIXED = {1: 8, 5: 4}  # wire type -> bytes (64-bit, 32-bit)

# ModelProto
MODEL_GRAPH = 7
# GraphProto
GRAPH_NODE, GRAPH_NAME, GRAPH_INPUT, GRAPH_OUTPUT = 1, 2, 11, 12
# NodeProto
NODE_INPUT, NODE_OUTPUT, NODE_NAME, NODE_OP_TYPE, NODE_ATTRIBUTE = 1, 2, 3, 4, 5
# AttributeProto (type: INT = 2, GRAPH = 5)
ATTR_NAME, ATTR_I, ATTR_G, ATTR_TYPE = 1, 3, 6, 20
ATTR_INT, ATTR_GRAPH = 2, 5
# ValueInfoProto, TypeProto, TypeProto.Tensor, TensorShapeProto, Dimension
VALUE_NAME, VALUE_TYPE = 1, 2
TYPE_TENSOR = 1
TENSOR_ELEM_TYPE, TENSOR_SHAPE = 1, 2
SHAPE_DIM = 1
DIM_VALUE, DIM_PARAM = 1, 2
# TensorProto.DataType
FLOAT, INT64, BOOL = 1, 7, 9

Field = tuple[int, int, bytes | int]  # (number, wire type, payload or varint value)


class WireError(FedgeError):
    """The step graph's bytes are not a protobuf message this reader understands."""


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        if pos >= len(data) or shift > 63:
            raise WireError("truncated or overlong varint in the step graph")
        byte = data[pos]
        value |= (byte & 0x7F) << shift
        pos += 1
        if not byte & 0x80:
            return value, pos
        shift += 7


def fields(data: bytes) -> Iterator[Field]:
    """The top-level fields of one encoded message, in order."""
    pos = 0
    while pos < len(data):
        tag, pos = _varint(data, pos)
        number, wire = tag >> 3, tag & 7
        if wire == VARINT:
            value, pos = _varint(data, pos)
            yield number, wire, value
        elif wire == LENGTH:
            size, pos = _varint(data, pos)
            if pos + size > len(data):
                raise WireError("a field runs past the end of the step graph")
            yield number, wire, data[pos : pos + size]
            pos += size
        elif wire in _FIXED:
            yield number, wire, data[pos : pos + _FIXED[wire]]
            pos += _FIXED[wire]
        else:
            raise WireError(f"unsupported protobuf wire type {wire} in the step graph")


def _encode_varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def encode(number: int, wire: int, value: bytes | int) -> bytes:
    """One field, encoded."""
    head = _encode_varint(number << 3 | wire)
    if wire == VARINT:
        assert isinstance(value, int)
        return head + _encode_varint(value)
    assert isinstance(value, bytes)
    if wire == LENGTH:
        return head + _encode_varint(len(value)) + value
    return head + value


def message(*parts: Field) -> bytes:
    return b"".join(encode(*part) for part in parts)


def text(number: int, value: str) -> Field:
    return number, LENGTH, value.encode()


def sub(number: int, value: bytes) -> Field:
    return number, LENGTH, value


def name_of(value_info: bytes) -> str:
    """A ValueInfoProto's name."""
    for number, wire, value in fields(value_info):
        if number == VALUE_NAME and wire == LENGTH:
            assert isinstance(value, bytes)
            return value.decode()
    raise WireError("a graph input or output without a name")


def renamed(value_info: bytes, name: str) -> bytes:
    """A ValueInfoProto with another name (type and everything else kept)."""
    rest = [f for f in fields(value_info) if f[0] != VALUE_NAME]
    return message(text(VALUE_NAME, name), *rest)


def tensor_info(name: str, elem_type: int, dims: list[int | str | None]) -> bytes:
    """A ValueInfoProto for a tensor of ``elem_type`` with ``dims`` (numbers, names, or None
    for an unknown dimension)."""
    return message(text(VALUE_NAME, name), sub(VALUE_TYPE, tensor_type(elem_type, dims)))


def tensor_type(elem_type: int, dims: list[int | str | None]) -> bytes:
    shape = b"".join(encode(SHAPE_DIM, LENGTH, _dimension(d)) for d in dims)
    tensor = message((TENSOR_ELEM_TYPE, VARINT, elem_type), sub(TENSOR_SHAPE, shape))
    return message(sub(TYPE_TENSOR, tensor))


def _dimension(dim: int | str | None) -> bytes:
    if dim is None:
        return b""
    if isinstance(dim, int):
        return message((DIM_VALUE, VARINT, dim))
    return message(text(DIM_PARAM, dim))


def node(
    op_type: str, inputs: list[str], outputs: list[str], name: str, *attributes: bytes
) -> bytes:
    """A NodeProto (default domain) with already encoded AttributeProtos."""
    return message(
        *(text(NODE_INPUT, i) for i in inputs),
        *(text(NODE_OUTPUT, o) for o in outputs),
        text(NODE_NAME, name),
        text(NODE_OP_TYPE, op_type),
        *(sub(NODE_ATTRIBUTE, a) for a in attributes),
    )


def int_attribute(name: str, value: int) -> bytes:
    return message(text(ATTR_NAME, name), (ATTR_I, VARINT, value), (ATTR_TYPE, VARINT, ATTR_INT))


def graph_attribute(name: str, graph: bytes) -> bytes:
    return message(text(ATTR_NAME, name), sub(ATTR_G, graph), (ATTR_TYPE, VARINT, ATTR_GRAPH))
