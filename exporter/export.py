"""``export_bundle``: a PyTorch model in, a verified (optionally signed) training bundle out.

Steps: preflight checks -> training-mode ONNX -> ORT training artifacts (+ AdamW patch) ->
eval-mode ``inference.onnx`` -> ``parameters.safetensors`` -> parity checks -> manifest ->
signature -> optional ``.fedge`` archive. Everything written is deterministic: the same model
with the same weights and options gives the same files and the same content hash.
"""

from __future__ import annotations

import copy
import logging
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import nn

from fedge.protocol import signing
from fedge.protocol.bundle import ARCHIVE_SUFFIX, pack_bundle, write_manifest
from fedge.protocol.manifest import (
    LossSpec,
    Manifest,
    ParameterSpec,
    Patch,
    PortableStep,
    RunningStat,
    TaskSpec,
    TensorSpec,
    Verification,
)
from fedge.protocol.tensors import encode_tensors

from . import artifacts, batchnorm, bias_check, lora_merge, onnx_graph, preflight
from . import verify as parity
from .embedding_ids import with_embedding_ids
from .errors import ExportError
from .inputs import INPUT_NAME, InputArg, input_specs, sample_examples
from .lora import LoraOptions, apply_lora, trainable_names
from .portable import add_portable_step
from .portable.layout import step_file

log = logging.getLogger(__name__)

__all__ = ["INPUT_NAME", "InputArg", "export_bundle"]
VERIFY_BATCH = 8
VERIFY_SEED = 1234


