"""The one paging rule of ``view`` (issue 10 finding 5): one call returns a page of 1..PAGE_MAX rows from an
offset in 0..MAX_OFFSET, directly (``Authority.view``) and through the service (``GET /ca/requests``) alike;
listing more than a page is the caller's loop (:func:`collect`), which the CLI runs in both modes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

from ..errors import E_INVALIDARG, InvalidArgument

T = TypeVar("T")

PAGE_MAX = 1000  # rows per call: bounds one answer's memory and the time the store's reader is held
PAGE_DEFAULT = 100  # rows per call when the caller does not say
MAX_OFFSET = (1 << 63) - 1  # SQLite's largest integer: an OFFSET beyond it cannot be expressed


def check_page(limit: int, offset: int, function: str = "view") -> None:
    """Refuse a page outside the rule, naming the bound (E_INVALIDARG).

    :param limit: rows asked for in one call (1..PAGE_MAX).
    :param offset: rows skipped first (0..MAX_OFFSET).
    :param function: the subject the error names.
    """
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= PAGE_MAX:
        raise InvalidArgument(E_INVALIDARG, function, f"limit must be an integer in 1..{PAGE_MAX} rows per call, "
                              f"not {limit!r}; ask for the next page with offset")
    if isinstance(offset, bool) or not isinstance(offset, int) or not 0 <= offset <= MAX_OFFSET:
        raise InvalidArgument(E_INVALIDARG, function, f"offset must be an integer in 0..{MAX_OFFSET}, not {offset!r}")


def collect(fetch: Callable[[int, int], Sequence[T]], limit: int | None = None,
            offset: int = 0) -> tuple[list[T], bool]:
    """Rows from ``offset`` on, fetched a page at a time: all of them, or at most ``limit``.

    Returns ``(rows, more)``: ``more`` is True when rows exist past the last one returned (one extra row is
    asked for to know it, so no count query is needed and a page boundary never reads as the end).

    :param fetch: ``fetch(page_limit, page_offset)``, one call of the paging rule (``check_page``).
    :param limit: at most this many rows (None: all); at least 1.
    :param offset: rows to skip first.
    """
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise InvalidArgument(E_INVALIDARG, "view", f"limit must be a positive number of rows, not {limit!r}")
    check_page(1, offset)
    rows: list[T] = []
    pos = offset
    while True:
        want = PAGE_MAX if limit is None else min(PAGE_MAX, limit - len(rows) + 1)
        page = list(fetch(want, pos))
        rows += page
        pos += len(page)
        if limit is not None and len(rows) > limit:
            return rows[:limit], True
        if len(page) < want:
            return rows, False
