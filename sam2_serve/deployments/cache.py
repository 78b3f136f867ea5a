"""EmbeddingCache: one shared LRU of image embeddings (by reference), bounded in bytes.

A single tiny replica holds ``EmbeddingRef``s for every ingress replica, so a click on an image seen before
costs a decoder pass whichever replica serves it. Evicting an entry drops the reference and Ray frees the
features once no request still uses them.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Optional

from sam2_serve.common.types import EmbeddingRef


class EmbeddingCache:
    def __init__(self, max_bytes: int = 2 << 30):
        self.max_bytes = int(max_bytes)
        self._entries: OrderedDict[str, EmbeddingRef] = OrderedDict()
        self._bytes = 0
        self.hits = self.misses = self.evictions = 0

    def get(self, image_id: str) -> Optional[EmbeddingRef]:
        entry = self._entries.get(image_id)
        if entry is None:
            self.misses += 1
            return None
        self._entries.move_to_end(image_id)
        self.hits += 1
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
            self.evictions += 1

    def discard(self, image_id: str) -> None:
        old = self._entries.pop(image_id, None)
        if old is not None:
            self._bytes -= old.nbytes

    def stats(self) -> dict:
        return {"entries": len(self._entries), "bytes": self._bytes, "max_bytes": self.max_bytes,
                "hits": self.hits, "misses": self.misses, "evictions": self.evictions}
