"""An in-memory metrics sink for tests: keeps every hook call, in order, to assert on.

Data flow: the code under test calls the hooks as it would in production;
:meth:`RecordingMetrics._report` checks the arguments against the rules derived from the
metric table (strict mode) and appends the call; the test queries the calls by hook and
argument name.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Final

from poller.observability.metrics.catalog import METRICS, NUMERIC_KINDS, Kind, MetricSpec
from poller.observability.metrics.hooks import HOOK_PARAMETERS, Metrics


def _amounts(specs: Iterable[MetricSpec]) -> dict[str, str]:
    """The hooks that report an amount (a counter's value), and which parameter holds it."""
    return {s.hook: s.value for s in specs if s.kind is Kind.COUNTER and s.value is not None}


def _non_negative(specs: Iterable[MetricSpec]) -> dict[str, frozenset[str]]:
    """Per hook, the numeric parameters that can never be negative."""
    found: dict[str, set[str]] = {hook: set() for hook in HOOK_PARAMETERS}
    for spec in specs:
        if spec.kind in NUMERIC_KINDS and spec.value is not None and not spec.may_be_negative:
            found[spec.hook].add(spec.value)
    return {hook: frozenset(names) for hook, names in found.items()}


def _allowed(specs: Iterable[MetricSpec]) -> dict[str, dict[str, tuple[str, ...]]]:
    """Per hook, the parameters with a closed set of values, and those values."""
    found: dict[str, dict[str, tuple[str, ...]]] = {hook: {} for hook in HOOK_PARAMETERS}
    for spec in specs:
        found[spec.hook].update(spec.closed_labels)
    return found


_AMOUNTS: Final = _amounts(METRICS)
_NON_NEGATIVE: Final = _non_negative(METRICS)
_ALLOWED: Final = _allowed(METRICS)


def _check_call(hook: str, args: tuple[Any, ...]) -> None:
    """Raise ``ValueError`` for an argument no correct caller passes."""
    non_negative, allowed = _NON_NEGATIVE[hook], _ALLOWED[hook]
    for name, value in zip(HOOK_PARAMETERS[hook], args, strict=True):
        if name in non_negative and value < 0:
            raise ValueError(f"{hook}({name}={value!r}): must not be negative")
        values = allowed.get(name)
        if values is not None and value not in values:
            raise ValueError(f"{hook}({name}={value!r}): expected one of {', '.join(values)}")


class RecordingMetrics(Metrics):
    """An in-memory :class:`Metrics` for pipeline tests: records every hook call in order.

    ``strict`` (the default) turns misuse into a ``ValueError`` at the call site, where a
    test sees it: a negative amount, duration or batch size, or an ``outcome`` or lease
    ``event`` outside :data:`INVOCATION_OUTCOMES` and :data:`LEASE_EVENTS`. (Production
    metrics never raise; these are the bugs they would count in
    ``poller_metrics_hook_errors_total``.) The rules come from the metric table: a numeric
    value not marked ``may_be_negative``, and a label's ``closed_labels``.

    Attributes:
        calls: every call as ``(hook name, positional arguments)``, in call order.
    """

    def __init__(self, *, strict: bool = True) -> None:
        self.strict = strict
        self.calls: list[tuple[str, tuple[Any, ...]]] = []

    def _report(self, hook: str, args: tuple[Any, ...]) -> None:
        """Check the call (strict mode) and keep it."""
        if self.strict:
            _check_call(hook, args)
        self.calls.append((hook, args))

    # -- queries ----------------------------------------------------------------------------
    def calls_to(self, hook: str, mapping: str | None = None, **match: Any) -> list[dict[str, Any]]:
        """The arguments, by parameter name, of every call to ``hook`` that matches.

        Args:
            hook: the hook's name, e.g. ``"invocation"``.
            mapping: only calls for this mapping; every mapping when omitted.
            **match: only calls whose named arguments equal these, e.g. ``outcome="timeout"``.

        Raises:
            ValueError: ``hook`` or a name in ``match`` is not a parameter of the hook.
        """
        names = HOOK_PARAMETERS.get(hook)
        if names is None:
            raise ValueError(f"no hook {hook!r}; hooks: {', '.join(sorted(HOOK_PARAMETERS))}")
        if mapping is not None:
            match["mapping"] = mapping
        unknown = set(match) - set(names)
        if unknown:
            raise ValueError(f"{hook}() has no parameter {', '.join(sorted(unknown))}")
        found = []
        for name, args in self.calls:
            if name != hook:
                continue
            named = dict(zip(names, args, strict=True))
            if all(named[key] == value for key, value in match.items()):
                found.append(named)
        return found

    def count(self, hook: str, mapping: str | None = None, **match: Any) -> int:
        """The total of an amount hook (``records_*``, ``visibility_extended``), or else
        the number of matching calls. Arguments as for :meth:`calls_to`."""
        calls = self.calls_to(hook, mapping, **match)
        amount = _AMOUNTS.get(hook)
        if amount is None:
            return len(calls)
        return sum(int(call[amount]) for call in calls)

    def last(self, hook: str, mapping: str | None = None, **match: Any) -> dict[str, Any] | None:
        """The arguments of the last matching call (a gauge's current value), or ``None``."""
        calls = self.calls_to(hook, mapping, **match)
        return calls[-1] if calls else None

    def hooks(self) -> list[str]:
        """The names of the hooks called, in call order."""
        return [name for name, _ in self.calls]

    def clear(self) -> None:
        """Forget every call."""
        self.calls.clear()
