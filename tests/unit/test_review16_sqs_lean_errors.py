"""Review 16 (hostile) of the SQS lean path, fast tier: an error answer whose body is not a
JSON error (a load balancer's or proxy's page, plain text, nothing) must be read as botocore
reads it, from the one request botocore's config allows (one attempt), not sent again through
the full client. Canned answers from a local HTTP server; nothing patched.
"""

from __future__ import annotations

import pytest

from poller.aws.clients import ClientFactory
from poller.aws.translate import error_code
from poller.errors import SourceError
from poller.sources import sqs as sqs_source
from tests.unit.test_lean_sqs_scripted import (
    ENTRIES,
    RECEIVE,
    Answer,
    Canned,
    read_twice,
    served,  # noqa: F401 (the fixture)
)

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize(
    "answer",
    [
        (503, {"Content-Type": "text/html"}, b"<html><body>Service Unavailable</body></html>"),
        (500, {}, b""),
        (502, {"Content-Type": "text/plain"}, b"Bad Gateway"),
        (403, {"Content-Type": "text/html"}, b"<html><body>Forbidden by a WAF</body></html>"),
        (400, {"Content-Type": "text/plain"}, b"Bad Request"),
    ],
    ids=["html-503", "empty-500", "text-502", "html-403", "text-400"],
)
async def test_a_non_json_error_is_botocores_error_from_one_request(
    served: tuple[Canned, ClientFactory],  # noqa: F811
    answer: Answer,
) -> None:
    canned, factory = served
    for operation, params in (("ReceiveMessage", RECEIVE), ("DeleteMessageBatch", ENTRIES)):
        lean_error, full_error, lean = await read_twice(canned, factory, operation, answer, params)
        assert lean.fallbacks == 0, f"{operation}: the lean call sent the request again"
        assert isinstance(lean_error, SourceError)
        assert isinstance(full_error, SourceError)
        assert type(lean_error) is type(full_error)
        assert str(lean_error) == str(full_error)
        assert error_code(lean_error.__cause__) == error_code(full_error.__cause__)
        assert sqs_source._queue_gone(lean_error) == sqs_source._queue_gone(full_error)
        assert lean.enabled
    assert canned.answers == []
