"""Several endpoints, request keys and unknown outcomes through real services (issue 14, the client's part).

Real ``certsrv serve`` processes on SQLite homes (with worker processes and without); one is stopped, so its
socket refuses connections. What a standby node answers (NotWriter) needs the service side of issue 14, so a
small aiohttp server in this file plays that node: a real HTTP peer on a real Unix socket answering the exact
NotWriter JSON -- not a mock of our code. The same server plays a node whose connection breaks after the request
was sent, one that answers OutcomeUnknown, and a proxy in front of a real service that loses the first answer.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from pycertsrv.client import Client
from pycertsrv.client.endpoints import split_servers
from pycertsrv.errors import (
    E_INVALIDARG,
    ERROR_HOST_NODE_NOT_RESOURCE_OWNER,
    RPC_S_CALL_FAILED,
    RPC_S_SERVER_UNAVAILABLE,
    InvalidArgument,
    NotWriter,
    OutcomeUnknown,
    Unavailable,
    error_from_json,
)
from support import ONE_LINE, Service, certsrv, db_rows_readonly, live_service, make_csr, openssl_verify, short_home

pytestmark = pytest.mark.filterwarnings("ignore::aiohttp.web.NotAppKeyWarning")


class Node:
    """A real aiohttp server on a Unix socket, in its own thread: ``answer(body)`` decides each request's fate.

    :param answer: returns ("json", status, body) to answer, ("break",) to close the connection after reading the
        request, or ("proxy", upstream socket, break_answer) to forward it to a real service.
    """

    def __init__(self, path: Path, answer: Callable[[dict[str, Any]], tuple[Any, ...]]) -> None:
        self.path = path
        self.answer = answer
        self.seen: list[tuple[str, str, dict[str, Any]]] = []
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._runner: web.AppRunner | None = None

    @property
    def address(self) -> str:
        return f"unix:{self.path}"

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        body = json.loads(raw) if raw else {}
        self.seen.append((request.method, request.path_qs, body))
        fate = self.answer(body)
        if fate[0] == "json":
            return web.json_response(fate[2], status=fate[1])
        if fate[0] == "proxy":
            async with httpx.AsyncClient(transport=httpx.AsyncHTTPTransport(uds=fate[1]), base_url="http://x") as c:
                up = await c.request(request.method, request.path_qs, content=raw,
                                     headers={"Content-Type": "application/json"} if raw else None)
            if not fate[2]:
                return web.Response(body=up.content, status=up.status_code, content_type="application/json")
        assert request.transport is not None
        request.transport.abort()  # the request was read (and maybe done): the answer never leaves
        raise asyncio.CancelledError

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, handle_signals=False)
        self._loop.run_until_complete(self._runner.setup())
        self._loop.run_until_complete(web.UnixSite(self._runner, str(self.path)).start())
        self._ready.set()
        self._loop.run_forever()

    def __enter__(self) -> Node:
        self._thread.start()
        assert self._ready.wait(30)
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._runner is not None
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(30)


def not_writer(endpoints: list[str]) -> tuple[Any, ...]:
    """The exact answer of a standby node (HA-CONTRACT: 503, the error JSON plus ``writer``)."""
    err = NotWriter(function="POST /ca/requests", writer={"holder": "node-b:4242", "epoch": 7, "endpoints": endpoints})
    return ("json", 503, err.to_json())


@pytest.fixture(scope="module")
def writer() -> Iterator[Service]:
    """The node that takes writes: a real service with two worker processes."""
    svc = Service(_home("wr"), env={"CERTSRV_WORKERS": "2"}, log_level="warning").start()
    yield svc
    svc.ensure_stopped()


@pytest.fixture(scope="module")
def inprocess() -> Iterator[Service]:
    """A real service issuing in its own process (no workers)."""
    svc = Service(_home("ip"), env={"CERTSRV_WORKERS": "0"}, log_level="warning").start()
    yield svc
    svc.ensure_stopped()


@pytest.fixture(scope="module")
def stopped() -> Iterator[Service]:
    """A node that is down: started, then stopped (its socket file is left; connecting is refused)."""
    svc = live_service(short_home("dn"), "Down CA")
    svc.stop()
    yield svc
    svc.ensure_stopped()


def _home(prefix: str) -> Path:
    from support import make_home

    home = short_home(prefix)
    make_home(home, "Failover CA")
    return home


def _rows_with_key(svc: Service, key: str) -> list[dict[str, Any]]:
    rows = db_rows_readonly(svc.home.root, ["request", "attribute"])
    ids = [a["request_id"] for a in rows["attribute"] if a["name"] == "RequestKey" and a["value"] == key]
    return [r for r in rows["request"] if r["request_id"] in ids]


def _check_cert(svc: Service, answer: dict[str, Any], tmp: Path) -> None:
    der = x509.load_pem_x509_certificate(answer["certificate_pem"].encode()).public_bytes(Encoding.DER)
    with svc.client() as c:
        ca = tmp / "ca.pem"
        ca.write_text(c.ca_info()["certificate_pem"])
    openssl_verify(ca, der, tmp)


# ------------------------------------------------------------------------------------------- request keys

@pytest.mark.parametrize("which", ["writer", "inprocess"])
def test_a_retried_submit_returns_the_same_certificate(which: str, request: pytest.FixtureRequest,
                                                       tmp_path: Path) -> None:
    svc: Service = request.getfixturevalue(which)
    csr = make_csr(f"retry-{which}.example.com")
    with svc.client() as c:
        first = c.submit(csr)
        key = first["request_key"]
        assert len(key) == 32 and int(key, 16) >= 0  # made by the client: a uuid4 hex
        again = c.submit(csr, request_key=key)
    assert first["disposition_name"] == "issued"
    for field in ("request_id", "serial", "disposition", "certificate_pem"):
        assert again[field] == first[field], field
    rows = _rows_with_key(svc, key)  # re-read from the database file: one request
    assert [(r["request_id"], r["serial"]) for r in rows] == [(first["request_id"], first["serial"])]
    _check_cert(svc, first, tmp_path)


@pytest.mark.parametrize("which", ["writer", "inprocess"])
def test_racing_submits_with_one_key_make_one_certificate(which: str, request: pytest.FixtureRequest,
                                                          tmp_path: Path) -> None:
    svc: Service = request.getfixturevalue(which)
    csr = make_csr(f"race-{which}.example.com")
    key = f"race-{which}"
    answers: list[dict[str, Any]] = []
    start = threading.Barrier(8)

    def one() -> None:
        with svc.client() as c:
            start.wait()
            answers.append(c.submit(csr, request_key=key))

    threads = [threading.Thread(target=one) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(answers) == 8
    assert len({a["request_id"] for a in answers}) == 1 and len({a["serial"] for a in answers}) == 1
    rows = _rows_with_key(svc, key)
    assert len(rows) == 1 and rows[0]["serial"] == answers[0]["serial"]
    _check_cert(svc, answers[0], tmp_path)


def test_bad_request_keys_are_refused_in_one_line(writer: Service, tmp_path: Path) -> None:
    csr = tmp_path / "r.csr"
    csr.write_bytes(make_csr("bad-key.example.com"))
    before = len(db_rows_readonly(writer.home.root, ["request"])["request"])
    for bad in ("x" * 129, "new\nline", "caf\u00e9"):
        r = certsrv("submit", str(csr), "--server", writer.address, "--request-key", bad)
        assert r.returncode == 1 and ONE_LINE.match(r.stderr.strip()), r.stderr
        assert "request key" in r.stderr and "0x80070057 E_INVALIDARG" in r.stderr and "Traceback" not in r.stderr
        # The service refuses it the same way (a client that does not check).
        with httpx.Client(transport=httpx.HTTPTransport(uds=str(writer.socket)), base_url="http://x") as h:
            resp = h.post("/ca/requests", json={"csr": csr.read_text(), "request_key": bad})
        assert resp.status_code == 400
        err = error_from_json(resp.json())
        assert isinstance(err, InvalidArgument) and err.hresult == E_INVALIDARG and "request key" in str(err)
    with pytest.raises(InvalidArgument):
        Client(writer.address).submit(csr.read_bytes(), request_key="")
    assert len(db_rows_readonly(writer.home.root, ["request"])["request"]) == before
    r = certsrv("submit", str(csr), "--server", writer.address, "--request-key", "cli-key-1", "--json")
    again = certsrv("submit", str(csr), "--server", writer.address, "--request-key", "cli-key-1", "--json")
    assert r.returncode == 0 and again.returncode == 0, r.stderr + again.stderr
    assert json.loads(r.stdout)["request_id"] == json.loads(again.stdout)["request_id"]
    assert json.loads(r.stdout)["request_key"] == "cli-key-1"
    assert len(_rows_with_key(writer, "cli-key-1")) == 1


# ------------------------------------------------------------------------------------------- endpoints

def test_server_lists() -> None:
    assert split_servers("unix:/a.sock, unix:/b.sock") == ["unix:/a.sock", "unix:/b.sock"]
    assert split_servers("ca1:8443,ca2:8443,unix:/x") == ["ca1:8443", "ca2:8443", "unix:/x"]
    assert split_servers("ca1\\Example, Inc CA,ca2\\Example, Inc CA") == ["ca1\\Example, Inc CA",
                                                                         "ca2\\Example, Inc CA"]
    assert split_servers("ca1:8443,ca1:8443") == ["ca1:8443"]
    assert split_servers(None) == [None]
    for bad in ("a:1,,b:2", ",", "a:1,"):
        with pytest.raises(InvalidArgument) as ei:
            Client(bad)
        assert ei.value.hresult == E_INVALIDARG
    with Client("127.0.0.1:9443,unix:/run/x.sock") as c:
        assert [e.address for e in c.endpoints] == ["127.0.0.1:9443", "unix:/run/x.sock"]
        assert c.address == "127.0.0.1:9443" and c.writer is None


def test_a_refused_connection_moves_to_the_next_endpoint(stopped: Service, writer: Service) -> None:
    both = f"{stopped.address},{writer.address}"
    with Client(both) as c:
        assert c.status()["name"] == "Failover CA"  # a read: the first that answers
        assert c.address == writer.address
        info = c.submit(make_csr("next.example.com"))  # a write: refused by the first, taken by the second
        assert c.writer == writer.address
    assert len(_rows_with_key(writer, info["request_key"])) == 1
    with Client(f"{stopped.address},{writer.address}") as c:  # a write first, before any read
        assert c.submit(make_csr("next2.example.com"))["disposition_name"] == "issued"
    r = certsrv("submit", "-", "--server", both, "--json", stdin=make_csr("cli-next.example.com"))
    assert r.returncode == 0, r.stderr
    assert len(_rows_with_key(writer, json.loads(r.stdout)["request_key"])) == 1
    # Nothing answers anywhere: Unavailable once the failover time is spent, naming every endpoint tried.
    dead2 = f"unix:{stopped.socket.parent / 'none.sock'}"
    with Client(f"{stopped.address},{dead2}", failover_timeout=0.5) as c:
        with pytest.raises(Unavailable) as ei:
            c.revoke("1A")
        assert ei.value.hresult == RPC_S_SERVER_UNAVAILABLE
        assert "no writer answered within 0.5 s" in ei.value.message and dead2 in ei.value.message
        with pytest.raises(Unavailable):
            c.view()


def test_not_writer_is_followed_to_the_writer_it_names(writer: Service, tmp_path: Path) -> None:
    with Node(tmp_path / "standby.sock", lambda body: not_writer([writer.address])) as standby:
        with Client(standby.address) as c:
            first = c.submit(make_csr("follow.example.com"))
            assert c.writer == writer.address  # learned from the standby's answer
            c.submit(make_csr("follow2.example.com"))
            rid = c.submit(make_csr("follow3.example.com"))["request_id"]
            c.revoke(c.get_request(rid)["serial"], "superseded")
        assert [s[1] for s in standby.seen] == ["/ca/requests"]  # asked once; then the writer remembered
        assert _rows_with_key(writer, first["request_key"])[0]["request_id"] == first["request_id"]
        # The standby listed first, another standby after it: the writer the first one names is asked next,
        # before the other endpoints.
        with Node(tmp_path / "standby2.sock", lambda body: not_writer([writer.address])) as other:
            with Client(f"{standby.address},{other.address}") as c:
                assert c.submit(make_csr("follow4.example.com"))["disposition_name"] == "issued"
                assert c.writer == writer.address
            assert other.seen == []


def test_not_writer_with_no_live_writer_gives_up_after_the_failover_timeout(tmp_path: Path) -> None:
    named = [f"unix:{tmp_path / 'writer-gone.sock'}"]
    with Node(tmp_path / "standby.sock", lambda body: not_writer(named)) as standby:
        with Client(standby.address, failover_timeout=1.0) as c:
            with pytest.raises(NotWriter) as ei:
                c.submit(make_csr("nowriter.example.com"))
        assert len(standby.seen) >= 2  # kept cycling until the failover timeout
    e = ei.value
    assert e.hresult == ERROR_HOST_NODE_NOT_RESOURCE_OWNER == 0x80071397
    assert e.writer == {"holder": "node-b:4242", "epoch": 7, "endpoints": named}
    line = str(e)
    assert "\n" not in line and "0x80071397 ERROR_HOST_NODE_NOT_RESOURCE_OWNER: this node is a standby; the " \
        "writer is node-b:4242 (epoch 7, at " in line and "no writer answered within 1 s" in line


# ------------------------------------------------------------------------------------------- outcome unknown

def test_a_write_whose_connection_broke_after_sending_is_an_unknown_outcome(tmp_path: Path) -> None:
    with Node(tmp_path / "breaks.sock", lambda body: ("break",)) as node:
        with Client(node.address) as c:
            with pytest.raises(OutcomeUnknown) as ei:
                c.revoke("1A", "keyCompromise")
        assert len(node.seen) == 1  # never sent twice: a revoke is not known to be safe to repeat
        r = certsrv("revoke", "1B", "--server", node.address)
        assert len(node.seen) == 2
    e = ei.value
    assert e.hresult == RPC_S_CALL_FAILED == 0x800706BE
    assert "may or may not have been done" in e.message and "check with `certsrv view` before retrying" in e.message
    assert r.returncode == 1 and "Traceback" not in r.stderr
    line = r.stderr.strip()
    assert line.count("\n") == 0 and line.startswith("certsrv: POST /ca/certificates/1B/revoke: 0x800706BE "
                                                     "RPC_S_CALL_FAILED: it may or may not have been done"), line


@pytest.mark.parametrize("which", ["writer", "inprocess"])
def test_a_submit_whose_answer_was_lost_is_sent_again_with_its_key(which: str, request: pytest.FixtureRequest,
                                                                   tmp_path: Path) -> None:
    svc: Service = request.getfixturevalue(which)
    lost = {"n": 0}

    def fate(body: dict[str, Any]) -> tuple[Any, ...]:
        lost["n"] += 1
        return ("proxy", str(svc.socket), lost["n"] == 1)  # the first answer is lost, after the service wrote

    with Node(tmp_path / "proxy.sock", fate) as proxy:
        with Client(proxy.address) as c:
            answer = c.submit(make_csr(f"lost-{which}.example.com"))
    posts = [s for s in proxy.seen if s[0] == "POST"]
    assert len(posts) == 2 and posts[0][2]["request_key"] == posts[1][2]["request_key"] == answer["request_key"]
    rows = _rows_with_key(svc, answer["request_key"])
    assert [(r["request_id"], r["serial"]) for r in rows] == [(answer["request_id"], answer["serial"])]
    _check_cert(svc, answer, tmp_path)


def test_outcome_unknown_answered_by_a_node(writer: Service, tmp_path: Path) -> None:
    unknown = OutcomeUnknown(function="commit", message="the database connection was lost while committing; the "
                             "write may or may not have been made").to_json()
    with Node(tmp_path / "lost-db.sock", lambda body: ("json", 503, unknown)) as node:
        with Client(f"{node.address},{writer.address}") as c:
            with pytest.raises(OutcomeUnknown) as ei:
                c.revoke("1C")
            answer = c.submit(make_csr("resent.example.com"))  # a submit is sent again, with its key
        assert ei.value.message == unknown["message"]
        assert [s[1] for s in node.seen].count("/ca/certificates/1C/revoke") == 1
        assert [s[2].get("request_key") for s in node.seen if s[1] == "/ca/requests"] == [answer["request_key"]]
    assert len(_rows_with_key(writer, answer["request_key"])) == 1
