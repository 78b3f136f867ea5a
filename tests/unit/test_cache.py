from sam2_serve.deployments.cache import EmbeddingCache
from sam2_serve.common.types import EmbeddingRef


def entry(i: int, nbytes: int = 10) -> EmbeddingRef:
    return EmbeddingRef(f"img{i}", (4, 4), nbytes, ref=None)


def test_lru_bounded_in_bytes():
    cache = EmbeddingCache(max_bytes=30)
    for i in range(3):
        cache.put(entry(i))
    assert cache.get("img0") is not None  # img0 is now the most recent
    cache.put(entry(3))
    assert cache.get("img1") is None  # least recently used went first
    assert [cache.get(f"img{i}") is not None for i in (0, 2, 3)] == [True, True, True]
    assert cache.stats()["bytes"] == 30 and cache.stats()["evictions"] == 1


def test_oversized_entries_are_not_cached_and_discard_works():
    cache = EmbeddingCache(max_bytes=30)
    cache.put(entry(0, nbytes=31))
    assert cache.get("img0") is None
    cache.put(entry(1))
    cache.put(entry(1))  # replacing does not double-count
    assert cache.stats()["bytes"] == 10
    cache.discard("img1")
    assert cache.stats()["bytes"] == 0 and cache.get("img1") is None
