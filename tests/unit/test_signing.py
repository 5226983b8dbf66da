"""Ed25519 keys, signatures and bundle signing."""

from __future__ import annotations

import stat

import pytest

from fedge.protocol import signing
from fedge.protocol.errors import SignatureError


def test_sign_and_verify_round_trip() -> None:
    private_pem, public_pem = signing.generate_keypair()
    sig = signing.sign(private_pem, b"hello")
    assert len(sig) == 64
    assert signing.verify([public_pem], b"hello", sig) == signing.fingerprint(public_pem)


def test_verify_accepts_any_of_several_keys() -> None:
    priv, pub = signing.generate_keypair()
    _, other = signing.generate_keypair()
    assert signing.verify([other, pub], b"x", signing.sign(priv, b"x")) == signing.fingerprint(pub)


def test_wrong_key_or_data_raises() -> None:
    priv, _ = signing.generate_keypair()
    _, other = signing.generate_keypair()
    sig = signing.sign(priv, b"data")
    with pytest.raises(SignatureError, match="does not verify"):
        signing.verify([other], b"data", sig)
    with pytest.raises(SignatureError, match="does not verify"):
        signing.verify([signing.public_key_of(priv)], b"datA", sig)


def test_no_keys_or_malformed_signature() -> None:
    priv, pub = signing.generate_keypair()
    with pytest.raises(SignatureError, match="no trusted public keys"):
        signing.verify([], b"x", signing.sign(priv, b"x"))
    with pytest.raises(SignatureError, match="64 bytes"):
        signing.verify([pub], b"x", b"short")


def test_write_keypair_files(tmp_path) -> None:
    private_path, public_path = signing.write_keypair(tmp_path, "k")
    assert private_path.name == "k.key" and public_path.name == "k.pub"
    assert stat.S_IMODE(private_path.stat().st_mode) == 0o600
    key = signing.load_private_key(private_path)
    assert signing.verify([public_path], b"m", signing.sign(key, b"m"))
    with pytest.raises(SignatureError, match="already exists"):
        signing.write_keypair(tmp_path, "k")


def test_raw_public_key_and_bad_pem(tmp_path) -> None:
    from cryptography.hazmat.primitives import serialization

    priv, pub = signing.generate_keypair()
    raw = signing.load_public_key(pub).public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    assert signing.verify([raw], b"m", signing.sign(priv, b"m"))
    with pytest.raises(SignatureError, match="not a PEM public key"):
        signing.load_public_key(b"-----BEGIN nonsense-----")
    with pytest.raises(SignatureError, match="cannot read"):
        signing.load_private_key(tmp_path / "missing.key")


def test_sign_bundle_writes_signature_over_manifest(tmp_path) -> None:
    priv, pub = signing.generate_keypair()
    (tmp_path / "manifest.json").write_bytes(b'{"a": 1}\n')
    sig_path = signing.sign_bundle(tmp_path, priv)
    assert signing.verify([pub], b'{"a": 1}\n', sig_path.read_bytes())


def test_load_trusted_keys_reads_pem_and_raw_keys_and_names_the_broken_file(tmp_path) -> None:
    from fedge.protocol.errors import ConfigError

    _, public_pem = signing.generate_keypair()
    pem = tmp_path / "a.pub"
    pem.write_bytes(public_pem)
    raw = tmp_path / "b.pub"
    raw.write_bytes(bytes(32))
    assert signing.load_trusted_keys([pem, str(raw)]) == [public_pem, bytes(32)]
    assert signing.load_trusted_keys([]) == []
    missing = tmp_path / "nope.pub"
    with pytest.raises(ConfigError, match=f"trusted key file {missing} does not exist: copy"):
        signing.load_trusted_keys([pem, missing])
    junk = tmp_path / "junk.pub"
    junk.write_text("not a key")
    with pytest.raises(ConfigError, match=f"trusted key file {junk} is not an Ed25519 public key"):
        signing.load_trusted_keys([junk])
    with pytest.raises(ConfigError, match="does not exist"):
        signing.load_trusted_keys([tmp_path])  # a directory is not a key file
