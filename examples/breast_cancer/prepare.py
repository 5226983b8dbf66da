"""Write breast_cancer (scikit-learn's bundled copy, 569 rows) as three devices' SQLite files.

Usage: python examples/breast_cancer/prepare.py --out DIR

DIR/dev-0.db .. dev-2.db: table ``samples``, the 30 measurements as REAL columns named like
scikit-learn's (``mean_radius``, ..., ``worst_fractal_dimension``), **raw** (areas in the
thousands next to smoothness near 0.1), and ``label`` INTEGER (1 = benign, 0 = malignant);
split non-IID (Dirichlet alpha 1.0 over the labels, seed 0). DIR/test.db: a stratified 20%
held out for the orchestrator's evaluation. DIR/baseline.json: the test accuracy of always
answering the training rows' majority class.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from sklearn.datasets import load_breast_cancer
from sklearn.model_selection import train_test_split

from fedge.demo.data import dirichlet_split
from fedge.demo.tables import write_table

DEVICES = 3
SEED = 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path, help="directory for the files")
    out = parser.parse_args().out

    data = load_breast_cancer()
    x, y = data.data, data.target
    columns = [name.replace(" ", "_") for name in data.feature_names]
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=0.2, stratify=y, random_state=SEED
    )
    for i, idx in enumerate(dirichlet_split(y_train, DEVICES, alpha=1.0, seed=SEED)):
        _write(out / f"dev-{i}.db", x_train[idx], y_train[idx], columns)
        counts = np.bincount(y_train[idx], minlength=2)
        print(f"dev-{i}.db: {len(idx):3d} rows, malignant {counts[0]:3d}, benign {counts[1]:3d}")
    _write(out / "test.db", x_test, y_test, columns)
    majority = int(np.bincount(y_train).argmax())
    accuracy = float(np.mean(y_test == majority))
    print(f"test.db:  {len(y_test):3d} rows; features span {x.min():.4g} .. {x.max():.4g} (raw)")
    baseline = {"value": accuracy, "what": "majority class", "higher_is_better": True}
    (out / "baseline.json").write_text(json.dumps(baseline))
    print(f"baseline: test accuracy {accuracy:.4f} answering the majority class")


def _write(path: Path, x: np.ndarray, y: np.ndarray, columns: list[str]) -> None:
    write_table(path, x, y, columns=columns)


if __name__ == "__main__":
    main()
