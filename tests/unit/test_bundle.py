"""Bundle format: manifests, hashes, signatures, deterministic archives (no torch, no ONNX)."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
from support.toy_bundle import PARAMS, toy_manifest, write_toy_bundle

from fedge.protocol import signing
from fedge.protocol.bundle import load_bundle, pack_bundle, unpack_bundle, write_manifest
from fedge.protocol.errors import BundleError, SignatureError
from fedge.protocol.manifest import REQUIRED_FILES, compute_content_hash
from fedge.protocol.tensors import encode_tensors

_manifest = toy_manifest


@pytest.fixture()
def bundle_dir(tmp_path: Path) -> Path:
    return write_toy_bundle(tmp_path / "bundle")


def test_manifest_round_trip(bundle_dir: Path) -> None:
    bundle = load_bundle(bundle_dir)
    m = bundle.manifest
    assert set(m.files) == set(REQUIRED_FILES)
    assert m.content_hash == compute_content_hash(m.to_dict())
    assert bundle.trainable_names == ["fc.weight"]
    assert bundle.frozen_names == ["fc.bias"]
    assert bundle.parameter_specs[0].shape == (2, 3)
    assert bundle.file("checkpoint") == bundle_dir / "checkpoint"
    assert bundle.signature_status == "unsigned"
    params = bundle.initial_parameters()
    np.testing.assert_array_equal(params["fc.weight"], PARAMS["fc.weight"])
    raw = (bundle_dir / "manifest.json").read_text()
    assert raw == json.dumps(m.to_dict(), sort_keys=True, indent=2) + "\n"


def test_content_hash_is_stable_and_covers_files(bundle_dir: Path, tmp_path: Path) -> None:
    first = load_bundle(bundle_dir).content_hash
    assert write_manifest(bundle_dir, _manifest()).content_hash == first
    (bundle_dir / "checkpoint").write_bytes(b"other weights")
    assert write_manifest(bundle_dir, _manifest()).content_hash != first


def test_pack_is_deterministic_and_unpacks(bundle_dir: Path, tmp_path: Path) -> None:
    data = pack_bundle(bundle_dir)
    assert data == pack_bundle(bundle_dir)
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        assert zf.namelist()[0] == "manifest.json"
        assert {i.date_time for i in zf.infolist()} == {(1980, 1, 1, 0, 0, 0)}
    archive = tmp_path / "toy.fedge"
    archive.write_bytes(data)
    bundle = load_bundle(archive, extract_to=tmp_path / "out")
    assert bundle.content_hash == load_bundle(bundle_dir).content_hash
    # unpacked and repacked: identical bytes
    assert pack_bundle(tmp_path / "out") == data


def test_tampered_file_names_file_and_hashes(bundle_dir: Path) -> None:
    expected = json.loads((bundle_dir / "manifest.json").read_text())["files"]["checkpoint"]
    (bundle_dir / "checkpoint").write_bytes(b"evil")
    with pytest.raises(BundleError, match="'checkpoint' has sha256") as err:
        load_bundle(bundle_dir)
    assert expected["sha256"] in str(err.value)


def test_missing_file(bundle_dir: Path) -> None:
    (bundle_dir / "eval_model.onnx").unlink()
    with pytest.raises(BundleError, match="'eval_model.onnx' is missing"):
        load_bundle(bundle_dir)


def test_missing_manifest_and_bad_json(bundle_dir: Path) -> None:
    (bundle_dir / "manifest.json").write_text("{not json")
    with pytest.raises(BundleError, match="not valid JSON"):
        load_bundle(bundle_dir)
    (bundle_dir / "manifest.json").unlink()
    with pytest.raises(BundleError, match="no manifest.json"):
        load_bundle(bundle_dir)


def test_unknown_format_version(bundle_dir: Path) -> None:
    m = json.loads((bundle_dir / "manifest.json").read_text())
    m["format_version"] = 99
    (bundle_dir / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(BundleError, match="unknown bundle format version 99"):
        load_bundle(bundle_dir)


def test_edited_manifest_fails_content_hash(bundle_dir: Path) -> None:
    m = json.loads((bundle_dir / "manifest.json").read_text())
    m["optimizers"][0]["lr"] = 10.0
    (bundle_dir / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(BundleError, match="content_hash"):
        load_bundle(bundle_dir)


def test_schema_error_names_field(bundle_dir: Path) -> None:
    m = _manifest()
    m["loss"] = {"type": "hinge"}
    with pytest.raises(BundleError, match="loss.type"):
        write_manifest(bundle_dir, m)


def test_signature_verified_and_rejected(bundle_dir: Path) -> None:
    priv, pub = signing.generate_keypair()
    _, other = signing.generate_keypair()
    with pytest.raises(SignatureError, match="not signed"):
        load_bundle(bundle_dir, trusted_public_keys=[pub], require_signature=True)
    signing.sign_bundle(bundle_dir, priv)
    ok = load_bundle(bundle_dir, trusted_public_keys=[pub], require_signature=True)
    assert ok.signature_status == f"verified:{signing.fingerprint(pub)}"
    assert load_bundle(bundle_dir).signature_status == "unverified"
    with pytest.raises(SignatureError, match="does not verify"):
        load_bundle(bundle_dir, trusted_public_keys=[other])
    (bundle_dir / "manifest.sig").write_bytes(b"\0" * 64)
    with pytest.raises(SignatureError):
        load_bundle(bundle_dir, trusted_public_keys=[pub])


def test_signed_archive_round_trip(bundle_dir: Path, tmp_path: Path) -> None:
    priv, pub = signing.generate_keypair()
    signing.sign_bundle(bundle_dir, priv)
    out = unpack_bundle(pack_bundle(bundle_dir), tmp_path / "x")
    assert (out / "manifest.sig").is_file()
    assert load_bundle(out, trusted_public_keys=[pub]).signature_status.startswith("verified")


def test_write_manifest_removes_stale_signature(bundle_dir: Path) -> None:
    priv, _ = signing.generate_keypair()
    signing.sign_bundle(bundle_dir, priv)
    write_manifest(bundle_dir, _manifest())
    assert not (bundle_dir / "manifest.sig").exists()


def _zip(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


@pytest.mark.parametrize("evil", ["../evil", "/etc/passwd", "sub/dir.onnx", "..", "a\\b"])
def test_unpack_refuses_paths(bundle_dir: Path, tmp_path: Path, evil: str) -> None:
    members = {"manifest.json": (bundle_dir / "manifest.json").read_bytes(), evil: b"x"}
    with pytest.raises(BundleError, match="path|allowed"):
        unpack_bundle(_zip(members), tmp_path / "dest")
    assert not (tmp_path / "evil").exists()
    assert not (tmp_path / "dest").exists()


def test_unpack_refuses_unlisted_and_oversize(bundle_dir: Path, tmp_path: Path) -> None:
    manifest = (bundle_dir / "manifest.json").read_bytes()
    with pytest.raises(BundleError, match="does not list"):
        unpack_bundle(_zip({"manifest.json": manifest, "extra.bin": b"x"}), tmp_path / "d1")
    big = _zip({"manifest.json": manifest, "checkpoint": b"x" * 100})
    with pytest.raises(BundleError, match="limit"):
        unpack_bundle(big, tmp_path / "d2", max_member_bytes=50)
    with pytest.raises(BundleError, match="not a bundle archive"):
        unpack_bundle(b"not a zip", tmp_path / "d3")


def test_parameters_file_must_match_manifest(bundle_dir: Path) -> None:
    (bundle_dir / "parameters.safetensors").write_bytes(
        encode_tensors({"fc.weight": PARAMS["fc.weight"]})
    )
    write_manifest(bundle_dir, _manifest())
    with pytest.raises(BundleError, match="missing \\['fc.bias'\\]"):
        load_bundle(bundle_dir).initial_parameters()


def test_unpack_refuses_symlink_member(bundle_dir: Path, tmp_path: Path) -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("manifest.json", (bundle_dir / "manifest.json").read_bytes())
        link = zipfile.ZipInfo("checkpoint")
        link.external_attr = (0o120777) << 16  # S_IFLNK
        zf.writestr(link, "/etc/passwd")
    with pytest.raises(BundleError, match="not a regular file"):
        unpack_bundle(buf.getvalue(), tmp_path / "dest")
