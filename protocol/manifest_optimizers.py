"""The manifest's ``optimizers`` list: each optimizer the bundle carries, with its files.

The first is the default. With more than one, each entry names its file per backend
(``files``: ``{"ort-training": ..., "ort-portable": ...}``), and every one of those files must
be listed in the manifest's ``files`` (so the content hash and the signature cover them).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from .errors import BundleError
from .manifest_fields import FieldReader
from .manifest_specs import FileEntry, Hyperparameter, OptimizerSpec

OPTIMIZER_TYPES = ("sgd", "adamw")
BACKENDS = ("ort-training", "ort-portable")


def parse_optimizers(
    items: list[Any], hyperparameter: Callable[[Any, str], Hyperparameter]
) -> tuple[OptimizerSpec, ...]:
    """The checked entries; BundleError naming the field (``optimizers[1].files.x``)."""
    from .manifest import FILE_NAME_RE

    out: list[OptimizerSpec] = []
    for i, item in enumerate(items):
        r = FieldReader(item, f"optimizers[{i}]")
        kind = r.name("type", choices=OPTIMIZER_TYPES)
        if any(o.type == kind for o in out):
            raise BundleError(f"manifest field 'optimizers' lists {kind!r} twice")
        lr = r.positive_number("lr")
        hyper: dict[str, Hyperparameter] = {}
        for key, value in r.mapping("hyperparameters").items():
            hyper[key] = hyperparameter(value, f"optimizers[{i}].hyperparameters.{key}")
        files: dict[str, str] = {}
        if r.has("files"):
            for backend, name in r.mapping("files").items():
                where = f"optimizers[{i}].files.{backend}"
                if backend not in BACKENDS:
                    raise BundleError(
                        f"manifest field '{where}' names backend {backend!r}; known: "
                        f"{list(BACKENDS)}"
                    )
                if not isinstance(name, str) or not FILE_NAME_RE.match(name):
                    raise BundleError(f"manifest field '{where}' must be a bundle file name")
                files[backend] = name
        r.done()
        out.append(OptimizerSpec(kind, lr, hyper, files))
    if len(out) > 1 and not all(o.files for o in out):
        raise BundleError(
            "manifest field 'optimizers' lists several optimizers; each needs its 'files'"
        )
    return tuple(out)


def check_optimizer_files(
    optimizers: Sequence[OptimizerSpec], files: Mapping[str, FileEntry]
) -> None:
    """Every optimizer's files are bundle files (listed, so the hash and signature cover them)."""
    for i, spec in enumerate(optimizers):
        for backend, name in spec.files.items():
            if name not in files:
                raise BundleError(
                    f"manifest field 'optimizers[{i}].files.{backend}' names {name!r}, which "
                    "'files' does not list"
                )
