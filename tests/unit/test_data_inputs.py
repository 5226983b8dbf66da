"""A model with several inputs (token ids + a mask): each input mapped to its own columns or
BLOB in ``[data.inputs.<name>]``, read from the same rows, checked input by input."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
import pytest
from support.toy_bundle import toy_manifest

from fedge.agent.config import AgentConfig
from fedge.agent.data_check import check_data
from fedge.protocol.data_contract import check_samples, conform_samples, read_for_bundle
from fedge.protocol.errors import ConfigError
from fedge.protocol.manifest import Manifest
from fedge.protocol.settings import load_settings
from fedge.protocol.sqlite_samples import (
    DataError,
    DataSource,
    InputColumns,
    read_samples,
    split_train_validation,
)

SEQ = 4


def _manifest(tokens_dtype: str = "int64", width: int = SEQ) -> Manifest:
    """A two-input model: ``tokens`` (``width`` ids of ``tokens_dtype``) and a float ``mask``."""
    m = toy_manifest()
    m["inputs"] = [
        {"name": "tokens", "dtype": tokens_dtype, "shape": [None, width]},
        {"name": "mask", "dtype": "float32", "shape": [None, SEQ]},
    ]
    m["outputs"][0]["shape"] = [None, 2]
    m["task"] = {"kind": "multiclass", "num_classes": 2}
    return Manifest.from_dict(m, draft=True)


def _db(path: Path, n: int = 12, *, fractional: bool = False) -> DataSource:
    """Token ids as an int64 BLOB ``ids`` (or REAL columns t0..t3), a mask in REAL columns
    m0..m3, row i's tokens i..i+3 and its first (i % 4) + 1 positions unmasked."""
    conn = sqlite3.connect(path)
    tcols = ", ".join(f"t{i} REAL" for i in range(SEQ))
    mcols = ", ".join(f"m{i} REAL" for i in range(SEQ))
    conn.execute(
        f"CREATE TABLE samples (id INTEGER PRIMARY KEY, ids BLOB, {tcols}, {mcols}, label)"
    )
    for i in range(n):
        tokens = np.arange(i, i + SEQ)
        mask = (np.arange(SEQ) <= i % SEQ).astype(float)
        columns = tokens + (0.5 if fractional and i == 3 else 0.0)
        conn.execute(
            f"INSERT INTO samples VALUES (NULL, ?, {', '.join('?' * (2 * SEQ))}, ?)",
            (tokens.astype("<i8").tobytes(), *columns.tolist(), *mask.tolist(), i % 2),
        )
    conn.commit()
    conn.close()
    return DataSource(path=str(path))


def _mapped(src: DataSource, **tokens: object) -> DataSource:
    token_cols = InputColumns(**tokens) if tokens else InputColumns(features=["t*"])
    src.inputs = {"mask": InputColumns(features=["m*"]), "tokens": token_cols}
    return src


def test_each_input_is_read_from_its_own_columns_of_the_same_rows(tmp_path):
    src = _mapped(_db(tmp_path / "d.db"), blob_column="ids", blob_dtype="int64")
    samples = read_samples(src, dtype=None)
    assert samples.input_names == ("mask", "tokens")  # the config's order, until conformed
    assert samples.input_columns == (("m0", "m1", "m2", "m3"), ("ids",))
    mask, tokens = samples.x
    assert tokens.dtype == np.int64 and tokens[5].tolist() == [5, 6, 7, 8]
    assert mask[5].tolist() == [1.0, 1.0, 0.0, 0.0]
    x = read_for_bundle(src, _manifest()).x  # the manifest's order, each in its dtype
    assert isinstance(x, tuple) and [a.dtype for a in x] == [np.int64, np.float32]
    assert x[0][5].tolist() == [5, 6, 7, 8] and x[1][5].tolist() == [1, 1, 0, 0]


def test_the_validation_split_keeps_every_input_on_the_same_rows(tmp_path):
    samples = read_for_bundle(_mapped(_db(tmp_path / "d.db", n=20)), _manifest())
    train, val = split_train_validation(samples, 0.25, seed=0)
    assert len(val) == 5 and len(train) == 15
    for part in (train, val):
        tokens, mask = part.x
        first = tokens[:, 0].astype(int)  # row i starts at token i: the mask must be row i's
        assert (mask.sum(axis=1) == first % SEQ + 1).all()
        assert (part.y == first % 2).all()


def test_a_model_with_two_inputs_and_a_one_input_config_names_the_tables_to_write(tmp_path):
    src = _db(tmp_path / "d.db")
    src.features = ["t*"]
    problems = check_samples(read_samples(src, dtype=None), _manifest(), src)
    assert problems == [
        "the model has 2 inputs ('tokens', 'mask'): map each to its columns or BLOB in "
        "[data.inputs.tokens], [data.inputs.mask] (docs/data.md)"
    ]


def test_missing_and_unknown_input_tables_are_named(tmp_path):
    src = _db(tmp_path / "d.db")
    src.inputs = {"tokens": InputColumns(features=["t*"]), "masks": InputColumns(features=["m*"])}
    problems = check_samples(read_samples(src, dtype=None), _manifest(), src)
    assert (
        "the model's input 'mask' has no [data.inputs.mask] table (its inputs: tokens, mask)"
        in (problems)
    )
    assert "[data.inputs.masks] names no input of the model (its inputs: tokens, mask)" in problems


