"""KVStore.keys(prefix) answers from the bucket of the prefix's first path segment: the same
answer as a scan of the whole store, after any sequence of puts, deletes and snapshot loads."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from hafleet_agent.kv import KVStore

SEGMENTS = st.sampled_from(["", "a", "ab", "health", "health/service", "x/y", "é", "a b"])
KEYS = st.builds(lambda a, b: f"{a}/{b}" if b else a, SEGMENTS, st.sampled_from(["", "1", "1/2"]))
KEYS = KEYS.filter(bool) | st.text(min_size=1, max_size=6)
OPS = st.lists(st.tuples(st.sampled_from(["put", "del", "load"]), KEYS), max_size=40)
PREFIXES = st.sampled_from(["", "a", "a/", "ab/", "health/", "health/s", "health/service/"]) | KEYS


def scan(store: KVStore, prefix: str) -> list[str]:
    return sorted(k for k in store.records if k.startswith(prefix))


@settings(max_examples=300, deadline=None)
@given(OPS, st.lists(PREFIXES, min_size=1, max_size=8))
def test_keys_by_bucket_match_a_full_scan(ops, prefixes) -> None:
    store = KVStore()
    for i, (op, key) in enumerate(ops, start=1):
        if op == "put":
            store.put(i, key, i, None)
        elif op == "del":
            store.delete(key, None)
        else:  # a snapshot's records replace the store
            store.load(store.copy_records())
        for p in prefixes:
            assert store.keys(p) == scan(store, p), (op, key, p)


def test_a_prefix_listing_reads_only_its_bucket() -> None:
    store = KVStore()
    for i in range(2000):
        store.put(i + 1, f"app/{i}", i, None)
    store.put(3000, "health/service/n1", {"ok": False}, None)

    class Counting(dict):
        reads = 0

        def __iter__(self):
            Counting.reads += 1
            return super().__iter__()

    store.records = Counting(store.records)
    assert store.keys("health/service/") == ["health/service/n1"]
    assert Counting.reads == 0, "the whole store was scanned"
    store.delete("health/service/n1", None)
    assert store.keys("health/") == []
