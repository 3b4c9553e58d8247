"""``POLLER_*`` environment overrides: one variable sets one value of the loaded tree.

Where it sits in the data flow::

    ${VAR}-expanded tree --apply_overrides(environ)--> the tree with overrides set in place,
        problems, and which variable set which path --> validation and its messages

For ECS task definitions and similar: a variable ``POLLER_<SECTION>__<FIELD>`` sets one value.
Segments are joined by a double underscore and matched case-insensitively, and the value is
parsed as a YAML scalar, so ``false``, ``500`` and ``1.5`` arrive as a bool, an int and a
float, and an empty value is ``null``::

    POLLER_AWS__REGION=eu-west-1
    POLLER_AWS__ENDPOINT_URL=http://localhost:4566
    POLLER_CHECKPOINTS__PATH=/data/checkpoints.db
    POLLER_LOGGING__LEVEL=debug
    POLLER_SHUTDOWN__DRAIN_TIMEOUT_SECONDS=20
    POLLER_EMBEDDED__TRAFFIC__ENABLED=false

A mapping is addressed by its name, which must match exactly. Only the field part is
case-insensitive: ``POLLER_MAPPINGS__orders__BATCH_SIZE=500`` or
``POLLER_MAPPINGS__orders__TARGET__TIMEOUT_SECONDS=10``. An override that names no existing
mapping is an error that names the variable. Inside a list, a segment is an item number:
``0`` to ``len - 1`` replaces an item and ``len`` appends one. A ``POLLER_`` variable without
``__``, such as ``POLLER_CONFIG``, is not an override and is ignored: every setting is at least
two levels deep.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import date
from typing import Any

from poller.config.paths import Loc, locate
from poller.config.wording import cut, show, suggestion
from poller.config.yaml_loader import load_yaml
from poller.errors import ConfigError

#: Environment variables with this prefix (any case) and a ``__`` are overrides.
ENV_PREFIX = "POLLER_"


def apply_overrides(
    data: dict[str, Any], environ: Mapping[str, str]
) -> tuple[list[str], dict[str, str]]:
    """Apply ``POLLER_*`` variables to ``data`` in place.

    Every variable is resolved to a location before any is applied, so an override of a
    mapping's ``name`` does not hide that mapping from the other overrides.

    Returns:
        The problems found, and the readable path each override set mapped to its variable.
    """
    problems: list[str] = []
    targets: list[tuple[str, Loc]] = []
    for var in sorted(environ):
        if not var.upper().startswith(ENV_PREFIX) or "__" not in var[len(ENV_PREFIX) :]:
            continue
        try:
            targets.append((var, _override_loc(var, data)))
        except ConfigError as exc:
            problems.extend(exc.problems)
    origins: dict[str, str] = {}
    for var, loc in targets:
        try:
            origin = _assign(data, loc, _parse_scalar(environ[var]), var)
        except ConfigError as exc:
            problems.extend(exc.problems)
        else:
            origins[locate(origin, data).path] = var
    return problems, origins


def _override_loc(var: str, data: dict[str, Any]) -> Loc:
    segments = var[len(ENV_PREFIX) :].split("__")
    if not all(segments):
        raise ConfigError([f"{var}: empty segment; write POLLER_<SECTION>__<FIELD>"])
    if segments[0].lower() != "mappings":
        return tuple(segment.lower() for segment in segments)
    return _mapping_override_loc(var, segments[1:], data)


def _mapping_override_loc(var: str, rest: list[str], data: dict[str, Any]) -> Loc:
    names = _mapping_names(data)
    if len(rest) < 2:
        raise ConfigError([f"{var}: expected POLLER_MAPPINGS__<name>__<FIELD>"])
    for boundary in range(len(rest) - 1, 0, -1):  # a name may itself contain "__"
        name = "__".join(rest[:boundary])
        if name in names:
            return ("mappings", names.index(name), *_field_segments(rest[boundary:]))
    known = cut(", ".join(show(n) for n in names if n), 500) or "none"
    hint = suggestion(rest[0], [n for n in names if n])
    raise ConfigError(
        [f"{var}: no mapping is named {rest[0]!r} (names match exactly); mappings: {known}{hint}"]
    )


def _field_segments(segments: list[str]) -> list[str]:
    """Field names are case-insensitive, but a tag key (the segment after ``tags``) keeps its
    case: AWS's tag keys are case-sensitive."""
    lowered: list[str] = []
    for segment in segments:
        keep = bool(lowered) and lowered[-1] == "tags"
        lowered.append(segment if keep else segment.lower())
    return lowered


def _mapping_names(data: dict[str, Any]) -> list[str | None]:
    mappings = data.get("mappings")
    if not isinstance(mappings, list):
        return []
    return [m.get("name") if isinstance(m, dict) else None for m in mappings]


def _assign(data: dict[str, Any], loc: Loc, value: Any, var: str) -> Loc:
    """Set ``value`` at ``loc``, creating missing sections.

    A segment into a list is an item number: ``0`` to ``len - 1`` replaces that item, ``len``
    appends one (``POLLER_MAPPINGS__orders__FUNCTION_RESPONSE_TYPES__0``).

    Returns:
        The loc of the outermost part the override created or replaced: everything below it
        came from the variable.
    """
    node: Any = data
    origin: Loc | None = None
    done: Loc = ()
    for depth, segment in enumerate(loc):
        part = _list_index(node, segment, var, done, data) if isinstance(node, list) else segment
        done = (*done, part)
        if depth == len(loc) - 1:
            break
        if _absent(node, part):
            origin = origin or done
            _put(node, part, [] if _is_index(loc[depth + 1]) else {})
        node = node[part]
        if not isinstance(node, dict | list):
            where = locate(done, data).path
            raise ConfigError([f"{var}: cannot set a field inside {where}, which is {show(node)}"])
    if _absent(node, part):
        origin = origin or done
    _put(node, part, value)
    return origin or done


def _is_index(segment: int | str) -> bool:
    return isinstance(segment, int) or (segment.isascii() and segment.isdigit())


def _list_index(node: list[Any], segment: int | str, var: str, done: Loc, data: Any) -> int:
    """The item number a segment names in a list; ``len(node)`` means a new last item."""
    if isinstance(segment, int):
        return segment  # a mapping's index, resolved from its name
    if _is_index(segment) and len(segment) <= len(str(len(node))) and int(segment) <= len(node):
        return int(segment)
    where = locate(done, data).path
    size = len(node)
    numbers = f"0 to {size - 1}, or {size} to add one" if size else "0 to add the first"
    raise ConfigError(
        [
            f"{var}: {where} is a list of {size} item(s); address an item by its number, "
            f"{numbers}, not {segment!r}"
        ]
    )


def _absent(node: dict[Any, Any] | list[Any], part: int | str) -> bool:
    return part == len(node) if isinstance(node, list) else part not in node


def _put(node: dict[Any, Any] | list[Any], part: int | str, value: Any) -> None:
    if isinstance(node, list) and part == len(node):
        node.append(value)
    else:
        node[part] = value  # type: ignore[index]


def _parse_scalar(text: str) -> Any:
    """Parse an override like a YAML scalar; anything else stays the literal text.

    The value goes through the file's own bounded loader: plain ``yaml.safe_load`` let a
    variable of 100,000 '[' raise RecursionError and a 5000-digit number raise ValueError.
    """
    try:
        value = load_yaml(text, "an environment variable")
    except ConfigError:
        return text
    scalar = value is None or isinstance(value, str | int | float | date)
    return value if scalar else text
