"""Where a topic ends, and whether a consumer has read it that far: what ``--until-end`` means for every sink.

A sink run with ``until_end`` stops once it has read every partition up to the end offset it saw at start; records
that arrive later are for the next run. A partition this run never read from counts as read when the group's
committed offset is already past its end (an earlier run got there).
"""

from __future__ import annotations

from confluent_kafka import OFFSET_INVALID, Consumer, TopicPartition


def end_offsets(consumer: Consumer, topic: str, timeout: float = 10.0) -> dict[int, tuple[int, int]]:
    """``{partition: (low, high)}`` watermarks of every partition of ``topic`` now; RuntimeError when the topic is
    missing or unavailable."""
    md = consumer.list_topics(topic, timeout=timeout).topics.get(topic)
    if md is None or md.error is not None:
        raise RuntimeError(f"topic {topic!r} is not available: {md.error if md else 'missing'}")
    return {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout) for p in md.partitions}


def reached_ends(consumer: Consumer, topic: str, ends: dict[int, tuple[int, int]], positions: dict[int, int],
                 timeout: float = 10.0) -> bool:
    """True when every partition is read (or was committed by an earlier run) up to its end offset in ``ends``.

    ``positions`` (partition -> next offset to read) is what this run has consumed; the committed offsets of the
    partitions it has not read from are added to it.
    """
    todo = [p for p, (low, high) in ends.items() if high > low and positions.get(p, -1) < high]
    unseen = [p for p in todo if p not in positions]
    if unseen:
        for tp in consumer.committed([TopicPartition(topic, p) for p in unseen], timeout=timeout):
            if tp.offset != OFFSET_INVALID and tp.offset >= 0:
                positions[tp.partition] = tp.offset
    return all(positions.get(p, -1) >= ends[p][1] for p in todo)
