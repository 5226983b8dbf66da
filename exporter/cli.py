"""``fedge export``, ``fedge inspect`` and ``fedge keys``: thin commands over the library.

torch is imported only inside the export handler, so ``fedge --help`` stays light.
"""

from __future__ import annotations

import argparse
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

from fedge.protocol import signing
from fedge.protocol.bundle import Bundle, load_bundle
from fedge.protocol.errors import FedgeError
from fedge.protocol.manifest import Manifest, TaskSpec, TensorSpec

_RAW = argparse.RawDescriptionHelpFormatter


def register(subparsers: Any) -> None:
    """Add the exporter's commands to the ``fedge`` parser."""
    _register_export(subparsers)
    _register_inspect(subparsers)
    _register_keys(subparsers)


def _register_export(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "export",
        help="export a PyTorch model to a verified training bundle",
        description="Export a PyTorch model to a training bundle, checked against PyTorch.",
        epilog="Example:\n  fedge export fedge.demo.models:digits_mlp --input-shape 64 "
        "--num-classes 10 --lr 0.001 --out bundles/digits\n"
        "  fedge export fedge.demo.models:digits_mlp --input-shape 64 --optimizer sgd "
        "--out bundles/digits-sgd\n"
        "  fedge export my_model.py:build --input-shape 3,32,32 --frozen 'features.*' "
        "--out digits.fedge --sign-key keys/signing.key\n"
        "  fedge export model.py:build --input-shape 8 --loss losses.py:SmoothL1Loss "
        "--torch-loss torch.nn.functional:smooth_l1_loss --out bundles/huber\n"
        "  fedge export text.py:build --input-shape 16 --input-dtype int64 --lora 4 "
        "--lora-targets 'encoder.*' --trainable 'head.*' --out bundles/text-lora\n"
        "  fedge export text.py:build --input tokens:int64:16 --input mask:float32:16 "
        "--num-classes 2 --out bundles/text-mask   # forward(self, tokens, mask)",
        formatter_class=_RAW,
    )
    p.add_argument("model", help="package.module:factory or path/to/file.py:factory")
    p.add_argument(
        "--input-shape",
        default=None,
        type=_shape,
        help="one sample's shape without the batch axis, e.g. 64 or 3,32,32 (a model with "
        "one input, named 'input')",
    )
    p.add_argument("--input-dtype", default="float32", help="input dtype (default: float32)")
    p.add_argument(
        "--input",
        action="append",
        default=[],
        dest="inputs",
        metavar="NAME:DTYPE:SHAPE",
        help="one model input (repeatable, in forward()'s argument order) instead of "
        "--input-shape, e.g. --input tokens:int64:16 --input mask:float32:16; the agent maps "
        "each to its columns in [data.inputs.NAME]",
    )
    p.add_argument(
        "--label-dtype",
        default=None,
        help="label dtype (default: int64 for cross_entropy, else the output's)",
    )
    p.add_argument(
        "--label-shape",
        type=_shape,
        default=None,
        help="one label's shape (default: derived from the loss and the output)",
    )
    p.add_argument(
        "--loss",
        default="cross_entropy",
        help="cross_entropy (default), mse, bce_with_logits, l1, or a custom onnxblock loss "
        "class as module:Class or file.py:Class",
    )
    p.add_argument(
        "--torch-loss",
        default=None,
        metavar="MODULE:FN",
        help="PyTorch twin of a custom loss, fn(output, labels), for the training-step check",
    )
    choice = p.add_mutually_exclusive_group()
    choice.add_argument(
        "--optimizers",
        default="adamw,sgd",
        metavar="LIST",
        help="optimizers the bundle carries, comma-separated, the first is the default "
        "(default: adamw,sgd; the orchestrator chooses per run with [rounds] optimizer)",
    )
    choice.add_argument(
        "--optimizer",
        choices=["adamw", "sgd"],
        default=None,
        help="export this optimizer only (same as --optimizers NAME)",
    )
    p.add_argument("--lr", type=float, default=1e-3, help="learning rate (default: 0.001)")
    p.add_argument("--weight-decay", type=float, default=0.01, help="AdamW weight decay")
    p.add_argument("--betas", type=float, nargs=2, default=(0.9, 0.999), metavar=("B1", "B2"))
    p.add_argument("--eps", type=float, default=1e-8, help="AdamW epsilon")
    p.add_argument(
        "--frozen",
        action="append",
        default=[],
        metavar="GLOB",
        help="parameters to freeze (repeatable), e.g. 'features.*'",
    )
    p.add_argument(
        "--trainable",
        action="append",
        default=None,
        metavar="GLOB",
        help="train only these parameters (repeatable); with --lora: these besides the adapters",
    )
    p.add_argument(
        "--lora",
        type=int,
        default=None,
        metavar="RANK",
        help="wrap the --lora-targets Linear layers with rank-RANK adapters and freeze the rest",
    )
    p.add_argument(
        "--lora-targets",
        action="append",
        default=[],
        metavar="GLOB",
        help="module paths of the Linear layers to adapt (repeatable), e.g. 'encoder.*'",
    )
    p.add_argument(
        "--lora-alpha",
        type=float,
        default=None,
        help="LoRA alpha; the update is scaled by alpha/rank (default: alpha = rank)",
    )
    p.add_argument(
        "--lora-seed", type=int, default=0, help="seed of the adapters' A init (default: 0)"
    )
    p.add_argument("--num-classes", type=int, default=None)
    p.add_argument("--opset", type=int, default=17)
    p.add_argument("--out", required=True, help="bundle directory, or a file ending in .fedge")
    p.add_argument(
        "--archive",
        action="store_true",
        help="write a single .fedge file (adds the suffix to --out if missing)",
    )
    p.add_argument("--sign-key", default=None, help="Ed25519 private key (PEM) to sign with")
    p.add_argument("--no-verify", action="store_true", help="skip the parity checks")
    p.add_argument("--name", default=None, help="model name (default: the factory's name)")
    p.set_defaults(func=_export)


