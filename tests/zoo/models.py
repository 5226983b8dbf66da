"""A model zoo for the exporter: small, seeded versions of the architectures fedge supports.

Each entry says how to export it (input shape/dtype, loss) so tests and ``bench/export_bench.py``
share one list. Import with ``from zoo.models import ZOO`` (pytest puts ``tests`` on the path).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn


@dataclass(frozen=True)
class ZooModel:
    """One zoo model: how to build it and the export options it needs."""

    name: str
    build: Callable[[], nn.Module]
    input_shape: tuple[int, ...]
    input_dtype: str = "float32"
    loss: str = "cross_entropy"
    options: dict[str, Any] = field(default_factory=dict)
    note: str = ""
    optimizers: tuple[str, ...] = ("adamw",)  # the first is the one tests export with


def _seeded(factory: Callable[[], nn.Module]) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        state = torch.random.get_rng_state()
        try:
            torch.manual_seed(0)
            return _warm_batchnorm(factory())
        finally:
            torch.random.set_rng_state(state)

    build.__name__ = factory.__name__
    return build


def _warm_batchnorm(model: nn.Module) -> nn.Module:
    """Give BatchNorm non-trivial running statistics, so eval parity means something."""
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            with torch.no_grad():
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.2, 0.2)
    return model


class LastStep(nn.Module):
    """A recurrent layer followed by a linear head on the last time step."""

    def __init__(self, rnn: nn.Module, hidden: int, classes: int) -> None:
        super().__init__()
        self.rnn = rnn
        self.head = nn.Linear(hidden, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(x)
        return self.head(out[:, -1])


class BagOfEmbeddings(nn.Module):
    """Token ids -> embeddings -> mean over the sequence -> logits."""

    def __init__(self, vocab: int = 20, dim: int = 8, classes: int = 3) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(x).mean(dim=1))


class SelfAttention(nn.Module):
    """Multi-head self-attention over a sequence, mean-pooled, then a linear head."""

    def __init__(
        self, dim: int = 8, heads: int = 2, classes: int = 3, dropout: float = 0.0
    ) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True, dropout=dropout)
        self.head = nn.Linear(dim, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.attn(x, x, x, need_weights=False)
        return self.head(out.mean(dim=1))


class TinyEncoder(nn.Module):
    """Token ids -> embeddings -> one nn.TransformerEncoderLayer -> mean -> logits."""

    def __init__(self, dropout: float, vocab: int = 20, dim: int = 8, classes: int = 3) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.encoder = nn.TransformerEncoderLayer(
            dim, nhead=2, dim_feedforward=16, dropout=dropout, batch_first=True
        )
        self.head = nn.Linear(dim, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(self.embed(x)).mean(dim=1))


@_seeded
def mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))


@_seeded
def conv1d() -> nn.Module:
    return nn.Sequential(
        nn.Conv1d(2, 4, 3), nn.ReLU(), nn.MaxPool1d(2), nn.Flatten(), nn.Linear(4 * 7, 3)
    )


@_seeded
def cnn2d() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 4, 3),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(4, 8, 3),
        nn.ReLU(),
        nn.AvgPool2d(2),
        nn.Flatten(),
        nn.Linear(8 * 2 * 2, 5),
    )


@_seeded
def mobilenet_block() -> nn.Module:
    """Depthwise-separable block (MobileNet-style): conv, depthwise, pointwise, each with BN."""
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False),
        nn.BatchNorm2d(8),
        nn.ReLU6(),
        nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False),
        nn.BatchNorm2d(8),
        nn.ReLU6(),
        nn.Conv2d(8, 16, 1, bias=False),
        nn.BatchNorm2d(16),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 4),
    )


@_seeded
def depthwise_separable() -> nn.Module:
    """The mobile block: depthwise and grouped convolutions, BatchNorm2d, ReLU6, LayerNorm, GELU."""
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False),
        nn.BatchNorm2d(8),
        nn.ReLU6(),
        nn.Conv2d(8, 16, 3, stride=2, padding=1, groups=8, bias=False),  # depthwise, x2
        nn.BatchNorm2d(16),
        nn.ReLU6(),
        nn.Conv2d(16, 8, 1, groups=2),  # grouped pointwise
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.LayerNorm(8),
        nn.GELU(),
        nn.Linear(8, 4),
    )


@_seeded
def cnn_bn_ln() -> nn.Module:
    """Conv (with a bias) -> BatchNorm2d -> LayerNorm: the bias gradient is rounding noise."""
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Flatten(),
        nn.LayerNorm(4 * 6 * 6),
        nn.Linear(4 * 6 * 6, 3),
    )


@_seeded
def conv_transpose() -> nn.Module:
    """Encoder-decoder: a strided conv down, a grouped transposed conv back up."""
    return nn.Sequential(
        nn.Conv2d(2, 4, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.ConvTranspose2d(4, 4, 3, stride=2, padding=1, output_padding=1, groups=2),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * 6 * 6, 3),
    )


@_seeded
def attention() -> nn.Module:
    return SelfAttention()


@_seeded
def transformer_encoder() -> nn.Module:
    return TinyEncoder(dropout=0.0)


@_seeded
def batchnorm1d() -> nn.Module:
    return nn.Sequential(
        nn.Linear(16, 32, bias=False), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, 4)
    )


@_seeded
def layernorm() -> nn.Module:
    return nn.Sequential(nn.Linear(16, 32), nn.LayerNorm(32), nn.GELU(), nn.Linear(32, 4))


@_seeded
def dropout() -> nn.Module:
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Dropout(0.3), nn.Linear(32, 4))


@_seeded
def dropout_p0() -> nn.Module:
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Dropout(0.0), nn.Linear(32, 4))


@_seeded
def embedding() -> nn.Module:
    return BagOfEmbeddings()


@_seeded
def lstm() -> nn.Module:
    return LastStep(nn.LSTM(4, 8, batch_first=True), 8, 3)


@_seeded
def gru() -> nn.Module:
    return LastStep(nn.GRU(4, 8, batch_first=True), 8, 3)


@_seeded
def activations() -> nn.Module:
    return nn.Sequential(
        nn.Linear(16, 16),
        nn.GELU(),
        nn.Linear(16, 16),
        nn.SiLU(),
        nn.Linear(16, 16),
        nn.ReLU6(),
        nn.Linear(16, 4),
    )


@_seeded
def regressor() -> nn.Module:
    return nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 2))


@_seeded
def binary() -> nn.Module:
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 1))


@_seeded
def plain_rnn() -> nn.Module:
    return LastStep(nn.RNN(4, 8, batch_first=True), 8, 3)


_KEY_BIAS = (
    "SGD: the key part of in_proj_bias has a rounding-noise gradient; AdamW turns it into "
    "full-size steps, which ort-training's whole-parameter step check cannot tell from an error"
)


@_seeded
def adaptive_max_pool() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(2, 4, 3), nn.AdaptiveMaxPool2d(2), nn.Flatten(), nn.Linear(16, 3)
    )


# Exports for ort-training only: the portable step has no ONNX translation for a layer's operator.
NO_PORTABLE_STEP: dict[str, ZooModel] = {
    "adaptive_max_pool": ZooModel(
        "adaptive_max_pool",
        adaptive_max_pool,
        (2, 6, 6),
        note="module '1' (AdaptiveMaxPool2d): its backward has no ONNX translation",
    ),
}


# Trains with the portable step only: ONNX Runtime 1.19 has no ConvTransposeGrad kernel.
@_seeded
def transformer_encoder_dropout() -> nn.Module:
    return TinyEncoder(dropout=0.1)


@_seeded
def attention_dropout() -> nn.Module:
    return SelfAttention(dropout=0.2)


# Dropout inside attention: ORT-training's gradient builder refuses the exported Dropout there,
# the portable step (seeded masks) trains it and matches PyTorch fed the same seeds.
_SEEDED = "dropout masks from the step's dropout_seed input; parity with the same seeds"
PORTABLE_ONLY: dict[str, ZooModel] = {
    "conv_transpose": ZooModel("conv_transpose", conv_transpose, (2, 6, 6)),
    "transformer_encoder_dropout": ZooModel(
        "transformer_encoder_dropout",
        transformer_encoder_dropout,
        (6,),
        input_dtype="int64",
        optimizers=("sgd",),
        note=_SEEDED,
    ),
    "attention_dropout": ZooModel(
        "attention_dropout", attention_dropout, (5, 8), optimizers=("sgd",), note=_SEEDED
    ),
}

ZOO: dict[str, ZooModel] = {
    m.name: m
    for m in (
        ZooModel("mlp", mlp, (16,)),
        ZooModel("conv1d", conv1d, (2, 16)),
        ZooModel("cnn2d", cnn2d, (1, 14, 14)),
        ZooModel("mobilenet_block", mobilenet_block, (3, 8, 8)),
        ZooModel("depthwise_separable", depthwise_separable, (3, 8, 8)),
        ZooModel("cnn_bn_ln", cnn_bn_ln, (1, 6, 6)),
        ZooModel("batchnorm1d", batchnorm1d, (16,)),
        ZooModel("layernorm", layernorm, (16,)),
        ZooModel("dropout", dropout, (16,), note="p=0.3: portable step seeded, exact parity"),
        ZooModel("dropout_p0", dropout_p0, (16,), note="same graph with p=0: step parity"),
        ZooModel("embedding", embedding, (6,), input_dtype="int64"),
        ZooModel("lstm", lstm, (5, 4)),
        ZooModel("gru", gru, (5, 4)),
        ZooModel("attention", attention, (5, 8), optimizers=("sgd",), note=_KEY_BIAS),
        ZooModel(
            "transformer_encoder",
            transformer_encoder,
            (6,),
            input_dtype="int64",
            optimizers=("sgd",),
            note=_KEY_BIAS,
        ),
        ZooModel("activations", activations, (16,)),
        ZooModel("regressor_mse", regressor, (8,), loss="mse"),
        ZooModel("regressor_l1", regressor, (8,), loss="l1"),
        ZooModel("binary_bce", binary, (8,), loss="bce_with_logits"),
    )
}
UNSUPPORTED: dict[str, Callable[[], nn.Module]] = {"plain_rnn": plain_rnn}
