"""On-failure destinations: where failure records go, and the registry that builds them.

Data flow::

    config (on-failure destination ARN) --build_destination--> FailureDestination
    ShardProcessor (records exhausted retries or exceeded their maximum age)
        --failure_record(...)--> FailureDestination.send --> SQS queue / SNS topic / S3 bucket

The shard processor calls :meth:`FailureDestination.send` once per batch it gives up on. Until
``send`` returns, those records are not settled and the shard's checkpoint does not move: a
:class:`~poller.errors.DestinationError` (retriable) makes the engine back off and send again,
so a destination outage pauses the shard instead of losing records. A refusal that will not
pass by itself (``DestinationError.permanent``: access denied, no such queue, topic or bucket)
is waited out too, but reported as blocking the mapping. Destinations never log the
record; their errors name the destination ARN and the AWS error code only.

A destination type is one module (``sqs``, ``sns``, ``s3``) with a builder, and one entry in
``_BUILDERS`` keyed by the service field of the ARN. FIFO queues and topics are rejected when
the destination is built, as AWS rejects them.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import aiohttp
from botocore.exceptions import BotoCoreError, ClientError, ParamValidationError

from poller.aws.translate import error_code
from poller.errors import ConfigError, DestinationError

if TYPE_CHECKING:
    from poller.aws.clients import ClientFactory
    from poller.types import StreamRecord

__all__ = [
    "DestinationArn",
    "FailureDestination",
    "build_destination",
    "destination_call",
    "parse_arn",
    "reject_fifo",
    "require_region_and_account",
]

#: ``arn:partition:service:region:account:resource``; region and account may be empty (S3).
_ARN = re.compile(
    r"^arn:(?P<partition>aws[a-z-]*):(?P<service>[a-z0-9-]+):(?P<region>[a-z0-9-]*):"
    r"(?P<account>\d{12}|):(?P<resource>.+)$"
)

#: Error codes whose service message quotes the message body; the message is dropped so that
#: record data never reaches an exception or a log line.
_MESSAGE_ECHOES_PAYLOAD = frozenset({"InvalidMessageContents"})

#: Error codes that say the destination cannot accept anything until someone changes it: a
#: missing permission, a KMS key that is disabled, deleted or forbidden, or a queue, topic or
#: bucket that does not exist. The shard still waits (nothing is dropped), but these are
#: reported as blocking, loudly (see ``poller.streams.failures``). Each service spells its
#: KMS errors its own way (the codes of its botocore model; SQS and S3 also send
#: ``KMS.*Exception``).
PERMANENT_CODES = frozenset(
    {
        # Permissions and credentials.
        "AccessDenied",
        "AccessDeniedException",
        "AuthorizationError",
        "InvalidClientTokenId",
        "UnrecognizedClientException",
        "InvalidSecurity",
        # KMS, as Kinesis and Lambda, SNS, SQS (JSON), and SQS or S3 (query-style) spell it.
        "KMSAccessDeniedException",
        "KMSDisabledException",
        "KMSNotFoundException",
        "KMSInvalidStateException",
        "KMSAccessDenied",
        "KMSDisabled",
        "KMSNotFound",
        "KMSInvalidState",
        "KMSOptInRequired",
        "KmsAccessDenied",
        "KmsDisabled",
        "KmsNotFound",
        "KmsInvalidState",
        "KmsInvalidKeyUsage",
        "KMS.AccessDeniedException",
        "KMS.DisabledException",
        "KMS.NotFoundException",
        "KMS.InvalidStateException",
        "KMS.InvalidKeyUsageException",
        # The resource does not exist.
        "AWS.SimpleQueueService.NonExistentQueue",
        "QueueDoesNotExist",
        "NoSuchBucket",
        "NotFound",
        "NotFoundException",
        "ResourceNotFound",
        "ResourceNotFoundException",
    }
)

#: The longest service message kept in a DestinationError.
_MAX_MESSAGE = 300


class FailureDestination(Protocol):
    """Receives the failure records of one event source mapping."""

    #: The destination's ARN, as configured.
    arn: str

    async def send(
        self,
        record: dict[str, Any],
        *,
        records: Sequence[StreamRecord],
        mapping_uuid: str,
        shard_id: str,
    ) -> None:
        """Deliver one failure record.

        Args:
            record: the failure record (:func:`poller.core.failure_record.failure_record`).
            records: the records it describes; only S3 stores them (as ``payload``).
            mapping_uuid: the mapping's UUID; part of S3 object keys.
            shard_id: the shard of the records; part of S3 object keys.

        Raises:
            DestinationError: the destination did not accept the record. Retriable.
        """
        ...


@dataclass(frozen=True, slots=True)
class DestinationArn:
    """The fields of a destination ARN."""

    arn: str
    partition: str
    service: str
    region: str
    account: str
    resource: str


def parse_arn(arn: str) -> DestinationArn:
    """Split a destination ARN into its fields.

    Raises:
        ConfigError: ``arn`` is not an ARN.
    """
    found = _ARN.fullmatch(arn)
    if found is None:
        raise ConfigError(
            [f"on-failure destination {arn!r}: not an ARN (arn:<partition>:<service>:...)"]
        )
    return DestinationArn(arn=arn, **found.groupdict())


@asynccontextmanager
async def destination_call(arn: str, call: str) -> AsyncIterator[None]:
    """Wrap one AWS call of a destination so that only ``DestinationError`` escapes it.

    The error names the destination and the call, and for a service error its AWS error code.
    """
    try:
        yield
    except ClientError as exc:
        code = error_code(exc)
        message = "" if code in _MESSAGE_ECHOES_PAYLOAD else _service_message(exc)
        text = f"on-failure destination {arn}: {call} failed with {code}"
        raise DestinationError(
            f"{text}: {message}" if message else text, permanent=code in PERMANENT_CODES
        ) from exc
    except ParamValidationError as exc:
        # Its text quotes parameter values, which may be record data.
        raise DestinationError(
            f"on-failure destination {arn}: {call} was refused by botocore's validation"
        ) from exc
    except (BotoCoreError, aiohttp.ClientError, OSError, TimeoutError) as exc:
        raise DestinationError(
            f"on-failure destination {arn}: {call} could not reach the service: "
            f"{type(exc).__name__}: {exc}"
        ) from exc


def _service_message(exc: ClientError) -> str:
    message = str(exc.response.get("Error", {}).get("Message", "") or "")
    return message[:_MAX_MESSAGE]


def reject_fifo(arn: DestinationArn, kind: str) -> None:
    """Raise if ``arn`` names a FIFO queue or topic, which AWS refuses as a destination."""
    if arn.resource.endswith(".fifo"):
        raise DestinationError(
            f"on-failure destination {arn.arn}: FIFO {kind}s cannot be on-failure "
            f"destinations; use a standard {kind}"
        )


def require_region_and_account(arn: DestinationArn, kind: str) -> None:
    """Raise ConfigError unless the ARN has the region and account a queue or topic needs."""
    if not arn.region or not arn.account or ":" in arn.resource or "/" in arn.resource:
        raise ConfigError(
            [
                f"on-failure destination {arn.arn!r}: expected an {kind} ARN such as "
                f"arn:aws:{arn.service}:us-east-1:123456789012:my-{kind}"
            ]
        )


# The builders import the helpers above, so they are imported once those exist.
from poller.destinations import s3, sns, sqs  # noqa: E402

#: Builders by the service field of the ARN.
_BUILDERS: dict[str, Callable[[DestinationArn, ClientFactory], Awaitable[FailureDestination]]] = {
    "sqs": sqs.build,
    "sns": sns.build,
    "s3": s3.build,
}


async def build_destination(arn: str, *, clients: ClientFactory) -> FailureDestination:
    """Build the on-failure destination ``arn`` names.

    Nothing is sent to AWS here; an SQS queue's URL is resolved on the first send.

    Args:
        arn: an SQS queue, SNS topic or S3 bucket ARN.
        clients: the service's client factory; queues and topics get a client in their own
            region, buckets one in the factory's region.

    Returns:
        A ready destination.

    Raises:
        ConfigError: ``arn`` is not an ARN, or names a service that cannot be a destination.
        DestinationError: ``arn`` names a FIFO queue or topic.
    """
    parsed = parse_arn(arn)
    builder = _BUILDERS.get(parsed.service)
    if builder is None:
        known = ", ".join(sorted(_BUILDERS))
        raise ConfigError(
            [
                f"on-failure destination {arn!r}: service {parsed.service!r} cannot be an "
                f"on-failure destination (supported: {known})"
            ]
        )
    return await builder(parsed, clients)