def export_bundle(
    model: nn.Module,
    *,
    input_shape: Sequence[int] | None = None,
    out_dir: str | os.PathLike,
    model_name: str = "model",
    input_dtype: str = "float32",
    label_dtype: str | None = None,
    label_shape: Sequence[int] | None = None,
    loss: str | Any = "cross_entropy",
    optimizer: str | Sequence[str] = artifacts.DEFAULT_OPTIMIZERS,
    lr: float = 1e-3,
    weight_decay: float = 0.01,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    frozen: Sequence[str] = (),
    trainable: Sequence[str] | None = None,
    num_classes: int | None = None,
    opset: int = 17,
    sign_key: str | os.PathLike | None = None,
    verify: bool = True,
    portable: bool = True,
    torch_loss: Any = None,
    lora: LoraOptions | None = None,
    inputs: Sequence[InputArg | tuple[str, str, Sequence[int]]] | None = None,
) -> Path:
    """Export ``model`` to a training bundle at ``out_dir`` and return its path.

    ``out_dir`` ending in ``.fedge`` produces a single archive file; otherwise a directory
    (which must not exist or be empty). ``input_shape`` excludes the batch axis; a model with
    several inputs (``forward(self, tokens, mask)``) gives ``inputs`` instead, one
    ``InputArg(name, dtype, shape)`` per argument in order (exporter/inputs.py). Label dtype
    and shape default to what the loss needs (int64 class ids for cross entropy, the output's
    dtype and shape otherwise). ``frozen``/``trainable`` are globs over parameter names.
    ``portable=False`` leaves out the portable training step (ort-training backend only).
    ``loss`` may be an ``onnxruntime.training.onnxblock.Block`` instance (a custom loss, see
    docs/exporter.md); ``torch_loss(output, labels)`` is then its PyTorch twin for the step
    check (without it the step check is skipped and says so).
    ``optimizer`` names one optimizer or several (``("adamw", "sgd")``, the default): the
    bundle carries a graph (and a portable step) for each, verified each; the first is the
    default, the orchestrator may choose another per run (``[rounds] optimizer``). ``lr`` is
    every optimizer's default learning rate, ``weight_decay``/``betas``/``eps`` AdamW's.
    ``lora`` wraps the chosen Linear layers of a copy of ``model`` with low-rank adapters; then
    only the adapters and the parameters ``trainable`` names train (docs/exporter.md, LoRA).
    """
    out = Path(out_dir)
    archive = out.suffix == ARCHIVE_SUFFIX
    custom_loss = artifacts.check_loss(loss)
    opts = [
        artifacts.OptimizerSpec(kind, float(lr), float(weight_decay), tuple(betas), eps)
        for kind in artifacts.parse_optimizers(optimizer)
    ]
    for spec in opts:
        artifacts.validate_optimizer(spec)
    opt = opts[0]
    if not 7 <= opset <= 21:
        raise ExportError(f"opset {opset} is out of range; ONNX Runtime 1.19 supports 7..21")
    _check_destination(out)
    specs = input_specs(input_shape, input_dtype, inputs)
    model_inputs = [s.name for s in specs]

    preflight.check_supported_layers(model)
    plain_model, lora_spec = model, None
    if lora is not None:
        model, lora_spec = apply_lora(copy.deepcopy(model), lora)
        names = [n for n, _ in model.named_parameters()]
        trainable = trainable_names(lora_spec, names, trainable)
    train_names, frozen_names = preflight.select_parameters(
        model, frozen=frozen, trainable=trainable
    )
    gen = torch.Generator().manual_seed(VERIFY_SEED)
    example = sample_examples(specs, batch=VERIFY_BATCH, generator=gen)
    output = preflight.trial_forward(model, example)
    specs = with_embedding_ids(model, example, specs)  # the ids each Embedding can look up
    bias_check.warn_biases_before_batchnorm(model, example, train_names)
    bn_layers = batchnorm.find_layers(model, example)
    stat_names = batchnorm.running_stat_names(bn_layers)
    if custom_loss:
        label_spec = _label_spec("custom", output, label_dtype, label_shape)
        task = TaskSpec.derive("custom", output.shape[1:], num_classes=num_classes)
    else:
        label_spec = _label_spec(loss, output, label_dtype, label_shape)
        _check_num_classes(loss, output, num_classes)
        task = TaskSpec.derive(loss, output.shape[1:])
    classes = task.num_classes  # multiclass only: what the step check draws labels from
    output_name = "logits" if task.is_classification else "prediction"

    work = Path(tempfile.mkdtemp(prefix="fedge-export-")) if archive else out
    created = not work.exists()
    work.mkdir(parents=True, exist_ok=True)
    succeeded = False
    try:
        train_proto = onnx_graph.export_onnx(
            model,
            example,
            training=True,
            opset=opset,
            input_names=model_inputs,
            output_name=output_name,
        )
        _check_graph_inputs(train_proto, model_inputs)
        all_names = train_names + frozen_names + stat_names
        onnx_graph.require_initializers(train_proto, all_names, "training graph")
        params = _state_tensors(model, stat_names)
        running_stats = batchnorm.rewrite_training_graph(train_proto, bn_layers, params)
        layernorms = onnx_graph.add_layernorm_outputs(train_proto)
        avg_pools = onnx_graph.average_pools_as_convs(train_proto)
        try:
            patches = artifacts.generate(
                train_proto,
                trainable=train_names,
                frozen=frozen_names + stat_names,
                loss=loss,
                optimizer=opt,
                out_dir=work,
                additional_outputs=[s["output"] for s in running_stats],
            )
        except ExportError as exc:
            raise ExportError(f"{exc}{preflight.attention_dropout_hint(model)}") from exc
        for i, extra in enumerate(opts[1:], start=1):
            patches += artifacts.generate_optimizer(
                train_proto,
                trainable=train_names,
                optimizer=extra,
                path=work / artifacts.optimizer_file(extra, i),
            )
        patches += _batchnorm_patches(work, running_stats)
        if avg_pools:
            patches.append(
                {
                    "what": f"training graph: {avg_pools} AveragePool node(s) as fixed-weight "
                    "depthwise Conv",
                    "why": "ONNX Runtime 1.19's AveragePoolGrad crashes (SIGFPE); the "
                    "convolution computes the same average and has a working gradient",
                }
            )
        if layernorms:
            patches.append(
                {
                    "what": f"training graph: {layernorms} LayerNormalization node(s) get their "
                    "Mean and InvStdDev outputs",
                    "why": "ONNX Runtime's LayerNormalization gradient reads them; the TorchScript "
                    "exporter (opset >= 17) writes the node with one output",
                }
            )
        infer_proto = onnx_graph.export_onnx(
            model,
            example,
            training=False,
            opset=opset,
            input_names=model_inputs,
            output_name=output_name,
        )
        onnx_graph.restore_initializers(infer_proto, params)
        onnx_graph.require_initializers(infer_proto, all_names, "inference graph")
        onnx_graph.initializers_as_inputs(infer_proto, all_names)
        onnx_graph.save_model(infer_proto, work / "inference.onnx")
        (work / "parameters.safetensors").write_bytes(encode_tensors(params))
        if lora_spec is not None:
            merged_path = work / lora_spec.merged_inference
            lora_merge.write_merged_inference(
                plain_model,
                example,
                merged_path,
                _state_tensors(plain_model, stat_names),
                opset=opset,
                input_names=model_inputs,
                output_name=output_name,
            )
            merge_diff = lora_merge.merge_parity(
                lora_spec, work / "inference.onnx", merged_path, params, example
            )
            patches.append(
                {
                    "what": f"LoRA rank {lora_spec.rank} (alpha {lora_spec.alpha:g}) on "
                    f"{len(lora_spec.adapters)} Linear layer(s): "
                    + ", ".join(a.module for a in lora_spec.adapters)
                    + f"; {lora_spec.merged_inference} is the model without adapters",
                    "why": "only the adapters (and the heads kept trainable) train and travel; "
                    "fedge model export merges W + alpha/rank * B @ A into a plain model",
                }
            )
        if custom_loss:
            label_spec = replace(
                label_spec,
                name=artifacts.graph_io(work / "training_model.onnx")[0][len(model_inputs)],
            )
        _check_label_input(work, model_inputs, label_spec)

        parity.check_checkpoint(work, params, train_names)
        numbers = _verification(
            model,
            work,
            example,
            loss,
            opt,
            train_names,
            label_spec.sample_shape,
            classes,
            verify,
            running_stats,
            torch_loss,
        )
        if verify and len(opts) > 1:
            numbers["optimizers"] = {
                extra.type: _verification(
                    model,
                    work,
                    example,
                    loss,
                    extra,
                    train_names,
                    label_spec.sample_shape,
                    classes,
                    verify,
                    running_stats,
                    torch_loss,
                    optimizer_file=artifacts.optimizer_file(extra, i),
                    step_only=True,
                )
                for i, extra in enumerate(opts[1:], start=1)
            }
        if lora_spec is not None and verify:
            numbers["lora_merge_max_abs_diff"] = merge_diff
        training_proto = onnx.load(str(work / "training_model.onnx"), load_external_data=False)
        if custom_loss:
            portable_step: PortableStep | None = PortableStep(
                False, reason="a custom onnxblock loss has no portable equivalent"
            )
        elif portable:
            portable_step, per_optimizer = add_portable_step(
                model=model,
                bundle_dir=work,
                loss=loss,
                optimizers=opts,
                trainable=train_names,
                input_specs=specs,
                label_spec=label_spec,
                num_classes=classes,
                verify=verify,
            )
            numbers["portable"] = per_optimizer[opt.type]
            for extra in opts[1:]:
                if verify:
                    numbers["optimizers"][extra.type]["portable"] = per_optimizer[extra.type]
        else:
            portable_step = None
        manifest = Manifest(
            model_name=model_name,
            task=task,
            inputs=specs,
            outputs=(TensorSpec(output_name, _dtype(output), (None, *output.shape[1:])),),
            label=label_spec,
            loss=(
                LossSpec("custom", reduction=None, block=type(loss).__name__)
                if custom_loss
                else LossSpec(loss, reduction="mean")
            ),
            optimizers=artifacts.manifest_optimizers(
                opts,
                [step_file(o.type, i) for i, o in enumerate(opts)]
                if portable_step is not None and portable_step.available
                else None,
            ),
            parameters=tuple(
                ParameterSpec(n, tuple(a.shape), a.dtype.name, n in train_names)
                for n, a in params.items()
            ),
            opset=onnx_graph.opset_of(training_proto),
            ir_version=int(training_proto.ir_version),
            versions=_versions(),
            backends=("ort-training", "ort-portable")
            if portable_step is not None and portable_step.available
            else ("ort-training",),
            verification=Verification(numbers),
            patches=tuple(Patch(p["what"], p["why"]) for p in patches),
            running_stats=tuple(RunningStat(s["param"], s["output"]) for s in running_stats),
            portable=portable_step,
            lora=lora_spec,
        )
        written = write_manifest(work, manifest)
        if sign_key is not None:
            signing.sign_bundle(work, signing.load_private_key(sign_key))
        log.info("exported %s (%s) to %s", model_name, written.content_hash[:12], out)
        if archive:
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_bytes(pack_bundle(work))
        succeeded = True
    finally:
        if archive or (created and not succeeded):  # leave no half-written bundle behind
            shutil.rmtree(work, ignore_errors=True)
    return out


