"""EmbeddingCache: one shared LRU of image embeddings (by reference), bounded in bytes.

A single tiny replica holds ``EmbeddingRef``s for every ingress replica, so a click on an image seen before
costs a decoder pass whichever replica serves it. Evicting an entry drops the reference and Ray frees the
features once no request still uses them.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Optional

from sam2_serve.common.types import EmbeddingRef
from sam2_serve.deployments.metrics import CacheMetrics


class EmbeddingCache:
    def __init__(self, max_bytes: int = 2 << 30):
        self.max_bytes = int(max_bytes)
        self._entries: OrderedDict[str, EmbeddingRef] = OrderedDict()
        self._bytes = 0
        self.metrics = CacheMetrics()

    def get(self, image_id: str) -> Optional[EmbeddingRef]:
        entry = self._entries.get(image_id)
        if entry is None:
            self.metrics.misses.inc()
            return None
        self._entries.move_to_end(image_id)
        self.metrics.hits.inc()
        return entry

    def put(self, entry: EmbeddingRef) -> None:
        if entry.nbytes > self.max_bytes:
            return
        self.discard(entry.image_id)
        self._entries[entry.image_id] = entry
        self._bytes += entry.nbytes
        while self._bytes > self.max_bytes:
            _, old = self._entries.popitem(last=False)
            self._bytes -= old.nbytes
            self.metrics.evictions.inc()
        self._held()

    def discard(self, image_id: str) -> None:
        old = self._entries.pop(image_id, None)
        if old is not None:
            self._bytes -= old.nbytes
            self._held()

    def check_health(self) -> None:
        """Serve's periodic health check: nothing here can hang; it re-reports the gauges (``metrics.refresh``)."""
        self.metrics.refresh()

    def _held(self) -> None:
        self.metrics.bytes.set(self._bytes)
        self.metrics.entries.set(len(self._entries))

    def stats(self) -> dict:
        m = self.metrics
        return {"entries": len(self._entries), "bytes": self._bytes, "max_bytes": self.max_bytes,
                "hits": m.hits.value, "misses": m.misses.value, "evictions": m.evictions.value}
