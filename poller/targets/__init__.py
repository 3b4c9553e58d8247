"""Targets: where the pipeline delivers batches, and the registry that builds them.

Data flow::

    config (target section) --build_target--> Target
    ShardProcessor --event dict--> Target.invoke --> InvokeResult

Every target implements :class:`poller.types.Target`: Lambda (``lambda_``), an HTTP
endpoint (``http``) or an in-process Python handler (``python``). The composition root
calls :func:`build_target` once per mapping; a new target type is one builder function and
one entry in ``_BUILDERS``. An HTTP or Python target with an ``input_template`` is wrapped in
a :class:`~poller.targets.transform.TransformingTarget`, which reshapes each record first.
Every built target is wrapped in a :class:`~poller.targets.guard.GuardedTarget`, so whatever
a target raises is an invocation outcome and never a crash of the shard task, whatever the
target type.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from poller.config import HttpTargetConfig, PythonTargetConfig
from poller.core.transform import PipeVariables, compile_template
from poller.errors import ConfigError
from poller.targets.guard import GuardedTarget
from poller.targets.http import HttpTarget
from poller.targets.lambda_ import LAMBDA_INVOKE_CONFIG, LambdaTarget, function_arn_for
from poller.targets.python import PythonTarget, load_handler
from poller.targets.transform import TransformingTarget

if TYPE_CHECKING:
    from poller.aws.clients import ClientFactory
    from poller.config import AnyMapping, LambdaTargetConfig
    from poller.observability.metrics import Metrics
    from poller.types import Target

__all__ = [
    "LAMBDA_INVOKE_CONFIG",
    "GuardedTarget",
    "HttpTarget",
    "LambdaTarget",
    "PythonTarget",
    "TransformingTarget",
    "build_target",
    "function_arn_for",
    "load_handler",
    "mapping_arn_of",
]


@dataclass(frozen=True, slots=True)
class _Environment:
    """What builders need besides the target's own config."""

    clients: ClientFactory
    partition: str
    region: str
    account_id: str
    mapping: str
    metrics: Metrics | None
    mapping_config: AnyMapping | None


async def _build_lambda(config: LambdaTargetConfig, env: _Environment) -> Target:
    """A Lambda target on the shared invoke client (15-minute read timeout, no retries).

    The client is in the function's region: the one in its ARN, else the mapping's, since an
    event source mapping and its function live in one region.
    """
    arn = function_arn_for(
        config.function_name,
        config.qualifier,
        partition=env.partition,
        region=env.region,
        account_id=env.account_id,
    )
    client = await env.clients.client(
        "lambda", purpose="invoke", config=LAMBDA_INVOKE_CONFIG, region=arn.split(":")[3]
    )
    return LambdaTarget(
        client, function_name=config.function_name, qualifier=config.qualifier, function_arn=arn
    )


async def _build_http(config: HttpTargetConfig, env: _Environment) -> Target:
    """An HTTP target with a session of its own, closed by ``aclose``."""
    return HttpTarget(
        None, url=config.url, headers=config.headers, timeout_seconds=config.timeout_seconds
    )


async def _build_python(config: PythonTargetConfig, env: _Environment) -> Target:
    """A Python target; importing the handler here makes a bad path fail at startup."""
    handler = load_handler(config.handler)
    module, _, function = config.handler.partition(":")
    metrics, mapping = env.metrics, env.mapping
    return PythonTarget(
        handler,
        timeout_seconds=config.timeout_seconds,
        function_arn=f"python:{module}:{function}",
        function_name=function.rsplit(".", 1)[-1],
        on_thread_abandoned=(
            None if metrics is None else lambda: metrics.handler_thread_abandoned(mapping)
        ),
    )


#: Builders by the config's ``type``. The config argument is typed per builder; the registry
#: erases it because the dispatch key, not the type checker, picks the builder.
_BUILDERS: dict[str, Callable[[Any, _Environment], Awaitable[Target]]] = {
    "lambda": _build_lambda,
    "http": _build_http,
    "python": _build_python,
}


def mapping_arn_of(mapping: object, aws_region: str) -> str:
    """The mapping's event source mapping ARN, or "" when the model has none.

    Read through ``getattr`` so that this module works with mapping models that predate
    ``event_source_mapping_arn`` (an attribute, or a method taking the configured region).
    """
    arn = getattr(mapping, "event_source_mapping_arn", "")
    if callable(arn):
        arn = arn(aws_region)
    return arn if isinstance(arn, str) else ""


def _pipe_variables(inner: Target, env: _Environment) -> PipeVariables:
    """Pipes' reserved variables for this mapping's template (no enrichment in poller)."""
    config = env.mapping_config
    return PipeVariables(
        pipe_arn="" if config is None else mapping_arn_of(config, env.clients.region),
        pipe_name=env.mapping if config is None else config.name,
        source_arn="" if config is None else config.event_source_arn,
        target_arn=inner.function_arn,
    )


def _transformed(
    config: LambdaTargetConfig | HttpTargetConfig | PythonTargetConfig,
    inner: Target,
    env: _Environment,
) -> Target:
    """``inner`` wrapped in its input template, when the config has one."""
    if not isinstance(config, HttpTargetConfig | PythonTargetConfig):
        return inner  # Lambda targets take no template (as the issue scopes it)
    if config.input_template is None:
        return inner
    # A bare array with a tumbling window is refused by the mapping's config (streams.py).
    return TransformingTarget(
        inner,
        compile_template(config.input_template),
        shape=config.batch_shape,
        variables=_pipe_variables(inner, env),
    )


async def build_target(
    config: LambdaTargetConfig | HttpTargetConfig | PythonTargetConfig,
    *,
    clients: ClientFactory,
    partition: str,
    region: str,
    account_id: str,
    mapping: str = "",
    metrics: Metrics | None = None,
    mapping_config: AnyMapping | None = None,
) -> Target:
    """Build the target a mapping's config describes, wrapped in a :class:`GuardedTarget`.

    Args:
        config: the target section of a mapping.
        clients: the service's client factory; the Lambda target takes its invoke client.
        partition: the AWS partition, for Lambda function ARNs built from names.
        region: the region, for Lambda function ARNs.
        account_id: the account, for Lambda function ARNs.
        mapping: the mapping's name, the label of the target's metrics.
        metrics: where a Python target counts abandoned handler threads; none when omitted.
        mapping_config: the whole mapping, whose name, source ARN and event source mapping
            ARN fill an input template's reserved variables ("" when omitted).

    Returns:
        A ready target that never raises for a failed invocation; the caller closes it with
        ``aclose``.

    Raises:
        ConfigError: the target type has no builder, or a template's ``batch_shape: array``
            is combined with a tumbling window.
        HandlerImportError: a Python target's handler does not import.
    """
    builder = _BUILDERS.get(config.type)
    if builder is None:
        known = ", ".join(sorted(_BUILDERS))
        raise ConfigError([f"target.type: unknown target type {config.type!r} (known: {known})"])
    env = _Environment(
        clients=clients,
        partition=partition,
        region=region,
        account_id=account_id,
        mapping=mapping,
        metrics=metrics,
        mapping_config=mapping_config,
    )
    return GuardedTarget(_transformed(config, await builder(config, env), env))
