"""Data types of the client, with the constructors and attributes of the hosted SAM 2 model's SDK.

``Image``, ``Video``, ``Concept``, ``Region`` and ``Frame`` accept the same arguments as the SDK's classes (so its
examples run after changing the imports), but are plain Python objects: no protobuf. ``Frame.proto.frame_info.index``
is kept as an attribute path that writes through to ``Frame.index``.

Coordinates are fractions of the image's width (x, column) and height (y, row), unless a call says
``denormalize_coord=False``. Masks are boolean numpy arrays (H, W), decoded lazily from what the server sent.
"""

from __future__ import annotations

import base64
import io
import os
import uuid
from typing import Any, Iterable, Optional, Sequence, Union

import numpy as np
from PIL import Image as PILImage


class _Media:
    """An encoded file (image or video) held as bytes; ``url`` is kept for SDK parity but not fetched here."""

    def __init__(self, proto: Any = None, url: Optional[str] = None, bytes: Optional[bytes] = None,
                 base64: Optional[str] = None):
        if proto is not None:
            raise TypeError(f"{type(self).__name__}(proto) is the hosted SDK's protobuf form; pass bytes=...")
        self.url = url
        self.bytes = bytes if bytes is not None else (_b64decode(base64) if base64 is not None else None)

    @classmethod
    def from_file(cls, path: Union[str, os.PathLike]):
        with open(path, "rb") as f:
            return cls(bytes=f.read())

    def to_base64_str(self) -> str:
        return base64.b64encode(self._require_bytes()).decode("ascii")

    def _require_bytes(self) -> bytes:
        if not self.bytes:
            what = type(self).__name__
            if self.url:
                raise ValueError(f"{what}(url=...) is not fetched by this client; download it and pass bytes=...")
            raise ValueError(f"{what} has no bytes")
        return bytes(self.bytes)

    def __repr__(self) -> str:
        parts = [f"url={self.url!r}"] if self.url else []
        if self.bytes:
            parts.append(f"bytes=<{len(self.bytes)} bytes>")
        return f"{type(self).__name__}({', '.join(parts)})"


class Image(_Media):
    """An encoded image (JPEG, PNG, WebP, ...): ``Image(bytes=...)``, ``Image.from_pil(img)``, ``Image.from_numpy``."""

    @classmethod
    def from_pil(cls, pil_image: PILImage.Image, img_format: str = "PNG") -> "Image":
        buf = io.BytesIO()
        pil_image.save(buf, format=img_format)
        return cls(bytes=buf.getvalue())

    @classmethod
    def from_numpy(cls, array: np.ndarray, img_format: str = "PNG") -> "Image":
        """An RGB uint8 (H, W, 3) or greyscale (H, W) array, saved losslessly as PNG by default."""
        return cls.from_pil(PILImage.fromarray(np.asarray(array)), img_format)

    def to_pil(self) -> PILImage.Image:
        return PILImage.open(io.BytesIO(self._require_bytes()))

    def to_numpy(self) -> np.ndarray:
        return np.asarray(self.to_pil())


class Video(_Media):
    """An encoded video file (MP4, WebM, MKV, MOV, ...): ``Video(bytes=...)`` or ``Video.from_file(path)``."""


class Concept:
    """A label with a value. For a point prompt, ``value`` >= 0.5 is a positive click (the SDK's convention)."""

    def __init__(self, name: str, value: float = 1.0, id: Optional[str] = None):
        self.name, self.value = str(name), float(value)
        self.id = id or name

    def to_dict(self) -> dict:
        return {"name": self.name, "value": self.value}

    def __eq__(self, other) -> bool:
        return isinstance(other, Concept) and (self.name, self.value) == (other.name, other.value)

    def __repr__(self) -> str:
        return f"Concept(name={self.name!r}, value={self.value:g})"


