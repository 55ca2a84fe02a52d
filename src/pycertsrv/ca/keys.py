"""CA keys: generation by key type, PKCS#8 PEM storage (0600, encrypted with a passphrase),
passphrase sources, and the acceptance rules for keys in requests."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Union

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes

from ..errors import (
    CERTSRV_E_KEY_LENGTH,
    E_INVALIDARG,
    ERROR_FILE_NOT_FOUND,
    ERROR_INVALID_DATA,
    ERROR_INVALID_PASSWORD,
    NTE_BAD_ALGID,
    AccessDenied,
    CorruptData,
    InvalidArgument,
    NotFound,
)
from ..fsutil import atomic_write

KEY_TYPES = ("ec-p256", "ec-p384", "rsa-2048", "rsa-3072", "rsa-4096")
DEFAULT_PASSPHRASE_ENV = "CERTSRV_KEY_PASSPHRASE"
CAPrivateKey = Union[ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey]  # noqa: UP007 (runtime alias)

# Request keys we certify. RSA below 2048 bits is refused (NIST SP 800-131A); DSA is refused.
MIN_RSA_BITS = 2048
MAX_RSA_BITS = 16384
ALLOWED_CURVES = {"secp256r1", "secp384r1", "secp521r1"}


def generate_key(key_type: str) -> CAPrivateKey:
    """A new private key of ``key_type`` (``ec-p256`` ... ``rsa-4096``)."""
    if key_type == "ec-p256":
        return ec.generate_private_key(ec.SECP256R1())
    if key_type == "ec-p384":
        return ec.generate_private_key(ec.SECP384R1())
    if key_type in ("rsa-2048", "rsa-3072", "rsa-4096"):
        return rsa.generate_private_key(public_exponent=65537, key_size=int(key_type[4:]))
    raise InvalidArgument(E_INVALIDARG, "key type",
                          f"unsupported key type {key_type!r} (one of {', '.join(KEY_TYPES)})")


def key_type_of(key: CAPrivateKey) -> str:
    """The key type name of a CA key, or InvalidArgument when it is not one we support."""
    if isinstance(key, ec.EllipticCurvePrivateKey):
        name = {"secp256r1": "ec-p256", "secp384r1": "ec-p384"}.get(key.curve.name)
        if name:
            return name
    elif isinstance(key, rsa.RSAPrivateKey) and key.key_size in (2048, 3072, 4096):
        return f"rsa-{key.key_size}"
    raise InvalidArgument(E_INVALIDARG, "key type", f"unsupported CA key {type(key).__name__}")


def signing_hash(key: CAPrivateKey) -> hashes.SHA256 | hashes.SHA384:
    """The digest the CA signs with: SHA-384 for P-384 (RFC 5480 §4 matching strength), else SHA-256."""
    if isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.key_size >= 384:
        return hashes.SHA384()
    return hashes.SHA256()


def save_private_key(path: Path, key: CAPrivateKey, passphrase: bytes | None) -> None:
    """Write ``key`` as PKCS#8 PEM, mode 0600, encrypted when ``passphrase`` is given.

    :param path: destination (written atomically).
    :param key: the CA private key.
    :param passphrase: encrypt with this passphrase (None: unencrypted).
    """
    enc: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(passphrase) if passphrase else serialization.NoEncryption()
    )
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, enc)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    atomic_write(path, pem, mode=0o600)


def load_private_key(path: Path, passphrase: bytes | None) -> CAPrivateKey:
    """Read the CA's PKCS#8 PEM key, decrypting with ``passphrase`` when it is encrypted."""
    try:
        pem = path.read_bytes()
    except FileNotFoundError:
        raise NotFound(ERROR_FILE_NOT_FOUND, str(path), "CA private key file is missing") from None
    except PermissionError:
        raise AccessDenied(None, str(path), "cannot read the CA private key (permission denied)") from None
    encrypted = b"ENCRYPTED PRIVATE KEY" in pem
    if encrypted and not passphrase:
        raise InvalidArgument(ERROR_INVALID_PASSWORD, str(path),
                              f"CA key is encrypted: give --passphrase-file or set {DEFAULT_PASSPHRASE_ENV}")
    try:
        key = serialization.load_pem_private_key(pem, passphrase if encrypted else None)
    except (ValueError, TypeError) as e:
        if encrypted:
            raise InvalidArgument(ERROR_INVALID_PASSWORD, str(path), "wrong passphrase for the CA key") from None
        raise CorruptData(ERROR_INVALID_DATA, str(path), f"CA key is not a readable PEM key: {e}") from None
    except UnsupportedAlgorithm as e:
        raise CorruptData(ERROR_INVALID_DATA, str(path), f"CA key uses an unsupported algorithm: {e}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise CorruptData(ERROR_INVALID_DATA, str(path), f"CA key type {type(key).__name__} is not supported")
    return key


def resolve_passphrase(passphrase_file: str | Path | None = None, passphrase_env: str | None = None) -> bytes | None:
    """The key passphrase from a file (first line) or an environment variable.

    :param passphrase_file: read the passphrase from this file (trailing newline dropped).
    :param passphrase_env: name of the environment variable holding it; when neither is given,
        ``CERTSRV_KEY_PASSPHRASE`` is used if set.
    """
    if passphrase_file is not None:
        try:
            raw = Path(passphrase_file).read_bytes()
        except OSError as e:
            raise NotFound(ERROR_FILE_NOT_FOUND, str(passphrase_file), f"cannot read passphrase file: {e.strerror}") \
                from None
        value = raw.splitlines()[0] if raw.strip() else b""
        if not value:
            raise InvalidArgument(ERROR_INVALID_PASSWORD, str(passphrase_file), "passphrase file is empty")
        return value
    if passphrase_env is not None:
        env = os.environ.get(passphrase_env)
        if not env:
            raise InvalidArgument(ERROR_INVALID_PASSWORD, passphrase_env, "environment variable is not set or empty")
        return env.encode()
    env = os.environ.get(DEFAULT_PASSPHRASE_ENV)
    return env.encode() if env else None


def configured_passphrase(root: Path, passphrase_file: str | None, passphrase_env: str | None) -> bytes | None:
    """The key passphrase from a home's configured source (``[ca] key_passphrase_file``, relative to the home, or
    ``key_passphrase_env``): :func:`resolve_passphrase` with the file resolved against ``root``.

    :param root: the CA home's root.
    :param passphrase_file: the configured file (relative: under ``root``).
    :param passphrase_env: the configured environment variable.
    """
    if passphrase_file is not None and not Path(passphrase_file).is_absolute():
        passphrase_file = str(root / passphrase_file)
    return resolve_passphrase(passphrase_file, passphrase_env)


def check_request_key(key: CertificatePublicKeyTypes, subject: str) -> None:
    """Refuse request keys we will not certify (weak RSA, DSA, unknown curves).

    :param key: the requester's public key.
    :param subject: names the request in the error.
    """
    if isinstance(key, rsa.RSAPublicKey):
        if not MIN_RSA_BITS <= key.key_size <= MAX_RSA_BITS:
            raise InvalidArgument(CERTSRV_E_KEY_LENGTH, subject,
                                  f"RSA key of {key.key_size} bits is not allowed (minimum {MIN_RSA_BITS})")
        return
    if isinstance(key, ec.EllipticCurvePublicKey):
        if key.curve.name not in ALLOWED_CURVES:
            raise InvalidArgument(NTE_BAD_ALGID, subject, f"elliptic curve {key.curve.name} is not supported")
        return
    if isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
        return
    if isinstance(key, dsa.DSAPublicKey):
        raise InvalidArgument(NTE_BAD_ALGID, subject, "DSA keys are not supported")
    raise InvalidArgument(NTE_BAD_ALGID, subject, f"{type(key).__name__} keys are not supported")


def same_public_key(a: CertificatePublicKeyTypes, b: CertificatePublicKeyTypes) -> bool:
    """Whether two public keys are the same (compared as SubjectPublicKeyInfo DER)."""
    fmt = serialization.PublicFormat.SubjectPublicKeyInfo
    return a.public_bytes(serialization.Encoding.DER, fmt) == b.public_bytes(serialization.Encoding.DER, fmt)
