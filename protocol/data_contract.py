"""Rows checked against the bundle that will train or evaluate on them, in one place.

The bundle's typed manifest says what one sample must be: each input's dtype and shape, the
label's, the task kind and its width. A model with several inputs (token ids and a mask) needs
each mapped to its own columns or BLOB (``[data.inputs.<name>]``); every input is checked on
its own and each problem names the input. ``check_samples`` lists every way the rows break that
(labels outside the task's range, a feature count the input cannot take, fractional values for
an integer input), each problem a line naming the fix; ``conform_samples`` returns the rows cast
to the input's and the label's dtypes and shaped to one sample's shape, or raises ``DataError``
with those lines. The agent (before training), the orchestrator (its central-evaluation table,
at start) and ``fedge data check --bundle`` all use it, so they agree.

| task       | labels accepted                                   |
|------------|---------------------------------------------------|
| multiclass | integers 0 .. num_classes-1                       |
| binary     | 0 or 1 (INTEGER or REAL)                          |
| multilabel | 0 or 1, num_labels values per sample             |
| regression | any finite number                                 |
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from .manifest import Manifest
from .manifest_specs import TensorSpec
from .sqlite_samples import DataError, DataSource, Samples, read_samples
from .standardization import StatisticsError, standardize

MAX_EXAMPLES = 3  # rows named per problem
_INT_RANGES = {name: np.iinfo(name) for name in ("int8", "uint8", "int16", "int32", "int64")}


def _rows(index: np.ndarray, values: np.ndarray) -> str:
    """``row 7: 12, row 9: -1``: the first offending rows (1-based, in the selected rows)."""
    shown = [f"row {int(i) + 1}: {_value(values[i])}" for i in index[:MAX_EXAMPLES]]
    return ", ".join(shown) + (", ..." if len(index) > MAX_EXAMPLES else "")


def _value(v: object) -> str:
    if isinstance(v, float | np.floating) and float(v).is_integer():
        return str(int(v))
    return str(v)


def _label_values(y: np.ndarray, problems: list[str]) -> np.ndarray | None:
    """The labels as float64, or None (with a problem) if some are not numbers."""
    try:
        return np.asarray(y, dtype=np.float64)
    except (TypeError, ValueError):
        pass
    bad = []
    for i, v in enumerate(y.tolist()):
        try:
            float(v)
        except (TypeError, ValueError):
            bad.append(i)
    problems.append(
        f"{len(bad)} rows have a non-numeric label ({_rows(np.array(bad), y)}): "
        "the label column must hold numbers"
    )
    return None


def label_problems(y: np.ndarray, manifest: Manifest) -> list[str]:
    """What is wrong with the labels for the bundle's task (empty: nothing)."""
    task, spec = manifest.task, manifest.label
    problems: list[str] = []
    per_sample = math.prod(spec.sample_shape)
    if per_sample != 1:
        problems.append(
            f"the bundle's label '{spec.name}' takes {per_sample} values per sample "
            f"({list(spec.sample_shape)}) but the label column gives 1"
        )
    values = _label_values(np.asarray(y), problems)
    if values is None or len(values) == 0:
        return problems
    bad = np.flatnonzero(~np.isfinite(values))
    if len(bad):
        problems.append(f"{len(bad)} rows have a NaN or infinite label ({_rows(bad, values)})")
        return problems
    if task.kind == "multiclass":
        classes = task.width
        bad = np.flatnonzero((values != np.round(values)) | (values < 0) | (values >= classes))
        if len(bad):
            problems.append(
                f"{len(bad)} rows have a label outside the model's {classes} classes "
                f"({_rows(bad, values)}): a multiclass label is a class id 0..{classes - 1}"
            )
    elif task.kind in ("binary", "multilabel"):
        bad = np.flatnonzero((values != 0) & (values != 1))
        if len(bad):
            what = "binary (one-logit)" if task.kind == "binary" else "multi-label"
            problems.append(
                f"{len(bad)} rows have a label other than 0 or 1 ({_rows(bad, values)}): "
                f"a {what} model's labels are 0 or 1"
            )
    return problems


