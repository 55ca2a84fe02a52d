"""A worker process of the service (issue 15): prepares new requests with the CA's key, nothing else.

``python -m pycertsrv.ca.worker FD``: reads frames from the inherited socketpair ``FD`` -- the CA's material
once (configuration, key, certificate), then requests -- and answers each with a
:class:`~pycertsrv.ca.enroll.PreparedRequest` or the refusal. It holds no store and no home lock and
writes nothing, so killing it loses nothing but CPU (:mod:`pycertsrv.service.workers` is the other end).
It imports no HTTP stack. Frames: 4-byte big-endian length, then a pickle; both ends are this program and
the socketpair is inherited, so nobody else can write to it.
"""

from __future__ import annotations

import os
import pickle
import signal
import socket
import struct
import sys
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from ..config import Config
from ..errors import CertSrvError
from .enroll import prepare_submission
from .issuance import Issuer
from .templates import Template, templates_of

FRAME = struct.Struct(">I")


def send(sock: socket.socket, obj: Any) -> None:
    """One frame."""
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    sock.sendall(FRAME.pack(len(data)) + data)


class _Frames:
    """The frames arriving on the socketpair, read in large chunks: one ``recv`` brings every frame the service
    has written so far (not two system calls per frame, for its header and its body)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = bytearray()

    def next(self) -> Any:
        """The next message, or None once the service closed its end."""
        buf = self.buf
        while True:
            if len(buf) >= FRAME.size:
                end = FRAME.size + FRAME.unpack_from(buf)[0]
                if len(buf) >= end:
                    with memoryview(buf) as view:
                        msg = pickle.loads(view[FRAME.size:end])
                    del buf[:end]
                    return msg
            chunk = self.sock.recv(1 << 16)
            if not chunk:
                return None
            buf += chunk


@dataclass
class _Material:
    config: Config
    templates: dict[str, Template]
    issuer: Issuer | None
    cert: x509.Certificate | None
    request_path: str


def _material(msg: tuple[Any, ...]) -> _Material:
    _, cfg, key_der, cert_der, request_path = msg
    key: Any = serialization.load_der_private_key(key_der, None)
    cert = x509.load_der_x509_certificate(cert_der) if cert_der is not None else None
    issuer = Issuer(key, cert, cfg.policy) if cert is not None else None
    return _Material(cfg, templates_of(cfg), issuer, cert, request_path)


def worker_main(fd: int) -> int:
    """Prepare requests read from the socketpair ``fd`` until it is closed (the service stopped or died)."""
    # Ctrl-C in a terminal signals the whole group: the service stops its workers itself, in order.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sock = socket.socket(fileno=fd)
    frames = _Frames(sock)
    mat: _Material | None = None
    while True:
        msg = frames.next()
        if msg is None:
            return 0
        if msg[0] == "material":
            mat = _material(msg)
            send(sock, ("ready", 0, os.getpid()))  # seq 0: no request's
            continue
        _, seq, csr, requester, template, attributes, roles = msg
        try:
            if mat is None:
                raise RuntimeError("no material received before a request")
            out: tuple[Any, ...] = ("ok", seq, prepare_submission(
                mat.config, mat.templates, mat.issuer, mat.cert, csr, requester=requester, template=template,
                attributes=attributes, roles=roles, request_path=mat.request_path))
        except CertSrvError as e:
            out = ("err", seq, e)
        except Exception as e:  # a bug: the service logs it and answers E_UNEXPECTED; this worker goes on
            out = ("bug", seq, f"{type(e).__name__}: {e}")
        send(sock, out)


if __name__ == "__main__":
    sys.exit(worker_main(int(sys.argv[1])))
