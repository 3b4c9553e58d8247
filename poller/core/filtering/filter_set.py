"""The filter list of a mapping: compiled once at config load, asked about every record.

:func:`compile_filters` validates the list (quota, one compiled pattern each, see
:mod:`.patterns`); :meth:`FilterSet.matches` decodes a record's data at most once (Kinesis
``data`` as base64 JSON, an SQS ``body`` by Lambda's body-format table) and ORs the filters.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence
from typing import Any, Final

from poller.core.filtering import json_text
from poller.core.filtering.events import _Obj
from poller.core.filtering.patterns import CompiledFilter, _compile_one
from poller.core.filtering.syntax import _SOURCES, MAX_FILTERS, FilterError, Source

_NOT_JSON: Final[Any] = object()


def compile_filters(
    patterns: Sequence[str], *, source: Source, max_filters: int = MAX_FILTERS
) -> FilterSet:
    """Parse and validate a mapping's filter patterns (``FilterCriteria.Filters[].Pattern``).

    Args:
        patterns: The pattern strings, in order. None at all means no filtering.
        source: The event source the patterns are for; it decides how data is matched.
        max_filters: The filter quota (AWS: 5 by default, raisable to 10).

    Returns:
        The compiled filters.

    Raises:
        FilterError: A pattern is invalid, too long, or there are too many of them.
    """
    if source not in _SOURCES:
        raise ValueError(f"unknown event source {source!r}")
    if isinstance(patterns, str):
        raise FilterError("expected a list of pattern strings, not one string")
    if len(patterns) > max_filters:
        raise FilterError(
            f"{len(patterns)} filters given; an event source mapping takes at most {max_filters}"
        )
    filters = tuple(_compile_one(p, i, source) for i, p in enumerate(patterns))
    return FilterSet(filters, source)


def _decode_kinesis_data(record: _Obj) -> Any:
    """The record's ``kinesis.data`` base64-decoded and parsed, or ``_NOT_JSON``."""
    kinesis = record.get("kinesis")
    raw = kinesis.get("data") if isinstance(kinesis, dict) else None
    if not isinstance(raw, str):
        return _NOT_JSON
    try:
        return json_text._loads(base64.b64decode(raw, validate=True).decode("utf-8"))
    except (binascii.Error, ValueError, RecursionError):
        return _NOT_JSON


def _parse_body(record: _Obj) -> Any:
    """The record's SQS ``body`` parsed as JSON, or ``_NOT_JSON`` for a plain-string body."""
    body = record.get("body")
    if not isinstance(body, str):
        return _NOT_JSON
    try:
        return json_text._loads(body)
    except (ValueError, RecursionError):
        return _NOT_JSON


class FilterSet:
    """A mapping's compiled filters; a record passes when any filter matches (OR).

    An empty set passes every record. Records are the Lambda event records as delivered:
    ``{"kinesis": {..., "data": <base64>}, "eventSource": ...}``, the DynamoDB Streams record,
    or the SQS message record with its ``body`` string.

    Attributes:
        filters: The compiled filters, in configuration order.
        source: The event source they were compiled for.
        references_data: Whether any pattern references the data key (Kinesis ``data``, SQS
            ``body``), i.e. whether matching decodes record data at all.
    """

    __slots__ = ("_kinesis_meta", "filters", "references_data", "source")

    def __init__(self, filters: tuple[CompiledFilter, ...], source: Source) -> None:
        self.filters = filters
        self.source = source
        self.references_data = any(f.references_data for f in filters)
        # Whether Kinesis patterns look at anything but ``data`` (the view then holds it all).
        self._kinesis_meta = any(f.fields - {"data"} for f in filters)

    def __len__(self) -> int:
        return len(self.filters)

    def matches(self, record: _Obj) -> bool:
        """Whether ``record`` passes the filters. Never raises on odd record contents."""
        if not self.filters:
            return True
        if self.source == "kinesis":
            return self._matches_kinesis(record)
        if self.source == "sqs" and self.references_data:
            return self._matches_sqs(record)
        return any(f.root(record, (record,)) for f in self.filters)

    def _matches_kinesis(self, record: _Obj) -> bool:
        data = _decode_kinesis_data(record) if self.references_data else _NOT_JSON
        view = _kinesis_view(record, data, with_meta=self._kinesis_meta)
        ctx = (view,)
        for f in self.filters:
            if f.references_data and data is _NOT_JSON:
                continue
            if f.root(view, ctx):
                return True
        return False

    def _matches_sqs(self, record: _Obj) -> bool:
        body = _parse_body(record)
        is_json = body is not _NOT_JSON
        json_view = {**record, "body": body} if is_json else record
        for f in self.filters:
            kind = f.data_kind
            if (kind == "object" and not is_json) or (kind == "value" and is_json):
                continue  # Lambda's body-format rule: a JSON/plain mismatch never matches
            view = record if kind == "none" else json_view
            if f.root(view, (view,)):
                return True
        return False


def _kinesis_view(record: _Obj, data: Any, *, with_meta: bool) -> dict[str, Any]:
    """What Kinesis patterns see: ``data`` as parsed JSON beside the record's metadata.

    Metadata is there both as delivered (``kinesis.partitionKey``) and flattened
    (``partitionKey``), the record shape of Lambda's 2022 filtering docs; AWS now documents
    only ``data`` as filterable for Kinesis.
    """
    view: dict[str, Any] = {}
    if with_meta:
        view.update(record)
        kinesis = record.get("kinesis")
        if isinstance(kinesis, dict):
            view.update(kinesis)
    if data is _NOT_JSON:
        view.pop("data", None)  # the base64 text is never matched as ``data``
    else:
        view["data"] = data
    return view
