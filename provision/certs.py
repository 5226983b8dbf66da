"""A self-made certificate authority and the broker's TLS certificate (``cryptography``).

The CA signs one server certificate whose Subject Alternative Names list every host name and
IP address devices use to reach the broker; clients verify the broker against the CA file
and the name in their ``mqtts://`` URL. Keys are ECDSA P-256 (small, fast on a Raspberry Pi,
supported by Mosquitto's OpenSSL). Private keys are written with mode 0600.

Example::

    ca = make_ca("fedge demo CA")
    server = make_server_cert(ca, ["broker.lan", "localhost", "127.0.0.1"])
    write_pem(ca, "ca.crt", "ca.key"); write_pem(server, "broker.crt", "broker.key")
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fedge.protocol.errors import ConfigError

log = logging.getLogger(__name__)

CA_DAYS = 3650
SERVER_DAYS = 825  # the longest validity Apple platforms accept for a TLS server certificate
CLIENT_DAYS = 825
CRL_DAYS = 3650  # Mosquitto refuses every client once its CRL's next update has passed
# Certificates start a little in the past so a device whose clock lags slightly still accepts them.
_BACKDATE = dt.timedelta(hours=1)


@dataclass(frozen=True)
class KeyAndCert:
    """A private key and its certificate."""

    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate

    @property
    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    @property
    def key_pem(self) -> bytes:
        return self.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )


def make_ca(common_name: str = "fedge CA", *, days: int = CA_DAYS) -> KeyAndCert:
    """Return a new self-signed CA (may sign end-entity certificates only: path length 0)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return KeyAndCert(key, cert)


def subject_alt_names(hosts: Sequence[str]) -> list[x509.GeneralName]:
    """DNS names and IP addresses for the SAN extension; IP literals become IPAddress entries."""
    if not hosts:
        raise ConfigError("give at least one host name or IP address for the broker certificate")
    names: list[x509.GeneralName] = []
    for host in hosts:
        host = host.strip()
        if not host or any(ch in host for ch in " /:*") and not _is_ip(host):
            raise ConfigError(f"invalid broker host name {host!r}")
        names.append(
            x509.IPAddress(ipaddress.ip_address(host)) if _is_ip(host) else x509.DNSName(host)
        )
    return names


def make_server_cert(
    ca: KeyAndCert, hosts: Sequence[str], *, days: int = SERVER_DAYS
) -> KeyAndCert:
    """Return a TLS server certificate for ``hosts`` (SANs), signed by ``ca``."""
    sans = subject_alt_names(hosts)
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()),
            critical=False,
        )
        .sign(ca.key, hashes.SHA256())
    )
    return KeyAndCert(key, cert)


def make_client_cert(ca: KeyAndCert, device: str, *, days: int = CLIENT_DAYS) -> KeyAndCert:
    """Return a TLS client certificate for ``device`` (its common name = the device id, which
    Mosquitto's ``use_identity_as_username`` makes the MQTT user name), signed by ``ca``."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, device)]))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()),
            critical=False,
        )
        .sign(ca.key, hashes.SHA256())
    )
    return KeyAndCert(key, cert)


def make_crl(ca: KeyAndCert, revoked_serials: Sequence[int], *, days: int = CRL_DAYS) -> bytes:
    """A CRL (PEM) signed by ``ca`` listing ``revoked_serials`` (may be empty: Mosquitto's
    ``crlfile`` needs a CRL from the start)."""
    now = dt.datetime.now(dt.timezone.utc)
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca.cert.subject)
        .last_update(now - _BACKDATE)
        .next_update(now + dt.timedelta(days=days))
    )
    for serial in dict.fromkeys(revoked_serials):
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder()
            .serial_number(serial)
            .revocation_date(now - dt.timedelta(minutes=1))
            .build()
        )
    return builder.sign(ca.key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


def crl_serials(crl_pem: bytes) -> list[int]:
    """The serial numbers a PEM CRL revokes."""
    try:
        crl = x509.load_pem_x509_crl(crl_pem)
    except ValueError as exc:
        raise ConfigError(f"cannot read the CRL: {exc}") from exc
    return [entry.serial_number for entry in crl]


def write_pem(pair: KeyAndCert, cert_path: str | Path, key_path: str | Path) -> None:
    """Write the certificate (0644) and the private key (0600, never overwritten)."""
    key_path = Path(key_path)
    if key_path.exists():
        raise ConfigError(f"{key_path} already exists; refusing to overwrite a private key")
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(pair.key_pem)
    Path(cert_path).write_bytes(pair.cert_pem)


def load_cert(cert_path: str | Path) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(Path(cert_path).read_bytes())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read certificate {cert_path}: {exc}") from exc


def load_pair(cert_path: str | Path, key_path: str | Path) -> KeyAndCert:
    """Read a certificate and its EC private key from PEM files."""
    try:
        cert = x509.load_pem_x509_certificate(Path(cert_path).read_bytes())
        key = serialization.load_pem_private_key(Path(key_path).read_bytes(), password=None)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read {cert_path} / {key_path}: {exc}") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ConfigError(f"{key_path} is not an EC private key")
    return KeyAndCert(key, cert)


def cert_hosts(cert: x509.Certificate) -> list[str]:
    """The DNS names and IP addresses in a certificate's SAN extension."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [*san.get_values_for_type(x509.DNSName)] + [
        str(ip) for ip in san.get_values_for_type(x509.IPAddress)
    ]


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True
