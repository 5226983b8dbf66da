"""The digits MLP training bundle the benchmarks share (AdamW, lr 0.01)."""

from __future__ import annotations

from pathlib import Path


def digits_bundle(out: Path) -> Path:
    from fedge.demo.models import digits_mlp
    from fedge.exporter.export import export_bundle

    return export_bundle(
        digits_mlp(),
        input_shape=(64,),
        out_dir=out,
        optimizer="adamw",
        lr=0.01,
        num_classes=10,
        model_name="digits-mlp",
    )
