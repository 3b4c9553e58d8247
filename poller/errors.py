"""The exception tree of poller.

Errors that reach a user are raised here and nowhere else is an exception class defined::

    PollerError
    ├── ConfigError            invalid configuration; carries one message per bad field
    ├── SourceError            reading a stream or queue failed
    │   ├── IteratorExpired    the shard iterator expired or is invalid; recreate it
    │   │   └── PositionTrimmed  the position is older than the stream's retention
    │   ├── Throttled          the source refused the read for capacity; back off
    │   └── SourceUnavailable  the source could not be reached or answered a service error
    ├── HandlerImportError     a Python handler's import path does not resolve
    ├── DestinationError       an on-failure destination did not accept a failure record
    └── CheckpointError        a checkpoint could not be read or written
        └── LeaseLost          a fenced write found another owner: stop the shard

Failed invocations are not exceptions: targets return an ``InvokeResult``. ``retriable`` tells
the reader loops whether to back off and try again or to stop the shard.
"""

from __future__ import annotations

from collections.abc import Sequence


class PollerError(Exception):
    """Root of every error poller raises on purpose."""

    retriable: bool = False


class ConfigError(PollerError):
    """The configuration is invalid. ``problems`` holds one readable line per bad field."""

    def __init__(self, problems: Sequence[str], *, source: str | None = None) -> None:
        self.problems = list(problems)
        self.source = source
        where = f" in {source}" if source else ""
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"invalid configuration{where}:\n{lines}")


class SourceError(PollerError):
    """Reading from a stream or queue failed."""

    retriable = True
    #: What failed, in the words of a metric's label, when the adapter that raised it knows
    #: better than the error's type (an enhanced fan-out subscription's failure reason).
    reason: str | None = None


class IteratorExpired(SourceError):
    """The shard iterator expired or became invalid; recreate it from the last position."""


class PositionTrimmed(IteratorExpired):
    """The position asked for is older than the stream's retention (DynamoDB Streams'
    ``TrimmedDataAccessException``): the records after it are gone. Reading continues from the
    oldest record the shard still holds (TRIM_HORIZON), as Lambda does."""


class Throttled(SourceError):
    """The source refused a read for capacity (ProvisionedThroughputExceeded)."""


class SourceUnavailable(SourceError):
    """The source could not be reached or returned a service error."""


class StreamNotFound(SourceError):
    """The stream named by the mapping does not exist."""


class SubscriptionBusy(SourceError):
    """Kinesis refused a ``SubscribeToShard`` because a subscription to the shard by the same
    consumer is still open (``ResourceInUseException``): typically the previous lease holder's,
    until it is cancelled or times out. Retried with backoff."""


class HandlerImportError(PollerError):
    """A Python target's ``module:function`` path does not resolve to a callable."""


class DestinationError(PollerError):
    """An on-failure destination (SQS, SNS, S3) did not accept a failure record.

    Retriable: the records stay unsettled, and the shard waits, until delivery succeeds.
    ``permanent`` is True when the refusal will not pass by itself (access denied, a queue,
    topic or bucket that does not exist): the shard still waits, but alerts loudly.
    """

    retriable = True

    def __init__(self, message: str, *, permanent: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent


class CheckpointError(PollerError):
    """A checkpoint could not be read or written."""

    retriable = True


class LeaseLost(CheckpointError):
    """A fenced write found another owner or a newer counter: this replica lost the lease.

    Not retriable: the writer must stop working on the shard. ``observed`` is the lease item as
    the lease table held it when the write was refused (None when the item no longer exists;
    a :class:`poller.checkpoints.dynamodb.Lease`, typed loosely here so that errors stay at the
    bottom of the import layers). An ``observed.owner`` equal to the writer means the counter
    was moved by this same replica (a concurrent write, or a retried write whose first response
    was lost).
    """

    retriable = False

    def __init__(self, message: str, *, observed: object | None = None) -> None:
        super().__init__(message)
        self.observed = observed


class OperationError(PollerError):
    """An operator command (``poller redrive``, ``replay``, ``rewind``) cannot do what was
    asked; the message is one line naming the value."""


def first_leaf(exc: BaseException) -> BaseException:
    """The first leaf of an exception group (``exc`` itself when it is not a group): what a
    task group's failure was about."""
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return exc


def describe_error(exc: BaseException) -> str:
    """An error for the log: the first leaf of an exception group, with its type."""
    leaf = first_leaf(exc)
    return f"{type(leaf).__name__}: {leaf}"
