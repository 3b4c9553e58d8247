"""The bounded YAML loader: a configuration's text into plain Python data, or one-line errors.

Where it sits in the data flow::

    file text --load_yaml()--> dicts, lists and scalars --> poller.config.loading
    POLLER_* value --load_yaml()--> a scalar --> poller.config.overrides

It is PyYAML's safe loader within limits no real configuration reaches, so hostile input gets
a one-line error and never a hang or a traceback: at most :data:`MAX_YAML_DEPTH` levels and
:data:`MAX_YAML_NODES` values once aliases are expanded (an alias bomb is measured on the node
graph, before it is built). A key repeated in one mapping is an error, because YAML would
otherwise keep the last value without a word; merge keys (``<<: *base``) work.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any

import yaml

from poller.config.limits import MAX_YAML_DEPTH, MAX_YAML_NODES
from poller.config.wording import one_line, show
from poller.errors import ConfigError


class _ConfigLoader(yaml.SafeLoader):
    """The safe loader, with the limits and checks a configuration needs.

    * A key that appears twice in one mapping is an error (YAML keeps the last one silently).
      Merge keys (``<<: *base``) are supported, and a key written beside a merge overrides the
      merged one, as YAML specifies.
    * Nesting deeper than :data:`MAX_YAML_DEPTH` is refused while composing, before the
      recursive composer could exhaust the interpreter's stack.
    * A scalar its tag cannot read (``2024-13-45``, ``!!int abc``, an integer of 5000 digits)
      is a YAML error at its line, not the ValueError the safe constructors raise.
    """

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        self._depth += 1
        try:
            if self._depth > MAX_YAML_DEPTH:
                raise _ExpansionError(
                    None,
                    None,
                    f"nested more than {MAX_YAML_DEPTH} levels deep; a configuration is flatter",
                    self.peek_event().start_mark,  # type: ignore[no-untyped-call]
                )
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep=deep)
        except _CONSTRUCTOR_FAILURES as exc:
            value = node.value if isinstance(node, yaml.ScalarNode) else type(node).__name__
            raise yaml.constructor.ConstructorError(
                None,
                None,
                f"{show(value)} cannot be read as {node.tag}: {one_line(str(exc))[:200]}",
                node.start_mark,
            ) from None

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        pairs = node.value if isinstance(node, yaml.MappingNode) else []  # super() reports it
        for key_node, _ in pairs:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == _MERGE_TAG:
                continue
            key = self.construct_object(key_node, deep=deep)
            if not isinstance(key, Hashable):
                continue  # super() reports it
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    f"duplicate key {key!r} (first at line {seen[key]})",
                    key_node.start_mark,
                )
            seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)


_MERGE_TAG = "tag:yaml.org,2002:merge"
# What the safe constructors raise for a value their tag cannot read (PyYAML lets it escape).
_CONSTRUCTOR_FAILURES = (ArithmeticError, AttributeError, LookupError, TypeError, ValueError)


def load_yaml(text: str, source: str) -> Any:
    """The document in ``text``; its size once aliases are expanded is checked before it is
    built, so an alias bomb is refused in time linear in the text."""
    try:
        loader = _ConfigLoader(text)  # the reader refuses control characters here already
    except yaml.reader.ReaderError as exc:
        raise ConfigError([_reader_problem(exc, text)], source=source) from None
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_expansion(node)
        return loader.construct_document(node)
    except yaml.reader.ReaderError as exc:
        raise ConfigError([_reader_problem(exc, text)], source=source) from None
    except yaml.MarkedYAMLError as exc:
        raise ConfigError([_yaml_problem(exc)], source=source) from None
    except yaml.YAMLError as exc:
        raise ConfigError([f"invalid YAML: {one_line(str(exc))}"], source=source) from None
    except _CONSTRUCTOR_FAILURES as exc:  # raised where PyYAML builds collections, unmarked
        problem = f"invalid YAML: a value cannot be read: {one_line(str(exc))[:200]}"
        raise ConfigError([problem], source=source) from None
    finally:
        loader.dispose()


class _ExpansionError(yaml.MarkedYAMLError):
    """The document is too large or too deep once aliases are expanded, or refers to itself."""


def _check_expansion(root: yaml.Node) -> None:
    """Refuse a node graph whose tree, aliases expanded, is too big, too deep or infinite.

    Each node is measured once (aliases share nodes, so the graph stays small even when the
    tree it stands for is exponential): its size is its node count in the expanded tree, its
    height the depth below it. Recursion follows the expanded tree but stops at
    :data:`MAX_YAML_DEPTH`, so it cannot exhaust the stack.
    """
    measured: dict[int, tuple[int, int]] = {}
    active: set[int] = set()

    def measure(node: yaml.Node, depth: int) -> tuple[int, int]:
        if depth > MAX_YAML_DEPTH:
            raise _too_deep(node)
        known = measured.get(id(node))
        if known is None:
            if id(node) in active:
                raise _ExpansionError(
                    None, None, "an alias refers to a node that contains it", node.start_mark
                )
            active.add(id(node))
            known = measured[id(node)] = _measure_children(node, depth, measure)
            active.discard(id(node))
        size, height = known
        if depth + height > MAX_YAML_DEPTH:
            raise _too_deep(node)
        if size > MAX_YAML_NODES:
            raise _ExpansionError(
                None,
                None,
                f"the document holds more than {MAX_YAML_NODES:,} values once aliases (*name) "
                "are expanded; a configuration needs far fewer",
                node.start_mark,
            )
        return known

    measure(root, 1)


def _too_deep(node: yaml.Node) -> _ExpansionError:
    return _ExpansionError(
        None,
        None,
        f"nested more than {MAX_YAML_DEPTH} levels deep once aliases (*name) are expanded",
        node.start_mark,
    )


def _measure_children(
    node: yaml.Node, depth: int, measure: Callable[[yaml.Node, int], tuple[int, int]]
) -> tuple[int, int]:
    if isinstance(node, yaml.SequenceNode):
        children: list[yaml.Node] = list(node.value)
    elif isinstance(node, yaml.MappingNode):
        children = [part for pair in node.value for part in pair]
    else:
        return 1, 0
    size, height = 1, 0
    for child in children:
        child_size, child_height = measure(child, depth + 1)
        size += child_size
        height = max(height, child_height + 1)
        if size > MAX_YAML_NODES:
            break  # the caller reports it; adding more would only take longer
    return size, height


def _reader_problem(exc: yaml.reader.ReaderError, text: str) -> str:
    """A control character (a NUL byte, say) that YAML refuses, with its line and column."""
    position = exc.position if isinstance(exc.position, int) else 0
    line = text.count("\n", 0, position) + 1
    column = position - (text.rfind("\n", 0, position) + 1) + 1
    character = exc.character if isinstance(exc.character, int) else 0
    return (
        f"the file contains U+{character:04X}, a control character YAML does not allow, at "
        f"line {line}, column {column}; a configuration is text"
    )


def _yaml_problem(exc: yaml.MarkedYAMLError) -> str:
    mark = exc.problem_mark or exc.context_mark
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
    context = f" ({exc.context})" if exc.context else ""
    # Limits and values are not syntax: say plainly which rule the document broke.
    if isinstance(exc, _ExpansionError):
        kind = "YAML refused"
    elif isinstance(exc, yaml.constructor.ConstructorError):
        kind = "invalid YAML"
    else:
        kind = "YAML syntax error"
    return one_line(f"{kind}{where}: {exc.problem}{context}")


def yaml_kind(value: Any) -> str:
    return {list: "list", str: "string", int: "number", float: "number", bool: "boolean"}.get(
        type(value), type(value).__name__
    )
