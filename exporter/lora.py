"""LoRA: wrap chosen ``nn.Linear`` layers with trainable low-rank adapters over a frozen weight.

``apply_lora`` replaces each Linear whose module path matches a glob with a ``LoraLinear``:
``y = x W^T + b + scale * (x A^T) B^T`` with ``A`` (rank x in, small seeded random values),
``B`` (out x rank, zeros: the wrapped model starts equal to the original) and
``scale = alpha / rank``. ``W`` becomes the frozen parameter ``<path>.base_weight``; the bias
keeps its name. The exporter freezes everything but the adapters (and the heads the author keeps
trainable), so only they train on the device and travel in deltas (fedge.protocol.parameter_travel).

Some modules read a Linear's ``weight`` instead of calling it (``nn.MultiheadAttention`` reads
``out_proj.weight``; ``nn.TransformerEncoderLayer``'s inference fast path reads
``linear1.weight``): ``LoraLinear.weight`` is therefore the merged ``W + scale * B @ A``, so
every way into the layer sees the adapter.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from fedge.protocol.manifest_lora import LoraAdapter, LoraSpec

from .errors import ExportError


@dataclass(frozen=True)
class LoraOptions:
    """What ``fedge export --lora RANK --lora-targets GLOB [--lora-alpha A]`` asks for."""

    rank: int
    targets: tuple[str, ...]
    alpha: float | None = None  # None: alpha = rank (scale 1)
    seed: int = 0

    @property
    def scale(self) -> float:
        return (self.rank if self.alpha is None else self.alpha) / self.rank


class LoraLinear(nn.Module):
    """A frozen Linear plus a trainable low-rank update; same input and output as the Linear."""

    def __init__(
        self, base: nn.Linear, rank: int, scale: float, generator: torch.Generator
    ) -> None:
        super().__init__()
        self.in_features, self.out_features = base.in_features, base.out_features
        self.rank, self.scale = rank, scale
        self.base_weight = nn.Parameter(base.weight.detach().clone(), requires_grad=False)
        self.bias = base.bias  # keeps its name (and trainability: the author decides)
        bound = 1.0 / math.sqrt(base.in_features)  # nn.Linear's own init range for A
        a = torch.empty(rank, base.in_features).uniform_(-bound, bound, generator=generator)
        self.lora_A = nn.Parameter(a.to(base.weight.dtype))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank, dtype=base.weight.dtype))

    @property
    def weight(self) -> torch.Tensor:
        """The merged weight, for modules that read ``.weight`` instead of calling the layer."""
        return self.base_weight + self.scale * (self.lora_B @ self.lora_A)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Two thin matmuls per sample instead of forming the out x in update: the LoRA way.
        return F.linear(x, self.base_weight, self.bias) + self.scale * F.linear(
            F.linear(x, self.lora_A), self.lora_B
        )

    def extra_repr(self) -> str:
        return f"{self.in_features}, {self.out_features}, rank={self.rank}, scale={self.scale:g}"


def linear_layers(model: nn.Module) -> dict[str, nn.Linear]:
    """Every ``nn.Linear`` (subclasses included) by module path."""
    return {path: m for path, m in model.named_modules() if isinstance(m, nn.Linear) and path}


def select_targets(model: nn.Module, options: LoraOptions) -> list[str]:
    """Module paths the globs choose; ExportError naming the Linear layers when one misses."""
    if isinstance(options.rank, bool) or not isinstance(options.rank, int) or options.rank <= 0:
        raise ExportError(f"--lora rank must be a positive integer, got {options.rank!r}")
    if options.alpha is not None and not (math.isfinite(options.alpha) and options.alpha > 0):
        raise ExportError(f"--lora-alpha must be a positive number, got {options.alpha!r}")
    if not options.targets:
        raise ExportError(
            "--lora needs --lora-targets GLOB (module paths of Linear layers); the model's "
            f"Linear layers are: {_listing(linear_layers(model))}"
        )
    layers = linear_layers(model)
    chosen: list[str] = []
    for pattern in options.targets:
        hits = [p for p in layers if fnmatch.fnmatchcase(p, pattern)]
        if not hits:
            raise ExportError(
                f"--lora-targets {pattern!r} matches no Linear layer; the model's Linear layers "
                f"are: {_listing(layers)}"
            )
        chosen += [p for p in hits if p not in chosen]
    for path in chosen:
        layer = layers[path]
        biggest = min(layer.in_features, layer.out_features)
        if options.rank > biggest:
            raise ExportError(
                f"--lora {options.rank} is larger than Linear layer '{path}' allows "
                f"({layer.in_features} -> {layer.out_features}: rank at most {biggest}); "
                "choose a smaller rank or leave the layer out of --lora-targets"
            )
    return sorted(chosen, key=list(layers).index)


def apply_lora(model: nn.Module, options: LoraOptions) -> tuple[nn.Module, LoraSpec]:
    """``model`` with adapters on the chosen layers (in place) and the manifest's ``lora``."""
    targets = select_targets(model, options)
    generator = torch.Generator().manual_seed(options.seed)
    adapters = []
    for path in targets:
        parent_path, _, attr = path.rpartition(".")
        parent = model.get_submodule(parent_path) if parent_path else model
        base = getattr(parent, attr)
        setattr(parent, attr, LoraLinear(base, options.rank, options.scale, generator))
        adapters.append(
            LoraAdapter(
                module=path,
                base=f"{path}.base_weight",
                merged=f"{path}.weight",
                lora_a=f"{path}.lora_A",
                lora_b=f"{path}.lora_B",
            )
        )
    spec = LoraSpec(
        rank=options.rank,
        alpha=float(options.rank if options.alpha is None else options.alpha),
        seed=options.seed,
        targets=tuple(options.targets),
        adapters=tuple(adapters),
    )
    return model, spec


def trainable_names(spec: LoraSpec, names: Sequence[str], heads: Sequence[str] | None) -> list[str]:
    """Adapters plus the parameters ``heads`` globs keep trainable (``--trainable``).

    A head glob may not reach into a wrapped layer's frozen base weight: training that fully
    would make its adapter pointless (leave the layer out of ``--lora-targets`` instead).
    """
    bases = {a.base: a.module for a in spec.adapters}
    for pattern in heads or ():
        if not any(fnmatch.fnmatchcase(n, pattern) for n in names):
            raise ExportError(
                f"--trainable {pattern!r} matches no parameter; parameters are: {', '.join(names)}"
            )
        for base, module in bases.items():
            if fnmatch.fnmatchcase(base, pattern):
                raise ExportError(
                    f"--trainable {pattern!r} would train the frozen base weight of LoRA layer "
                    f"'{module}'; leave '{module}' out of --lora-targets to train it fully"
                )
    adapters = {n for a in spec.adapters for n in (a.lora_a, a.lora_b)}
    return [
        n for n in names if n in adapters or any(fnmatch.fnmatchcase(n, p) for p in heads or ())
    ]


def _listing(layers: dict[str, nn.Linear]) -> str:
    if not layers:
        return "none (the model has no nn.Linear)"
    return ", ".join(f"{p} ({m.in_features}->{m.out_features})" for p, m in layers.items())
