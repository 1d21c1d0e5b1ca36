"""Record keys and partitions: Kafka's murmur2 partitioner reproduced, and per-partition representative keys."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from producers.sharding import murmur2, partition_keys, partition_of, shard_key


@pytest.mark.parametrize(("text", "expected"), [  # Kafka's UtilsTest.testMurmur2
    ("21", -973932308), ("foobar", -790332482), ("a-little-bit-long-string", -985981536),
    ("a-little-bit-longer-string", -1486304829), ("lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", -58897971),
    ("abc", 479470107)])
def test_murmur2_matches_kafkas_test_vectors(text: str, expected: int) -> None:
    assert murmur2(text.encode()) == expected


@given(shards=st.integers(1, 256), partitions=st.integers(1, 64), session=st.text(max_size=40))
def test_a_session_lands_on_the_partition_of_its_own_shard(shards: int, partitions: int, session: str) -> None:
    rekey = partition_keys(shards, partitions)
    own = shard_key(session, shards)
    assert partition_of(rekey[own], partitions) == partition_of(own, partitions)


@given(shards=st.integers(1, 256), partitions=st.integers(1, 64))
def test_one_representative_key_per_partition(shards: int, partitions: int) -> None:
    rekey = partition_keys(shards, partitions)
    reps = set(rekey.values())
    assert len(reps) == len({partition_of(k, partitions) for k in rekey})
    assert all(rekey[r] == r for r in reps)
