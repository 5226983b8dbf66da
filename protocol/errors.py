"""Exceptions shared by every part of fedge.

Each carries a message a person can act on; CLIs print it as one ``Error: ...`` line.
"""


class FedgeError(Exception):
    """Base class of every error fedge raises on purpose."""


class ConfigError(FedgeError):
    """A configuration file or option is missing, malformed or inconsistent."""


class BundleError(FedgeError):
    """A training bundle is missing a file, fails its hashes or signature, or is malformed."""


class SignatureError(BundleError):
    """A signature does not verify against any trusted public key."""


class CodecError(FedgeError):
    """Tensor bytes could not be encoded or decoded (malformed safetensors, bad dtype)."""


class MessageError(FedgeError):
    """A wire message is malformed, too large, or fails validation."""


class TransferError(FedgeError):
    """A chunked transfer failed: bad chunk, hash mismatch, or size over the limit."""
