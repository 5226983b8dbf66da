"""A model with two inputs trains in a real federation: Mosquitto, an orchestrator process with
central evaluation, agent processes on both backends, each input mapped to its own columns or
BLOB in ``[data.inputs.<name>]``.

The task: sequences of 8 token ids (vocabulary 20) of which the first 1, 3, 5 or 7 are real
and the rest padding (random ids too, so a model that ignores the mask is misled); the label is
1 when most real tokens are below 10. The model: Embedding over int64 tokens, mean-pooled over
the float mask, a Linear head. Device 0 stores the tokens as an int64 BLOB and the mask in REAL
columns (ort-training); device 1 the tokens in INTEGER columns and the mask as a float32 BLOB
(ort-portable); the orchestrator's test table is laid out like device 0's.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from support.task_federation import run_federation
from torch import nn

from fedge.cli import main
from fedge.exporter.export import export_bundle
from fedge.exporter.inputs import InputArg

pytestmark = pytest.mark.integration

SEQ, VOCAB = 8, 20


class TokensAndMask(nn.Module):
    """Embedding -> mean over the unmasked positions -> 2 logits."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, 8)
        self.head = nn.Linear(8, 2)

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        summed = (self.embed(tokens) * mask.unsqueeze(-1)).sum(dim=1)
        return self.head(summed / mask.sum(dim=1, keepdim=True).clamp(min=1.0))


def _task(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, VOCAB, (n, SEQ))
    length = rng.choice([1, 3, 5, 7], size=(n, 1))
    mask = (np.arange(SEQ) < length).astype(np.float32)
    y = (((tokens < 10) * mask).sum(axis=1) > length[:, 0] / 2).astype(np.int64)
    return tokens, mask, y


def _write(path: Path, tokens, mask, y, *, tokens_blob: bool) -> Path:
    """Tokens as an int64 BLOB ``ids`` and the mask in REAL columns m0..m7, or the tokens in
    INTEGER columns t0..t7 and the mask as a float32 BLOB ``mask``."""
    conn = sqlite3.connect(path)
    if tokens_blob:
        cols = "ids BLOB, " + ", ".join(f"m{i} REAL" for i in range(SEQ))
        rows = [
            (t.astype("<i8").tobytes(), *m.tolist(), int(v))
            for t, m, v in zip(tokens, mask, y, strict=True)
        ]
    else:
        cols = ", ".join(f"t{i} INTEGER" for i in range(SEQ)) + ", mask BLOB"
        rows = [
            (*t.tolist(), m.astype("<f4").tobytes(), int(v))
            for t, m, v in zip(tokens, mask, y, strict=True)
        ]
    conn.execute(f"CREATE TABLE samples ({cols}, label INTEGER)")
    marks = ", ".join("?" * len(rows[0]))
    conn.executemany(f"INSERT INTO samples VALUES ({marks})", rows)
    conn.commit()
    conn.close()
    return path


BLOB_TOKENS = {
    "tokens": {"blob_column": "ids", "blob_dtype": "int64", "blob_shape": [SEQ]},
    "mask": {"features": ["m*"]},
}
COLUMN_TOKENS = {
    "tokens": {"features": ["t*"]},
    "mask": {"blob_column": "mask", "blob_dtype": "float32", "blob_shape": [SEQ]},
}


def test_tokens_and_mask_train_from_their_own_columns_and_beat_the_majority(mosquitto, tmp_path):
    tokens, mask, y = _task(600)
    order = np.random.default_rng(1).permutation(len(y))
    d0, d1, test = order[:240], order[240:480], order[480:]
    torch.manual_seed(0)
    bundle = export_bundle(
        TokensAndMask(),
        inputs=[InputArg("tokens", "int64", (SEQ,)), InputArg("mask", "float32", (SEQ,))],
        out_dir=tmp_path / "bundle",
        num_classes=2,
        optimizer="adamw",
        lr=0.05,
        model_name="tokens-mask",
    )
    devices = [
        (
            _write(tmp_path / "d0.db", tokens[d0], mask[d0], y[d0], tokens_blob=True),
            {"backend": "ort-training", "data": {"inputs": BLOB_TOKENS}},
        ),
        (
            _write(tmp_path / "d1.db", tokens[d1], mask[d1], y[d1], tokens_blob=False),
            {"backend": "ort-portable", "data": {"inputs": COLUMN_TOKENS}},
        ),
    ]
    test_db = _write(tmp_path / "test.db", tokens[test], mask[test], y[test], tokens_blob=True)
    result = run_federation(
        tmp_path,
        mosquitto,
        bundle,
        devices,
        test_db,
        rounds=3,
        local_epochs=3,
        batch_size=16,
        test_data={"inputs": BLOB_TOKENS},
    )
    majority = max(y[test].mean(), 1 - y[test].mean())
    final = result.metrics[-1]
    assert result.accepted == 6, result.logs
    assert final["test_accuracy"] > majority + 0.25, (result.metrics, majority)
    assert final["test_accuracy"] > result.metrics[0]["test_accuracy"], result.metrics
    # `fedge model export`: the deployed model takes both inputs and scores as the run did
    out = tmp_path / "model.onnx"
    db = tmp_path / "orchestrator.db"
    assert (
        main(["model", "export", "--database", str(db), "--bundle", str(bundle), "--out", str(out)])
        == 0
    )
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["tokens", "mask"]
    (logits,) = session.run(None, {"tokens": tokens[test], "mask": mask[test]})
    accuracy = float((logits.argmax(axis=1) == y[test]).mean())
    assert accuracy == pytest.approx(final["test_accuracy"]), (accuracy, final)
