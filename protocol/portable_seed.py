"""The seed a device feeds to a portable step with dropout (``dropout_seed``).

The exporter's seeded dropout (``fedge.exporter.portable.seeded_dropout``) makes every mask a
function of this int64 input; the agent derives it from the round's seed and the step number,
so a round's training is reproducible from its seed. Shared here because the agent must not
import the exporter (torch).
"""

from __future__ import annotations

SEED_NAME = "dropout_seed"
MODULUS = 2_147_483_647  # 2^31 - 1: products of two residues stay below 2^62 in int64


def step_seed(round_seed: int, step: int) -> int:
    """The ``dropout_seed`` for optimizer step ``step`` of a round trained with ``round_seed``."""
    return (int(round_seed) * 1_000_003 + int(step)) % MODULUS
