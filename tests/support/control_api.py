"""The control API end to end: a ``poller run`` process with ``control_api`` on, and AWS's own
clients (boto3, the AWS CLI, Terraform) talking to it over HTTP.

Data flow::

    test --botocore lambda client (endpoint_url)--> poller run (control_api) --> mapping store
        --> poller.reconcile --> runners --> tests.support.file_sink handler --> JSON-lines sink

Nothing is patched: the service is an OS process (``tests/support/process.py``), its sources
live on moto's server, and the API is reached through botocore's real HTTP stack and SigV4
signer. The port is picked here (``free_port``) so the test knows the URL before the service
logs anything. ``functions`` in the config name the Python handlers an API mapping may target
(FunctionName -> handler), as a local user would point ``my-fn`` at their code.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import botocore.session
from botocore.config import Config
from botocore.exceptions import ClientError

from tests.support.aws import REGION, aws_client, hash_key_for, put_records
from tests.support.process import Launch, ServiceProcess, free_port, write_config
from tests.support.waiting import wait_for

#: The FunctionName every stream test maps: the file sink's handler (one line per batch).
STREAM_FUNCTION = "sink-fn"
#: The FunctionName SQS tests map: the SQS sink's handler (one line of message ids per batch).
SQS_FUNCTION = "sqs-sink-fn"
#: A key pair the API accepts under ``auth: sigv4``, handed to the service by environment.
SIGV4_KEY = ("AKIDPOLLERCONTROL01", "control-secret-not-logged")
_KEY_ENV = ("POLLER_TEST_CONTROL_KEY_ID", "POLLER_TEST_CONTROL_SECRET")


def python_function(handler: str, timeout: float = 3) -> dict[str, Any]:
    """A Python target: ``module:function``. A short timeout keeps lease takeovers short."""
    return {"type": "python", "handler": handler, "timeout_seconds": timeout}


#: The functions every test service knows.
FUNCTIONS: dict[str, dict[str, Any]] = {
    STREAM_FUNCTION: python_function("tests.support.file_sink:handler"),
    SQS_FUNCTION: python_function("tests.support.sqs:sink_handler"),
}


def control_section(port: int, *, sigv4: bool = False, **fields: Any) -> dict[str, Any]:
    """The ``control_api`` section: on, loopback, ``port``, the test functions, a 0.5 s poll
    (changes apply quickly); ``sigv4`` requires requests signed with :data:`SIGV4_KEY`."""
    section: dict[str, Any] = {
        "enabled": True,
        "host": "127.0.0.1",
        "port": port,
        "poll_interval_seconds": 0.5,
        "functions": FUNCTIONS,
    }
    if sigv4:
        section["auth"] = "sigv4"
        section["credentials"] = [
            {"access_key_id_env": _KEY_ENV[0], "secret_access_key_env": _KEY_ENV[1]}
        ]
    return {**section, **fields}


def control_config(
    endpoint_url: str,
    control: dict[str, Any],
    *,
    checkpoints: dict[str, Any],
    endpoints: dict[str, str] | None = None,
    mappings: Iterable[dict[str, Any]] = (),
) -> dict[str, Any]:
    """A whole configuration: the emulator as every endpoint, JSON logs, the observability
    server on a free port, ``control`` as the ``control_api`` section, and the file's own
    ``mappings`` (none by default: the API brings them)."""
    return {
        "aws": {"region": REGION, "endpoint_url": endpoint_url, "endpoints": endpoints or {}},
        "checkpoints": checkpoints,
        "observability": {"host": "127.0.0.1", "port": 0},
        "logging": {"format": "json"},
        "shutdown": {"drain_timeout_seconds": 20},
        "control_api": control,
        "mappings": list(mappings),
    }


def sigv4_env() -> dict[str, str]:
    """The environment holding :data:`SIGV4_KEY` under the names the config gives."""
    return dict(zip(_KEY_ENV, SIGV4_KEY, strict=True))


@dataclass
class ControlService:
    """A running ``poller run`` with the API on ``url``."""

    proc: ServiceProcess
    url: str
    config: Path
    env: dict[str, str] = field(default_factory=dict)

    def client(self, key: tuple[str, str] = SIGV4_KEY) -> Any:
        """A boto3 Lambda client signing with ``key`` (ignored by the API under ``auth: none``)."""
        return lambda_client(self.url, key)

    def audit(self) -> list[dict[str, Any]]:
        """The API's audit lines (``control.request``) logged so far."""
        return self.proc.events("control.request")


def lambda_client(url: str, key: tuple[str, str] = SIGV4_KEY) -> Any:
    """A Lambda client on ``url`` (botocore's, which is what ``boto3.client`` returns): standard
    retries (5xx are retried, as in real use), short timeouts so a hung API fails the test
    rather than hanging it."""
    config = Config(
        retries={"max_attempts": 3, "mode": "standard"},
        connect_timeout=5,
        read_timeout=30,
    )
    return botocore.session.get_session().create_client(
        "lambda",
        endpoint_url=url,
        region_name=REGION,
        aws_access_key_id=key[0],
        aws_secret_access_key=key[1],
        config=config,
    )


