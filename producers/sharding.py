"""Record keys: a stable shard of the session id, and which Kafka partition a key lands on.

All events of one session get the same shard, so Kafka keeps them in one partition, in order. The shard must be
the same in every process and every run (a restarted producer re-sending its spool must land on the same
partition as the data it sent before), so it is CRC-32 of the UTF-8 session id, never Python's salted ``hash()``.

The publisher batches per *partition*: one record carries the events of every shard that the partitioner puts on
that partition, in arrival order, keyed with the partition's *representative* shard key (the lowest shard that
lands there). A session therefore still lands on the partition of its own shard key, and a partition receives its
events in the order they were handed over (per-shard records would interleave: when a publisher sends history in
bulk, consecutive records of a partition would go back in event time). The partition of a key is Kafka's default
(the Java client's, librdkafka's ``murmur2_random``): ``(murmur2(key) & 0x7fffffff) % partitions``.
"""

from __future__ import annotations

from zlib import crc32

_M = 0x5BD1E995
_MASK = 0xFFFFFFFF


def shard_of(session_id: str, shards: int) -> int:
    """The shard number in ``[0, shards)`` of a session id."""
    return crc32(session_id.encode("utf-8", "surrogatepass")) % shards


def shard_key(session_id: str, shards: int) -> bytes:
    """The shard's key: its number as zero-padded decimal ASCII (``b"007"``)."""
    return b"%03d" % shard_of(session_id, shards)


def murmur2(data: bytes) -> int:
    """Kafka's murmur2 (``org.apache.kafka.common.utils.Utils.murmur2``) as a signed 32-bit int."""
    length = len(data)
    h = (0x9747B28C ^ length) & _MASK
    n4 = length // 4
    for i in range(n4):
        k = int.from_bytes(data[4 * i:4 * i + 4], "little")
        k = (k * _M) & _MASK
        k ^= k >> 24
        k = (k * _M) & _MASK
        h = ((h * _M) & _MASK) ^ k
    rest = length % 4
    if rest:
        tail = data[4 * n4:]
        if rest == 3:
            h ^= tail[2] << 16
        if rest >= 2:
            h ^= tail[1] << 8
        h ^= tail[0]
        h = (h * _M) & _MASK
    h ^= h >> 13
    h = (h * _M) & _MASK
    h ^= h >> 15
    return h - (1 << 32) if h & 0x80000000 else h


def partition_of(key: bytes, partitions: int) -> int:
    """The partition Kafka's default partitioner picks for ``key``."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions


def partition_keys(shards: int, partitions: int) -> dict[bytes, bytes]:
    """Each shard key -> the representative key of its partition (the lowest shard key on that partition)."""
    first: dict[int, bytes] = {}
    out: dict[bytes, bytes] = {}
    for shard in range(shards):
        key = b"%03d" % shard
        out[key] = first.setdefault(partition_of(key, partitions), key)
    return out
