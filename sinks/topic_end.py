"""Where a topic ends, and whether a consumer has read it that far: what ``--until-end`` means for every sink.

A sink run with ``until_end`` stops once it has read every partition up to the end offset it saw at start; records
that arrive later are for the next run. A partition this run never read from counts as read when the group's
committed offset is already past its end (an earlier run got there).

Committed offsets are read by :class:`CommittedOffsets`, a consumer of the same group that never joins it. The
group's own member cannot be asked: while the group waits for a crashed member's session to expire (a restart
right after a SIGKILL), librdkafka holds the member's offset requests and they time out (``_TIMED_OUT "Failed to
get committed offsets"``), whereas the group coordinator answers a non-member at once. A failed read is "not yet"
(:class:`OffsetsUnavailable`); the caller retries, bounded, and says what it waits for.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from confluent_kafka import OFFSET_INVALID, Consumer, KafkaException, TopicPartition

#: ``(topic, partitions, timeout) -> {partition: committed offset}`` (partitions without a commit left out)
CommittedReader = Callable[[str, list[int], float], dict[int, int]]


class OffsetsUnavailable(RuntimeError):
    """The group's committed offsets could not be read just now (coordinator busy or unreachable): retry."""


def end_offsets(consumer: Consumer, topic: str, timeout: float = 10.0) -> dict[int, tuple[int, int]]:
    """``{partition: (low, high)}`` watermarks of every partition of ``topic`` now; RuntimeError when the topic is
    missing or unavailable."""
    md = consumer.list_topics(topic, timeout=timeout).topics.get(topic)
    if md is None or md.error is not None:
        raise RuntimeError(f"topic {topic!r} is not available: {md.error if md else 'missing'}")
    return {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout) for p in md.partitions}


def committed_of(consumer: Consumer, topic: str, partitions: list[int], timeout: float) -> dict[int, int]:
    """Committed offsets through ``consumer``; :class:`OffsetsUnavailable` instead of a Kafka error."""
    try:
        tps = consumer.committed([TopicPartition(topic, p) for p in partitions], timeout=timeout)
    except KafkaException as exc:
        raise OffsetsUnavailable(str(exc.args[0] if exc.args else exc)) from exc
    return {tp.partition: tp.offset for tp in tps if tp.offset != OFFSET_INVALID and tp.offset >= 0}


class CommittedOffsets:
    """Reads a group's committed offsets with a consumer of that group that never subscribes (see the module
    docstring); a :data:`CommittedReader`. ``config`` is the sink's consumer configuration."""

    def __init__(self, config: Mapping[str, Any]) -> None:
        self.group = str(config.get("group.id", ""))
        self._consumer = Consumer({k: v for k, v in config.items() if not callable(v)} | {"enable.auto.commit": False})

    def __call__(self, topic: str, partitions: list[int], timeout: float) -> dict[int, int]:
        return committed_of(self._consumer, topic, partitions, timeout)

    def close(self) -> None:
        self._consumer.close()


def reached_ends(consumer: Consumer, topic: str, ends: dict[int, tuple[int, int]], positions: dict[int, int],
                 timeout: float = 10.0, committed: CommittedReader | None = None) -> bool:
    """True when every partition is read (or was committed by an earlier run) up to its end offset in ``ends``.

    ``positions`` (partition -> next offset to read) is what this run has consumed; the committed offsets of the
    partitions it has not read from are added to it, read with ``committed`` (default: through ``consumer``).
    Raises :class:`OffsetsUnavailable` when they cannot be read yet.
    """
    todo = [p for p, (low, high) in ends.items() if high > low and positions.get(p, -1) < high]
    unseen = [p for p in todo if p not in positions]
    if unseen:
        got = (committed(topic, unseen, timeout) if committed is not None
               else committed_of(consumer, topic, unseen, timeout))
        positions.update(got)
    return all(positions.get(p, -1) >= ends[p][1] for p in todo)