def _register_inspect(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "inspect",
        help="verify a bundle and show its manifest",
        description="Verify a bundle's hashes (and signature) and summarize it.",
        epilog="Example:\n  fedge inspect bundles/digits --public-key keys/signing.pub",
        formatter_class=_RAW,
    )
    p.add_argument("bundle", help="bundle directory or .fedge file")
    p.add_argument(
        "--public-key",
        action="append",
        default=[],
        metavar="PEM",
        help="trusted Ed25519 public key (repeatable); makes the signature required",
    )
    p.set_defaults(func=_inspect)


def _register_keys(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "keys",
        help="manage Ed25519 signing keys",
        description="Manage the Ed25519 keys that sign bundles.",
        epilog="Example:\n  fedge keys generate --out keys --name signing",
        formatter_class=_RAW,
    )
    sub = p.add_subparsers(dest="keys_command", metavar="ACTION", required=True)
    g = sub.add_parser(
        "generate",
        help="write a new key pair (<name>.key, <name>.pub)",
        description="Write a new Ed25519 key pair; the private key is created with mode 0600.",
        epilog="Example:\n  fedge keys generate --out keys --name signing",
        formatter_class=_RAW,
    )
    g.add_argument("--out", required=True, help="directory for the key files")
    g.add_argument("--name", default="signing", help="file name stem (default: signing)")
    g.set_defaults(func=_keys_generate)


def _shape(text: str) -> tuple[int, ...]:
    parts = [p for p in re.split(r"[,x\s]+", text.strip()) if p]
    try:
        dims = tuple(int(p) for p in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"shape {text!r} must be integers like 64 or 3,32,32"
        ) from None
    if any(d <= 0 for d in dims):
        raise argparse.ArgumentTypeError(f"shape {text!r} must have positive dimensions")
    return dims


