"""Image embeddings as the ingress sees them: the shared cache, one encoder pass per image, and recent references.

An embedding lives in Ray's object store, owned by the encoder replica that made it; the ``EmbeddingCache``
deployment holds ``EmbeddingRef``s (by reference, never the arrays) for every ingress replica. Here:

* ``of(rgb, image_id)``: the cached embedding, or one encoder pass even when requests for the same new image arrive
  together (single flight: the first starts it, the others await the same future).
* ``recent(image_id)``: this replica's last few embeddings, so a click by ``image_id`` can start decoding without
  first waiting for the cache (``confirm`` then checks the cache in parallel: it stays the authority).
* ``using(use, image_id, rgb, entry)``: run model work on an embedding; if it was lost with its encoder replica,
  encode the pixels again, once, and retry. Every image operation (predict, each segment_anything crop) goes
  through this one place.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from typing import Any, Awaitable, Callable, Optional, TypeVar

import numpy as np

from sam2_serve.common.errors import EmbeddingNotFound
from sam2_serve.common.images import as_rgb_array, image_id as content_id
from sam2_serve.common.limits import Limits
from sam2_serve.common.types import EmbeddingRef, EncodeRequest

T = TypeVar("T")
# Embeddings an ingress replica keeps references to beyond the shared cache: at most this many (16 MB each for
# base-plus), held until a newer one pushes them out or the cache says they were evicted.
RECENT_EMBEDDINGS = 4


class Embeddings:
    """``encoder`` and ``cache`` are the ``ImageEncoder`` and ``EmbeddingCache`` deployment handles."""

    def __init__(self, encoder, cache, limits: Limits):
        self.encoder, self.cache, self.limits = encoder, cache, limits
        self._inflight: dict[str, asyncio.Future] = {}
        self._recent: OrderedDict[str, EmbeddingRef] = OrderedDict()

    async def decode(self, image: Any) -> tuple[np.ndarray, str]:
        """Image in any accepted form -> (RGB uint8 (H, W, 3), image_id); decoding runs off the event loop."""
        rgb = await asyncio.to_thread(as_rgb_array, image, self.limits.max_image_bytes, self.limits.max_image_pixels)
        return rgb, await asyncio.to_thread(content_id, rgb)

    def recent(self, image_id: str) -> Optional[EmbeddingRef]:
        return self._recent.get(image_id)

    async def cached(self, image_id: str) -> EmbeddingRef:
        """The cache's entry for ``image_id``; ``EmbeddingNotFound`` (404) when unknown or evicted."""
        entry = await self.cache.get.remote(image_id)
        if entry is None:
            self._recent.pop(image_id, None)
            raise EmbeddingNotFound(f"image_id {image_id!r} is unknown or was evicted from the cache; "
                                    "send the image again (image.base64)")
        self._remember(entry)
        return entry

    async def confirm(self, work: Awaitable[T], image_id: str, cancel: Callable[[], Any]) -> T:
        """Await ``work`` (started on a recent embedding) while the cache confirms it still holds the image (and
        marks it recently used); if it was evicted meanwhile, ``cancel()`` and answer the usual 404."""
        try:
            await self.cached(image_id)
        except EmbeddingNotFound:
            cancel()
            raise
        return await work

    async def of(self, rgb: np.ndarray, image_id: str) -> EmbeddingRef:
        """The cached embedding of this image, encoding it once even when requests for it arrive together."""
        entry = await self.cache.get.remote(image_id)
        if entry is not None:
            return entry
        pending = self._inflight.get(image_id)
        if pending is None:
            pending = self._inflight[image_id] = asyncio.ensure_future(self._encode(rgb, image_id))
            pending.add_done_callback(lambda _: self._inflight.pop(image_id, None))
        return await asyncio.shield(pending)

    async def using(self, use: Callable[[EmbeddingRef], Awaitable[T]], image_id: str,
                    rgb: Optional[np.ndarray] = None, entry: Optional[EmbeddingRef] = None) -> T:
        """``await use(embedding)`` on the image's embedding (``entry`` when given, else ``of(rgb, image_id)``).

        An embedding whose encoder replica died is gone from the object store (``EmbeddingNotFound`` from the
        decoder): with the pixels at hand it is encoded again, once, and ``use`` retried; without them (a call by
        ``image_id``) the caller gets the 404 that tells the client to send the image again.
        """
        if entry is None:
            entry = await self.of(rgb, image_id)
        try:
            return await use(entry)
        except EmbeddingNotFound:
            self._recent.pop(image_id, None)
            if rgb is None:
                raise
            await self.cache.discard.remote(image_id)
            return await use(await self.of(rgb, image_id))

    async def _encode(self, rgb: np.ndarray, image_id: str) -> EmbeddingRef:
        entry = await self.encoder.encode.remote(EncodeRequest(image_id, rgb))
        await self.cache.put.remote(entry)
        self._remember(entry)
        return entry

    def _remember(self, entry: EmbeddingRef) -> None:
        self._recent[entry.image_id] = entry
        self._recent.move_to_end(entry.image_id)
        while len(self._recent) > RECENT_EMBEDDINGS:
            self._recent.popitem(last=False)
