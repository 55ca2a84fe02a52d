"""Request keys (issue 14): the rules of the key itself, shared by the client, the service and the CA.

A submit may carry a request key, a client-made idempotency key (:class:`pycertsrv.client.Client` makes a uuid4 hex
for every submit unless given one; ``certsrv submit --request-key K``). The CA stores it as the request attribute
``RequestKey``, held at most once by the database, and answers a submit whose key it holds with that request
(:mod:`pycertsrv.ca.keyclaims`). A key is 1..128 printable ASCII characters.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping

from .errors import E_INVALIDARG, InvalidArgument

REQUEST_KEY = "RequestKey"  # the request attribute that holds it
MAX_REQUEST_KEY = 128


def new_request_key() -> str:
    """A fresh key: 32 hex digits of a random UUID (what the client sends when it is given none)."""
    return uuid.uuid4().hex


def checked_key(key: object) -> str:
    """``key`` if it is 1..128 printable ASCII characters, else the one-line refusal (E_INVALIDARG).

    :param key: what the caller gave.
    """
    if not isinstance(key, str):
        raise InvalidArgument(E_INVALIDARG, "request key", f"a request key is text, not {type(key).__name__}")
    shown = repr(key[:40]) + ("..." if len(key) > 40 else "")
    if not key or len(key) > MAX_REQUEST_KEY or not all(" " <= c <= "~" for c in key):
        why = ("it is empty" if not key else f"it has {len(key)} characters" if len(key) > MAX_REQUEST_KEY
               else "it has a character outside printable ASCII")
        raise InvalidArgument(E_INVALIDARG, f"request key {shown}",
                              f"a request key is 1 to {MAX_REQUEST_KEY} printable ASCII characters and {why}; "
                              "give another key, or none to have one made")
    return key


def keyed_attributes(attributes: Mapping[str, str] | None, request_key: str | None) -> dict[str, str]:
    """The submitter's attributes with ``request_key`` as the attribute RequestKey (checked; given both ways, they
    must agree).

    :param attributes: the submitter's ``name: value`` pairs (a RequestKey among them is a key too).
    :param request_key: the key given on its own (None: only the attributes').
    """
    attrs = dict(attributes or {})
    given = attrs.get(REQUEST_KEY)
    if request_key is not None:
        if given is not None and given != request_key:
            raise InvalidArgument(E_INVALIDARG, "request key",
                                  f"request_key {request_key[:40]!r} and the attribute {REQUEST_KEY} "
                                  f"{given[:40]!r} differ; give the key once")
        attrs[REQUEST_KEY] = checked_key(request_key)
    elif given is not None:
        checked_key(given)
    return attrs


__all__ = ["MAX_REQUEST_KEY", "REQUEST_KEY", "checked_key", "keyed_attributes", "new_request_key"]
