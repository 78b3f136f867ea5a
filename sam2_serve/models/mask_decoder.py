"""How this project runs sam2's mask decoder: its ``TwoWayTransformer`` wrapped, the network unchanged.

``DecoderTransformer`` replaces ``model.sam_mask_decoder.transformer`` (after the weights are loaded) and calls the
original with the same values. It adds three things around it:

1. **Channels-last inputs on CPU.** The transformer turns the image embedding and its positional encoding from
   B x C x H x W into B x HW x C token sequences with ``flatten(2).permute(0, 2, 1)``: views that are contiguous
   only for channels-last storage. sam2 hands both over C-major, and after the first layer every ``keys + key_pe``
   adds a token-major tensor to a transposed one: 1.5 ms for one 4096 x 256 add on this project's 2-core CPU,
   against 0.1 ms for two contiguous ones, six times a click. The positional encoding is the same every call, so
   its channels-last copy is kept (and checked against each call's). Measured with base-plus on truck.jpg: a click's
   decode 49.5 -> 45.1 ms, an automatic-mask batch of 64 grid points 3.9 -> 3.3 s. Logits differ from sam2's by at
   most 5e-7 (the first layer's projections read contiguous rows instead of transposed ones: another summation
   order), predicted IoUs by 6e-8.
2. **A stop after the transformer, and a resume.** The predicted IoUs come from the transformer's output tokens;
   the mask upscaling after it (transposed convolutions on the high-resolution features, a third of a pass) only
   makes the masks. Automatic mask generation throws away every mask whose predicted IoU is under a threshold, so
   ``transformer_pass`` runs a sam2 decode up to the end of the transformer and returns its outputs with the four
   IoU predictions per prompt (sam2's own ``iou_prediction_head``), and ``resume`` runs the same sam2 decode again
   for the prompts worth finishing, its transformer answered from those outputs instead of run again.
3. **One image, computed once.** Decoding a batch of prompts on one image, ``predict_masks`` repeats the image and
   its positional encoding for every prompt (``repeat_interleave``) and adds the dense prompt embedding, the same for
   every prompt when no mask is given; the transformer's first block then adds and projects every copy alike. A
   batched decode runs under ``SharedRows`` (a torch function mode, entered by hooks around the decoder's forward
   when an input has more than one row): a repeat of a batch-1 tensor becomes a broadcast view (stride 0 over the
   batch), and an add or a linear projection whose inputs are all such views computes one row and broadcasts it.
   The first block's image-side adds and projections run once; everything that reads the prompts runs per prompt
   as before. Rows count as shared by their storage, never by comparing values: a mask prompt or different images
   simply run per row. Outputs bit-identical to the image handed over as B real copies. An automatic-mask step of
   16 grid points stopped after the transformer (truck.jpg; the decoder is the same size in every model): 0.350 ->
   0.290 s against the previous wrapper (4 alternating process pairs, 8 passes each), which projected one row but
   still made the B copies, their sums and an equality check of the rows; a full decode of 16 prompts 0.533 ->
   0.478 s. A click (batch 1) skips the mode; so does a decode on CUDA (untested there, like 1.).

What this relies on of sam2's ``MaskDecoder`` (where the transformer sits, how ``predict_masks`` calls it and
repeats the image, which output token the IoU head reads, how sam2 calls the decoder) is in
``sam2_serve.models.sam2_internals``.
"""

from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from sam2_serve.models import sam2_internals


class _Stop(Exception):
    """Raised inside sam2's decode once the transformer has run (``transformer_pass``); never leaves this module."""


# What a transformer_pass/resume running on this thread asks of the wrapper: (mode, outputs, keep), and the outputs
# a stopped pass leaves. Per thread, outside the module, so that the model stays deep-copyable and picklable.
_tap = threading.local()


@dataclass(frozen=True)
class TransformerOutputs:
    """The transformer's outputs for a batch of B prompts, and what sam2's IoU head makes of them.

    Attributes:
        tokens: B x T x C output tokens (``hs``); ``image``: B x HW x C image tokens (``src``);
        prompts: B x T x C its input tokens (output tokens + prompt embeddings), to check a resume against;
        ious: float B x 4 predicted IoU of each of the decoder's four masks (single-mask token first).
    """

    tokens: torch.Tensor
    image: torch.Tensor
    prompts: torch.Tensor
    ious: torch.Tensor


