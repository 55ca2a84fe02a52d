"""What the CA tells an observer (the service's metrics, :mod:`pycertsrv.service.metrics`) at the event.

Counters are updated where the work happens, so a scrape costs nothing but reading them; the library
works without an observer (the CLI's direct mode has none).
"""

from __future__ import annotations

from typing import Protocol


class CAObserver(Protocol):
    """Receives CA events; every method must be cheap and must not raise."""

    def request_resolved(self, disposition: str, template: str, seconds: float) -> None:
        """A request reached ``disposition`` (issued, pending, denied, revoked ...) through a durable write.

        :param disposition: the disposition name (``DISPOSITION_NAMES``).
        :param template: the request's template name ("" when none).
        :param seconds: from the call's start (parse, policy, signing) to the write being durable.
        """

    def batch_committed(self, size: int) -> None:
        """A group commit made ``size`` state changes durable in one log record."""