def _export(args: argparse.Namespace) -> int:
    import time

    from .errors import ExportError
    from .export import export_bundle
    from .inputs import input_specs, parse_input
    from .loading import load_loss, load_model, load_object
    from .lora import LoraOptions

    out = args.out
    if args.archive and not out.endswith(".fedge"):
        out += ".fedge"
    name = args.name or args.model.rpartition(":")[2]
    started = time.perf_counter()
    if args.lora is None and (args.lora_targets or args.lora_alpha is not None):
        raise ExportError("--lora-targets and --lora-alpha need --lora RANK")
    lora = (
        LoraOptions(args.lora, tuple(args.lora_targets), args.lora_alpha, args.lora_seed)
        if args.lora is not None
        else None
    )
    inputs = [parse_input(text) for text in args.inputs]
    input_specs(args.input_shape, args.input_dtype, inputs or None)  # before importing the model
    model = load_model(args.model)
    path = export_bundle(
        model,
        inputs=inputs or None,
        input_shape=args.input_shape,
        out_dir=out,
        model_name=name,
        input_dtype=args.input_dtype,
        label_dtype=args.label_dtype,
        label_shape=args.label_shape,
        loss=load_loss(args.loss),
        torch_loss=load_object(args.torch_loss, "torch loss") if args.torch_loss else None,
        optimizer=args.optimizer or args.optimizers,
        lr=args.lr,
        weight_decay=args.weight_decay,
        betas=tuple(args.betas),
        eps=args.eps,
        frozen=args.frozen,
        trainable=args.trainable,
        num_classes=args.num_classes,
        opset=args.opset,
        sign_key=args.sign_key,
        verify=not args.no_verify,
        lora=lora,
    )
    elapsed = time.perf_counter() - started
    # Verify with the key just used, so the summary says "verified:<fingerprint>" for a signed
    # bundle instead of "unverified" (which read as if signing had failed).
    own_key = [signing.public_key_of(args.sign_key)] if args.sign_key else []
    with _opened(path, own_key) as bundle:
        _print_summary(bundle, path)
    print(f"exported in {elapsed:.1f} s")
    return 0


def _inspect(args: argparse.Namespace) -> int:
    keys = [Path(k).read_bytes() if Path(k).is_file() else _missing_key(k) for k in args.public_key]
    with _opened(Path(args.bundle), keys) as bundle:
        _print_summary(bundle, Path(args.bundle), details=True)
    return 0


def _keys_generate(args: argparse.Namespace) -> int:
    private_path, public_path = signing.write_keypair(args.out, args.name)
    print(f"private key: {private_path} (keep secret; pass to fedge export --sign-key)")
    print(f"public key:  {public_path} (give to orchestrator and agents)")
    print(f"fingerprint: {signing.fingerprint(public_path)}")
    return 0


def _missing_key(path: str) -> bytes:
    raise FedgeError(f"public key file {path} does not exist")


class _opened:
    """Load a bundle (extracting archives to a temporary folder removed afterwards)."""

    def __init__(self, path: Path, keys: list[bytes]) -> None:
        self.path, self.keys = Path(path), keys
        self.tmp: str | None = None

    def __enter__(self) -> Bundle:
        if self.path.is_file():
            self.tmp = tempfile.mkdtemp(prefix="fedge-inspect-")
        return load_bundle(
            self.path,
            trusted_public_keys=self.keys or None,
            require_signature=bool(self.keys),
            extract_to=self.tmp,
        )

    def __exit__(self, *exc: object) -> None:
        if self.tmp:
            shutil.rmtree(self.tmp, ignore_errors=True)


