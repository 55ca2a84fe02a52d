"""The running daemon: open the home (lock + crash recovery), listen, serve, stop cleanly.

``serve(home)`` opens the Authority (which takes the home's lock and runs the store's soft recovery,
logged here), starts ``workers`` worker processes that prepare new requests (issue 15, see
:mod:`pycertsrv.service.workers`; this process stays the one writer of the store), listens on the
home's Unix socket (owner only, or ``service.socket_group`` too) and, when ``service.tcp_port`` is set,
on TLS over TCP requiring a client certificate chained to ``service.client_ca``. SIGTERM, SIGINT or
ServerControl(CSCONTROL_SHUTDOWN) stop it: listeners close, in-flight requests finish, the workers
end, the Authority is closed (checkpoint written), the socket removed, so the next start has nothing
to replay (spec §4.1: "clean ESE shutdown so no replay is needed next time").
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import ssl
import stat
from asyncio import sslproto
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from aiohttp import web

from ..archive.shipper import shipper_for
from ..config import Config, parse_listen
from ..errors import (
    E_ACCESSDENIED,
    E_INVALIDARG,
    ERROR_FILE_EXISTS,
    ERROR_SHARING_VIOLATION,
    AccessDenied,
    CertSrvError,
    Conflict,
    InvalidArgument,
)
from ..home import Home, resolve_group
from . import sdnotify
from .app import ServiceState, create_app
from .backup_watch import watch_sessions
from .metrics import metrics_app
from .role import NodeRole
from .workers import BatchCommitter, WorkerPool, default_workers

log = logging.getLogger("pycertsrv.service")
UNIX_PATH_MAX = 107
WORKER_THREADS = 32  # sun_path is 108 bytes including the NUL


def socket_path(home: Home, cfg: Config) -> Path:
    """The Unix socket the service of ``home`` listens on (``service.socket``, relative to the home)."""
    p = Path(cfg.service.socket)
    return p if p.is_absolute() else home.root / p


def _home_path(home: Home, value: str) -> Path:
    p = Path(value)
    return p if p.is_absolute() else home.root / p


def server_ssl_context(home: Home, cfg: Config) -> ssl.SSLContext:
    """TLS context: our certificate and key, client certificates REQUIRED and verified against client_ca."""
    s = cfg.service
    missing = [k for k in ("tls_cert", "tls_key", "client_ca") if getattr(s, k) is None]
    if missing:
        raise InvalidArgument(E_INVALIDARG, "service", f"tcp_port is set but {', '.join(missing)} is not; "
                              "the TCP listener needs TLS with client certificates")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(_home_path(home, s.tls_cert or ""), _home_path(home, s.tls_key or ""))
        ctx.load_verify_locations(cafile=str(_home_path(home, s.client_ca or "")))
    except (OSError, ssl.SSLError) as e:
        raise InvalidArgument(E_INVALIDARG, "service", f"cannot load TLS files: {e}") from None
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def _send_tls_alerts() -> None:
    """Make asyncio send the TLS alert when a client's certificate is refused.

    CPython's ``asyncio.sslproto`` (3.11-3.13) closes the transport on a failed server handshake without
    flushing OpenSSL's outgoing buffer, so the client sees a bare EOF instead of ``unknown ca`` /
    ``certificate required`` and cannot tell "refused" from "crashed". Flush before the close.
    """

    cls: Any = sslproto.SSLProtocol
    if getattr(cls, "_pycertsrv_alerts", False):
        return
    original = cls._on_handshake_complete

    def on_handshake_complete(self: Any, handshake_exc: BaseException | None) -> None:
        if handshake_exc is not None:
            with contextlib.suppress(Exception):
                self._process_outgoing()
        original(self, handshake_exc)

    cls._on_handshake_complete = on_handshake_complete
    cls._pycertsrv_alerts = True


class TLSSite(web.TCPSite):
    """aiohttp's TCP site with TLS done by asyncio's own :class:`asyncio.sslproto.SSLProtocol` over the loop's
    plain TCP transport, whatever the loop.

    uvloop (:func:`loop_factory`) has its own TLS layer, compiled, which has the same flaw
    :func:`_send_tls_alerts` fixes and cannot be patched: a refused client certificate would reach the client as
    a bare EOF. So the loop only carries bytes, and the TLS (with the alerts) is the same code under every loop.
    """

    async def start(self) -> None:
        await web.BaseSite.start(self)
        loop = asyncio.get_running_loop()
        server, ctx = self._runner.server, self._ssl_context
        assert server is not None and ctx is not None
        _send_tls_alerts()

        def tls_protocol() -> asyncio.BaseProtocol:
            # No waiter: nobody awaits the handshake (a failure is the client's, logged at debug by sslproto).
            return sslproto.SSLProtocol(loop, server(), ctx, None, server_side=True)  # type: ignore[arg-type]

        self._server = await loop.create_server(tls_protocol, self._host, self._port, backlog=self._backlog,
                                                reuse_address=self._reuse_address, reuse_port=self._reuse_port)
        self._bound_port = self._server.sockets[0].getsockname()[1] if self._server.sockets else self._port


class _BadClientHTTP(logging.Filter):
    """aiohttp logs a client's malformed HTTP (bad header bytes ...) as an ERROR with a traceback; it is the
    client's fault and aiohttp already answered 400: keep one warning line."""

    def filter(self, record: logging.LogRecord) -> bool:
        from aiohttp.http_exceptions import HttpProcessingError

        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError):
            record.msg, record.args, record.exc_info, record.exc_text = (
                "malformed HTTP from a client (answered 400): %s", (str(exc).splitlines()[0],), None, None)
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


