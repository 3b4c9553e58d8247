"""ARN forms: the patterns each source, destination and function ARN must match.

Where it sits in the data flow::

    event_source_arn, destination_arn, function_name (YAML values)
        --patterns here--> the model fields that validate them (poller.config.models)
        --arn_service()--> the mapping kind (kinesis, dynamodb, sqs) and error wording

The patterns are regular expressions as pydantic field patterns take them (no look-ahead),
except the destination ones, which :func:`check_destination_arn` applies itself so that a FIFO
queue or topic gets its own message. :func:`arn_service` reads the service field of any
ARN-looking text; the union of mapping models is keyed by it.

DynamoDB Local (AWS's own emulator) writes the pseudo-region ``ddblocal`` into its stream ARNs
and answers only to those exact ARNs, so :data:`DYNAMODB_STREAM_ARN` accepts that region too
(Kinesis and SQS ARNs do not). Such an ARN names no region a client can sign for:
:func:`client_region` gives the configured ``aws.region`` for it instead.
"""

from __future__ import annotations

import re

from poller.config.wording import own_error, show

PARTITION = "(?:aws|aws-cn|aws-us-gov)"
REGION = "[a-z]{2}(?:-gov|-iso[a-z]?)?-[a-z]+-[0-9]{1,2}"
_KINESIS_STREAM = f"arn:{PARTITION}:kinesis:{REGION}:[0-9]{{12}}:stream/[A-Za-z0-9_.-]{{1,128}}"
#: A Kinesis mapping's source: a stream, or a stream's enhanced fan-out consumer (as Lambda):
#: the stream's ARN, then ``/consumer/<name>:<creation epoch>``.
KINESIS_ARN = f"^{_KINESIS_STREAM}(?:/consumer/[A-Za-z0-9_.-]{{1,128}}:[0-9]{{1,20}})?$"
#: A consumer name (RegisterStreamConsumer ``ConsumerName``).
CONSUMER_NAME = "^[A-Za-z0-9_.-]{1,128}$"
IAM_ARN = f"^arn:{PARTITION}:iam::[0-9]{{12}}:.+$"
#: The region DynamoDB Local puts in its ARNs (and in the events' ``awsRegion``).
DYNAMODB_LOCAL_REGION = "ddblocal"
#: DynamoDB Local rounds ``ApproximateCreationDateTime`` down to the minute (AWS: the second).
DYNAMODB_LOCAL_CREATION_TIME_STEP = 60.0
DYNAMODB_STREAM_ARN = (
    f"^arn:{PARTITION}:dynamodb:(?:{REGION}|{DYNAMODB_LOCAL_REGION}):[0-9]{{12}}:"
    "table/[A-Za-z0-9_.-]{3,255}/stream/[A-Za-z0-9_.:-]{1,128}$"
)
# The FunctionName pattern of the botocore Lambda model, anchored.
FUNCTION_NAME = (
    r"^(arn:(aws[a-zA-Z-]*)?:lambda:)?([a-z]{2}(-gov)?-[a-z]+-\d{1}:)?(\d{12}:)?(function:)?"
    r"([a-zA-Z0-9-_]+)(:(\$LATEST|[a-zA-Z0-9-_]+))?$"
)


def _queue_or_topic_arn(service: str, max_name: int) -> re.Pattern[str]:
    """An SQS queue or SNS topic ARN; the name, '.fifo' suffix included, is group ``name``."""
    name = f"(?P<name>(?=.{{1,{max_name}}}$)[A-Za-z0-9_-]+(?:\\.fifo)?)"
    return re.compile(f"^arn:{PARTITION}:{service}:{REGION}:[0-9]{{12}}:{name}$")


# On-failure destinations (AWS DestinationConfig.OnFailure.Destination). Queue names have up to
# 80 and topic names up to 256 characters; bucket names 3 to 63 of a-z, 0-9, '.' and '-'.
_SQS_QUEUE_ARN = _queue_or_topic_arn("sqs", 80)
# The same queue ARN as a source, without look-ahead (pydantic's regex engine has none): a
# name of up to 80 characters, '.fifo' included.
SQS_SOURCE_ARN = (
    f"^arn:{PARTITION}:sqs:{REGION}:[0-9]{{12}}:"
    "(?:[A-Za-z0-9_-]{1,80}|[A-Za-z0-9_-]{1,75}\\.fifo)$"
)
_SNS_TOPIC_ARN = _queue_or_topic_arn("sns", 256)
_S3_BUCKET_ARN = re.compile(f"^arn:{PARTITION}:s3:::[a-z0-9][a-z0-9.-]{{1,61}}[a-z0-9]$")
DESTINATION_FORMS = (
    "an SQS queue ARN arn:<partition>:sqs:<region>:<12-digit account>:<queue>, "
    "an SNS topic ARN arn:<partition>:sns:<region>:<12-digit account>:<topic> "
    "or an S3 bucket ARN arn:<partition>:s3:::<bucket>, with partition aws, aws-cn or aws-us-gov"
)
_DESTINATION_KINDS = {"sqs": "SQS queue ARN", "sns": "SNS topic ARN", "s3": "S3 bucket ARN"}


def check_destination_arn(arn: str) -> str:
    """Accept a standard SQS queue, a standard SNS topic or an S3 bucket ARN.

    AWS accepts a FIFO queue or topic when the mapping is created, then fails every delivery to
    it (``DestinationDeliveryFailures``); poller refuses it up front instead.
    """
    for kind, pattern in (("queue", _SQS_QUEUE_ARN), ("topic", _SNS_TOPIC_ARN)):
        match = pattern.match(arn)
        if match and match["name"].endswith(".fifo"):
            raise own_error(
                "fifo_destination",
                "{value} is a FIFO {what}; AWS on-failure destinations must be standard "
                "queues or topics, not FIFO; expected {forms}",
                value=show(arn),
                what=kind,
                forms=DESTINATION_FORMS,
            )
        if match:
            return arn
    if _S3_BUCKET_ARN.match(arn):
        return arn
    service = arn_service(arn)
    if service is None:
        head = "is not an ARN"
    elif service in _DESTINATION_KINDS:
        head = f"is not a valid {_DESTINATION_KINDS[service]}"
    else:
        head = f"is an ARN of service {service!r}, which cannot be an on-failure destination"
    raise own_error(
        "destination_arn",
        "{value} {head}; expected {forms}",
        value=show(arn),
        head=head,
        forms=DESTINATION_FORMS,
    )


def arn_service(arn: str) -> str | None:
    """The service field of an ARN (``kinesis``, ``dynamodb``, ``sqs``), or None."""
    parts = arn.split(":")
    return parts[2] if len(parts) >= 3 and parts[0] == "arn" and parts[2] else None


def is_dynamodb_local(arn: str) -> bool:
    """Whether ``arn`` is a DynamoDB Local stream's: a DynamoDB ARN in region ``ddblocal``."""
    parts = arn.split(":")
    return len(parts) > 3 and parts[2] == "dynamodb" and parts[3] == DYNAMODB_LOCAL_REGION


def client_region(arn: str, configured: str) -> str:
    """The region of the clients that reach the source ``arn``: the ARN's own, except for a
    DynamoDB Local stream, whose ``ddblocal`` is no region to sign for; there it is
    ``configured`` (``aws.region``). DynamoDB Local keeps one database per access key and
    region unless started with ``-sharedDb``, so that must be the region the tables were
    created with; the ARN itself is still sent verbatim."""
    return configured if is_dynamodb_local(arn) else arn.split(":")[3]
