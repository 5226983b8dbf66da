"""The manifest's ``lora`` section, and merging adapters back into plain weights (numpy only).

A bundle exported with ``fedge export --lora RANK --lora-targets GLOB`` trains low-rank
adapters over frozen Linear weights. The section records the configuration and, per wrapped
layer, the names of its frozen base weight (``<path>.base_weight``), its adapters
(``<path>.lora_A``: rank x in, ``<path>.lora_B``: out x rank) and the plain model's weight name
(``<path>.weight``). ``merge_parameters`` turns a model version's parameters into those of the
plain model (``W + alpha/rank * B @ A``), which ``merged_inference`` (the model without adapters)
takes: what ``fedge model export`` deploys.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import BundleError
from .manifest_fields import FieldReader
from .manifest_specs import ParameterSpec

MERGED_INFERENCE = "inference_merged.onnx"
MAX_RANK = 4096


@dataclass(frozen=True)
class LoraAdapter:
    """One wrapped Linear layer: parameter names before and after merging."""

    module: str
    base: str
    merged: str
    lora_a: str
    lora_b: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "module": self.module,
            "base": self.base,
            "merged": self.merged,
            "lora_a": self.lora_a,
            "lora_b": self.lora_b,
        }


@dataclass(frozen=True)
class LoraSpec:
    """LoRA configuration of a bundle (rank, alpha, seed of A's init, target globs, layers)."""

    rank: int
    alpha: float
    seed: int
    targets: tuple[str, ...]
    adapters: tuple[LoraAdapter, ...]
    merged_inference: str = MERGED_INFERENCE

    @property
    def scale(self) -> float:
        """``alpha / rank``: the factor on ``B @ A``."""
        return self.alpha / self.rank

    def to_dict(self) -> dict[str, Any]:
        return {
            "rank": self.rank,
            "alpha": self.alpha,
            "seed": self.seed,
            "targets": list(self.targets),
            "adapters": [a.to_dict() for a in self.adapters],
            "merged_inference": self.merged_inference,
        }


def parse_lora(r: FieldReader, parameters: Sequence[ParameterSpec]) -> LoraSpec:
    """The ``lora`` object, checked against the parameter table (names, shapes, trainability)."""
    rank = r.integer("rank", minimum=1)
    if rank > MAX_RANK:
        raise BundleError(f"manifest field 'lora.rank' must be <= {MAX_RANK}, got {rank}")
    targets = r.array("targets", nonempty=True)
    if not all(isinstance(t, str) and t for t in targets):
        raise BundleError("manifest field 'lora.targets' must list non-empty strings")
    adapters = []
    for i, item in enumerate(r.array("adapters", nonempty=True)):
        a = FieldReader(item, f"lora.adapters[{i}]")
        adapters.append(
            LoraAdapter(
                a.name("module"),
                a.name("base"),
                a.name("merged"),
                a.name("lora_a"),
                a.name("lora_b"),
            )
        )
        a.done()
    spec = LoraSpec(
        rank=rank,
        alpha=r.positive_number("alpha"),
        seed=r.integer("seed", minimum=0),
        targets=tuple(targets),
        adapters=tuple(adapters),
        merged_inference=r.name("merged_inference"),
    )
    r.done()
    _check_against(spec, {p.name: p for p in parameters})
    return spec


def _check_against(spec: LoraSpec, params: Mapping[str, ParameterSpec]) -> None:
    for i, a in enumerate(spec.adapters):
        where = f"manifest field 'lora.adapters[{i}]'"
        for name in (a.base, a.lora_a, a.lora_b):
            if name not in params:
                raise BundleError(f"{where} names parameter {name!r}, which 'parameters' lacks")
        base, la, lb = params[a.base], params[a.lora_a], params[a.lora_b]
        if base.trainable or not (la.trainable and lb.trainable):
            raise BundleError(f"{where}: the base weight must be frozen and the adapters trainable")
        if (
            len(base.shape) != 2
            or la.shape != (spec.rank, base.shape[1])
            or lb.shape
            != (
                base.shape[0],
                spec.rank,
            )
        ):
            raise BundleError(
                f"{where}: shapes base {list(base.shape)}, lora_a {list(la.shape)}, lora_b "
                f"{list(lb.shape)} do not fit rank {spec.rank}"
            )
        if a.merged in params:
            raise BundleError(f"{where}: merged name {a.merged!r} is already a parameter")


def merge_parameters(spec: LoraSpec, params: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The plain model's parameters: each base weight plus ``scale * B @ A``, adapters dropped."""
    out = dict(params)
    for a in spec.adapters:
        missing = [n for n in (a.base, a.lora_a, a.lora_b) if n not in out]
        if missing:
            raise BundleError(f"cannot merge LoRA layer '{a.module}': no values for {missing}")
        base = out.pop(a.base)
        update = out.pop(a.lora_b).astype(np.float64) @ out.pop(a.lora_a).astype(np.float64)
        out[a.merged] = (base.astype(np.float64) + spec.scale * update).astype(base.dtype)
    return out
