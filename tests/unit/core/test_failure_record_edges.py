"""Edges of poller.core.failure_record that the AWS recordings do not reach."""

from __future__ import annotations

from typing import cast

import pytest

from poller.core.failure_record import SourceKind
from tests.unit.core.test_failure_record import build


def test_an_unknown_source_kind_is_refused_by_name() -> None:
    """Only Kinesis and DynamoDB Streams have a batch-info key; any other kind is a bug in the
    caller, named in the error rather than turned into a record without batch info."""
    with pytest.raises(ValueError, match=r"^unknown source kind 'kafka'$"):
        build(kind=cast(SourceKind, "kafka"))
