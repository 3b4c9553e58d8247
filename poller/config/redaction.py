"""Secrets kept out of output: what error messages and ``validate --print`` must not show.

Where it sits in the data flow::

    loaded tree + environ --secrets_in()--> the secret strings --redact()--> problem lines
    Settings --redacted_settings()--> JSON-ready data for ``poller validate --print``

HTTP header values, URL userinfo, secret-looking query parameters and the values of
environment variables with secret-looking names are shown as :data:`REDACTED`, also when a
message quotes them cut short.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from typing import Any

from poller.config.models.settings import Settings
from poller.config.wording import SHOW_CHARS

#: Environment variables whose values are secrets, by name (the rule of Spring Boot's
#: sanitizer, roughly): their values are hidden wherever they appear in output.
_SECRET_VARIABLE = re.compile(
    r"SECRET|TOKEN|PASSW|PWD|CREDENTIAL|AUTH|API_?KEY|ACCESS_KEY|PRIVATE|SESSION|COOKIE",
    re.IGNORECASE,
)
#: Shorter values are not searched for: hiding "true" or "1" would garble every message.
_MIN_SECRET_CHARS = 6
#: What stands for a hidden value.
REDACTED = "***"
# The userinfo of a URL (``https://user:password@host``): up to the last '@' of the authority.
# The scheme starts where no scheme character precedes it and its run is taken whole
# (possessive), so a long word without "://" costs linear time, not quadratic backtracking.
_USERINFO = re.compile(
    r"(?P<scheme>(?<![A-Za-z0-9+.-])[A-Za-z][A-Za-z0-9+.-]*+://)(?P<userinfo>[^/?#\s]*)@"
)


def redacted_settings(
    settings: Settings, *, environ: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """The settings as JSON-ready data with secrets hidden, for ``validate --print``.

    Hidden: every HTTP header value (names stay), the userinfo of every URL, and the value of
    every environment variable whose name looks secret (``*TOKEN*``, ``*PASSWORD*``,
    ``*SECRET*``, ``*AUTH*``, ``*API_KEY*``...) wherever it appears, e.g. expanded from
    ``${VAR}``.
    """
    env = os.environ if environ is None else environ
    secrets = _secret_variables(env)

    def hide(node: Any, key: Any = None) -> Any:
        if isinstance(node, dict):
            if key == "headers":
                return dict.fromkeys(node, REDACTED)
            return {k: hide(v, k) for k, v in node.items()}
        if isinstance(node, list):
            return [hide(item) for item in node]
        return redact(node, secrets) if isinstance(node, str) else node

    dumped: dict[str, Any] = hide(settings.model_dump(mode="json"))
    return dumped


def secrets_in(data: Any, environ: Mapping[str, str]) -> list[str]:
    """The secret strings of a loaded tree: header values, URL userinfo, secret variables."""
    found = set(_secret_variables(environ))
    stack: list[tuple[Any, Any]] = [(data, None)]
    seen: set[int] = set()  # an alias is one object: search it once, not at every use
    while stack:
        node, key = stack.pop()
        if id(node) in seen and not (isinstance(key, str) and key.lower() == "headers"):
            continue
        seen.add(id(node))
        if isinstance(node, dict):
            if isinstance(key, str) and key.lower() == "headers":
                found.update(v for v in node.values() if isinstance(v, str))
            stack.extend((value, k) for k, value in node.items())
        elif isinstance(node, list):
            stack.extend((item, None) for item in node)
        elif isinstance(node, str):
            for match in _USERINFO.finditer(node):
                found.update((match["userinfo"], *match["userinfo"].split(":", 1)))
    return sorted((s for s in found if len(s) >= _MIN_SECRET_CHARS), key=len, reverse=True)


def _secret_variables(environ: Mapping[str, str]) -> list[str]:
    values = {v for k, v in environ.items() if _SECRET_VARIABLE.search(k)}
    return sorted((v for v in values if len(v) >= _MIN_SECRET_CHARS), key=len, reverse=True)


def redact(text: str, secrets: list[str]) -> str:
    """``text`` with URL userinfo, secret query parameters and each secret (as written, or as
    repr/JSON escape it) replaced by :data:`REDACTED`; ``secrets`` longest first, so none
    hides part of another. A secret that a message cut short (``'abc...``) is hidden too."""
    text = _USERINFO.sub(rf"\g<scheme>{REDACTED}@", text)
    text = _SECRET_QUERY.sub(rf"\g<name>{REDACTED}", text)
    for secret in secrets:
        for form in {secret, repr(secret)[1:-1], json.dumps(secret)[1:-1]}:
            text = _hide(text, form)
    return text


#: A query parameter whose name looks secret (``?token=``, ``&X-Amz-Signature=``, ``&api_key=``):
#: its value is hidden, as a URL's userinfo is.
_SECRET_QUERY = re.compile(
    r"(?P<name>[?&;][^=&#\s]*?(?:token|secret|passw|pwd|auth|key|sig|credential|session)"
    r"[^=&#\s]*=)[^&#\s'\"]*",
    re.IGNORECASE,
)
#: The start of a secret that marks where it may appear cut short (``show`` cuts long values
#: and ends them with "...").
_SECRET_ANCHOR_CHARS = 16


def _hide(text: str, secret: str) -> str:
    """``text`` with ``secret``, whole or cut short and followed by "...", hidden."""
    text = text.replace(secret, REDACTED)
    if len(secret) <= _SECRET_ANCHOR_CHARS or "..." not in text:
        return text
    # A cut is at most SHOW_CHARS long, so each candidate costs a bounded comparison.
    anchor, head = secret[:_SECRET_ANCHOR_CHARS], secret[:SHOW_CHARS]
    parts, start = [], 0
    found = text.find(anchor)
    while found != -1:
        window = text[found : found + len(head)]
        common = len(os.path.commonprefix([window, head]))  # noqa: RUF071 - text, not paths
        if text.startswith("...", found + common):
            parts += [text[start:found], REDACTED]
            start = found + common + 3
        found = text.find(anchor, max(found + 1, start))
    return "".join([*parts, text[start:]])
