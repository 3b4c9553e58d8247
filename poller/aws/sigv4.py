"""SigV4 for the lean read path's one request shape: a JSON POST to ``/`` with no query.

botocore's ``SigV4Auth.add_auth`` is general (any method, path, query and header set) and
builds its canonical request through ``urlsplit``, an ``email.message`` header map and
datetime formatting on every call; for a poll that sends nothing else, that was about half of
the lean path's CPU. This module computes the same signature (the algorithm of AWS Signature
Version 4, as botocore's ``SigV4Auth`` implements it) for the fixed shape, and caches the
signing key per day, region and service. Its output is tested to equal botocore's for the same
request, credentials and time (tests/integration/test_lean_reads.py).

Credentials are not kept here: the caller passes the ones botocore froze for this call.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Sequence
from typing import Any

ALGORITHM = "AWS4-HMAC-SHA256"
#: Headers botocore never signs (``botocore.auth.SIGNED_HEADERS_BLACKLIST``).
UNSIGNED_HEADERS = frozenset({"expect", "transfer-encoding", "user-agent", "x-amzn-trace-id"})


class SigV4Signer:
    """Signs JSON POSTs to ``/`` of one host for one service and region, with a fixed set of
    headers (``headers``: name and value; ``Host`` and the date are added here)."""

    def __init__(
        self, *, host: str, region: str, service: str, headers: Sequence[tuple[str, str]]
    ) -> None:
        self._region = region
        self._service = service
        self._headers = list(headers)
        # Canonical lines of the headers that never change, normalized once.
        self._fixed = [(name.lower(), " ".join(value.split())) for name, value in headers]
        self._fixed.append(("host", host))
        self._key: tuple[tuple[str, str], bytes] | None = None
        #: The parts shared by the requests of one second and credential (``_parts_for``).
        self._parts: tuple[Any, ...] | None = None

    def sign(
        self,
        *,
        access_key: str,
        secret_key: str,
        token: str | None,
        body: bytes,
        now: float | None = None,
    ) -> list[tuple[str, str]]:
        """The request's headers (the fixed ones first) with ``X-Amz-Date``, the session token
        if any, and ``Authorization``; ``Host`` is signed, not returned."""
        second = int(time.time() if now is None else now)
        cached = self._parts
        if cached is None or cached[0] != (second, access_key, token):
            cached = self._parts = (
                (second, access_key, token),
                *self._parts_for(second, access_key, token),
            )
        _, out, canonical_head, to_sign_head, auth_head, day = cached
        canonical = canonical_head + hashlib.sha256(body).hexdigest()
        digest = hashlib.sha256(canonical.encode()).hexdigest()
        key = self._signing_key(secret_key, day)
        signature = hmac.new(key, (to_sign_head + digest).encode(), hashlib.sha256).hexdigest()
        return [*out, ("Authorization", auth_head + signature)]

    def _parts_for(
        self, second: int, access_key: str, token: str | None
    ) -> tuple[list[tuple[str, str]], str, str, str, str]:
        """What every request signed in one second with one credential shares (a poll signs
        the same head again and again): the headers, the canonical request without the body's
        hash, the string to sign without the canonical request's hash, the ``Authorization``
        value without the signature, and the day."""
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(second))
        day = stamp[:8]
        out = [*self._headers, ("X-Amz-Date", stamp)]
        lines = [*self._fixed, ("x-amz-date", stamp)]
        if token:
            out.append(("X-Amz-Security-Token", token))
            lines.append(("x-amz-security-token", " ".join(token.split())))
        lines = sorted(line for line in lines if line[0] not in UNSIGNED_HEADERS)
        names = ";".join([name for name, _ in lines])
        canonical_head = (
            "POST\n/\n\n" + "".join([f"{name}:{value}\n" for name, value in lines]) + f"\n{names}\n"
        )
        scope = f"{day}/{self._region}/{self._service}/aws4_request"
        to_sign_head = f"{ALGORITHM}\n{stamp}\n{scope}\n"
        auth_head = (
            f"{ALGORITHM} Credential={access_key}/{scope}, SignedHeaders={names}, Signature="
        )
        return out, canonical_head, to_sign_head, auth_head, day

    def _signing_key(self, secret_key: str, day: str) -> bytes:
        cached = self._key
        if cached is not None and cached[0] == (secret_key, day):
            return cached[1]
        key = _hmac(f"AWS4{secret_key}".encode(), day)
        for part in (self._region, self._service, "aws4_request"):
            key = _hmac(key, part)
        self._key = ((secret_key, day), key)
        return key


def _hmac(key: bytes, message: str) -> bytes:
    return hmac.new(key, message.encode(), hashlib.sha256).digest()
