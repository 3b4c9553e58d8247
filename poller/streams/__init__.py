"""The stream engine: Kinesis and DynamoDB Streams shards, read, batched, invoked, checkpointed.

:class:`~poller.streams.runner.StreamMappingRunner` runs one mapping: it discovers shards,
owns them (alone or through leases), and runs a :class:`~poller.streams.reader.ShardReader`
feeding a :class:`~poller.streams.processor.ShardProcessor` per shard.
"""

from poller.streams.processor import BatchPolicy, FailureRouting, ShardProcessor
from poller.streams.reader import ShardReader
from poller.streams.runner import StreamMappingRunner

__all__ = ["BatchPolicy", "FailureRouting", "ShardProcessor", "ShardReader", "StreamMappingRunner"]
