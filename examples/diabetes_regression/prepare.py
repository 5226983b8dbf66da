"""Write scikit-learn's diabetes data (442 patients, bundled) as three devices' SQLite files.

Usage: python examples/diabetes_regression/prepare.py --out DIR

DIR/dev-0.db .. dev-2.db: table ``samples``, the 10 measurements as REAL columns (``age``,
``sex``, ``bmi``, ``bp``, ``s1`` .. ``s6``, as scikit-learn ships them: centred, each column
scaled to unit L2 norm over the 442 patients) and ``progression`` REAL (a disease score one
year later, 25..346). The devices are three clinics: the patients are split by ``bmi`` (low,
middle, high thirds, with 20% of each mixed at random), so the clinics' targets differ too.
DIR/test.db: a random 20% held out. DIR/baseline.json: the test RMSE of predicting the
training rows' mean (what a model that learned nothing would do).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from sklearn.datasets import load_diabetes

from fedge.demo.tables import write_table

DEVICES = 3
SEED = 0
COLUMNS = ["age", "sex", "bmi", "bp", "s1", "s2", "s3", "s4", "s5", "s6"]
_LAYOUT = {"columns": COLUMNS, "label": "progression", "label_type": "REAL"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path, help="directory for the files")
    out = parser.parse_args().out
    x, y = load_diabetes(return_X_y=True)
    rng = np.random.default_rng(SEED)
    order = rng.permutation(len(y))
    test, train = order[: len(y) // 5], order[len(y) // 5 :]
    # clinics by bmi third; a fifth of the patients land in a random clinic
    clinic = np.digitize(x[train, 2], np.quantile(x[train, 2], [1 / 3, 2 / 3]))
    mixed = rng.random(len(train)) < 0.2
    clinic[mixed] = rng.integers(0, DEVICES, int(mixed.sum()))
    for i in range(DEVICES):
        idx = train[clinic == i]
        write_table(out / f"dev-{i}.db", x[idx], y[idx], **_LAYOUT)
        print(
            f"dev-{i}.db: {len(idx):3d} patients, progression mean {y[idx].mean():5.1f} "
            f"(range {y[idx].min():.0f}..{y[idx].max():.0f})"
        )
    write_table(out / "test.db", x[test], y[test], **_LAYOUT)
    mean = float(y[train].mean())
    rmse = float(np.sqrt(np.mean((y[test] - mean) ** 2)))
    mae = float(np.mean(np.abs(y[test] - mean)))
    print(f"test.db:  {len(test):3d} patients")
    baseline = {"value": rmse, "what": "predicting the mean", "higher_is_better": False}
    (out / "baseline.json").write_text(json.dumps(baseline))
    print(f"baseline: test RMSE {rmse:.2f} (MAE {mae:.2f}) predicting the training mean {mean:.1f}")


if __name__ == "__main__":
    main()
