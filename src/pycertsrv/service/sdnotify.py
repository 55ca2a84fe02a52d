"""systemd's readiness and watchdog protocol (``sd_notify(3)``), spoken directly: no dependency.

With ``Type=notify`` systemd passes ``$NOTIFY_SOCKET``, an ``AF_UNIX`` datagram socket (a path, or an
abstract name written with a leading ``@``). The service sends newline-separated ``KEY=VALUE``
assignments in one datagram each:

- ``READY=1`` once every listener is up (so units ordered after certsrv start only when it serves);
- ``WATCHDOG=1`` every half of ``$WATCHDOG_USEC`` (sd_watchdog_enabled(3): "half of the interval" is the
  recommended rate), when ``$WATCHDOG_PID`` is unset or names this process; sent from the event loop, so a
  wedged loop stops the pings and systemd restarts the service;
- ``STOPPING=1`` when a clean shutdown begins; ``STATUS=...`` a line for ``systemctl status``.

Without ``$NOTIFY_SOCKET`` (not under systemd) every call does nothing. A failed send is logged, never
fatal: the CA must not stop serving because its supervisor went away.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping

log = logging.getLogger("pycertsrv.service")


def _address(env: Mapping[str, str]) -> str | None:
    addr = env.get("NOTIFY_SOCKET", "")
    if addr.startswith("@"):
        return "\0" + addr[1:]  # sd_notify(3): "@" stands for the abstract namespace's leading NUL
    if addr.startswith("/"):
        return addr
    return None  # unset, or a transport we do not speak (vsock:)


def notify(message: str, env: Mapping[str, str] | None = None) -> bool:
    """Send ``message`` (e.g. ``"READY=1\\nSTATUS=serving"``) to ``$NOTIFY_SOCKET``; False when none is set
    or the send failed (logged).
    """
    addr = _address(os.environ if env is None else env)
    if addr is None:
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            s.connect(addr)
            s.sendall(message.encode())
    except OSError as e:
        log.warning("sd_notify to %s failed: %s", addr.replace("\0", "@"), e)
        return False
    return True


def watchdog_interval(env: Mapping[str, str] | None = None) -> float | None:
    """Seconds between ``WATCHDOG=1`` pings (half of ``$WATCHDOG_USEC``), or None when no watchdog is asked
    of this process (sd_watchdog_enabled(3): ``$WATCHDOG_PID``, when set, must be our pid).
    """
    e = os.environ if env is None else env
    usec = e.get("WATCHDOG_USEC", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    pid = e.get("WATCHDOG_PID", "")
    if pid and pid != str(os.getpid()):
        return None
    return int(usec) / 2_000_000