def _print_summary(bundle: Bundle, path: Path, *, details: bool = False) -> None:
    m = bundle.manifest
    specs = bundle.parameter_specs
    n_train = sum(_numel(s.shape) for s in specs if s.trainable)
    n_frozen = sum(_numel(s.shape) for s in specs if not s.trainable)

    def hyper(opt: Any) -> str:
        return ", ".join(
            f"{k}={list(v) if isinstance(v, tuple) else v}"
            for k, v in sorted({"lr": opt.lr, **opt.hyperparameters}.items())
        )

    print(f"bundle:        {path}")
    print(f"model:         {m.model_name} ({_task(m.task)})")
    print(f"content hash:  {bundle.content_hash}")
    print("inputs:        " + ", ".join(_spec(s) for s in m.inputs))
    print(f"label:         {_spec(m.label)}")
    print("outputs:       " + ", ".join(_spec(s) for s in m.outputs))
    print(f"loss:          {m.loss.type}")
    for i, opt in enumerate(m.optimizers):
        label = "optimizer:" if len(m.optimizers) == 1 else ("optimizers:" if not i else "")
        default = " [default]" if len(m.optimizers) > 1 and not i else ""
        print(f"{label:<15}{opt.type} ({hyper(opt)}){default}")
    print(
        f"parameters:    {len(specs)} tensors, {n_train:,} trainable + {n_frozen:,} frozen values"
    )
    if m.lora is not None:
        layers = ", ".join(a.module for a in m.lora.adapters)
        print(f"lora:          rank {m.lora.rank}, alpha {m.lora.alpha:g} on {layers}")
    total = sum(f.size for f in m.files.values())
    print(f"files:         {len(m.files)} files, {total / 1024:.1f} KiB")
    ver = m.verification
    if ver.skipped:
        print("verification:  skipped (--no-verify)")
    else:
        step = ver.step_max_abs_diff
        forward = ver.forward_max_abs_diff
        print(
            f"verification:  forward max|diff| {forward or 0.0:.2e}, step max|diff| "
            + (f"{step:.2e}" if step is not None else f"skipped ({ver.step_skipped})")
        )
        extras = ver.values.get("optimizers")
        for kind, numbers in (extras if isinstance(extras, dict) else {}).items():
            value = numbers.get("step_max_abs_diff") if isinstance(numbers, dict) else None
            portable = numbers.get("portable") if isinstance(numbers, dict) else None
            line = f"{kind} step max|diff| " + (f"{value:.2e}" if value is not None else "skipped")
            if isinstance(portable, dict) and portable.get("step_max_abs_diff") is not None:
                line += f", portable {portable['step_max_abs_diff']:.2e}"
            print(f"{'':<15}{line}")
    print(f"signature:     {bundle.signature_status}")
    print(f"backends:      {', '.join(m.backends)}" + _portable_note(m))
    if not details:
        return
    upgraded = (
        f", read from format {m.source_format}" if m.source_format != m.format_version else ""
    )
    print(
        f"format:        {m.format_version}{upgraded} (opset {m.opset}, IR {m.ir_version}, "
        f"backends {', '.join(m.backends)})"
    )
    print("versions:      " + ", ".join(f"{k} {v}" for k, v in sorted(m.versions.items())))
    stats = {r.param for r in m.running_stats}
    print("\nparameter                       shape           dtype     trainable")
    for s in specs:
        kind = "yes" if s.trainable else "no (BatchNorm running stat)" if s.name in stats else "no"
        print(f"  {s.name:<30}{str(list(s.shape)):<16}{s.dtype:<10}{kind}")
    print("\nverification:")
    for key, value in sorted(ver.values.items()):
        print(f"  {key}: {value}")
    print("\nfile                            size        sha256")
    for name, entry in sorted(m.files.items()):
        print(f"  {name:<30}{entry.size:>10,}  {entry.sha256[:16]}")
    print("\npatches:" + ("" if m.patches else " none"))
    for patch in m.patches:
        print(f"  - {patch.what}\n    why: {patch.why}")


def _task(task: TaskSpec) -> str:
    """``multiclass, 10 classes``; ``binary, one logit``; ``regression, 1 target``."""
    if task.kind == "binary":
        return "binary, one logit"
    unit = {"multiclass": "classes", "multilabel": "labels"}.get(task.kind, "targets")
    return f"{task.kind}, {task.width} {unit}"


def _portable_note(m: Manifest) -> str:
    if m.portable is not None and not m.portable.available:
        return f" (no ort-portable: {m.portable.reason})"
    return ""


def _spec(spec: TensorSpec) -> str:
    dims = ",".join("batch" if d is None else str(d) for d in spec.shape)
    return f"{spec.name} {spec.dtype}[{dims}]"


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n
