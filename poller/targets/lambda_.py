"""The Lambda target: delivers a batch with a synchronous Lambda ``Invoke``.

Data flow::

    ShardProcessor --event dict--> LambdaTarget.invoke --Invoke (RequestResponse)--> Lambda
    ShardProcessor <--InvokeResult-- classify(response or ClientError)

The event is sent as compact JSON exactly as an event source mapping would send it, and the
answer is sorted into the :class:`~poller.types.Outcome` classes that AWS uses to count
retries (``docs/aws-esm.md`` §1.2, §2.5): the function failed or timed out (counted), Lambda
throttled the call (not counted), or the call never reached the function (not counted).
Botocore's own retries are off (:data:`LAMBDA_INVOKE_CONFIG`) because the pipeline owns
retries and backoff; a botocore retry would hide throttles from it and double invocations.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import aiohttp
import botocore.exceptions
import structlog

from poller.aws.clients import client_config
from poller.types import InvokeResult, Outcome

_log = structlog.get_logger(__name__)

#: The botocore settings of the invoke client. Lambda functions run for up to 900 s and
#: send nothing until they return, so the read timeout covers the longest function plus a
#: margin. One attempt only: the pipeline classifies and retries. The pool is large because
#: every shard (times ParallelizationFactor) and every SQS poller holds a connection for the
#: whole invocation; botocore's default of 10 would serialise invokes across shards.
LAMBDA_INVOKE_CONFIG = client_config(attempts=1, read_timeout=905, pool=1000)

#: Error codes meaning the payload was over the Invoke limit. Lambda rejects these before the
#: function runs, but retrying the same batch cannot succeed, so they count as function errors
#: and bisection (which shrinks the batch) can get past them.
_PAYLOAD_TOO_LARGE = frozenset(
    {"RequestTooLargeException", "SerializedRequestEntityTooLargeException"}
)

#: Error codes whose service message quotes the request body; their message is dropped so that
#: record data never reaches a log line.
_MESSAGE_ECHOES_PAYLOAD = frozenset({"InvalidRequestContentException"})

#: The longest service message kept in ``InvokeResult.error``.
_MAX_MESSAGE = 300


def function_arn_for(
    function_name: str,
    qualifier: str | None,
    *,
    partition: str,
    region: str,
    account_id: str,
) -> str:
    """The ARN that identifies a function in logs and failure records.

    Accepts every form the Invoke API accepts: a name, ``name:qualifier``, a partial ARN
    (``123456789012:function:name``) or a full ARN, each optionally qualified.

    Args:
        function_name: the configured function name or ARN.
        qualifier: the configured version or alias, or None.
        partition: the AWS partition (``aws``, ``aws-cn``...) used for names.
        region: the region used for names and partial ARNs.
        account_id: the account used for names.

    Returns:
        A full function ARN, qualified when a qualifier is given or already present.
    """
    if function_name.startswith("arn:"):
        arn = function_name
    elif ":function:" in function_name:
        arn = f"arn:{partition}:lambda:{region}:{function_name}"
    else:
        arn = f"arn:{partition}:lambda:{region}:{account_id}:function:{function_name}"
    # arn:partition:lambda:region:account:function:name has 7 parts; an 8th is the qualifier.
    if qualifier and arn.count(":") == 6:
        arn = f"{arn}:{qualifier}"
    return arn


def encode_event(event: dict[str, Any]) -> bytes:
    """The event as compact UTF-8 JSON, the bytes Lambda counts against its payload limit.

    ``ensure_ascii=False`` never produces more bytes than the escaped form, so batches sized
    with either encoding fit. A string holding a lone surrogate (possible only from JSON that
    escaped one) cannot be UTF-8 encoded; the escaped form keeps it as the source sent it.
    """
    text = json.dumps(event, separators=(",", ":"), ensure_ascii=False)
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(event, separators=(",", ":")).encode("ascii")


def decode_payload(body: bytes) -> tuple[Any, bool]:
    """A response body as ``(payload, payload_is_json)``.

    An empty body is ``None``; bytes that are not JSON come back as text so that a partial
    batch response check can report them as malformed.
    """
    if not body.strip():
        return None, True
    try:
        return json.loads(body), True
    # JSONDecodeError and UnicodeDecodeError are ValueErrors; RecursionError is JSON nested
    # deeper than the parser recurses, which a 6 MB body can easily be.
    except (ValueError, RecursionError):
        return body.decode("utf-8", errors="replace"), False


def _is_timeout(payload: Any) -> bool:
    """Whether a function-error payload is Lambda's timeout report."""
    if isinstance(payload, dict):
        if payload.get("errorType") == "Sandbox.Timedout":
            return True
        message = payload.get("errorMessage")
        return isinstance(message, str) and "Task timed out" in message
    return isinstance(payload, str) and "Task timed out" in payload