class Region:
    """A prompt (``point`` [x, y, z] with a label concept, or ``box`` [xmin, ymin, xmax, ymax], or a ``mask``) or a
    result (``mask``, ``score``, ``box``, ``track_id``, ``concepts``; automatic masks add ``stability_score``,
    ``area`` in pixels and the grid ``point``).

    ``mask`` is a boolean numpy array (H, W), decoded on first access from the server's encoding; ``mask_pil()``
    gives it as an 8-bit PIL image (255 inside). As a prompt, ``mask`` takes a numpy array, a PIL image or an
    ``Image`` (non-zero inside).
    """

    def __init__(self, proto_region: Any = None, box: Optional[Sequence[float]] = None,
                 concepts: Optional[list[Concept]] = None, mask: Any = None,
                 point: Optional[Sequence[float]] = None, track_id: Optional[str] = None,
                 text: Optional[str] = None, id: Optional[str] = None, score: Optional[float] = None):
        if proto_region is not None:
            raise TypeError("Region(proto_region) is the hosted SDK's protobuf form; use keyword arguments")
        self.box = box
        self.point = point
        self.concepts = list(concepts or [])
        self.track_id = track_id
        self.text = text
        self.id = id if id is not None else uuid.uuid4().hex
        self.score = score
        self.stability_score: Optional[float] = None
        self.area: Optional[int] = None
        self._mask: Optional[np.ndarray] = None
        self._encoded: Optional[dict] = None  # {"png": b64} or {"rle": {...}} as the server sent it
        if mask is not None:
            self.mask = mask

    # -- geometry --------------------------------------------------------------------------------------------

    @property
    def box(self) -> Optional[list[float]]:
        """[xmin, ymin, xmax, ymax] (None when not set, or an empty result mask)."""
        return self._box

    @box.setter
    def box(self, value: Optional[Sequence[float]]):
        if value is not None:
            value = [float(v) for v in value]
            if len(value) != 4:
                raise ValueError(f"a box is [xmin, ymin, xmax, ymax], got {len(value)} numbers")
        self._box = value

    @property
    def point(self) -> Optional[tuple[float, float, float]]:
        """(x, y, z); z is carried for the SDK's sake and ignored by SAM 2."""
        return self._point

    @point.setter
    def point(self, value: Optional[Sequence[float]]):
        if value is not None:
            value = [float(v) for v in value]
            if len(value) not in (2, 3):
                raise ValueError(f"a point is [x, y] or [x, y, z], got {len(value)} numbers")
            value = tuple(value + [0.0] * (3 - len(value)))
        self._point = value

    @property
    def track_id(self) -> Optional[str]:
        return self._track_id

    @track_id.setter
    def track_id(self, value: Any):
        self._track_id = None if value is None or value == "" else str(value)

    # -- mask ------------------------------------------------------------------------------------------------

    @property
    def mask(self) -> Optional[np.ndarray]:
        """Boolean (H, W), True inside; None when the region has no mask."""
        if self._mask is None and self._encoded is not None:
            self._mask = decode_mask(self._encoded)
        return self._mask

    @mask.setter
    def mask(self, value: Any):
        if value is None:
            self._mask = self._encoded = None
            return
        if isinstance(value, Image):
            value = value.to_pil()
        if isinstance(value, PILImage.Image):
            value = np.asarray(value.convert("L")) > 0
        array = np.asarray(value)
        if array.ndim == 3:
            array = array.any(axis=-1)
        if array.ndim != 2:
            raise ValueError(f"a mask is (H, W), got shape {array.shape}")
        self._mask, self._encoded = array.astype(bool, copy=False), None

    def mask_pil(self) -> Optional[PILImage.Image]:
        """The mask as an 8-bit greyscale PIL image, 255 inside, 0 outside."""
        mask = self.mask
        return None if mask is None else PILImage.fromarray(mask.astype(np.uint8) * 255, mode="L")

    # -- wire form -------------------------------------------------------------------------------------------

    def to_prompt(self, video: bool = False) -> dict:
        """The request form (``RegionPrompt``, or ``VideoRegion`` when ``video``)."""
        out: dict[str, Any] = {}
        if self.point is not None:
            out["point"] = list(self.point)
            if self.concepts:
                out["concepts"] = [c.to_dict() for c in self.concepts[:1]]
        if self.box is not None:
            out["box"] = list(self.box)
        if video and (self._mask is not None or self._encoded is not None):
            out["mask"] = self._encoded or {"png": _png_b64(self.mask)}
        if self.track_id is not None:
            out["track_id"] = self.track_id
        return out

    @classmethod
    def from_json(cls, data: dict) -> "Region":
        """A region of a server response (predict, segment_anything or a video frame)."""
        region = cls(box=data.get("box"), point=data.get("point"), track_id=data.get("track_id"),
                     concepts=[Concept(c["name"], c["value"]) for c in data.get("concepts") or []],
                     score=data.get("score"))
        region.stability_score = data.get("stability_score")
        region.area = data.get("area")
        region._encoded = data.get("mask")
        return region

    def __repr__(self) -> str:
        parts = [f"{k}={v!r}" for k, v in (("point", self.point), ("box", self.box), ("track_id", self.track_id),
                                             ("score", self.score)) if v is not None]
        if self.concepts:
            parts.append(f"concepts={self.concepts!r}")
        if self._mask is not None or self._encoded is not None:
            parts.append("mask=<set>")
        return f"Region({', '.join(parts)})"


class _FrameInfo:
    def __init__(self, frame: "Frame"):
        object.__setattr__(self, "_frame", frame)

    def __getattr__(self, name: str):
        if name in ("index", "time"):
            return getattr(self._frame, name)
        raise AttributeError(name)

    def __setattr__(self, name: str, value: Any):
        if name not in ("index", "time"):
            raise AttributeError(f"frame_info has no field {name!r} (index, time)")
        setattr(self._frame, name, value)


class _FrameProto:
    """``frame.proto.frame_info.index``/``.time``: the SDK's protobuf path, writing through to the Frame."""

    def __init__(self, frame: "Frame"):
        self.frame_info = _FrameInfo(frame)


