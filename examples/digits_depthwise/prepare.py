"""Write scikit-learn's digits (1,797 8x8 images, bundled) as three devices' SQLite files.

Usage: python examples/digits_depthwise/prepare.py --out DIR

DIR/dev-0.db .. dev-2.db: table ``samples``, ``pixels`` BLOB (64 uint8 values 0..16, row by
row, as scikit-learn stores them) and ``digit`` INTEGER; split non-IID (Dirichlet alpha 0.5
over the digits, seed 0). DIR/test.db: a stratified 20% held out for the orchestrator's
evaluation. DIR/baseline.json: the test accuracy of always answering the majority digit.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from fedge.demo.data import dirichlet_split
from fedge.demo.tables import write_table

DEVICES = 3
SEED = 0
_LAYOUT = {"blob_dtype": "uint8", "blob_column": "pixels", "label": "digit"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path, help="directory for the files")
    out = parser.parse_args().out
    images, y = load_digits(return_X_y=True)
    x = images.reshape(-1, 1, 8, 8).astype(np.uint8)  # 0..16
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=0.2, stratify=y, random_state=SEED
    )
    for i, idx in enumerate(dirichlet_split(y_train, DEVICES, alpha=0.5, seed=SEED)):
        write_table(out / f"dev-{i}.db", x_train[idx], y_train[idx], **_LAYOUT)
        counts = np.bincount(y_train[idx], minlength=10).tolist()
        print(f"dev-{i}.db: {len(idx):4d} images, per digit {counts}")
    write_table(out / "test.db", x_test, y_test, **_LAYOUT)
    majority = int(np.bincount(y_train).argmax())
    accuracy = float(np.mean(y_test == majority))
    print(f"test.db:  {len(y_test):4d} images")
    baseline = {"value": accuracy, "what": "majority class", "higher_is_better": True}
    (out / "baseline.json").write_text(json.dumps(baseline))
    print(f"baseline: test accuracy {accuracy:.4f} answering the majority class")


if __name__ == "__main__":
    main()
