"""Which integer inputs an Embedding reads, and so which ids they may hold.

An id past an Embedding's last row (a token the vocabulary does not have, a padding id of
-1) makes ONNX Runtime fail inside Gather with an index error that names no input. The bundle
records, for each integer input an Embedding reads directly, the table's row count
(``inputs[i].ids``), and the agent and ``fedge data check --bundle`` refuse rows outside it
with the rows and the module named (fedge.protocol.data_contract).

Found on the data flow, not the module names: forward pre-hooks on every Embedding and
EmbeddingBag see their input during one eval-mode forward, and an input that *is* one of the
model's input tensors is that input. An input that is transformed first (``tokens + 1``, a
slice) is not recorded: the range of the transformed ids is not the input's.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import torch
from torch import nn

from fedge.protocol.manifest import TensorSpec

from .preflight import forward_with_hooks

_LOOKUPS = (nn.Embedding, nn.EmbeddingBag)


def with_embedding_ids(
    model: nn.Module, example: Sequence[torch.Tensor], specs: Sequence[TensorSpec]
) -> tuple[TensorSpec, ...]:
    """``specs`` with ``ids_below``/``ids_module`` set on each integer input an Embedding reads
    (the smallest table when several read it)."""
    seen: dict[int, tuple[int, str]] = {}  # input index -> (rows, module path)
    by_id = {id(t): i for i, t in enumerate(example) if not t.dtype.is_floating_point}

    def hook_for(path: str, rows: int):
        def hook(_module: nn.Module, inputs: tuple) -> None:
            index = by_id.get(id(inputs[0])) if inputs else None
            if index is not None and inputs[0] is example[index]:
                if index not in seen or rows < seen[index][0]:
                    seen[index] = (rows, path)

        return hook

    handles = [
        module.register_forward_pre_hook(hook_for(path, int(module.num_embeddings)))
        for path, module in model.named_modules()
        if isinstance(module, _LOOKUPS)
    ]
    forward_with_hooks(model, example, handles)
    return tuple(
        replace(spec, ids_below=seen[i][0], ids_module=seen[i][1]) if i in seen else spec
        for i, spec in enumerate(specs)
    )