class Frame:
    """One video frame: its ``index`` (from 0), ``time`` in seconds, and ``regions`` (prompts or tracked masks)."""

    def __init__(self, proto_frame: Any = None, image: Optional[Image] = None,
                 regions: Optional[list[Region]] = None, time: Optional[float] = None, index: Optional[int] = None):
        if proto_frame is not None:
            raise TypeError("Frame(proto_frame) is the hosted SDK's protobuf form; use keyword arguments")
        self.image = image
        self.regions = list(regions or [])
        self.time = float(time) if time is not None else 0.0
        self.index = index if index is not None else 0  # the SDK's default (its proto's zero value)
        self.proto = _FrameProto(self)

    @property
    def index(self) -> int:
        return self._index

    @index.setter
    def index(self, value: Any):
        if isinstance(value, bool) or not float(value).is_integer() or value < 0:
            raise ValueError(f"a frame index is a whole number >= 0, got {value!r}")
        self._index = int(value)

    def to_prompt(self) -> dict:
        if not self.regions:
            raise ValueError(f"frame {self.index} has no regions to prompt with")
        return {"index": self.index, "regions": [r.to_prompt(video=True) for r in self.regions]}

    @classmethod
    def from_json(cls, data: dict) -> "Frame":
        return cls(regions=[Region.from_json(r) for r in data.get("regions", [])], time=data.get("time"),
                   index=data["index"])

    def __repr__(self) -> str:
        return f"Frame(index={self.index}, time={self.time:g}, regions={len(self.regions)})"


# -- mask codecs ---------------------------------------------------------------------------------------------


def decode_mask(encoded: dict) -> np.ndarray:
    """``{"png": base64}`` or ``{"rle": {"size": [H, W], "counts": str}}`` -> bool (H, W)."""
    if encoded.get("rle") is not None:
        return decode_rle(encoded["rle"])
    if encoded.get("png") is not None:
        return np.asarray(PILImage.open(io.BytesIO(base64.b64decode(encoded["png"]))).convert("L")) > 127
    raise ValueError(f"unknown mask encoding: {sorted(encoded)}")


def decode_rle(rle: dict) -> np.ndarray:
    """COCO compressed RLE -> bool (H, W), without pycocotools (the client stays numpy + pillow).

    ``counts`` is COCO's ASCII form: run lengths of alternating 0s and 1s over the column-major pixels, each a
    little-endian varint of 5-bit groups offset by 48 (bit 0x20: more groups follow; bit 0x10 of the last group:
    negative), delta-coded against the run two back from the third run on.
    """
    h, w = (int(v) for v in rle["size"])
    counts = rle["counts"]
    if isinstance(counts, list):  # uncompressed RLE
        runs = [int(c) for c in counts]
    else:
        data = counts.encode("ascii") if isinstance(counts, str) else bytes(counts)
        runs, p, n = [], 0, len(data)
        while p < n:
            x, k, more = 0, 0, True
            while more:
                c = data[p] - 48
                x |= (c & 0x1F) << (5 * k)
                more = bool(c & 0x20)
                p, k = p + 1, k + 1
                if not more and (c & 0x10):
                    x |= -1 << (5 * k)
            if len(runs) > 2:
                x += runs[-2]
            runs.append(x)
    if sum(runs) != h * w:
        raise ValueError(f"RLE runs cover {sum(runs)} pixels, not {h}x{w}")
    flat = np.repeat(np.arange(len(runs), dtype=np.uint8) % 2, runs).astype(bool)
    return flat.reshape(w, h).T


def _png_b64(mask: np.ndarray) -> str:
    buf = io.BytesIO()
    PILImage.fromarray(np.asarray(mask, dtype=np.uint8) * 255, mode="L").save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _b64decode(data: str) -> bytes:
    if data.startswith("data:"):
        data = data.partition(",")[2]
    return base64.b64decode(data)


def as_image_bytes(image: Any) -> bytes:
    """An ``Image``, PIL image, RGB/greyscale numpy array, encoded bytes or a file path -> encoded bytes."""
    if isinstance(image, Image):
        return image._require_bytes()
    if isinstance(image, PILImage.Image):
        return Image.from_pil(image)._require_bytes()
    if isinstance(image, np.ndarray):
        return Image.from_numpy(image)._require_bytes()
    if isinstance(image, (bytes, bytearray, memoryview)):
        return bytes(image)
    if isinstance(image, (str, os.PathLike)):
        return Image.from_file(image)._require_bytes()
    raise TypeError(f"image must be an Image, a PIL image, a numpy array, bytes or a path, not {type(image).__name__}")


def as_video_bytes(video: Any) -> bytes:
    """A ``Video``, encoded bytes or a file path -> encoded bytes."""
    if isinstance(video, Video):
        return video._require_bytes()
    if isinstance(video, (bytes, bytearray, memoryview)):
        return bytes(video)
    if isinstance(video, (str, os.PathLike)):
        return Video.from_file(video)._require_bytes()
    raise TypeError(f"video must be a Video, bytes or a path, not {type(video).__name__}")


def as_regions(regions: Optional[Iterable[Any]], video: bool = False) -> Optional[list[dict]]:
    """Regions (``Region`` objects or request dicts) -> request dicts."""
    if regions is None:
        return None
    if isinstance(regions, (Region, dict)):
        regions = [regions]
    return [r.to_prompt(video) if isinstance(r, Region) else dict(r) for r in regions]
