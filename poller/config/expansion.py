"""``${VAR}`` expansion: environment variables substituted into the string values of the YAML.

Where it sits in the data flow::

    YAML tree --expand_tree(environ)--> the same tree with references replaced, plus problems
        --> POLLER_* overrides (poller.config.overrides) --> validation

``${VAR}`` and ``${VAR:-default}`` are expanded in string values, from ``environ``
(``os.environ`` by default). ``${VAR}`` with ``VAR`` unset is an error. As in the shell,
``:-default`` applies when ``VAR`` is unset or empty. ``$${`` is a literal ``${``; a ``${``
never closed and a reference inside a default are errors. All references together may add at
most :data:`~poller.config.limits.MAX_EXPANDED_CHARS`, so a small file cannot expand into
gigabytes.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from poller.config.limits import MAX_EXPANDED_CHARS
from poller.config.paths import Loc, locate
from poller.config.wording import show

# ``$${`` is a literal ``${``; ``${...}`` is a reference; a ``${`` never closed is matched
# too, so that it is an error instead of text that silently stays as written.
# The body is taken whole (possessive) up to a '}' or the end of the text: a '${' never closed
# then swallows the rest in one match, so many of them cost linear time, not quadratic.
_REFERENCE = re.compile(r"\$\$\{|\$\{([^}]*+)(\}|\Z)")
_LITERAL = "$${"
_REFERENCE_FORMS = "use ${NAME} or ${NAME:-default}, or $${ for a literal ${"
_REFERENCE_SYNTAX = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)(?::-(.*))?", re.DOTALL)


def expand_tree(
    raw: dict[str, Any], environ: Mapping[str, str]
) -> tuple[dict[str, Any], list[str]]:
    """Expand ``${VAR}`` references in every string value; return a new tree and problems."""
    problems: list[str] = []
    budget = [MAX_EXPANDED_CHARS]
    # An aliased string is one object however often it is used: expand it once and share the
    # result, so an alias of a large value is not copied (and its problems said) 100,000 times.
    expanded: dict[int, tuple[str, str]] = {}

    def walk(node: Any, loc: Loc) -> Any:
        if isinstance(node, str):
            if id(node) in expanded:
                return expanded[id(node)][1]
            text, errors = _expand_string(node, environ, budget)
            expanded[id(node)] = (node, text)  # node kept alive, so its id is not reused
            problems.extend(f"{locate(loc, raw).path}: {error}" for error in errors)
            return text
        if isinstance(node, dict):
            return {key: walk(value, (*loc, key)) for key, value in node.items()}
        if isinstance(node, list):
            return [walk(value, (*loc, index)) for index, value in enumerate(node)]
        return node

    try:
        return walk(raw, ()), problems
    except _ExpansionTooLarge:
        limit = MAX_EXPANDED_CHARS / 1024 / 1024
        problem = (
            f"${{VAR}} references add more than {limit:g} MiB to the values; a configuration "
            "needs far less (is a variable used many times, or much larger than meant?)"
        )
        return raw, [problem]


class _ExpansionTooLarge(Exception):
    """``${VAR}`` references together added more than :data:`MAX_EXPANDED_CHARS`."""


def _expand_string(
    text: str, environ: Mapping[str, str], budget: list[int] | None = None
) -> tuple[str, list[str]]:
    """``text`` with its references expanded, and the problems found; ``budget`` (one
    mutable count shared by every value) is what expansion may still add."""
    errors: list[str] = []
    left = budget if budget is not None else [MAX_EXPANDED_CHARS]

    def replace(match: re.Match[str]) -> str:
        value = _replacement(match)
        left[0] -= len(value)
        if left[0] < 0:
            raise _ExpansionTooLarge
        return value

    def _replacement(match: re.Match[str]) -> str:
        reference = match.group(0)
        if reference == _LITERAL:
            return "${"
        if not match.group(2):
            errors.append(f"{show(text)}: '${{' is never closed by '}}'; {_REFERENCE_FORMS}")
            return reference
        syntax = _REFERENCE_SYNTAX.fullmatch(match.group(1))
        if syntax is None:
            errors.append(f"{show(reference)} is not a valid reference; {_REFERENCE_FORMS}")
            return reference
        name, default = syntax.groups()
        if default is not None and "${" in default:
            errors.append(
                f"{show(text)}: a default cannot hold another reference (nested ${{...}} is "
                f"not supported); give {name}'s default as plain text"
            )
            return reference
        value = environ.get(name)
        if default is not None and not value:
            return str(default)
        if value is None:
            errors.append(
                f"environment variable {name} is not set (used as {reference}); "
                f"set it or give a default: ${{{name}:-default}}"
            )
            return reference
        return value

    return _REFERENCE.sub(replace, text), errors
