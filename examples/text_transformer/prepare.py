"""Write synthetic tokenized messages (16 int64 token ids each) as three devices' SQLite files.

Usage: python examples/text_transformer/prepare.py --out DIR

Nothing is downloaded: the messages are generated here, from seed 0, over a 64-token
vocabulary: 0 is padding, 1..31 are common words, and each of four topics (sports, weather,
finance, health) owns 8 keywords (32..63). A message has 6..16 tokens, mostly common words,
with 2..4 keywords of its topic and 0..2 keywords of another one (a distraction), padded with
0 to 16; its topic is the label. So the class depends on which tokens occur (and how often),
not on one fixed position, and a bag of words must weigh keywords against each other.
Devices differ in their topic mix (Dirichlet alpha 0.8) and their own habits (each device
favours a few common words).

DIR/dev-0.db .. dev-2.db and DIR/test.db: table ``samples``, ``tokens`` BLOB (int64
little-endian, 16 per row, as numpy ``np.asarray(ids, "<i8").tobytes()``) and ``topic``
INTEGER. DIR/baseline.json: the test accuracy of always answering the training majority.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from fedge.demo.data import dirichlet_split
from fedge.demo.tables import write_table

TOPICS = ("sports", "weather", "finance", "health")
COMMON = np.arange(1, 32)
KEYWORDS = [np.arange(32 + 8 * k, 40 + 8 * k) for k in range(len(TOPICS))]
LENGTH = 16
DEVICES = 3
MESSAGES = 1500  # over the three devices
TEST_MESSAGES = 300
SEED = 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path, help="directory for the files")
    out = parser.parse_args().out
    rng = np.random.default_rng(SEED)
    topics = rng.integers(0, len(TOPICS), MESSAGES)
    for i, idx in enumerate(dirichlet_split(topics, DEVICES, alpha=0.8, seed=SEED)):
        habits = rng.dirichlet(np.full(len(COMMON), 0.5))  # this device's common-word mix
        tokens = np.stack([message(int(t), habits, rng) for t in topics[idx]])
        write_table(out / f"dev-{i}.db", tokens, topics[idx], **_LAYOUT)
        counts = np.bincount(topics[idx], minlength=len(TOPICS)).tolist()
        print(f"dev-{i}.db: {len(idx):4d} messages, per topic {counts}")
    habits = np.full(len(COMMON), 1.0 / len(COMMON))
    test_topics = rng.integers(0, len(TOPICS), TEST_MESSAGES)
    test = np.stack([message(int(t), habits, rng) for t in test_topics])
    write_table(out / "test.db", test, test_topics, **_LAYOUT)
    print(
        f"test.db:  {len(test_topics):4d} messages; e.g. topic {TOPICS[test_topics[0]]}: {test[0].tolist()}"
    )
    majority = int(np.bincount(topics).argmax())
    accuracy = float(np.mean(test_topics == majority))
    baseline = {"value": accuracy, "what": "majority class", "higher_is_better": True}
    (out / "baseline.json").write_text(json.dumps(baseline))
    print(f"baseline: test accuracy {accuracy:.4f} answering the majority class")


_LAYOUT = {"blob_dtype": "int64", "blob_column": "tokens", "label": "topic"}


def message(topic: int, habits: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One padded message of ``topic``: common words, its keywords, maybe a distraction."""
    n = int(rng.integers(6, LENGTH + 1))
    words = list(rng.choice(COMMON, size=n, p=habits))
    own = int(rng.integers(2, 5))
    other = int(rng.integers(0, 3)) if own > 2 else int(rng.integers(0, 2))
    slots = rng.choice(n, size=own + other, replace=False)
    distraction = int(rng.choice([k for k in range(len(TOPICS)) if k != topic]))
    for j, slot in enumerate(slots):
        words[slot] = int(rng.choice(KEYWORDS[topic] if j < own else KEYWORDS[distraction]))
    return np.asarray(words + [0] * (LENGTH - n), dtype=np.int64)


if __name__ == "__main__":
    main()
