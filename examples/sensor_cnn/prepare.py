"""Write synthetic 3-axis accelerometer windows (3 x 64) as three devices' SQLite files.

Usage: python examples/sensor_cnn/prepare.py --out DIR

Nothing is downloaded: the signals are generated here, from seed 0. A window is 2 s of a
wrist-worn accelerometer at 32 Hz (64 samples per axis, in g) during one of four activities:

  0 still     gravity on one axis, tiny tremor
  1 walking   ~1.8 Hz steps (a second harmonic), moderate amplitude, mostly vertical
  2 running   ~2.7 Hz strides, large amplitude, harmonics on every axis
  3 cycling   ~1.2 Hz pedalling, smooth, mostly in the horizontal plane

Every window draws its own cadence, amplitude, phase and noise; every device has its own
sensor: a random tilt (gravity split over the axes differently), per-axis gain and bias, and
noise level, so the devices' data differ in more than their label mix (Dirichlet alpha 0.8).
The ranges overlap (a slow run looks like a brisk walk), so the task is not trivial.

DIR/dev-0.db .. dev-2.db and DIR/test.db: table ``samples``, ``window`` BLOB (float32, shape
[3, 64]) and ``activity`` INTEGER. The test windows are new windows of every activity from
the three devices' sensors (a device never holds them). DIR/baseline.json: the test accuracy of always answering the training majority class.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from fedge.demo.data import dirichlet_split
from fedge.demo.tables import write_table

ACTIVITIES = ("still", "walking", "running", "cycling")
DEVICES = 3
WINDOWS = 1200  # over the three devices
TEST_WINDOWS = 300
RATE_HZ, SAMPLES = 32.0, 64
SEED = 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path, help="directory for the files")
    out = parser.parse_args().out
    rng = np.random.default_rng(SEED)
    labels = rng.integers(0, len(ACTIVITIES), WINDOWS)
    tests: list[tuple[np.ndarray, np.ndarray]] = []
    for i, idx in enumerate(dirichlet_split(labels, DEVICES, alpha=0.8, seed=SEED)):
        sensor = Sensor.random(rng)
        windows = np.stack([sensor.window(int(c), rng) for c in labels[idx]])
        write_table(out / f"dev-{i}.db", windows, labels[idx], **_LAYOUT)
        counts = np.bincount(labels[idx], minlength=len(ACTIVITIES)).tolist()
        print(f"dev-{i}.db: {len(idx):4d} windows, per activity {counts} ({sensor})")
        # held-out windows of every activity from the same sensor (the device never has them)
        held = rng.integers(0, len(ACTIVITIES), TEST_WINDOWS // DEVICES)
        tests.append((np.stack([sensor.window(int(c), rng) for c in held]), held))
    test = np.concatenate([w for w, _ in tests])
    test_labels = np.concatenate([c for _, c in tests])
    write_table(out / "test.db", test, test_labels, **_LAYOUT)
    majority = int(np.bincount(labels).argmax())
    accuracy = float(np.mean(test_labels == majority))
    print(f"test.db:  {len(test_labels):4d} windows, every activity, from the three sensors")
    baseline = {"value": accuracy, "what": "majority class", "higher_is_better": True}
    (out / "baseline.json").write_text(json.dumps(baseline))
    print(f"baseline: test accuracy {accuracy:.4f} answering the majority class")


_LAYOUT = {"blob_dtype": "float32", "blob_column": "window", "label": "activity"}


class Sensor:
    """One device's accelerometer: mounting tilt, per-axis gain and bias, noise level."""

    def __init__(self, tilt: np.ndarray, gain: np.ndarray, bias: np.ndarray, noise: float):
        self.tilt, self.gain, self.bias, self.noise = tilt, gain, bias, noise

    @classmethod
    def random(cls, rng: np.random.Generator) -> Sensor:
        tilt = rng.normal([0.0, 0.0, 1.0], 0.35)
        return cls(
            tilt=tilt / np.linalg.norm(tilt),
            gain=rng.uniform(0.85, 1.15, 3),
            bias=rng.normal(0.0, 0.05, 3),
            noise=float(rng.uniform(0.03, 0.08)),
        )

    def __str__(self) -> str:
        return f"tilt {np.round(self.tilt, 2).tolist()}, noise {self.noise:.3f} g"

    def window(self, activity: int, rng: np.random.Generator) -> np.ndarray:
        t = np.arange(SAMPLES) / RATE_HZ
        motion = _motion(activity, t, rng)  # [3, 64], in the body's frame
        gravity = self.tilt[:, None] * np.ones_like(t)
        signal = self.gain[:, None] * (gravity + motion) + self.bias[:, None]
        return (signal + rng.normal(0.0, self.noise, signal.shape)).astype(np.float32)


def _motion(activity: int, t: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    phase = rng.uniform(0, 2 * np.pi, 3)
    if activity == 0:  # still: a slow sway and a tremor
        amp = rng.uniform(0.005, 0.03, 3)
        return amp[:, None] * np.sin(2 * np.pi * rng.uniform(0.2, 0.6) * t + phase[:, None])
    cadence, amp, axes, harmonic = {
        1: (rng.uniform(1.5, 2.2), rng.uniform(0.15, 0.45), [0.4, 0.5, 1.0], 0.35),
        2: (rng.uniform(2.1, 3.2), rng.uniform(0.4, 1.0), [0.7, 0.6, 1.0], 0.6),
        3: (rng.uniform(0.9, 1.6), rng.uniform(0.1, 0.3), [1.0, 0.9, 0.25], 0.1),
    }[activity]
    w = 2 * np.pi * cadence * t
    base = np.sin(w + phase[:, None]) + harmonic * np.sin(2 * w + 2 * phase[:, None])
    return amp * np.asarray(axes)[:, None] * base


if __name__ == "__main__":
    main()