def feature_problems(
    samples: Samples, spec: TensorSpec, src: DataSource, key: str = "data"
) -> list[str]:
    """What is wrong with the features for the bundle's input ``spec`` (empty: nothing);
    ``key`` is the config table the fixes name (``data.inputs.mask`` for one of several)."""
    need = math.prod(spec.sample_shape)
    n = len(samples)
    have = int(samples.array.reshape(n, -1).shape[1]) if n else len(samples.feature_columns)
    if src.blob_column:
        if n and have != need:
            return [
                f"blob column '{src.blob_column}' holds {have} {src.blob_dtype} values per row "
                f"but the model's input '{spec.name}' needs {need} "
                f"(shape {list(spec.sample_shape)}): check {key}.blob_shape and {key}.blob_dtype"
            ]
    elif have != need:
        cols = samples.feature_columns
        listed = ", ".join(cols[:6]) + (", ..." if len(cols) > 6 else "")
        return [
            f"features match {have} column{'s' if have != 1 else ''} ({listed}) but the "
            f"model's input '{spec.name}' needs {need}: check {key}.features"
        ]
    if not n or np.dtype(spec.dtype).kind not in "iu":
        return []
    problems = []
    if src.feature_scale != 1.0:
        problems.append(
            f"the model's input '{spec.name}' takes {spec.dtype} values (token or category "
            f"ids): {key}.feature_scale must be 1, not {src.feature_scale}"
        )
    flat = samples.array.reshape(n, -1)
    if flat.dtype.kind == "f":
        bad = np.flatnonzero((flat != np.round(flat)).any(axis=1))
        if len(bad):
            problems.append(
                f"{len(bad)} rows have a fractional feature but the model's input "
                f"'{spec.name}' takes {spec.dtype} ids ({_rows(bad, flat[:, 0])}): store "
                'integers (INTEGER columns, or a blob with blob_dtype = "int64")'
            )
            return problems
    info = _INT_RANGES.get(spec.dtype)
    if info is not None:
        bad = np.flatnonzero(((flat < info.min) | (flat > info.max)).any(axis=1))
        if len(bad):
            problems.append(
                f"{len(bad)} rows have a feature outside {spec.dtype}'s range "
                f"({_rows(bad, flat[:, 0])})"
            )
            return problems
    if spec.ids_below is not None:
        problems.extend(_id_problems(flat, spec, spec.ids_below))
    return problems


def _id_problems(flat: np.ndarray, spec: TensorSpec, below: int) -> list[str]:
    """Ids an Embedding cannot look up: negative, or past its last row."""
    outside = (flat < 0) | (flat >= below)
    bad = np.flatnonzero(outside.any(axis=1))
    if not len(bad):
        return []
    first = flat[bad, outside[bad].argmax(axis=1)]  # each bad row's first offending id
    shown = [f"row {int(r) + 1}: {_value(v)}" for r, v in zip(bad, first, strict=False)]
    rows = ", ".join(shown[:MAX_EXAMPLES]) + (", ..." if len(bad) > MAX_EXAMPLES else "")
    return [
        f"{len(bad)} rows have an id outside the model's input '{spec.name}' range 0.."
        f"{below - 1} ({rows}): the Embedding '{spec.ids_module}' has {below} rows; map "
        "unknown or padding tokens to an id it has (e.g. 0), or re-export the model with a "
        "larger Embedding"
    ]


def check_samples(samples: Samples, manifest: Manifest, src: DataSource) -> list[str]:
    """Every problem of ``samples`` (as ``read_samples(src, dtype=None)`` gives them) for the
    bundle described by ``manifest``; empty when they fit."""
    problems = mapping_problems(manifest.inputs, samples.input_names)
    if not problems:
        if not samples.input_names:
            problems.extend(feature_problems(samples, manifest.input, src))
        for spec in manifest.inputs if samples.input_names else ():
            problems.extend(
                feature_problems(
                    samples.input(spec.name),
                    spec,
                    src.for_input(spec.name),
                    f"data.inputs.{spec.name}",
                )
            )
    problems.extend(label_problems(samples.y, manifest))
    return problems


