"""How the lease table's calls translate transaction and batch-read answers: a refused
transaction is an answer, anything else a CheckpointError naming the table and the call.
The client here is a stand-in that returns or raises what botocore does for those answers
(the real answers, from moto and DynamoDB Local, are in
``tests/integration/test_c2_store_contract.py``)."""

from __future__ import annotations

from typing import Any

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError

from poller.checkpoints.dynamodb.calls import TableCalls, Transaction
from poller.errors import CheckpointError

pytestmark = pytest.mark.anyio


def cancelled(*codes: str) -> ClientError:
    """A TransactionCanceledException as botocore raises it (reasons at the top level)."""
    response: dict[str, Any] = {
        "Error": {"Code": "TransactionCanceledException", "Message": "Transaction cancelled"},
        "CancellationReasons": [{"Code": code} for code in codes],
    }
    return ClientError(response, "TransactWriteItems")


class StandIn:
    """Answers each call with the next of ``answers`` (raised when an exception)."""

    def __init__(self, *answers: Any) -> None:
        self.answers = list(answers)
        self.sent: list[dict[str, Any]] = []

    async def _answer(self, **params: Any) -> Any:
        self.sent.append(params)
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    transact_write_items = _answer
    batch_get_item = _answer


async def test_a_transaction_names_the_table_in_each_action_and_sends_the_token() -> None:
    client = StandIn({})
    result = await TableCalls(client, "leases").transact_write(
        "TransactWriteItems (x)", [{"Put": {"Item": {}}}, {"Delete": {"Key": {}}}], token="t-1"
    )
    assert result == Transaction(True)
    assert client.sent == [
        {
            "TransactItems": [
                {"Put": {"Item": {}, "TableName": "leases"}},
                {"Delete": {"Key": {}, "TableName": "leases"}},
            ],
            "ClientRequestToken": "t-1",
        }
    ]


@pytest.mark.parametrize(
    "codes", [("ConditionalCheckFailed", "None"), ("None", "TransactionConflict")]
)
async def test_a_refused_transaction_is_an_answer(codes: tuple[str, ...]) -> None:
    calls = TableCalls(StandIn(cancelled(*codes)), "leases")
    assert await calls.transact_write("T", [{"Put": {}}]) == Transaction(False, codes)


@pytest.mark.parametrize(
    "error",
    [
        cancelled("ConditionalCheckFailed", "ValidationError"),
        cancelled("ThrottlingError"),
        ClientError({"Error": {"Code": "ValidationException", "Message": "bad"}}, "T"),
        EndpointConnectionError(endpoint_url="http://127.0.0.1:1"),
    ],
)
async def test_other_failures_are_checkpoint_errors(error: Exception) -> None:
    calls = TableCalls(StandIn(error), "leases")
    with pytest.raises(CheckpointError, match="lease table leases: TransactWriteItems"):
        await calls.transact_write("TransactWriteItems (mapping create)", [{"Put": {}}])


async def test_a_batch_read_is_consistent_and_returns_what_is_left() -> None:
    answer = {
        "Responses": {"leases": [{"leaseKey": {"S": "a"}}]},
        "UnprocessedKeys": {"leases": {"Keys": [{"leaseKey": {"S": "b"}}]}},
    }
    client = StandIn(answer, {"Responses": {"leases": []}})
    calls = TableCalls(client, "leases")
    assert await calls.batch_read("B", ["a", "b"]) == ([{"leaseKey": {"S": "a"}}], ["b"])
    assert client.sent[0] == {
        "RequestItems": {
            "leases": {
                "Keys": [{"leaseKey": {"S": "a"}}, {"leaseKey": {"S": "b"}}],
                "ConsistentRead": True,
            }
        }
    }
    assert await calls.batch_read("B", ["c"]) == ([], [])


async def test_a_failed_batch_read_is_a_checkpoint_error() -> None:
    calls = TableCalls(StandIn(EndpointConnectionError(endpoint_url="http://x")), "leases")
    with pytest.raises(CheckpointError, match="lease table leases: BatchGetItem"):
        await calls.batch_read("BatchGetItem (mapping records)", ["a"])