def _check_destination(out: Path) -> None:
    if out.suffix == ARCHIVE_SUFFIX:
        if out.exists():
            raise ExportError(f"{out} already exists; remove it or choose another --out")
    elif out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ExportError(f"{out} exists and is not an empty directory; choose another --out")


def _dtype(tensor: torch.Tensor) -> str:
    return str(tensor.dtype).removeprefix("torch.")


def _label_spec(
    loss: str, output: torch.Tensor, dtype: str | None, shape: Sequence[int] | None
) -> TensorSpec:
    """What the training graph's label input must be, checked against the caller's wishes."""
    if loss == "cross_entropy":
        want_dtype, want_shape = "int64", list(output.shape[1:-1])
    elif loss == "custom":  # the caller knows what its loss block reads
        dtype_, shape_ = dtype or _dtype(output), list(shape or output.shape[1:])
        return TensorSpec("target", dtype_, (None, *map(int, shape_)))
    else:
        want_dtype, want_shape = _dtype(output), list(output.shape[1:])
    if dtype is not None and dtype != want_dtype:
        raise ExportError(f"loss {loss} needs {want_dtype} labels, not {dtype}")
    if (
        shape is not None
        and list(shape) != want_shape
        and not (loss != "cross_entropy" and not shape and want_shape == [1])
    ):
        raise ExportError(
            f"loss {loss} with model output {tuple(output.shape[1:])} needs labels of shape "
            f"{tuple(want_shape)} per sample, not {tuple(shape)}"
        )
    name = artifacts.LOSSES[loss][1]
    return TensorSpec(name, want_dtype, (None, *map(int, want_shape)))


