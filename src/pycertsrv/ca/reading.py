"""Reading requests and certificates: the read side of :class:`~pycertsrv.ca.authority.Authority`
(view with filters and paging, one request, its attributes and extensions, a certificate by serial or id)."""

from __future__ import annotations

from typing import Any

from ..errors import (
    CERTSRV_E_NO_REQUEST,
    CERTSRV_E_PROPERTY_EMPTY,
    CRYPT_E_NOT_FOUND,
    E_INVALIDARG,
    InvalidArgument,
    NotFound,
)
from ..store import CAStore
from .models import DISPOSITION_NAMES, RequestInfo, iso, normalize_serial, parse_disposition, utcnow
from .paging import check_page


class RequestReader:
    """Mixed into the Authority: every method reads ``self.store`` only."""

    store: CAStore

    def _row(self, request_id: int) -> dict[str, Any]:
        if isinstance(request_id, bool) or not isinstance(request_id, int) or request_id <= 0:
            raise InvalidArgument(E_INVALIDARG, "request", f"request id must be a positive integer: {request_id!r}")
        row = self.store.get("request", request_id)
        if row is None:
            raise NotFound(CERTSRV_E_NO_REQUEST, f"request {request_id}", "no such request in the database")
        return row

    def _row_by_serial(self, serial: str) -> dict[str, Any]:
        rows = self.store.select("request", [("serial", "=", serial)], limit=1)
        if not rows:
            raise NotFound(CRYPT_E_NOT_FOUND, f"serial {serial}", "no certificate with this serial in the database")
        return rows[0]

    def view(self, *, disposition: str | int | None = None, serial: str | int | None = None,
             request_id: int | None = None, expired: bool | None = None, limit: int | None = 100,
             offset: int = 0) -> list[RequestInfo]:
        """Requests and certificates, oldest first, filtered.

        :param disposition: pending, issued, revoked, error, denied (or the AD CS number).
        :param serial: one certificate by serial.
        :param request_id: one request.
        :param expired: True: only expired certificates; False: only unexpired ones.
        :param limit: at most this many rows, 1..ca.paging.PAGE_MAX (None: all, for the library's own use).
        :param offset: skip this many rows first.
        """
        where: list[tuple[str, str, Any]] = []
        if disposition is not None:
            where.append(("disposition", "=", parse_disposition(disposition)))
        if serial is not None:
            where.append(("serial", "=", normalize_serial(serial)))
        if request_id is not None:
            where.append(("request_id", "=", int(request_id)))
        if expired is not None:
            where.append(("not_after", "<" if expired else ">=", iso(utcnow())))
        if limit is not None:
            check_page(limit, offset)  # ca.paging: the one rule, the same through the service
        elif offset < 0:
            raise InvalidArgument(E_INVALIDARG, "view", "offset must not be negative")
        rows = self.store.select("request", where, order_by=["request_id"], limit=limit, offset=offset)
        return [RequestInfo.from_row(r) for r in rows]

    def get_request(self, request_id: int) -> RequestInfo:
        """One request row, or NotFound (CERTSRV_E_NO_REQUEST)."""
        return RequestInfo.from_row(self._row(request_id))

    def request_attributes(self, request_id: int) -> dict[str, str]:
        """The stored attributes of a request."""
        self._row(request_id)
        return {r["name"]: r["value"] for r in self.store.select("attribute", [("request_id", "=", request_id)])}

    def certificate_extensions(self, request_id: int) -> list[dict[str, Any]]:
        """The stored extensions of an issued certificate (oid, flags 1 = critical, DER value)."""
        self._row(request_id)
        return self.store.select("extension", [("request_id", "=", request_id)], order_by=["oid"])

    def get_certificate(self, serial_or_request_id: str | int) -> bytes:
        """The DER certificate of a serial (str) or of a request id (int).

        :param serial_or_request_id: hex serial (any case, colons allowed) or the request id as int.
        """
        if isinstance(serial_or_request_id, int) and not isinstance(serial_or_request_id, bool):
            row = self._row(serial_or_request_id)
            what = f"request {serial_or_request_id}"
        else:
            serial = normalize_serial(serial_or_request_id)
            row = self._row_by_serial(serial)
            what = f"serial {serial}"
        if row["raw_cert"] is None:
            state = DISPOSITION_NAMES.get(int(row["disposition"]), str(row["disposition"]))
            raise NotFound(CERTSRV_E_PROPERTY_EMPTY, what, f"no certificate: the request is {state}")
        return bytes(row["raw_cert"])



__all__ = ["RequestReader"]
