"""The control API over HTTP: boto3 against the real aiohttp server, on the in-memory store.

Data flow::

    boto3 lambda client (endpoint_url, SigV4, in a worker thread) --HTTP-->
        serve_control_api (this test's event loop) --> operations --> MemoryMappingStore
    the test acks revisions as replicas would (store.ack) --> the computed State moves on

Nothing of boto is patched: requests go over loopback to the server. Bad input that boto3
refuses to send (unknown fields, broken JSON, a huge body) is sent by aiohttp's client, signed
with botocore's signer where the test needs it signed. Shapes are held to the recordings made
on AWS (``tests/fixtures/aws-recorded/esm-api.json``) wherever a recorded scenario applies.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import aiohttp
import anyio
import botocore.session
import pytest
import structlog
import structlog.testing
import yarl
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials
from botocore.exceptions import ClientError
from pydantic import TypeAdapter

from poller.config import AnyMapping, ControlApiSettings, ControlCredentials, MappingConfig
from poller.control.auth import CredentialResolver
from poller.control.context import ControlContext
from poller.control.server import MAX_BODY_BYTES, serve_control_api
from poller.control.store_memory import MemoryMappingStore
from poller.errors import CheckpointError
from tests.support.conformance import assert_matches, recorded
from tests.support.waiting import wait_until

structlog_capture = structlog.testing.capture_logs

pytestmark = pytest.mark.anyio

REGION = "us-east-1"
ACCOUNT = "123456789012"
KEY_ID, SECRET = "AKIDC3COMPONENT00001", "c3-component-secret"
STREAM = f"arn:aws:kinesis:{REGION}:{ACCOUNT}:stream/orders"
DDB_STREAM = f"arn:aws:dynamodb:{REGION}:{ACCOUNT}:table/orders/stream/2026-12-05T00:00:00.000"
QUEUE = f"arn:aws:sqs:{REGION}:{ACCOUNT}:orders-queue"
DLQ = f"arn:aws:sqs:{REGION}:{ACCOUNT}:orders-dlq"
API_FILE = "esm-api.json"
_MAPPINGS = TypeAdapter[Any](MappingConfig)


def file_mapping(name: str, source_arn: str, function: str, **fields: Any) -> AnyMapping:
    """A mapping as the configuration file would give it."""
    body = {
        "name": name,
        "event_source_arn": source_arn,
        "target": {"type": "lambda", "function_name": function},
        **fields,
    }
    if ":sqs:" not in source_arn:
        body.setdefault("starting_position", "LATEST")
    mapping: AnyMapping = _MAPPINGS.validate_python(body)
    return mapping


class FlakyStore(MemoryMappingStore):
    """The memory store, with an outage switch (CheckpointError, as a backend raises it)."""

    down = False

    async def records(self) -> Any:
        if self.down:
            raise CheckpointError("the mapping store is down (test)")
        return await super().records()

    async def get(self, uuid: str) -> Any:
        if self.down:
            raise CheckpointError("the mapping store is down (test)")
        return await super().get(uuid)


@dataclass
class Api:
    """A running control API and what the test drives it with."""

    url: str
    store: FlakyStore
    files: list[AnyMapping]
    wakes: list[int] = field(default_factory=list)
    key: tuple[str, str] = (KEY_ID, SECRET)
    clients: dict[tuple[str, str], Any] = field(default_factory=dict)

    def client(self, key: tuple[str, str] | None = None) -> Any:
        """A boto3 client (one per key, reused: creating one costs tens of milliseconds)."""
        key = key or self.key
        if key not in self.clients:
            self.clients[key] = self._new_client(key)
        return self.clients[key]

    def _new_client(self, key: tuple[str, str]) -> Any:
        return botocore.session.get_session().create_client(
            "lambda",
            endpoint_url=self.url,
            region_name=REGION,
            aws_access_key_id=key[0],
            aws_secret_access_key=key[1],
            config=Config(retries={"total_max_attempts": 1}, read_timeout=30),
        )

    async def call(
        self, operation: str, *, key: tuple[str, str] | None = None, **params: Any
    ) -> dict[str, Any]:
        """A boto3 call in a worker thread; the parsed answer, or the parsed error."""

        def run() -> dict[str, Any]:
            try:
                answer: dict[str, Any] = getattr(self.client(key), operation)(**params)
            except ClientError as exc:
                return dict(exc.response)
            return answer

        return await anyio.to_thread.run_sync(run)

    async def ok(self, operation: str, **params: Any) -> dict[str, Any]:
        answer = await self.call(operation, **params)
        assert "Error" not in answer, answer
        return answer

    async def ack_all(self, *replicas: str) -> None:
        """Every replica applied everything up to the head (as poller.reconcile acks)."""
        head = await self.store.head()
        for replica in replicas or ("replica-a", "replica-b"):
            await self.store.ack(replica, head)

    async def raw(
        self,
        method: str,
        path: str,
        body: bytes = b"",
        *,
        sign: bool = True,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, dict[str, str], Any]:
        """A request boto3 would not send, signed by botocore's signer unless ``sign`` is
        false: (status, headers, JSON body or None)."""
        host = self.url.removeprefix("http://")
        all_headers = {"Content-Type": "application/json", **(headers or {})}
        if sign:
            request = AWSRequest(method=method, url=self.url + path, data=body, headers=all_headers)
            SigV4Auth(Credentials(*self.key), "lambda", REGION).add_auth(request)
            all_headers = {k: str(v) for k, v in request.headers.items()}
        all_headers["Host"] = host
        async with (
            aiohttp.ClientSession() as session,
            # encoded=True: send the path exactly as signed (yarl would decode %3A otherwise).
            session.request(
                method, yarl.URL(self.url + path, encoded=True), data=body, headers=all_headers
            ) as answer,
        ):
            text = await answer.read()
            parsed = json.loads(text) if text else None
            return answer.status, dict(answer.headers), parsed


@asynccontextmanager
async def running_api(
    *,
    auth: str = "sigv4",
    files: Sequence[AnyMapping] = (),
    clock: Callable[[], float] | None = None,
    max_mappings: int = 1000,
) -> AsyncIterator[Api]:
    """The server on a free loopback port, for the duration of the block."""
    settings = ControlApiSettings(
        enabled=True,
        port=0,
        auth=auth,  # type: ignore[arg-type]
        max_mappings=max_mappings,
        credentials=[
            ControlCredentials(access_key_id_env="C3_KEY", secret_access_key_env="C3_SECRET")
        ]
        if auth == "sigv4"
        else [],
    )
    store = FlakyStore()
    file_list = list(files)
    wakes: list[int] = []
    ctx_fields: dict[str, Any] = {} if clock is None else {"clock": clock}
    ctx = ControlContext(
        settings=settings,
        region=REGION,
        store=store,
        file_mappings=lambda: file_list,
        changed=lambda: wakes.append(1),
        **ctx_fields,
    )
    resolver = CredentialResolver(settings, environ={"C3_KEY": KEY_ID, "C3_SECRET": SECRET})
    async with anyio.create_task_group() as tasks:
        server = await tasks.start(partial(serve_control_api, ctx, credentials=resolver))
        yield Api(url=server.url, store=store, files=file_list, wakes=wakes)
        tasks.cancel_scope.cancel()


def kinesis_create(**extra: Any) -> dict[str, Any]:
    return {
        "FunctionName": "orders-handler",
        "EventSourceArn": STREAM,
        "StartingPosition": "TRIM_HORIZON",
        **extra,
    }


def as_recorded(answer: dict[str, Any]) -> dict[str, Any]:
    """A boto3 answer as the recordings keep it: the response metadata reduced to the status
    (timestamps stay datetimes; the matcher takes them for the recordings' "datetime")."""
    status = answer["ResponseMetadata"]["HTTPStatusCode"]
    return {**answer, "ResponseMetadata": {"HTTPHeaders": {}, "HTTPStatusCode": status}}


# --- CRUD and the state machine ------------------------------------------------------------


async def test_c3_lifecycle_matches_the_recording_and_follows_the_acks() -> None:
    """Scenario 2: Create -> Creating; once every replica acked -> Enabled; Delete ->
    Deleting; once every replica drained it and it is finalized -> 404."""
    expected = partial(recorded, API_FILE, "test_event_source_mapping_lifecycle")
    bindings: dict[str, Any] = {}
    async with running_api() as api:
        created = await api.ok(
            "create_event_source_mapping",
            FunctionName="orders-handler",
            EventSourceArn=DDB_STREAM,
            StartingPosition="TRIM_HORIZON",
            BatchSize=1,
            MaximumBatchingWindowInSeconds=1,
            MaximumRetryAttempts=1,
            DestinationConfig={"OnFailure": {"Destination": DLQ}},
        )
        assert_matches(as_recorded(created), expected("create_response"), bindings)
        uuid = created["UUID"]
        assert api.wakes, "a write wakes this replica's reconciler"

        await api.store.ack("replica-a", await api.store.head())
        await api.store.ack("replica-b", 0)
        still = await api.ok("get_event_source_mapping", UUID=uuid)
        assert still["State"] == "Creating", "one replica has not applied the create yet"
        await api.ack_all()
        got = await api.ok("get_event_source_mapping", UUID=uuid)
        assert_matches(as_recorded(got), expected("get_response"), bindings)

        deleted = await api.ok("delete_event_source_mapping", UUID=uuid)
        assert_matches(as_recorded(deleted), expected("delete_response"), bindings)
        await api.ack_all()
        record = await api.store.get(uuid)
        assert record is not None
        still_there = await api.ok("get_event_source_mapping", UUID=uuid)
        assert still_there["State"] == "Deleting", "a drained delete shows until finalized"
        assert await api.store.finalize_delete(uuid, record.revision)
        gone = await api.call("get_event_source_mapping", UUID=uuid)
        assert_matches(
            as_recorded(gone),
            recorded(API_FILE, "test_event_source_mapping_exceptions", "get_unknown_uuid"),
        )


async def test_c3_update_disable_enable_name_their_transitions() -> None:
    async with running_api() as api:
        created = await api.ok("create_event_source_mapping", **kinesis_create())
        uuid = created["UUID"]
        await api.ack_all()
        assert (await api.ok("get_event_source_mapping", UUID=uuid))["State"] == "Enabled"

        updated = await api.ok("update_event_source_mapping", UUID=uuid, BatchSize=10)
        assert (updated["State"], updated["BatchSize"]) == ("Updating", 10)
        assert updated["LastModified"] >= created["LastModified"]
        await api.ack_all()
        assert (await api.ok("get_event_source_mapping", UUID=uuid))["State"] == "Enabled"

        # A toggle names the change even when other fields change with it.
        disabled = await api.ok(
            "update_event_source_mapping", UUID=uuid, Enabled=False, BatchSize=20
        )
        assert (disabled["State"], disabled["BatchSize"]) == ("Disabling", 20)
        await api.ack_all()
        assert (await api.ok("get_event_source_mapping", UUID=uuid))["State"] == "Disabled"

        enabled = await api.ok("update_event_source_mapping", UUID=uuid, Enabled=True)
        assert enabled["State"] == "Enabling"
        await api.ack_all()
        assert (await api.ok("get_event_source_mapping", UUID=uuid))["State"] == "Enabled"


async def test_c3_an_update_that_changes_nothing_writes_nothing() -> None:
    async with running_api() as api:
        uuid = (await api.ok("create_event_source_mapping", **kinesis_create()))["UUID"]
        await api.ack_all()
        head = await api.store.head()
        wakes = len(api.wakes)
        same = await api.ok("update_event_source_mapping", UUID=uuid, BatchSize=100)
        assert same["State"] == "Enabled", "nothing changed, so nothing is in flight"
        again = await api.ok("update_event_source_mapping", UUID=uuid, Enabled=True)
        assert again["State"] == "Enabled"
        assert await api.store.head() == head
        assert len(api.wakes) == wakes


async def test_c3_delete_twice_answers_deleting_and_update_while_deleting_is_in_use() -> None:
    async with running_api() as api:
        uuid = (await api.ok("create_event_source_mapping", **kinesis_create()))["UUID"]
        first = await api.ok("delete_event_source_mapping", UUID=uuid)
        head = await api.store.head()
        second = await api.ok("delete_event_source_mapping", UUID=uuid)
        assert first["State"] == second["State"] == "Deleting"
        assert await api.store.head() == head, "a repeated delete writes nothing"
        refused = await api.call("update_event_source_mapping", UUID=uuid, BatchSize=5)
        assert refused["Error"] == {
            "Code": "ResourceInUseException",
            "Message": "Cannot update the event source mapping because it is in use.",
        }
        assert refused["ResponseMetadata"]["HTTPStatusCode"] == 400


async def test_c3_unknown_uuids_are_404_as_recorded() -> None:
    expected = partial(recorded, API_FILE, "test_event_source_mapping_exceptions")
    missing = "00000000-0000-4000-8000-000000000000"
    async with running_api() as api:
        for operation, key in (
            ("get_event_source_mapping", "get_unknown_uuid"),
            ("delete_event_source_mapping", "delete_unknown_uuid"),
        ):
            assert_matches(as_recorded(await api.call(operation, UUID=missing)), expected(key))
        update = await api.call("update_event_source_mapping", UUID=missing, BatchSize=5)
        assert_matches(as_recorded(update), expected("update_unknown_uuid"))
        no_arn = await api.call(
            "create_event_source_mapping", FunctionName="f", StartingPosition="LATEST"
        )
        assert_matches(as_recorded(no_arn), expected("create_no_event_source_arn"))


async def test_c3_a_second_mapping_of_one_function_and_source_is_a_conflict() -> None:
    async with running_api() as api:
        first = await api.ok("create_event_source_mapping", **kinesis_create())
        again = await api.call("create_event_source_mapping", **kinesis_create(BatchSize=5))
        assert again["Error"]["Code"] == "ResourceConflictException"
        assert again["ResponseMetadata"]["HTTPStatusCode"] == 409
        assert again["Error"]["Message"] == (
            f'The event source arn (" {STREAM} ") and function (" orders-handler ") provided '
            f"mapping already exists. Please update or delete the existing mapping with UUID "
            f"{first['UUID']}"
        )
        sqs: dict[str, Any] = {"FunctionName": "q-handler", "EventSourceArn": QUEUE}
        queue_first = await api.ok("create_event_source_mapping", **sqs)
        queue_again = await api.call("create_event_source_mapping", **sqs)
        assert queue_again["Error"]["Message"] == (
            f'An event source mapping with SQS arn (" {QUEUE} ") and function (" q-handler ") '
            "already exists. Please update or delete the existing mapping with UUID "
            f"{queue_first['UUID']}"
        )


async def test_c3_the_mapping_limit_is_an_invalid_parameter() -> None:
    async with running_api(max_mappings=1) as api:
        await api.ok("create_event_source_mapping", **kinesis_create())
        over = await api.call("create_event_source_mapping", **kinesis_create(FunctionName="g"))
        assert over["Error"]["Code"] == "InvalidParameterValueException"
        assert "limit of 1 event source mappings" in over["Error"]["Message"]


# --- List ------------------------------------------------------------------------------------


async def test_c3_list_pages_filters_and_includes_file_mappings() -> None:
    files = [file_mapping("orders-file", STREAM, "file-handler")]
    async with running_api(files=files) as api:
        created = [
            (await api.ok("create_event_source_mapping", **kinesis_create(FunctionName=f"fn{i}")))[
                "UUID"
            ]
            for i in range(7)
        ]
        queue = await api.ok(
            "create_event_source_mapping", FunctionName="fn0", EventSourceArn=QUEUE
        )
        every = sorted([*created, queue["UUID"], files[0].mapping_uuid])

        seen: list[str] = []
        params: dict[str, Any] = {"MaxItems": 3}
        while True:
            page = await api.ok("list_event_source_mappings", **params)
            assert len(page["EventSourceMappings"]) <= 3
            seen += [m["UUID"] for m in page["EventSourceMappings"]]
            if "NextMarker" not in page:
                break
            params["Marker"] = page["NextMarker"]
        assert seen == every, "every mapping once, in a stable order"

        by_source = await api.ok("list_event_source_mappings", EventSourceArn=QUEUE)
        assert [m["UUID"] for m in by_source["EventSourceMappings"]] == [queue["UUID"]]
        fn0_arn = f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:fn0"
        for name in ("fn0", fn0_arn, f"{ACCOUNT}:function:fn0"):
            by_function = await api.ok("list_event_source_mappings", FunctionName=name)
            assert sorted(m["UUID"] for m in by_function["EventSourceMappings"]) == sorted(
                [created[0], queue["UUID"]]
            ), name
        by_file = await api.ok("list_event_source_mappings", FunctionName="file-handler")
        [shown] = by_file["EventSourceMappings"]
        assert (shown["UUID"], shown["State"]) == (files[0].mapping_uuid, "Enabled")


async def test_c3_list_caps_pages_at_100_and_refuses_bad_markers() -> None:
    async with running_api(max_mappings=200) as api:
        for i in range(101):
            await api.ok("create_event_source_mapping", **kinesis_create(FunctionName=f"f{i}"))
        page = await api.ok("list_event_source_mappings", MaxItems=1000)
        assert len(page["EventSourceMappings"]) == 100
        assert "NextMarker" in page
        rest = await api.ok("list_event_source_mappings", Marker=page["NextMarker"])
        assert len(rest["EventSourceMappings"]) == 1
        assert "NextMarker" not in rest
        bad = await api.call("list_event_source_mappings", Marker="not-a-marker")
        assert bad["Error"]["Code"] == "InvalidParameterValueException"
        status, _, body = await api.raw("GET", "/2015-03-31/event-source-mappings/?MaxItems=0")
        assert status == 400
        assert "greater than or equal to 1" in body["message"]


# --- Tags ------------------------------------------------------------------------------------


async def test_c3_tag_lifecycle_matches_the_recording() -> None:
    """Scenario 6, step by step: tag, overwrite, untag (missing keys too), down to none."""
    expected = partial(recorded, API_FILE, "test_tag_lifecycle[event_source_mapping]")
    steps: list[tuple[str, str, Any]] = [
        ("tag_single_response", "tag", {"A": "tag-a"}),
        ("tag_multiple_response", "tag", {"B": "tag-b", "C": "tag-c"}),
        ("tag_overlap_response", "tag", {"C": "tag-c-newsuffix", "D": "tag-d"}),
        ("untag_single_response", "untag", ["A"]),
        ("untag_multiple_response", "untag", ["B", "C"]),
        ("untag_nonexisting_response", "untag", ["F"]),
        ("untag_existing_and_nonexisting_response", "untag", ["D", "F"]),
    ]
    async with running_api() as api:
        created = await api.ok("create_event_source_mapping", **kinesis_create())
        arn = created["EventSourceMappingArn"]
        stored = await api.store.get(created["UUID"])
        assert stored is not None
        revision = stored.revision
        for key, action, argument in steps:
            if action == "tag":
                answer = await api.ok("tag_resource", Resource=arn, Tags=argument)
            else:
                answer = await api.ok("untag_resource", Resource=arn, TagKeys=argument)
            assert_matches(as_recorded(answer), expected(key))
            listed = await api.ok("list_tags", Resource=arn)
            assert_matches(as_recorded(listed), expected(f"{key}_listtags"))
        record = await api.store.get(created["UUID"])
        assert record is not None
        assert record.revision == revision, "a tag write is no configuration change"
        assert (await api.ok("get_event_source_mapping", UUID=created["UUID"]))["State"] == (
            "Creating"
        )


async def test_c3_tag_exceptions_match_the_recording() -> None:
    """Scenario 7: an unknown mapping ARN is 404 for all three calls; a malformed one is a
    ValidationException quoting AWS's pattern."""
    expected = partial(recorded, API_FILE, "test_tag_exceptions[event_source_mapping]")
    missing = f"arn:aws:lambda:{REGION}:{ACCOUNT}:event-source-mapping:" + (
        "00000000-0000-4000-8000-000000000000"
    )
    async with running_api() as api:
        bindings: dict[str, Any] = {}
        tag = await api.call("tag_resource", Resource=missing, Tags={"A": "a"})
        assert_matches(as_recorded(tag), expected("not_found_exception_tag"), bindings)
        untag = await api.call("untag_resource", Resource=missing, TagKeys=["A"])
        assert_matches(as_recorded(untag), expected("not_found_exception_untag"), bindings)
        listed = await api.call("list_tags", Resource=missing)
        assert_matches(as_recorded(listed), expected("not_found_exception_list"), bindings)
        aliased = await api.call("list_tags", Resource=f"{missing}:alias")
        assert_matches(as_recorded(aliased), expected("aliased_arn_exception"))
        foobar = missing.replace("event-source-mapping", "foobar")
        invalid = await api.call("tag_resource", Resource=foobar, Tags={"A": "a"})
        assert_matches(as_recorded(invalid), expected("invalid_arn_exception"))


async def test_c3_tags_are_checked_as_the_file_checks_them() -> None:
    async with running_api() as api:
        arn = (await api.ok("create_event_source_mapping", **kinesis_create()))[
            "EventSourceMappingArn"
        ]
        reserved = await api.call("tag_resource", Resource=arn, Tags={"aws:x": "1"})
        assert reserved["Error"]["Code"] == "InvalidParameterValueException"
        too_many = await api.call(
            "tag_resource", Resource=arn, Tags={f"k{i}": "v" for i in range(51)}
        )
        assert too_many["Error"]["Code"] == "InvalidParameterValueException"
        assert (await api.ok("list_tags", Resource=arn))["Tags"] == {}


# --- File mappings ---------------------------------------------------------------------------


async def test_c3_file_mappings_are_visible_and_read_only() -> None:
    files = [file_mapping("orders-file", STREAM, "orders-handler", tags={"team": "file"})]
    uuid = files[0].mapping_uuid
    read_only = (
        f"The event source mapping {uuid} is defined in poller's configuration file "
        "(mapping 'orders-file') and is read-only through the API; change the file and send "
        "SIGHUP."
    )
    async with running_api(files=files) as api:
        got = await api.ok("get_event_source_mapping", UUID=uuid)
        assert (got["State"], got["StateTransitionReason"]) == ("Enabled", "User action")
        arn = got["EventSourceMappingArn"]
        assert (await api.ok("list_tags", Resource=arn))["Tags"] == {"team": "file"}
        refusals = [
            await api.call("update_event_source_mapping", UUID=uuid, BatchSize=5),
            await api.call("delete_event_source_mapping", UUID=uuid),
            await api.call("tag_resource", Resource=arn, Tags={"a": "b"}),
            await api.call("untag_resource", Resource=arn, TagKeys=["team"]),
        ]
        for refusal in refusals:
            assert refusal["Error"] == {"Code": "ResourceConflictException", "Message": read_only}
            assert refusal["ResponseMetadata"]["HTTPStatusCode"] == 409
        clash = await api.call("create_event_source_mapping", **kinesis_create())
        assert clash["Error"]["Code"] == "ResourceConflictException"
        assert clash["Error"]["Message"].endswith(f"existing mapping with UUID {uuid}")
        assert await api.store.records() == {}


# --- Bad input; the server keeps answering -------------------------------------------------


async def still_answers(api: Api) -> None:
    listed = await api.ok("list_event_source_mappings")
    assert listed["ResponseMetadata"]["HTTPStatusCode"] == 200


async def test_c3_bad_bodies_get_aws_errors() -> None:
    path = "/2015-03-31/event-source-mappings/"
    async with running_api() as api:
        status, headers, body = await api.raw("POST", path, b'{"FunctionName": ')
        assert (status, headers["x-amzn-ErrorType"]) == (400, "InvalidRequestContentException")
        assert body["Type"] == "User"
        await still_answers(api)
        status, headers, _ = await api.raw("POST", path, b'{"FunctionName": "\xff\xfe"}')
        assert (status, headers["x-amzn-ErrorType"]) == (400, "InvalidRequestContentException")
        await still_answers(api)
        huge = json.dumps({**kinesis_create(), "Padding": "x" * (300 * 1024)}).encode()
        assert len(huge) > MAX_BODY_BYTES
        status, headers, _ = await api.raw("POST", path, huge)
        assert (status, headers["x-amzn-ErrorType"]) == (413, "RequestEntityTooLargeException")
        await still_answers(api)
        status, headers, _ = await api.raw("GET", "/2015-03-31/functions/")
        assert (status, headers["x-amzn-ErrorType"]) == (404, "UnknownOperationException")
        await still_answers(api)


async def test_c3_unknown_fields_are_ignored_as_aws_ignores_them() -> None:
    path = "/2015-03-31/event-source-mappings/"
    async with running_api() as api:
        body = json.dumps({**kinesis_create(), "NoSuchField": 1}).encode()
        status, headers, created = await api.raw("POST", path, body)
        assert status == 202, created
        assert "NoSuchField" not in created
        assert headers["x-amzn-RequestId"]
        await still_answers(api)


async def test_c3_authentication_failures_are_403_and_harmless() -> None:
    async with running_api() as api:
        status, headers, body = await api.raw(
            "GET", "/2015-03-31/event-source-mappings/", sign=False
        )
        assert (status, headers["x-amzn-ErrorType"]) == (
            403,
            "MissingAuthenticationTokenException",
        )
        assert body == {"message": "Missing Authentication Token"}
        await still_answers(api)
        wrong_secret = await api.call("list_event_source_mappings", key=(KEY_ID, "wrong"))
        assert wrong_secret["Error"]["Code"] == "InvalidSignatureException"
        assert wrong_secret["ResponseMetadata"]["HTTPStatusCode"] == 403
        await still_answers(api)
        unknown = await api.call("list_event_source_mappings", key=("AKIDNOBODY", SECRET))
        assert unknown["Error"] == {
            "Code": "UnrecognizedClientException",
            "Message": "The security token included in the request is invalid.",
        }
        await still_answers(api)
        # A tag ARN's %3A, encoded once more by the signer, verifies: the tags test above
        # covers it; a wrong secret there fails the same way.
        arn = f"arn:aws:lambda:{REGION}:{ACCOUNT}:event-source-mapping:" + (
            "00000000-0000-4000-8000-000000000000"
        )
        tags = await api.call("list_tags", key=(KEY_ID, "wrong"), Resource=arn)
        assert tags["Error"]["Code"] == "InvalidSignatureException"


async def test_c3_a_stale_signature_is_refused() -> None:
    def twenty_minutes_ahead() -> float:
        return time.time() + 20 * 60

    async with running_api(clock=twenty_minutes_ahead) as api:
        stale = await api.call("list_event_source_mappings")
        assert stale["Error"]["Code"] == "InvalidSignatureException"
        assert stale["Error"]["Message"].startswith("Signature expired:")


async def test_c3_auth_none_accepts_any_or_no_signature() -> None:
    async with running_api(auth="none") as api:
        await api.ok("list_event_source_mappings")
        await api.ok("list_event_source_mappings", key=("AKIDANYONE", "anything"))
        status, _, body = await api.raw("GET", "/2015-03-31/event-source-mappings/", sign=False)
        assert (status, body) == (200, {"EventSourceMappings": []})


async def test_c3_a_store_outage_is_a_retryable_500_and_passes() -> None:
    async with running_api() as api:
        uuid = (await api.ok("create_event_source_mapping", **kinesis_create()))["UUID"]
        api.store.down = True
        failed = await api.call("get_event_source_mapping", UUID=uuid)
        assert failed["Error"] == {
            "Code": "ServiceException",
            "Message": "The mapping store did not answer; retry.",
        }
        assert failed["ResponseMetadata"]["HTTPStatusCode"] == 500
        api.store.down = False
        assert (await api.ok("get_event_source_mapping", UUID=uuid))["UUID"] == uuid


async def test_c3_a_bug_costs_one_request_not_the_server() -> None:
    async with running_api() as api:
        api.files.append("not a mapping")  # type: ignore[arg-type]
        with structlog_capture() as logs:
            failed = await api.call("list_event_source_mappings")
        assert failed["Error"]["Code"] == "ServiceException"
        assert any(e["event"] == "control.request_failed" for e in logs)
        api.files.clear()
        await still_answers(api)


async def test_c3_mutations_are_audited_without_secrets() -> None:
    async with running_api() as api:
        with structlog_capture() as logs:
            created = await api.ok("create_event_source_mapping", **kinesis_create())
            await api.ok("delete_event_source_mapping", UUID=created["UUID"])
            await api.ok("list_event_source_mappings")
        audit = [e for e in logs if e["event"] == "control.request"]
        assert [(e["op"], e["uuid"], e["access_key_id"], e["status"]) for e in audit] == [
            ("create", created["UUID"], KEY_ID, 202),
            ("delete", created["UUID"], KEY_ID, 202),
        ]
        assert SECRET not in repr(logs)


async def test_c3_the_port_closes_when_the_server_is_cancelled() -> None:
    async with running_api() as api:
        url = api.url
        await still_answers(api)
    host, port = url.removeprefix("http://").rsplit(":", 1)
    with pytest.raises(OSError, match=r"connect|refused"):
        await anyio.connect_tcp(host, int(port))


async def test_c3_a_chunked_body_over_the_limit_is_cut_off() -> None:
    async with running_api() as api:

        async def chunks() -> AsyncIterator[bytes]:
            for _ in range(40):
                yield b" " * (16 * 1024)  # 640 KiB in all, with no Content-Length

        async with (
            aiohttp.ClientSession() as session,
            session.post(api.url + "/2015-03-31/event-source-mappings/", data=chunks()) as answer,
        ):
            assert answer.status == 413
            assert answer.headers["x-amzn-ErrorType"] == "RequestEntityTooLargeException"
        await still_answers(api)


async def test_c3_a_client_that_trickles_its_body_is_cut_off(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("poller.control.server.BODY_READ_SECONDS", 0.5)
    async with running_api() as api:
        host, port = api.url.removeprefix("http://").rsplit(":", 1)
        async with await anyio.connect_tcp(host, int(port)) as slow:
            await slow.send(
                b"POST /2015-03-31/event-source-mappings/ HTTP/1.1\r\nHost: x\r\n"
                b"Content-Length: 100\r\n\r\n{"
            )
            await still_answers(api)  # others are served meanwhile
            with anyio.fail_after(30):
                head = await slow.receive()
        assert head.startswith(b"HTTP/1.1 400"), head[:200]
        assert b"InvalidRequestContentException" in head
        await still_answers(api)


async def test_c3_changing_the_function_changes_the_function_arn() -> None:
    async with running_api() as api:
        created = await api.ok("create_event_source_mapping", **kinesis_create())
        moved = await api.ok(
            "update_event_source_mapping", UUID=created["UUID"], FunctionName="other-fn:live"
        )
        assert moved["FunctionArn"] == f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:other-fn:live"
        assert moved["State"] == "Updating"
        listed = await api.ok("list_event_source_mappings", FunctionName="other-fn:live")
        assert [m["UUID"] for m in listed["EventSourceMappings"]] == [created["UUID"]]


async def test_c3_odd_requests_boto3_would_not_send() -> None:
    mappings = "/2015-03-31/event-source-mappings/"
    async with running_api() as api:
        arn = (await api.ok("create_event_source_mapping", **kinesis_create()))[
            "EventSourceMappingArn"
        ]
        tags = f"/2017-03-31/tags/{arn.replace(':', '%3A')}"
        cases: list[tuple[str, str, bytes, int, str]] = [
            ("GET", mappings + "?MaxItems=abc", b"", 400, "ValidationException"),
            ("GET", mappings + "?MaxItems=10001", b"", 400, "ValidationException"),
            ("DELETE", tags, b"", 400, "ValidationException"),  # no tagKeys
            ("POST", tags, b"{}", 400, "ValidationException"),  # no Tags
            ("POST", tags, b'{"Tags": ["a"]}', 400, "InvalidParameterValueException"),
            ("POST", tags, b'{"Tags": {"a": NaN}}', 400, "InvalidRequestContentException"),
            ("POST", mappings, b"", 400, "ValidationException"),  # no body at all
            ("PATCH", mappings, b"", 404, "UnknownOperationException"),
        ]
        for method, path, body, status, code in cases:
            got_status, headers, _ = await api.raw(method, path, body)
            assert (got_status, headers["x-amzn-ErrorType"]) == (status, code), (method, path)
        function = f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:orders-handler"
        not_a_mapping = await api.call("list_tags", Resource=function)
        assert not_a_mapping["Error"]["Code"] == "ResourceNotFoundException"
        await still_answers(api)


async def test_c3_a_crowd_of_slow_clients_is_turned_away_not_queued(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("poller.control.server.MAX_IN_FLIGHT", 2)
    async with running_api() as api:
        host, port = api.url.removeprefix("http://").rsplit(":", 1)
        slow = [await anyio.connect_tcp(host, int(port)) for _ in range(2)]
        for stream in slow:
            await stream.send(
                b"POST /2015-03-31/event-source-mappings/ HTTP/1.1\r\nHost: x\r\n"
                b"Content-Length: 100\r\n\r\n{"
            )
        turned_away = await api.call("list_event_source_mappings")
        assert turned_away["Error"]["Code"] == "TooManyRequestsException"
        assert turned_away["ResponseMetadata"]["HTTPStatusCode"] == 429
        for stream in slow:
            await stream.aclose()

        async def served() -> bool:
            return "Error" not in await api.call("list_event_source_mappings")

        await wait_until(served, 30, "the slow clients' slots to free")


async def test_c3_an_update_may_not_map_a_function_mapped_to_the_source_already() -> None:
    files = [file_mapping("orders-file", STREAM, "file-handler")]
    async with running_api(files=files) as api:
        first = await api.ok("create_event_source_mapping", **kinesis_create(FunctionName="a"))
        second = await api.ok("create_event_source_mapping", **kinesis_create(FunctionName="b"))
        onto_api = await api.call(
            "update_event_source_mapping", UUID=second["UUID"], FunctionName="a"
        )
        assert onto_api["Error"]["Code"] == "ResourceConflictException"
        assert onto_api["Error"]["Message"].endswith(f"with UUID {first['UUID']}")
        onto_file = await api.call(
            "update_event_source_mapping", UUID=second["UUID"], FunctionName="file-handler"
        )
        assert onto_file["Error"]["Message"].endswith(f"with UUID {files[0].mapping_uuid}")
        # Its own function, given again, is no conflict.
        same = await api.ok("update_event_source_mapping", UUID=second["UUID"], FunctionName="b")
        assert same["UUID"] == second["UUID"]