def start_control_service(
    launch: Launch,
    path: Path,
    config: Callable[[int], dict[str, Any]],
    log: str,
    env: dict[str, str] | None = None,
    port: int | None = None,
) -> ControlService:
    """Write ``config(port)`` to ``path``, start ``poller run`` on it, and return it once it is
    ready and its API accepts connections. ``port`` reuses a port (a restart), else a free one."""
    port = free_port() if port is None else port
    write_config(path, config(port))
    proc = launch(path, log, env)
    proc.wait_ready(60)
    wait_for(lambda: _accepts(port) or _died(proc), 30, f"the control API on port {port}")
    assert not _died(proc), proc.log_path.read_text()
    return ControlService(proc, f"http://127.0.0.1:{port}", path, env or {})


def restart(launch: Launch, service: ControlService, log: str) -> ControlService:
    """The same configuration started again on the same port (the old process has exited)."""
    port = int(service.url.rsplit(":", 1)[1])
    proc = launch(service.config, log, service.env)
    proc.wait_ready(60)
    wait_for(lambda: _accepts(port) or _died(proc), 30, f"the control API on port {port}")
    assert not _died(proc), proc.log_path.read_text()
    return ControlService(proc, service.url, service.config, service.env)


def _accepts(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
    except OSError:
        return False
    return True


def _died(proc: ServiceProcess) -> bool:
    return proc.proc is not None and proc.proc.poll() is not None


def error_code(error: ClientError) -> str:
    return str(error.response["Error"]["Code"])


def wait_state(client: Any, uuid: str, state: str, limit: float = 90) -> dict[str, Any]:
    """Poll GetEventSourceMapping until ``State`` is ``state``; return that answer."""
    seen: list[str] = []

    def reached() -> dict[str, Any] | None:
        answer: dict[str, Any] = client.get_event_source_mapping(UUID=uuid)
        if not seen or seen[-1] != answer["State"]:
            seen.append(answer["State"])
        return answer if answer["State"] == state else None

    try:
        result: dict[str, Any] = wait_for(reached, limit, f"{uuid} {state}", interval=0.25)
    except AssertionError as timeout:
        raise AssertionError(f"{timeout}; states seen: {seen}") from None
    return result


def wait_gone(client: Any, uuid: str, limit: float = 90) -> None:
    """Poll GetEventSourceMapping until it answers 404 ResourceNotFoundException."""

    def gone() -> bool:
        try:
            client.get_event_source_mapping(UUID=uuid)
        except ClientError as error:
            if error_code(error) == "ResourceNotFoundException":
                return True
            raise
        return False

    wait_for(gone, limit, f"{uuid} deleted (404)", interval=0.25)


def wire_shape(answer: Any) -> Any:
    """A boto3 answer in the form the recordings keep: ``ResponseMetadata`` reduced to its
    status (the recordings drop headers and request ids). Timestamps stay datetimes: the
    matcher takes them for the recordings' ``"datetime"``."""
    if isinstance(answer, list):
        return [wire_shape(item) for item in answer]
    if not isinstance(answer, dict):
        return answer
    shaped = {key: wire_shape(value) for key, value in answer.items()}
    if "ResponseMetadata" in answer:
        status = answer["ResponseMetadata"]["HTTPStatusCode"]
        shaped["ResponseMetadata"] = {"HTTPHeaders": {}, "HTTPStatusCode": status}
    return shaped


def failure(call: Callable[[], Any]) -> dict[str, Any]:
    """The error answer of a call that must fail (fails the test if it succeeds)."""
    try:
        answer = call()
    except ClientError as error:
        return dict(error.response)
    raise AssertionError(f"expected an error, got {answer!r}")


def put_per_shard(
    endpoint_url: str, stream: str, shards: list[dict[str, Any]], per_shard: int, tag: str
) -> list[tuple[str, str]]:
    """Put ``per_shard`` records into each shard (partition keys ``<tag>-<n>``); return the
    (shard id, sequence number) of each, in order."""

    async def put() -> list[tuple[str, str]]:
        async with aws_client("kinesis", endpoint_url) as kinesis:
            written: list[tuple[str, str]] = []
            for shard in shards:
                keys = [f"{tag}-{n}" for n in range(per_shard)]
                entries = [(key, b"{}", hash_key_for(shard)) for key in keys]
                written += await put_records(kinesis, stream, entries)
            return written

    return anyio.run(put)


def stays_quiet(what: Callable[[], Any], seconds: float, description: str) -> None:
    """Watch ``what`` for ``seconds``: fail as soon as it returns something truthy (something
    happened that must not). A bounded observation window, polled, not a bare sleep."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        found = what()
        assert not found, f"{description}: {found!r}"
        time.sleep(0.25)
