"""Record keys: a stable shard of the session id.

All events of one session get the same key, so Kafka keeps them in one partition, in order; many sessions share a
shard, so one record (an ``AgentEventBatch``) carries many sessions' events. The shard must be the same in every
process and every run (a restarted producer re-sending its spool must land on the same partition as the data it
sent before), so it is CRC-32 of the UTF-8 session id, never Python's salted ``hash()``.
"""

from __future__ import annotations

from zlib import crc32


def shard_of(session_id: str, shards: int) -> int:
    """The shard number in ``[0, shards)`` of a session id."""
    return crc32(session_id.encode("utf-8", "surrogatepass")) % shards


def shard_key(session_id: str, shards: int) -> bytes:
    """The Kafka record key of a session: its shard as zero-padded decimal ASCII (``b"007"``)."""
    return b"%03d" % shard_of(session_id, shards)
