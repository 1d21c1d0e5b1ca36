"""Reading a whole topic once, from a throw-away consumer: every partition from its first offset to the end offsets
seen when reading began (what ``agentwatch consume`` and ``agentwatch alerts tail`` show before following)."""

from __future__ import annotations

from confluent_kafka import Consumer, Message, TopicPartition

from sinks.topic_end import end_offsets


class WholeTopic:
    """Assigns every partition of ``topic`` at its first offset and tells when the ends seen now are reached.

    Raises RuntimeError (saying so) when the topic is missing or unavailable.
    """

    def __init__(self, consumer: Consumer, topic: str, timeout: float = 10.0) -> None:
        watermarks = end_offsets(consumer, topic, timeout)
        self.topic = topic
        self.ends = {p: high for p, (_low, high) in watermarks.items()}
        self.pending = {p for p, (low, high) in watermarks.items() if high > low}
        consumer.assign([TopicPartition(topic, p, low) for p, (low, _high) in sorted(watermarks.items())])

    def saw(self, msg: Message) -> None:
        """Note a consumed record: its partition is read once the record before the end offset is."""
        if msg.offset() + 1 >= self.ends.get(msg.partition(), 0):
            self.pending.discard(msg.partition())

    @property
    def done(self) -> bool:
        """True once every partition that held records at the start is read to its end."""
        return not self.pending
