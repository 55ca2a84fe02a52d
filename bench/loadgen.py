"""One load generator for every issuer the benches compare (issue 15): separate client processes, each
holding ONE keep-alive HTTP/1.1 connection (Unix socket, plain TCP or TLS with a client certificate),
sending prebuilt requests back to back and recording each one's latency.

The client does as little as a client can, so that it is never the bottleneck and costs every server
the same: the request bytes are built before the clock starts, a response is read by its status line
and ``Content-Length`` only (the body is checked for one marker, e.g. a PEM header), and no JSON or
X.509 is parsed while timing. Processes (not threads): the client's own CPU is spread over the cores
like any real population of clients, and no GIL is shared with another client.

``run_load(target, bodies, clients)`` returns the rate, latency percentiles, the clients' CPU per request
and any failures.
"""

from __future__ import annotations

import multiprocessing as mp
import socket
import ssl
import time
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Target:
    """Where and how to send one kind of request.

    :param unix: a Unix socket path (else ``host``/``port``).
    :param host: TCP host.
    :param port: TCP port.
    :param path: the HTTP path requests are POSTed to.
    :param tls: client TLS: ``(cafile, certfile, keyfile)``; None: no TLS.
    :param ok_marker: bytes every successful answer's body contains.
    """

    unix: str | None = None
    host: str = "127.0.0.1"
    port: int = 0
    path: str = "/"
    tls: tuple[str, str, str] | None = None
    ok_marker: bytes = b"BEGIN CERTIFICATE"
    headers: tuple[tuple[str, str], ...] = field(default_factory=tuple)


def _connect(t: Target) -> socket.socket:
    if t.unix is not None:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(t.unix)
        return s
    s = socket.create_connection((t.host, t.port))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if t.tls is None:
        return s
    cafile, cert, key = t.tls
    ctx = ssl.create_default_context(cafile=cafile)
    ctx.load_cert_chain(cert, key)
    return ctx.wrap_socket(s, server_hostname=t.host)


def _request(t: Target, body: bytes) -> bytes:
    host = "localhost" if t.unix is not None else f"{t.host}:{t.port}"
    head = f"POST {t.path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in t.headers)
    head += f"Content-Length: {len(body)}\r\n\r\n"
    return head.encode() + body


class _Reader:
    """Reads HTTP/1.1 responses with Content-Length bodies off one connection."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""

    def response(self) -> tuple[int, bytes]:
        while b"\r\n\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("server closed the connection")
            self.buf += chunk
        head, _, rest = self.buf.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        status = int(lines[0].split(b" ", 2)[1])
        length = 0
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        while len(rest) < length:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("server closed the connection mid-body")
            rest += chunk
        body, self.buf = rest[:length], rest[length:]
        return status, body


def _client(t: Target, payloads: list[bytes], go: Any, out: Any) -> None:
    """One client process: connect, wait for the start signal, send every payload, report."""
    try:
        sock = _connect(t)
        reader = _Reader(sock)
        reqs = [_request(t, b) for b in payloads]
    except Exception as e:  # reported, never a hang
        out.send({"error": f"connect: {e}"})
        return
    out.send({"ready": True})
    go.wait()
    lat: list[float] = []
    failures: list[str] = []
    ok = 0
    c0 = time.process_time()
    t0 = time.perf_counter()
    for r in reqs:
        s = time.perf_counter()
        try:
            sock.sendall(r)
            status, body = reader.response()
        except (OSError, ValueError) as e:
            failures.append(f"{type(e).__name__}: {e}")
            break
        lat.append(time.perf_counter() - s)
        if status == 200 and t.ok_marker in body:
            ok += 1
        else:
            failures.append(f"HTTP {status}: {body[:200]!r}")
    end = time.perf_counter()
    out.send({"lat": lat, "ok": ok, "failures": failures[:5], "failed": len(failures), "t0": t0, "end": end,
              "cpu": time.process_time() - c0})
    sock.close()


def _pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, round(p / 100 * (len(s) - 1)))] if s else float("nan")


def run_load(t: Target, bodies: list[bytes], clients: int, timeout: float = 600.0) -> dict[str, Any]:
    """Send every body once, spread over ``clients`` processes; all start together.

    Returns ``rate`` (answers per second, first send to last answer), ``p50_ms``, ``p99_ms``,
    ``client_cpu_us`` (the load generator's CPU per request), ``failed`` and the first failures.
    """
    ctx = mp.get_context("fork")
    go = ctx.Event()
    pipes, procs = [], []
    for k in range(clients):
        parent, child = ctx.Pipe(duplex=False)
        p = ctx.Process(target=_client, args=(t, bodies[k::clients], go, child), daemon=True)
        p.start()
        child.close()
        pipes.append(parent)
        procs.append(p)
    try:
        for conn in pipes:
            if not conn.poll(timeout):
                raise RuntimeError("a load client did not connect")
            msg = conn.recv()
            if "error" in msg:
                raise RuntimeError(msg["error"])
        go.set()
        results = []
        for conn in pipes:
            if not conn.poll(timeout):
                raise RuntimeError("a load client did not finish")
            results.append(conn.recv())
    finally:
        for p in procs:
            p.join(5)
            if p.is_alive():
                p.kill()
    lat = [x for r in results for x in r["lat"]]
    start = min(r["t0"] for r in results)
    end = max(r["end"] for r in results)
    done = sum(r["ok"] for r in results)
    failures = [f for r in results for f in r["failures"]]
    return {"clients": clients, "n": len(bodies), "ok": done, "failed": sum(r["failed"] for r in results),
            "rate": round(done / (end - start), 1) if end > start else 0.0,
            "p50_ms": round(_pct(lat, 50) * 1e3, 2), "p99_ms": round(_pct(lat, 99) * 1e3, 2),
            "client_cpu_us": round(sum(r["cpu"] for r in results) / max(1, len(lat)) * 1e6, 1),
            "failures": failures[:3]}
