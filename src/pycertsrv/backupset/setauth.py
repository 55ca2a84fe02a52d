"""The authenticator of a backup set: an HMAC-SHA256 over its manifest, keyed from the set's password.

The manifest (``DataBase/certbkxp.dat``) lists the size and SHA-256 of every file of the set, its
kind, generations, snapshot LSN, database identity, its own random ``set_id`` and, for an
incremental, the set it continues (``base``). Authenticating the manifest therefore
authenticates the whole set: a forger who can write the backup storage but does not know the
password cannot change a row of the database, swap a file, relabel generations, or splice an
incremental from another chain without ``verify-backup`` and ``restore`` noticing (issue 9,
finding 4; threat model: ``docs/backup-threat-model.md``).

Construction (one per set):

- ``master = scrypt(password, salt, n, r, p)`` with a fresh 16-byte ``salt`` per set (RFC 7914;
  n=2^15, r=8, p=1: ~32 MiB and ~0.1 s per set, which slows password guessing against a stolen set);
- two keys are derived from ``master`` with HMAC-SHA256 and distinct labels, so the MAC key is
  never the PKCS#12's password-derived key (the p12 runs its own PBKDF2 on the raw password) and
  the password check value never equals the MAC key;
- ``check = HMAC(check_key, salt)``: tells a wrong password ("ERROR_INVALID_PASSWORD") from an
  altered set ("NTE_BAD_SIGNATURE"). It gives a guesser nothing the MAC does not already give;
- ``mac = HMAC(mac_key, canonical(manifest with auth minus mac))``: canonical JSON (sorted keys,
  no spaces, ASCII) of the very document the parser reads, so the bytes authenticated are the
  values used; the KDF parameters, salt and check are under the MAC too.

The authenticator lives inside the manifest (``"auth"``), not in a separate file: the manifest is
written atomically, so a set never has a manifest and an authenticator that disagree, and there is
no second file to forget when a set is copied. MACs are compared with ``hmac.compare_digest``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from ..errors import ERROR_INVALID_PASSWORD, NTE_BAD_SIGNATURE, CertSrvError, CorruptData, InvalidArgument

ALG = "hmac-sha256"
KDF = "scrypt"
SCRYPT_N = 1 << 15
SCRYPT_R = 8
SCRYPT_P = 1
SALT_BYTES = 16
# Bounds on what a manifest may ask for: a forged manifest must not make verify-backup spend gigabytes
# (n too high) and a set written by us never has fewer than 2^14 rounds.
N_MIN, N_MAX = 1 << 14, 1 << 20
MAC_LABEL = b"pycertsrv backup-set manifest MAC v1"
CHECK_LABEL = b"pycertsrv backup-set password check v1"


class BadAuthenticator(CorruptData):
    """The set's authenticator does not match (altered set) or is missing/malformed."""


class WrongPassword(InvalidArgument):
    """The password does not open the set (its password check value differs)."""


def canonical(doc: Any) -> bytes:
    """Canonical JSON bytes: sorted keys, no whitespace, ASCII only, no NaN."""
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode()


@dataclass(frozen=True)
class _Keys:
    mac: bytes
    check: bytes


def _derive(password: bytes, salt: bytes, n: int, r: int, p: int) -> _Keys:
    master = Scrypt(salt=salt, length=32, n=n, r=r, p=p).derive(password)
    return _Keys(hmac.new(master, MAC_LABEL, hashlib.sha256).digest(),
                 hmac.new(master, CHECK_LABEL, hashlib.sha256).digest())


def _mac_input(doc: dict[str, Any], auth: dict[str, Any]) -> bytes:
    body = {k: v for k, v in doc.items() if k != "auth"}
    body["auth"] = {k: v for k, v in auth.items() if k != "mac"}
    return b"pycertsrv-backup-manifest\n" + canonical(body)


@dataclass(frozen=True)
class SealingKey:
    """The keys for one new set (fresh salt), derived once: the writer derives them before its backup
    session opens, so the ~0.1-0.3 s of scrypt does not lengthen the session."""

    salt: bytes
    n: int
    keys: _Keys

    @classmethod
    def new(cls, password: bytes, *, n: int = SCRYPT_N) -> SealingKey:
        """Keys for a new set.

        :param password: the set's password (the operator's secret).
        :param n: scrypt cost (a power of two within the accepted bounds).
        """
        if not password:
            raise InvalidArgument(ERROR_INVALID_PASSWORD, "backup", "a backup set needs a password (--password-file)")
        salt = secrets.token_bytes(SALT_BYTES)
        return cls(salt, n, _derive(password, salt, n, SCRYPT_R, SCRYPT_P))