def socket_access(home: Home, cfg: Config, sock: Path) -> None:
    """Who may connect (issue 9, finding 7): the owner only (0600), or ``service.socket_group`` too (0660).

    A group member must also reach the socket: when it lies in the home, the home (and any directory
    between) becomes 0710 with that group, which lets members traverse to the socket but list or read
    nothing (every file in the home is 0600). ``service.socket_mode``, when set, overrides the mode.
    """
    s = cfg.service
    gid = resolve_group(s.socket_group) if s.socket_group is not None else None
    mode = s.socket_mode if s.socket_mode is not None else (0o660 if gid is not None else 0o600)
    if gid is not None:
        where = "the socket"
        try:
            os.chown(sock, -1, gid)
            if sock.is_relative_to(home.root):
                d = sock.parent
                while True:
                    where = str(d)
                    os.chown(d, -1, gid)
                    os.chmod(d, 0o710)
                    if d == home.root:
                        break
                    d = d.parent
        except PermissionError:
            raise AccessDenied(E_ACCESSDENIED, "service.socket_group",
                               f"cannot give {where} to group {s.socket_group}: the service's user is not a member; "
                               "add it to the group (usermod -aG) or change socket_group") from None
    os.chmod(sock, mode)


def _clear_stale_socket(path: Path) -> None:
    try:
        st = path.lstat()
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise Conflict(ERROR_FILE_EXISTS, str(path), "exists and is not a socket; fix service.socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
    except OSError:
        path.unlink(missing_ok=True)  # nobody listens: left by a killed service
        return
    finally:
        probe.close()
    raise Conflict(ERROR_SHARING_VIOLATION, str(path), "another service is listening on this socket")


async def _crl_if_due(app: web.Application, state: ServiceState) -> None:
    """Publish a CRL when ``Authority.crl_due()`` says so (none yet, crl.period_hours passed, files missing)."""
    a = app["authority"]
    node = app.get("node")
    if node is not None and not node.is_writer:
        return  # issue 14: the writer publishes; a standby serves the CRL it wrote
    try:
        if state.state == "running" and await asyncio.to_thread(a.crl_due):
            crl = await asyncio.to_thread(a.publish_crl)
            state.crl_done()
            log.info("published CRL %s (due)", getattr(crl, "number", crl))
    except CertSrvError as e:
        log.warning("periodic CRL: %s", e)


def _archiver(app: web.Application, on: bool) -> None:
    """Start (this node became the writer) or stop (fenced) the archive shipper (issue 13), if archiving is on."""
    shipper = app.get("archiver")
    if shipper is None or shipper.running == on:
        return
    if on:
        shipper.start()
    else:
        shipper.stop()


async def _periodic_crl(app: web.Application, state: ServiceState) -> None:
    """Check for a due CRL every so often (a quarter of the period, at most a minute)."""
    interval = min(60.0, max(0.5, app["config"].crl.period_hours * 3600.0 / 4))
    while True:
        await asyncio.sleep(interval)
        await _crl_if_due(app, state)


def _reopen_audit(app: web.Application) -> None:
    """SIGHUP: reopen the audit log (logrotate renames it, then signals; records go to a new file)."""
    try:
        app["audit"].reopen()
        log.info("SIGHUP: audit log reopened at %s", app["audit"].path)
    except OSError as e:
        log.warning("SIGHUP: cannot reopen the audit log %s: %s (records still go to the old file)",
                    app["audit"].path, e.strerror)


def log_hard_recovery(store: Any) -> None:
    """Log the hard recovery a registered restore ran at this start (not only the soft recovery after it)."""
    outcome = getattr(store, "hard_recovery", None)
    if outcome is None:
        return
    rep = outcome.report
    gens = sorted(rep.generations)
    span = f"generations {gens[0]:08X}..{gens[-1]:08X}" if gens else "no generations"
    until = rep.stopped_at or "the end of the restored logs"
    log.info("hard recovery of the registered restore: %s, replayed %d records (LSN %d..%d) until %s in %.3fs; "
             "database %s at LSN %d, new generation %08X%s", span, rep.replayed, rep.from_lsn, rep.to_lsn, until,
             rep.seconds, outcome.database, outcome.applied_lsn, outcome.generation,
             f"; {len(outcome.superseded)} conflicting generation(s) moved to {outcome.superseded_dir}"
             if outcome.superseded else "")


async def _watchdog(interval: float) -> None:
    """sd_notify WATCHDOG=1 every ``interval`` seconds from the event loop (a wedged loop stops the pings)."""
    while True:
        sdnotify.notify("WATCHDOG=1")
        await asyncio.sleep(interval)


async def _listen_unix(runner: web.AppRunner, sock: Path, mode: int | None = None) -> None:
    """A Unix-socket site created owner-only (0600: no window where it is wider), then ``mode`` if given."""
    if len(os.fsencode(sock)) > UNIX_PATH_MAX:
        raise InvalidArgument(E_INVALIDARG, str(sock), f"socket path longer than {UNIX_PATH_MAX} bytes; "
                              "choose a shorter path")
    _clear_stale_socket(sock)
    old = os.umask(0o177)
    try:
        await web.UnixSite(runner, str(sock)).start()
    finally:
        os.umask(old)
    if mode is not None:
        os.chmod(sock, mode)


async def _start_metrics(app: web.Application, home: Home, cfg: Config) -> tuple[web.AppRunner, Path | None]:
    """The ``/metrics`` listener of ``[metrics] listen`` (its own app: no API route is reachable through it)."""
    runner = web.AppRunner(metrics_app(app["metrics"]), handle_signals=False, access_log=None)
    await runner.setup()
    target = parse_listen(cfg.metrics.listen or "")
    try:
        if isinstance(target, str):
            path = _home_path(home, target)
            await _listen_unix(runner, path, cfg.metrics.socket_mode)
            app["state"].metrics_listener = f"unix:{path}"
            return runner, path
        site = web.TCPSite(runner, target[0], target[1], reuse_address=True)
        await site.start()
        server = getattr(site, "_server", None)
        bound = server.sockets[0].getsockname() if server and server.sockets else target
        app["state"].metrics_listener = f"http://{bound[0]}:{bound[1]}/metrics"
        return runner, None
    except OSError as e:
        await runner.cleanup()
        raise InvalidArgument(E_INVALIDARG, "metrics.listen", f"cannot listen on {cfg.metrics.listen}: "
                              f"{e.strerror or e}; choose a free address in certsrv.toml [metrics]") from None
    except BaseException:
        await runner.cleanup()
        raise


async def run_app(
    authority: Any,
    *,
    socket_override: Path | None = None,
    tcp_override: tuple[str, int] | None = None,
    shutdown_timeout: float = 30.0,
    on_ready: Callable[[web.Application], None] | None = None,
    workers: int = 0,
) -> None:
    """Serve ``authority`` until stopped (signal or ServerControl); does not close the Authority.

    :param authority: the open Authority.
    :param socket_override: Unix socket path instead of ``service.socket``.
    :param tcp_override: ``(host, port)`` of the TLS listener instead of the configured one.
    :param shutdown_timeout: seconds in-flight requests get to finish when stopping.
    :param on_ready: called with the app once every listener is up (embedding, tests:
        ``app["state"].request_stop(reason)`` stops it from any thread).
    :param workers: worker processes that prepare (parse, check, sign) new requests; 0: in this process.
    """
    app = create_app(authority)
    home: Home = app["home"]
    cfg: Config = app["config"]
    state: ServiceState = app["state"]
    recovery = getattr(getattr(authority, "store", None), "recovery", None)
    state.recovery = recovery.to_json() if recovery is not None else None
    loop = asyncio.get_running_loop()
    # Authority calls run in worker threads; enough of them that concurrent issuances meet in one group
    # commit (the default pool is only cpu+4 threads).
    loop.set_default_executor(ThreadPoolExecutor(max_workers=WORKER_THREADS, thread_name_prefix="certsrv"))
    stop = asyncio.Event()
    state.on_stop(loop, stop.set)
    signals: list[signal.Signals] = []
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        try:
            if sig == signal.SIGHUP:
                loop.add_signal_handler(sig, _reopen_audit, app)
            else:
                loop.add_signal_handler(sig, state.request_stop, f"signal {sig.name}")
            signals.append(sig)
        except (ValueError, RuntimeError):  # not the main thread (embedded use): stop via ServerControl only
            pass
    server_log = logging.getLogger("aiohttp.server")
    if not any(isinstance(f, _BadClientHTTP) for f in server_log.filters):
        server_log.addFilter(_BadClientHTTP())
    # An idle connection (or one that never finishes its request headers) is closed after the longest time a
    # backup session may idle plus a body's time (aiohttp's default is an hour): a session's connection is
    # never cut while the session may still live, and a header-slowloris is bounded.
    keepalive = cfg.service.backup_session_timeout + cfg.service.body_timeout
    # Issue 13: continuous archiving of closed log generations (a thread, started once serving; see
    # pycertsrv.archive.shipper). Set before the runner freezes the app.
    app["archiver"] = shipper_for(authority, cfg, home.root)
    # Issue 15: worker processes prepare new requests; this process (the one writer) commits them in batches.
    pool: WorkerPool | None = None
    committer: BatchCommitter | None = None
    if workers > 0:
        pool = WorkerPool(authority, workers)
        await pool.start()
        committer = BatchCommitter(authority, pool.in_flight)
        committer.start()
        log.info("%d worker processes prepare requests (pids %s)", workers, ", ".join(map(str, pool.pids)))
    app["workers"], app["committer"] = pool, committer
    runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=shutdown_timeout,
                           keepalive_timeout=keepalive)
    await runner.setup()
    sock = socket_override or socket_path(home, cfg)
    tasks: list[asyncio.Task[None]] = []
    made_socket = False
    metrics_runner: web.AppRunner | None = None
    metrics_sock: Path | None = None
    try:
        # A CRL due at start is published before serving (so callers never race the first one).
        await _crl_if_due(app, state)
        if len(os.fsencode(sock)) > UNIX_PATH_MAX:
            raise InvalidArgument(E_INVALIDARG, str(sock), f"socket path longer than {UNIX_PATH_MAX} bytes; "
                                  "set service.socket to a shorter path")
        await _listen_unix(runner, sock)
        made_socket = True
        socket_access(home, cfg, sock)
        state.listeners.append(f"unix:{sock}")
        tcp = tcp_override
        if tcp is None and cfg.service.tcp_port is not None:
            tcp = (cfg.service.tcp_host or "0.0.0.0", cfg.service.tcp_port)
        if tcp is not None:
            site = TLSSite(runner, tcp[0], tcp[1], ssl_context=server_ssl_context(home, cfg),
                               reuse_address=True)
            await site.start()
            server = getattr(site, "_server", None)
            bound = server.sockets[0].getsockname() if server and server.sockets else (tcp[0], tcp[1])
            state.listeners.append(f"{bound[0]}:{bound[1]}")
        if cfg.metrics.listen:
            metrics_runner, metrics_sock = await _start_metrics(app, home, cfg)
            log.info("metrics on %s", state.metrics_listener)
        node: NodeRole | None = app["node"]
        log.info("serving CA %r from %s on %s as the %s (event loop: %s)", authority.name, home.root,
                 ", ".join(state.listeners), node.role if node is not None else "writer", type(loop).__module__)
        if node is not None:
            # Issue 14: the writer parts (archive shipper; the periodic CRL asks the role itself) follow the role.
            node.bind(loop, state.listeners, lambda: _archiver(app, True), lambda: _archiver(app, False))
            await node.settle()
            tasks.append(asyncio.create_task(node.run()))
        elif app["archiver"] is not None:
            app["archiver"].start()
        if on_ready is not None:
            on_ready(app)
        # systemd Type=notify: ready once every listener is up; the watchdog pings come from this loop.
        where = f"serving CA {authority.name} on {', '.join(state.listeners)}".replace("\n", " ")
        sdnotify.notify(f"READY=1\nMAINPID={os.getpid()}\nSTATUS={where}")
        interval = sdnotify.watchdog_interval()
        if interval is not None:
            tasks.append(asyncio.create_task(_watchdog(interval)))
        tasks.append(asyncio.create_task(_periodic_crl(app, state)))
        tasks.append(asyncio.create_task(watch_sessions(app)))
        await stop.wait()
        log.info("stopping: %s", state.stop_reason)
        sdnotify.notify("STOPPING=1\nSTATUS=stopping: " + str(state.stop_reason).replace("\n", " "))
    finally:
        state.state = "stopping"
        if app.get("archiver") is not None and app["archiver"].running:
            await asyncio.to_thread(app["archiver"].stop)
        if metrics_runner is not None:
            await metrics_runner.cleanup()
            if metrics_sock is not None:
                metrics_sock.unlink(missing_ok=True)
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        # Closes listeners, lets in-flight requests finish (up to shutdown_timeout), runs on_cleanup.
        await runner.cleanup()
        if committer is not None:
            await committer.stop()
        if pool is not None:
            await pool.close()
        if made_socket:
            sock.unlink(missing_ok=True)
        for sig in signals:
            loop.remove_signal_handler(sig)