def _one_image(t: Any) -> bool:
    """Whether ``t`` is a batch (B > 1 along dim 0) whose rows are one tensor broadcast (stride 0 over the batch)."""
    return isinstance(t, torch.Tensor) and t.dim() >= 2 and t.shape[0] > 1 and t.stride(0) == 0


_ADDS = (torch.Tensor.__add__, torch.Tensor.add, torch.add)


class SharedRows(TorchFunctionMode):
    """Runs a batch whose rows are one tensor broadcast as one row (the module docstring, 3.). Three rules, each
    giving the values the plain call gives (only their storage differs: a view, stride 0 over the batch):

    - ``torch.repeat_interleave(x, B, dim=0)`` of a batch-1 ``x``, as ``predict_masks`` repeats the image and its
      encoding (``sam2_internals.repeats_image``): ``x.expand(B, ...)`` instead of B copies;
    - ``a + b`` with both operands such broadcast batches: ``a[:1] + b[:1]``, broadcast;
    - ``F.linear(x, ...)`` of such a batch: the projection of ``x[:1]``, broadcast.

    Any other call runs as it is, and its output (a new tensor) is an ordinary batch again. Stateless: one instance
    serves every thread (torch keeps the mode stack per thread)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.repeat_interleave and sam2_internals.repeats_image(args, kwargs):
            x, repeats = args[0], args[1]
            return x.expand(repeats, *x.shape[1:])
        if func in _ADDS and len(args) == 2 and not kwargs:
            a, b = args
            if _one_image(a) and _one_image(b) and a.dim() == b.dim() and a.shape[0] == b.shape[0]:
                one = func(a[:1], b[:1])
                return one.expand(a.shape[0], *one.shape[1:])
        elif func is F.linear and _one_image(args[0]):
            one = func(args[0][:1], *args[1:], **kwargs)
            return one.expand(args[0].shape[0], *one.shape[1:])
        return func(*args, **kwargs)


_SHARED_ROWS = SharedRows()


def _enter_shared_rows(module, args, kwargs):
    # A click (every input of batch 1) has nothing to share: it skips the mode and the Python dispatch of every
    # torch call the mode would add. CPU only, like the rest of the wrapper: broadcast keys and values have not been
    # through CUDA's attention kernels (no GPU to test on).
    tensors = [t for t in (*args, *kwargs.values()) if isinstance(t, torch.Tensor)]
    use = any(t.dim() > 0 and t.shape[0] > 1 for t in tensors) and all(t.device.type == "cpu" for t in tensors)
    _tap.__dict__.setdefault("shared_rows", []).append(use)
    if use:
        _SHARED_ROWS.__enter__()


def _exit_shared_rows(module, args, output):
    if _tap.shared_rows.pop():
        _SHARED_ROWS.__exit__(None, None, None)


class DecoderTransformer(torch.nn.Module):
    """Wraps a mask decoder's ``TwoWayTransformer``: same signature, same results (see the module docstring)."""

    def __init__(self, transformer: torch.nn.Module):
        super().__init__()
        self.transformer = transformer
        self._pe: tuple[torch.Tensor, torch.Tensor] | None = None  # last positional encoding: as given, channels-last

    def forward(self, image_embedding: torch.Tensor, image_pe: torch.Tensor, point_embedding: torch.Tensor):
        """``image_embedding``, ``image_pe``: B x C x H x W; ``point_embedding``: B x T x C (see sam2's module)."""
        mode, saved, keep = getattr(_tap, "state", (None, None, None))
        if mode == "resume":
            if not torch.allclose(point_embedding, saved.prompts[keep], atol=1e-5):
                raise RuntimeError("resume() was given other prompts than the transformer_pass it resumes")
            return saved.tokens[keep], saved.image[keep]
        if image_embedding.device.type == "cpu":
            b = image_embedding.shape[0]
            # image_pe is one encoding repeated over the batch: read one copy and broadcast it, instead of
            # materialising B of them. The image too, when its rows are one image broadcast (the module docstring, 3.).
            image_pe = self._channels_last_pe(sam2_internals.single_dense_pe(image_pe)).expand(b, -1, -1, -1)
            if _one_image(image_embedding):
                image_embedding = image_embedding[:1].contiguous(memory_format=torch.channels_last)
                image_embedding = image_embedding.expand(b, -1, -1, -1)
            else:
                image_embedding = image_embedding.contiguous(memory_format=torch.channels_last)
        tokens, image = self.transformer(image_embedding, image_pe, point_embedding)
        if mode == "stop":
            _tap.stopped = (tokens, image, point_embedding)
            raise _Stop
        return tokens, image

    def _channels_last_pe(self, pe: torch.Tensor) -> torch.Tensor:
        """``pe`` (1 x C x H x W) in channels-last storage. Every call gets the same encoding (a fresh copy of it):
        comparing it with the last one costs less than converting it (a click: 58.5 -> 56.1 ms in one process)."""
        last = self._pe
        if last is None or last[0].shape != pe.shape or last[0].dtype != pe.dtype or last[0].device != pe.device \
                or not torch.equal(last[0], pe):
            with torch.inference_mode(False):  # kept as normal tensors, usable in and out of inference mode
                last = self._pe = (pe.clone(), pe.clone(memory_format=torch.channels_last))
        return last[1]