class LambdaTarget:
    """Invokes one Lambda function synchronously and classifies the result.

    Args:
        client: an aiobotocore Lambda client built with :data:`LAMBDA_INVOKE_CONFIG`; owned
            by the :class:`~poller.aws.clients.ClientFactory`, not by the target.
        function_name: the function's name or ARN, as the Invoke API accepts it.
        qualifier: a version or alias, sent as ``Qualifier`` when set.
        function_arn: the ARN used in logs and failure records (see :func:`function_arn_for`).
    """

    def __init__(
        self,
        client: Any,
        *,
        function_name: str,
        qualifier: str | None,
        function_arn: str,
    ) -> None:
        self._client = client
        self._function_name = function_name
        self._qualifier = qualifier
        self.function_arn = function_arn

    async def invoke(self, event: dict[str, Any]) -> InvokeResult:
        """Invoke the function once with ``event``; never raises for a failed invocation."""
        kwargs: dict[str, Any] = {
            "FunctionName": self._function_name,
            "InvocationType": "RequestResponse",
            "Payload": encode_event(event),
        }
        if self._qualifier:
            kwargs["Qualifier"] = self._qualifier
        try:
            response = await self._client.invoke(**kwargs)
            # The body is streamed: reading it is part of the call and can fail like it.
            body: bytes = await response["Payload"].read()
        except botocore.exceptions.ClientError as exc:
            return self._classify_client_error(exc)
        except (
            botocore.exceptions.BotoCoreError,
            aiohttp.ClientError,
            TimeoutError,
            OSError,
        ) as exc:
            return self._unreachable(exc)
        return self._classify_response(response, body)

    async def aclose(self) -> None:
        """Nothing to release: the client belongs to the client factory."""

    def _classify_response(self, response: dict[str, Any], body: bytes) -> InvokeResult:
        """Sort a completed Invoke (HTTP 2xx) into success, function error or timeout."""
        payload, is_json = decode_payload(body)
        function_error: str | None = response.get("FunctionError")
        outcome = Outcome.SUCCESS
        error = None
        if function_error:
            outcome = Outcome.TIMEOUT if _is_timeout(payload) else Outcome.FUNCTION_ERROR
            error = _function_error_text(function_error, payload)
        return InvokeResult(
            outcome=outcome,
            payload=payload,
            payload_is_json=is_json,
            status_code=response.get("StatusCode"),
            function_error=function_error,
            executed_version=response.get("ExecutedVersion"),
            request_id=response.get("ResponseMetadata", {}).get("RequestId", ""),
            error=error,
        )

    def _classify_client_error(self, exc: botocore.exceptions.ClientError) -> InvokeResult:
        """Sort an error answer of the Invoke API: throttle, oversized payload or service error."""
        error = exc.response.get("Error", {})
        code = str(error.get("Code", "Unknown"))
        metadata = exc.response.get("ResponseMetadata", {})
        status = metadata.get("HTTPStatusCode")
        request_id = metadata.get("RequestId") or str(uuid.uuid4())
        message = "" if code in _MESSAGE_ECHOES_PAYLOAD else str(error.get("Message", ""))
        text = f"Lambda Invoke failed with {code} (HTTP {status})"
        if message:
            text = f"{text}: {message[:_MAX_MESSAGE]}"
        if code == "TooManyRequestsException":
            reason = exc.response.get("Reason")
            outcome = Outcome.THROTTLE
            text = f"{text} [{reason}]" if reason else text
        elif code in _PAYLOAD_TOO_LARGE:
            outcome = Outcome.FUNCTION_ERROR
            text = f"batch exceeds Lambda's invoke payload limit ({code}); bisection can shrink it"
        else:
            outcome = Outcome.SERVICE_ERROR
        return InvokeResult(outcome=outcome, status_code=status, request_id=request_id, error=text)

    def _unreachable(self, exc: BaseException) -> InvokeResult:
        """The call never completed: the endpoint could not be reached or did not answer."""
        # Botocore's messages name the endpoint URL and the failure, never the request body.
        text = f"Lambda endpoint problem ({type(exc).__name__}): {str(exc)[:_MAX_MESSAGE]}"
        _log.debug("lambda_invoke_unreachable", function_arn=self.function_arn, error=text)
        return InvokeResult(outcome=Outcome.SERVICE_ERROR, request_id=str(uuid.uuid4()), error=text)


def _function_error_text(function_error: str, payload: Any) -> str:
    """A one-line description of a function error from the error payload's type."""
    error_type = payload.get("errorType") if isinstance(payload, dict) else None
    if error_type:
        return f"function error ({function_error}): {error_type}"
    return f"function error ({function_error})"