def serve(
    home: Home | Path | str | None = None,
    *,
    socket: Path | None = None,
    tcp: tuple[str, int] | None = None,
    passphrase: bytes | None = None,
    shutdown_timeout: float = 30.0,
    workers: int | None = None,
) -> None:
    """Run the service of ``home`` until SIGTERM, SIGINT or ServerControl(CSCONTROL_SHUTDOWN).

    :param home: the CA home (default: ``$CERTSRV_HOME`` or ``~/.certsrv``).
    :param socket: Unix socket path instead of ``service.socket``.
    :param tcp: ``(host, port)`` TLS listener instead of ``service.tcp_host/tcp_port`` (port 0: any free port).
    :param passphrase: the CA key's passphrase (default: as the configuration says).
    :param shutdown_timeout: seconds in-flight requests get to finish when stopping.
    :param workers: worker processes preparing requests (default: the number of cores, at least 2; 0: none).
    """
    from ..ca import Authority

    hm = home if isinstance(home, Home) else Home.at(home)
    # Takes the home's lock (a second service fails naming the holder's pid) and runs soft recovery. On PostgreSQL
    # (issue 14) a node whose database has a live writer elsewhere starts as a standby (service.role).
    authority = Authority.open(hm.root, passphrase=passphrase, standby=True)
    try:
        log_hard_recovery(authority.store)
        recovery = getattr(authority.store, "recovery", None)
        if recovery is not None:
            log.info("%s", recovery.summary())
        with asyncio.Runner(loop_factory=loop_factory()) as runner:
            runner.run(run_app(authority, socket_override=socket, tcp_override=tcp, shutdown_timeout=shutdown_timeout,
                               workers=default_workers() if workers is None else workers))
    finally:
        # A second SIGTERM/SIGINT must not cut the checkpoint short (SIGKILL still can).
        with _signals_ignored():
            # Checkpoint: the next start has nothing to replay.
            authority.close()
        log.info("stopped; checkpoint written")


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's event loop when it is installed, else None (asyncio's own).

    Measured (issue 15, ``bench.service_bench``, 8 clients on the Unix socket): the writer process spends ~10%
    less CPU per issuance under uvloop (its reads, writes and callbacks are compiled). TLS stays asyncio's own
    code under it (:class:`TLSSite`); SO_PEERCRED is read from its transports' sockets the same way.
    """
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


@contextlib.contextmanager
def _signals_ignored() -> Iterator[None]:
    try:
        old = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGTERM, signal.SIGINT)}
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