def test_each_input_is_checked_on_its_own_width_dtype_and_range(tmp_path):
    # width: the mask maps 3 columns, the model's mask takes 4
    src = _mapped(_db(tmp_path / "w.db"))
    src.inputs["mask"] = InputColumns(features=["m0", "m1", "m2"])
    (problem,) = check_samples(read_samples(src, dtype=None), _manifest(), src)
    assert problem == (
        "features match 3 columns (m0, m1, m2) but the model's input 'mask' needs 4: "
        "check data.inputs.mask.features"
    )
    # dtype: a fractional token id in REAL columns
    src = _mapped(_db(tmp_path / "f.db", fractional=True))
    (problem,) = check_samples(read_samples(src, dtype=None), _manifest(), src)
    assert "rows have a fractional feature but the model's input 'tokens' takes int64" in problem
    assert "row 4: 3.5" in problem
    # range: ids beyond an int8 input; and a BLOB of the wrong width names the input's keys
    src = _mapped(_db(tmp_path / "r.db", n=200), blob_column="ids", blob_dtype="int64")
    (problem,) = check_samples(read_samples(src, dtype=None), _manifest("int8"), src)
    assert "rows have a feature outside int8's range" in problem
    (problem,) = check_samples(read_samples(src, dtype=None), _manifest(width=8), src)
    assert "the model's input 'tokens' needs 8" in problem
    assert "check data.inputs.tokens.blob_shape and data.inputs.tokens.blob_dtype" in problem
    # an id input is never scaled
    src = _mapped(_db(tmp_path / "s.db"), features=["t*"], feature_scale=0.5)
    problems = check_samples(read_samples(src, dtype=None), _manifest(), src)
    assert any("data.inputs.tokens.feature_scale must be 1, not 0.5" in p for p in problems)


def test_standardization_of_a_multi_input_model_is_refused(tmp_path):
    src = _mapped(_db(tmp_path / "d.db"))
    raw = read_samples(src, dtype=None)
    with pytest.raises(DataError, match="the model has 2 inputs mapped by \\[data.inputs\\]"):
        conform_samples(raw, _manifest(), src, ([0.0] * 8, [1.0] * 8))


def test_one_input_mapped_through_an_inputs_table_gives_one_array(tmp_path):
    src = _db(tmp_path / "d.db")
    src.inputs = {"input": InputColumns(features=["m*"])}
    manifest = toy_manifest()
    manifest["inputs"][0]["shape"] = [None, SEQ]
    samples = read_for_bundle(src, Manifest.from_dict(manifest, draft=True))
    assert isinstance(samples.x, np.ndarray) and samples.x.shape == (12, SEQ)
    # ... which standardizes like the plain config
    stats = ([0.5] * SEQ, [0.5] * SEQ)
    standardized = read_for_bundle(src, Manifest.from_dict(manifest, draft=True), stats)
    np.testing.assert_allclose(standardized.x, (samples.x - 0.5) / 0.5)


def test_data_check_reports_each_input_and_names_its_problems(tmp_path):
    src = _mapped(_db(tmp_path / "d.db"), blob_column="ids", blob_dtype="int64")
    report = check_data(src, manifest=_manifest())
    assert report.ok, report.problems
    assert report.features == (
        "mask [4] float32 (columns m0, m1, m2, m3); tokens [4] int64 (blob ids) per sample"
    )
    src.inputs["mask"] = InputColumns(features=["x*"])
    report = check_data(src, manifest=_manifest())
    assert report.problems and report.problems[0].startswith(
        "data.inputs.mask: table 'samples' has no column matching the feature pattern 'x*'"
    )


def test_agent_toml_maps_inputs_and_refuses_typos(tmp_path):
    config = tmp_path / "agent.toml"
    config.write_text(
        '[data]\npath = "d.db"\n'
        '[data.inputs.tokens]\nblob_column = "ids"\nblob_dtype = "int64"\nblob_shape = [16]\n'
        '[data.inputs.mask]\nfeatures = ["m*"]\n'
    )
    cfg = load_settings(AgentConfig, config, overrides=["data.inputs.mask.feature_scale=0.5"])
    assert cfg.data.inputs["tokens"] == InputColumns(
        blob_column="ids", blob_dtype="int64", blob_shape=[16]
    )
    assert cfg.data.inputs["mask"].features == ["m*"]
    assert cfg.data.inputs["mask"].feature_scale == 0.5
    config.write_text('[data.inputs.tokens]\nblob_colum = "ids"\n')
    with pytest.raises(ConfigError, match="unknown setting 'data.inputs.tokens.blob_colum'"):
        load_settings(AgentConfig, config)
    config.write_text('[data.inputs.tokens]\nblob_column = "ids"\nfeatures = ["t*"]\n')
    with pytest.raises(ConfigError, match="either 'features' .* or 'blob_column'"):
        load_settings(AgentConfig, config)
    config.write_text('[data.inputs.tokens]\nblob_column = "ids"\nblob_dtype = "int9"\n')
    with pytest.raises(ConfigError, match="data.inputs.tokens.blob_dtype must be one of"):
        load_settings(AgentConfig, config)