def _check_num_classes(loss: str, output: torch.Tensor, given: int | None) -> None:
    """``num_classes`` is derived from the output; a caller's value must agree with it."""
    if loss != "cross_entropy":
        return
    found = int(output.shape[-1]) if output.dim() >= 2 else 0
    if found < 2:
        raise ExportError(f"cross_entropy needs (batch, classes) logits; got {tuple(output.shape)}")
    if given is not None and given != found:
        raise ExportError(f"--num-classes {given} but the model outputs {found} logits")


def _check_label_input(work: Path, names: list[str], label_spec: TensorSpec) -> None:
    want = [*names, label_spec.name]
    inputs = artifacts.graph_io(work / "training_model.onnx")[0][: len(want)]
    if inputs != want:
        raise ExportError(f"training graph inputs are {inputs}, expected {want}")


def _check_graph_inputs(proto: onnx.ModelProto, names: list[str]) -> None:
    """Every declared input must reach the graph (the TorchScript exporter drops unused ones)."""
    inits = {i.name for i in proto.graph.initializer}
    found = [i.name for i in proto.graph.input if i.name not in inits]
    missing = [n for n in names if n not in found]
    if missing:
        raise ExportError(
            f"the exported graph has no input {', '.join(map(repr, missing))}: the model's "
            f"forward() does not use it; graph inputs are {found}. Declare only the inputs "
            "forward() reads, in its argument order"
        )


