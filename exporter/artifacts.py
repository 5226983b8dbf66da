"""ONNX Runtime training artifacts: training, eval and optimizer graphs plus the checkpoint.

Wraps ``onnxruntime.training.artifacts.generate_artifacts`` with fedge's loss and optimizer
names, our hyperparameters, and the fixes that make the output byte-stable and PyTorch-exact.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx

from fedge.protocol.manifest import Hyperparameter
from fedge.protocol.manifest import OptimizerSpec as ManifestOptimizer
from fedge.protocol.ort_runtime import import_onnxruntime

from .errors import ExportError
from .onnx_graph import patch_adamw_torch_mode, rewrite_deterministically
from .stable_bce import stable_bce_with_logits

log = logging.getLogger(__name__)

ARTIFACT_FILES = ("training_model.onnx", "eval_model.onnx", "optimizer_model.onnx", "checkpoint")
# loss name -> (onnxblock loss class name, label input name the loss block creates)
LOSSES = {
    "cross_entropy": ("CrossEntropyLoss", "labels"),
    "mse": ("MSELoss", "target"),
    "bce_with_logits": ("BCEWithLogitsLoss", "target"),
    "l1": ("L1Loss", "target"),
}
OPTIMIZERS = ("sgd", "adamw")
DEFAULT_OPTIMIZERS = ("adamw", "sgd")  # what a bundle carries unless told; the first is default
OPTIMIZER_FILE = "optimizer_model.onnx"  # the default optimizer's graph (ORT's own name)


@dataclass(frozen=True)
class OptimizerSpec:
    """Optimizer settings as the manifest records them (PyTorch's meaning of each field)."""

    type: str
    lr: float
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8

    def to_manifest(self, files: dict[str, str] | None = None) -> ManifestOptimizer:
        """The manifest's entry for this optimizer (``files``: backend -> its bundle file)."""
        if self.type == "sgd":
            return ManifestOptimizer(
                "sgd", self.lr, {"momentum": 0.0, "weight_decay": 0.0}, dict(files or {})
            )
        hyper: dict[str, Hyperparameter] = {
            "betas": tuple(self.betas),
            "eps": self.eps,
            "weight_decay": self.weight_decay,
            "bias_correction": True,
        }
        return ManifestOptimizer("adamw", self.lr, hyper, dict(files or {}))


def optimizer_file(spec: OptimizerSpec, index: int) -> str:
    """The ORT optimizer graph's file: ORT's own name for the default, suffixed for the rest."""
    return OPTIMIZER_FILE if index == 0 else f"optimizer_model_{spec.type}.onnx"


def manifest_optimizers(
    opts: Sequence[OptimizerSpec], portable_files: Sequence[str] | None
) -> tuple[ManifestOptimizer, ...]:
    """Each optimizer with its files (``portable_files``: its step files, None without a
    portable step). A single optimizer keeps the old layout (no ``files``: the default names),
    so its bundle hashes as before."""
    if len(opts) == 1:
        return (opts[0].to_manifest(),)
    out = []
    for i, spec in enumerate(opts):
        files = {"ort-training": optimizer_file(spec, i)}
        if portable_files is not None:
            files["ort-portable"] = portable_files[i]
        out.append(spec.to_manifest(files))
    return tuple(out)


def parse_optimizers(text: str | Sequence[str]) -> tuple[str, ...]:
    """``"adamw,sgd"`` (or a sequence) -> ("adamw", "sgd"); ExportError naming the bad one."""
    names = [n.strip() for n in (text.split(",") if isinstance(text, str) else text)]
    names = [n for n in names if n]
    if not names:
        raise ExportError(f"no optimizer given; choose from {list(OPTIMIZERS)}")
    for name in names:
        if name not in OPTIMIZERS:
            raise ExportError(f"unknown optimizer {name!r}; choose from {list(OPTIMIZERS)}")
    if len(set(names)) != len(names):
        raise ExportError(f"optimizer listed twice in {','.join(names)}")
    return tuple(names)


def check_loss(loss: Any) -> bool:
    """Validate a loss name or custom onnxblock Block; return True for a custom block."""
    if isinstance(loss, str):
        if loss not in LOSSES:
            raise ExportError(f"unknown loss {loss!r}; choose one of {list(LOSSES)}")
        return False
    import_onnxruntime(block_torch=False)
    from onnxruntime.training import onnxblock

    if not isinstance(loss, onnxblock.Block):
        raise ExportError(
            f"loss must be one of {list(LOSSES)} or an onnxruntime.training.onnxblock.Block "
            f"instance, not {type(loss).__name__}"
        )
    return True


def validate_optimizer(spec: OptimizerSpec) -> None:
    """Raise ExportError for an unknown optimizer or hyperparameters out of range."""
    if spec.type not in OPTIMIZERS:
        raise ExportError(f"unknown optimizer {spec.type!r}; choose one of {list(OPTIMIZERS)}")
    if not spec.lr > 0:
        raise ExportError(f"learning rate must be positive, got {spec.lr}")
    if spec.type == "adamw":
        b1, b2 = spec.betas
        if not (0 <= b1 < 1 and 0 <= b2 < 1) or spec.eps <= 0 or spec.weight_decay < 0:
            raise ExportError(
                f"AdamW needs 0 <= betas < 1, eps > 0, weight_decay >= 0; got betas={spec.betas}, "
                f"eps={spec.eps}, weight_decay={spec.weight_decay}"
            )


def generate(
    model: onnx.ModelProto,
    *,
    trainable: list[str],
    frozen: list[str],
    loss: str | Any,
    optimizer: OptimizerSpec,
    out_dir: Path,
    additional_outputs: list[str] | None = None,
) -> list[dict[str, str]]:
    """Write the four training artifacts into ``out_dir``; return the patches applied.

    ``additional_outputs`` (graph values, e.g. BatchNorm's updated running statistics) become
    training-graph outputs after the loss, in this order.
    """
    ort = import_onnxruntime(block_torch=False)
    from onnxruntime.training import artifacts, onnxblock
    from onnxruntime.training.onnxblock import _graph_utils, _training_graph_utils

    if check_loss(loss):
        loss_block = loss
    elif loss == "bce_with_logits":  # onnxblock's own is NaN for confident logits
        loss_block = stable_bce_with_logits()
    else:
        loss_block = getattr(onnxblock.loss, LOSSES[loss][0])()
    optim_block = _optimizer_block(onnxblock, optimizer)
    # onnxblock names generated nodes from a process-wide counter, so a second export in the
    # same process would get different names (and bytes). Restart it for every export.
    _graph_utils._GRAPH_TOKEN = 0
    # generate_artifacts logs every saved file at INFO on the root logger; keep that quiet.
    previous_disable = logging.root.manager.disable
    logging.disable(logging.INFO)
    # Its graph optimizer runs with default SessionOptions, whose C++ logger prints every
    # graph transformer at INFO regardless of set_default_logger_severity: hand it quiet ones.
    original_options = _training_graph_utils.SessionOptions
    _training_graph_utils.SessionOptions = lambda: _quiet_session_options(ort)
    try:
        artifacts.generate_artifacts(
            model,
            requires_grad=list(trainable),
            frozen_params=list(frozen),
            loss=loss_block,
            optimizer=optim_block,
            artifact_directory=out_dir,
            additional_output_names=list(additional_outputs) if additional_outputs else None,
        )
    except Exception as exc:  # ORT raises RuntimeError/Fail/etc. with the useful text
        reason = str(exc).strip()  # ORT ends its message with a newline
        raise ExportError(f"ONNX Runtime could not build the training graphs: {reason}") from exc
    finally:
        logging.disable(previous_disable)
        _training_graph_utils.SessionOptions = original_options
    for name in ARTIFACT_FILES:
        if not (out_dir / name).is_file():
            raise ExportError(f"ONNX Runtime did not write {name}")
    for name in ("training_model.onnx", "eval_model.onnx", "optimizer_model.onnx"):
        rewrite_deterministically(out_dir / name)
    return _adamw_patches(optimizer, out_dir / OPTIMIZER_FILE)


def generate_optimizer(
    model: onnx.ModelProto, *, trainable: list[str], optimizer: OptimizerSpec, path: Path
) -> list[dict[str, str]]:
    """Write one more optimizer graph for the same trainable parameters; return its patches.

    ``generate_artifacts`` writes one optimizer graph; its optimizer block reads nothing of
    the training graph but the trainable parameters' element type, so a second optimizer is
    built the way ``generate_artifacts`` builds its own (an onnxblock over an empty base at
    the model's opset) without building the training graphs again.
    """
    import_onnxruntime(block_torch=False)
    from onnxruntime.training import onnxblock
    from onnxruntime.training.onnxblock import _graph_utils

    inits = {i.name: i for i in model.graph.initializer}
    params: tuple[list[onnx.TensorProto], list[onnx.TensorProto]] = (
        [inits[n] for n in trainable],
        [],
    )
    opset = next((d.version for d in model.opset_import if d.domain in ("", "ai.onnx")), None)
    block = _optimizer_block(onnxblock, optimizer)
    _graph_utils._GRAPH_TOKEN = 0  # deterministic node names, as in generate()
    with onnxblock.empty_base(opset_version=opset):
        block(params)
        proto = block.to_model_proto()
    onnx.save(proto, str(path))
    rewrite_deterministically(path)
    return _adamw_patches(optimizer, path)


def _optimizer_block(onnxblock: Any, optimizer: OptimizerSpec) -> Any:
    if optimizer.type == "adamw":
        return onnxblock.optim.AdamW(
            bias_correction=True,
            betas=tuple(optimizer.betas),
            eps=optimizer.eps,
            weight_decay=optimizer.weight_decay,
        )
    return onnxblock.optim.SGD()


def _adamw_patches(optimizer: OptimizerSpec, path: Path) -> list[dict[str, str]]:
    if optimizer.type != "adamw":
        return []
    count = patch_adamw_torch_mode(path)
    if not count:
        return []
    return [
        {
            "what": f"{path.name}: AdamWOptimizer adam_mode 1 -> 0 ({count} node)",
            "why": "onnxblock's AdamW uses the Hugging Face variant (adam_mode=1), which "
            "differs from torch.optim.AdamW by ~2e-4 per step; mode 0 is PyTorch's",
        }
    ]


def _quiet_session_options(ort: Any) -> Any:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return options


def graph_io(path: Path) -> tuple[list[str], list[str]]:
    """Names of a saved model's non-initializer inputs and its outputs."""
    proto = onnx.load(str(path), load_external_data=False)
    inits = {i.name for i in proto.graph.initializer}
    return [i.name for i in proto.graph.input if i.name not in inits], [
        o.name for o in proto.graph.output
    ]