def mapping_problems(inputs: Sequence[TensorSpec], mapped: Sequence[str]) -> list[str]:
    """What is wrong with the ``[data.inputs.NAME]`` tables (``mapped``: their names, empty
    for the one-input config) for the model's ``inputs`` (empty: nothing)."""
    if not mapped:
        if len(inputs) == 1:
            return []
        names = ", ".join(f"'{s.name}'" for s in inputs)
        tables = ", ".join(f"[data.inputs.{s.name}]" for s in inputs)
        return [
            f"the model has {len(inputs)} inputs ({names}): map each to its columns or BLOB "
            f"in {tables} (docs/data.md)"
        ]
    want = [s.name for s in inputs]
    problems = [
        f"the model's input '{n}' has no [data.inputs.{n}] table (its inputs: {', '.join(want)})"
        for n in want
        if n not in mapped
    ]
    problems += [
        f"[data.inputs.{n}] names no input of the model (its inputs: {', '.join(want)})"
        for n in mapped
        if n not in want
    ]
    return problems


def require_fit(samples: Samples, manifest: Manifest, src: DataSource) -> None:
    """Raise a ``DataError`` listing every problem if ``samples`` do not fit the bundle."""
    problems = check_samples(samples, manifest, src)
    if problems:
        raise DataError(
            f"the data in {src.path} does not fit model '{manifest.model_name}': "
            + "; ".join(problems)
        )


def conform_samples(
    samples: Samples,
    manifest: Manifest,
    src: DataSource,
    standardization: tuple[list[float], list[float]] | None = None,
) -> Samples:
    """``samples`` cast to the input's and label's dtypes and shaped ``[n, *sample_shape]``;
    a ``DataError`` listing every problem if they do not fit the bundle.

    ``standardization`` (the run's per-feature mean and std) is applied before the cast,
    in float64; never to an integer input (token ids are not measurements)."""
    require_fit(samples, manifest, src)
    if samples.input_names and len(manifest.inputs) == 1:  # [data.inputs.input] alone
        name = manifest.input.name
        return conform_samples(samples.input(name), manifest, src.for_input(name), standardization)
    if samples.input_names:
        return _conform_inputs(samples, manifest, standardization)
    spec = manifest.input
    values = samples.array
    if standardization is not None and standardization[0]:
        if np.dtype(spec.dtype).kind != "f":
            raise DataError(
                f"the run standardizes features but the model's input '{spec.name}' takes "
                f"{spec.dtype} ids: turn rounds.standardize off for this model"
            )
        try:
            values = standardize(values, *standardization)
        except StatisticsError as exc:
            raise DataError(str(exc)) from None
    x = values.reshape([len(samples), *spec.sample_shape]).astype(spec.dtype, copy=False)
    y = np.asarray(samples.y, dtype=np.float64).astype(manifest.label.dtype, copy=False)
    return Samples(x, y, samples.feature_columns)


def _conform_inputs(
    samples: Samples,
    manifest: Manifest,
    standardization: tuple[list[float], list[float]] | None,
) -> Samples:
    """Samples of a model with several inputs: cast and shaped per input, in the manifest's
    order."""
    if standardization is not None and standardization[0]:
        raise DataError(
            f"the run standardizes features but the model has {len(manifest.inputs)} inputs "
            f"mapped by [data.inputs]; standardization covers one input: turn "
            "rounds.standardize off for this model"
        )
    arrays = []
    for spec in manifest.inputs:
        values = samples.input(spec.name).array
        shape = [len(samples), *spec.sample_shape]
        arrays.append(values.reshape(shape).astype(spec.dtype, copy=False))
    y = np.asarray(samples.y, dtype=np.float64).astype(manifest.label.dtype, copy=False)
    names = tuple(s.name for s in manifest.inputs)
    columns = tuple(samples.input(n).feature_columns for n in names)
    return Samples(tuple(arrays), y, sum(columns, ()), names, columns)


def read_for_bundle(
    src: DataSource,
    manifest: Manifest,
    standardization: tuple[list[float], list[float]] | None = None,
) -> Samples:
    """The rows of ``src``, checked against and cast for the bundle (``conform_samples``)."""
    return conform_samples(read_samples(src, dtype=None), manifest, src, standardization)