def _verification(
    model: nn.Module,
    work: Path,
    example: tuple[torch.Tensor, ...],
    loss: Any,
    opt: artifacts.OptimizerSpec,
    train_names: list[str],
    label_shape: Sequence[int],
    classes: int | None,
    enabled: bool,
    running_stats: list[dict[str, str]],
    torch_loss: Any,
    *,
    optimizer_file: str = artifacts.OPTIMIZER_FILE,
    step_only: bool = False,
) -> dict[str, Any]:
    """The parity numbers; ``step_only``: just the training step (another optimizer's)."""
    if not enabled:
        return {"skipped": True}
    numbers: dict[str, Any] = (
        {"step_tolerance": parity.STEP_TOLERANCE}
        if step_only
        else {
            "batch_size": VERIFY_BATCH,
            "seed": VERIFY_SEED,
            "forward_tolerance": parity.FORWARD_TOLERANCE,
            "step_tolerance": parity.STEP_TOLERANCE,
            "forward_max_abs_diff": parity.forward_parity(model, work / "inference.onnx", example),
        }
    )
    if preflight.has_active_dropout(model):
        numbers["step_max_abs_diff"] = None
        numbers["step_skipped"] = "dropout makes a training step random"
    elif not isinstance(loss, str) and torch_loss is None:
        numbers["step_max_abs_diff"] = None
        numbers["step_skipped"] = "custom loss without a torch_loss to compare with"
    else:
        gen = torch.Generator().manual_seed(VERIFY_SEED + 1)
        labels = parity.sample_labels(
            loss, label_shape, batch=VERIFY_BATCH, num_classes=classes, generator=gen
        )
        numbers.update(
            parity.step_parity(
                model,
                work,
                inputs=example,
                labels=labels,
                loss=loss,
                optimizer=opt,
                trainable=train_names,
                running_stats=running_stats,
                torch_loss=torch_loss,
                optimizer_file=optimizer_file,
            )
        )
    try:
        parity.check_tolerances(numbers)
    except ExportError as exc:
        if step_only:
            raise ExportError(f"optimizer {opt.type}: {exc}") from exc
        raise
    return numbers


def _state_tensors(model: nn.Module, stat_names: list[str]) -> dict[str, np.ndarray]:
    """Parameters and BatchNorm running statistics, in ``state_dict`` order."""
    wanted = {n: p for n, p in model.named_parameters()}
    buffers = dict(model.named_buffers())
    wanted.update({n: buffers[n] for n in stat_names})
    return {
        n: t.detach().cpu().numpy().copy()
        for n, t in model.state_dict(keep_vars=True).items()
        if n in wanted
    }


def _batchnorm_patches(work: Path, running_stats: list[dict[str, str]]) -> list[dict[str, str]]:
    changed = batchnorm.fix_eval_model(work / "eval_model.onnx", running_stats)
    if not running_stats:
        return []
    return [
        {
            "what": f"training_model.onnx: {len(running_stats) // 2} BatchNorm layer(s) update "
            "their running statistics as extra outputs (manifest running_stats)",
            "why": "ORT bakes the statistics in as constants and updates them in place with the "
            "population variance; they are now frozen parameters, updated as PyTorch does "
            "(unbiased variance, momentum) and written back by the backend after each step",
        },
        {
            "what": f"eval_model.onnx: {changed} BatchNormalization node(s) set to inference mode",
            "why": "onnxblock's eval graph kept BN in training mode (batch statistics); PyTorch's "
            "eval uses the running statistics",
        },
    ]


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"numpy": np.__version__, "onnx": onnx.__version__, "torch": torch.__version__}
    for dist, key in (("onnxruntime-training-cpu", "onnxruntime"), ("fedge", "fedge")):
        try:
            out[key] = version(dist)
        except PackageNotFoundError:
            out[key] = "unknown"
    return out