def seal(doc: dict[str, Any], password: bytes | SealingKey, *, n: int = SCRYPT_N) -> dict[str, Any]:
    """The manifest document with a fresh ``auth`` block (random salt) added.

    :param doc: the manifest document (any ``auth`` in it is replaced).
    :param password: the set's password (the operator's secret), or keys derived from it for this set.
    :param n: scrypt cost (a power of two within the accepted bounds) when a password is given.
    """
    sk = password if isinstance(password, SealingKey) else SealingKey.new(password, n=n)
    salt, keys = sk.salt, sk.keys
    auth: dict[str, Any] = {"alg": ALG, "kdf": KDF, "n": sk.n, "r": SCRYPT_R, "p": SCRYPT_P, "salt": salt.hex(),
                            "check": hmac.new(keys.check, salt, hashlib.sha256).hexdigest()}
    auth["mac"] = hmac.new(keys.mac, _mac_input(doc, auth), hashlib.sha256).hexdigest()
    out = {k: v for k, v in doc.items() if k != "auth"}
    out["auth"] = auth
    return out


def _hex(auth: dict[str, Any], name: str, subject: str, size: int | None = None) -> bytes:
    v = auth.get(name)
    try:
        raw = bytes.fromhex(v) if isinstance(v, str) else None
    except ValueError:
        raw = None
    if raw is None or (size is not None and len(raw) != size) or not raw:
        raise BadAuthenticator(NTE_BAD_SIGNATURE, subject, f"the authenticator's {name} is malformed")
    return raw


def authenticate(doc: dict[str, Any], password: bytes | None, subject: str) -> str:
    """Check the manifest document's authenticator; returns its MAC (hex) or raises.

    :param doc: the manifest document as read (with ``auth``).
    :param password: the set's password.
    :param subject: what errors name (the set directory).
    :raises BadAuthenticator: NTE_BAD_SIGNATURE when it is missing, malformed or does not match.
    :raises WrongPassword: ERROR_INVALID_PASSWORD when no password is given or the password is not the set's.
    """
    auth = doc.get("auth")
    if auth is None:
        raise BadAuthenticator(NTE_BAD_SIGNATURE, subject,
                               "the set carries no authenticator (written before authenticated backup sets); "
                               "take a new backup, or give --allow-unauthenticated if you trust this storage")
    if not isinstance(auth, dict) or auth.get("alg") != ALG or auth.get("kdf") != KDF:
        raise BadAuthenticator(NTE_BAD_SIGNATURE, subject, "the authenticator is not hmac-sha256 over scrypt")
    n, r, p = auth.get("n"), auth.get("r"), auth.get("p")
    if not (isinstance(n, int) and N_MIN <= n <= N_MAX and n & (n - 1) == 0 and r == SCRYPT_R and p == SCRYPT_P):
        raise BadAuthenticator(NTE_BAD_SIGNATURE, subject, f"the authenticator's scrypt parameters n={n} r={r} p={p} "
                               "are outside what pycertsrv writes")
    salt = _hex(auth, "salt", subject)
    if not 16 <= len(salt) <= 64:
        raise BadAuthenticator(NTE_BAD_SIGNATURE, subject, "the authenticator's salt is malformed")
    check = _hex(auth, "check", subject, 32)
    mac = _hex(auth, "mac", subject, 32)
    if not password:
        raise WrongPassword(ERROR_INVALID_PASSWORD, subject,
                            "the set's password is needed to check its authenticity: give --password-file")
    assert isinstance(n, int) and isinstance(r, int) and isinstance(p, int)
    keys = _derive(password, salt, n, r, p)
    if not hmac.compare_digest(hmac.new(keys.check, salt, hashlib.sha256).digest(), check):
        raise WrongPassword(ERROR_INVALID_PASSWORD, subject,
                            "the password does not open this set (a wrong password, or the set's authenticator "
                            "was altered); give the password the set was written with")
    want = hmac.new(keys.mac, _mac_input(doc, auth), hashlib.sha256).digest()
    if not hmac.compare_digest(want, mac):
        raise BadAuthenticator(NTE_BAD_SIGNATURE, subject,
                               "the manifest's authenticator does not match: the set was altered after it was "
                               "written; do not restore it, use another backup")
    return mac.hex()


def is_auth_error(e: CertSrvError) -> bool:
    """Whether ``e`` is an authentication failure (wrong password or bad authenticator)."""
    return isinstance(e, BadAuthenticator | WrongPassword)


__all__ = ["BadAuthenticator", "SealingKey", "WrongPassword", "authenticate", "canonical", "is_auth_error", "seal"]