def wrap_mask_decoder(model: torch.nn.Module) -> torch.nn.Module:
    """Wrap the mask decoder's transformer (once) in ``DecoderTransformer`` and run the decoder under
    ``SharedRows`` (hooks around its forward; the exit hook runs also when the forward raises); after weights are
    loaded."""
    transformer = sam2_internals.mask_decoder_transformer(model)
    if not isinstance(transformer, DecoderTransformer):
        sam2_internals.replace_mask_decoder_transformer(model, DecoderTransformer(transformer))
        sam2_internals.run_mask_decoder_under(model, _enter_shared_rows, _exit_shared_rows)
    return model


def can_stop(model: torch.nn.Module) -> bool:
    """Whether ``model``'s mask decoder is wrapped, so that ``transformer_pass`` and ``resume`` work on it."""
    return isinstance(sam2_internals.mask_decoder_transformer(model), DecoderTransformer)


@contextlib.contextmanager
def _tapped(model: torch.nn.Module, mode: str, saved: Any = None, keep: Any = None):
    if not can_stop(model):
        raise TypeError("the model's mask decoder is not wrapped (sam2_serve.models.mask_decoder.wrap_mask_decoder)")
    if getattr(_tap, "state", (None,))[0] is not None:
        raise RuntimeError("transformer_pass/resume do not nest")
    _tap.state = (mode, saved, keep)
    try:
        yield
    finally:
        _tap.state = (None, None, None)
        _tap.stopped = None


def transformer_pass(model: torch.nn.Module, decode: Callable[[], Any]) -> TransformerOutputs:
    """Run ``decode`` (a sam2 call that reaches the mask decoder once, e.g. ``sam2_internals.predict_tensors``)
    up to the end of the transformer; its outputs and the predicted IoUs that sam2's IoU head gives them."""
    with _tapped(model, "stop"):
        try:
            decode()
        except _Stop:
            tokens, image, prompts = _tap.stopped
        else:
            raise RuntimeError("decode() never reached the mask decoder's transformer")
    return TransformerOutputs(tokens, image, prompts, sam2_internals.iou_predictions(model, tokens))


def resume(model: torch.nn.Module, outputs: TransformerOutputs, keep: torch.Tensor, decode: Callable[[], Any]) -> Any:
    """Run ``decode`` (the same sam2 call as the ``transformer_pass``, for the prompts ``keep`` indexes, in that
    order) with the transformer's outputs taken from ``outputs``: the rest of sam2's decoder runs as usual."""
    with _tapped(model, "resume", outputs, keep):
        return decode()
