"""Image encoding and prompt decoding with upstream ``SAM2ImagePredictor`` code, without its shared state.

``SAM2ImagePredictor`` keeps the image it was last given (``set_image``); a server must not, since concurrent
requests are for different images. ``ImageModel`` therefore never calls ``set_image`` on a shared predictor: each
call works on a shallow copy whose features are set from the ``ImageEmbedding`` passed in, and runs upstream's own
``set_image_batch``/``predict`` steps, so transforms, prompt encoding and post-processing are exactly upstream's.
How a view is made and fed is sam2-private: ``sam2_serve.models.sam2_internals``.
"""

from __future__ import annotations

import warnings
from typing import Optional, Sequence

import numpy as np
import torch

from sam2_serve.common.types import BitMask, ImageEmbedding, MaskPrediction, ObjectPrompt
from sam2_serve.models import sam2_internals
from sam2_serve.models.fast_encoder import FastEncoder
from sam2_serve.models.loader import LoadedModel


class ImageModel:
    """Ray-free image encoder and mask decoder over one loaded sam2 model."""

    def __init__(self, loaded: LoadedModel, encoder: Optional[FastEncoder] = None):
        """``encoder``: the runtime that ``encode`` runs the network with (``fast_encoder.load_fast_encoder``);
        None runs sam2's own torch forward, as does a ``FastEncoder`` that fell back to torch."""
        from sam2.sam2_image_predictor import SAM2ImagePredictor

        self.loaded = loaded
        self.encoder = encoder or FastEncoder("torch", "no fast encoder asked for")
        self._predictor = SAM2ImagePredictor(loaded.model)

    @property
    def image_size(self) -> int:
        return int(self.loaded.model.image_size)

    @torch.inference_mode()
    def encode(self, images: Sequence[np.ndarray], image_ids: Sequence[str]) -> list[ImageEmbedding]:
        """Encode a batch of RGB uint8 images (each H x W x 3, any size) in one forward pass.

        Returns one ``ImageEmbedding`` per image, features as float32 numpy arrays on the CPU (so they travel
        through Ray's object store zero-copy).
        """
        # Upstream's set_image_batch throughout; with a fast encoder, only its network forward runs elsewhere.
        view = sam2_internals.image_predictor_view(self._predictor, forward_image=self.encoder.forward_image)
        with self.loaded.autocast():
            view.set_image_batch([np.asarray(im) for im in images])
        feats, orig_hw = sam2_internals.image_features(view)
        out = []
        for i, (image_id, hw) in enumerate(zip(image_ids, orig_hw)):
            out.append(ImageEmbedding(
                image_id=image_id,
                orig_hw=(int(hw[0]), int(hw[1])),
                image_embed=_to_numpy(feats["image_embed"][i : i + 1]),
                high_res_feats=tuple(_to_numpy(f[i : i + 1]) for f in feats["high_res_feats"]),
            ))
        return out

    def _feature_tensors(self, emb: ImageEmbedding) -> dict:
        device = self.loaded.device
        with warnings.catch_warnings():
            # Arrays read zero-copy from Ray's object store are read-only; torch only reads them.
            warnings.simplefilter("ignore", UserWarning)
            return {
                "image_embed": torch.as_tensor(emb.image_embed, device=device),
                "high_res_feats": [torch.as_tensor(f, device=device) for f in emb.high_res_feats],
            }

    def predictor_for(self, emb: ImageEmbedding):
        """A private ``SAM2ImagePredictor`` view with ``emb`` set as its image (no encoder pass)."""
        view = sam2_internals.image_predictor_view(self._predictor)
        sam2_internals.set_image_features(view, self._feature_tensors(emb), [emb.orig_hw])
        return view

    @torch.inference_mode()
    def decode(
        self,
        emb: ImageEmbedding,
        prompts: Sequence[ObjectPrompt],
        multimask_output: bool = False,
        mask_input: Optional[np.ndarray] = None,
        with_logits: bool = True,
    ) -> list[MaskPrediction]:
        """Masks for each object's prompts on an encoded image, one upstream ``predict`` call per object.

        Coordinates in ``prompts`` are pixels of the original image, (x, y) order; see ``ObjectPrompt``.
        Masks come packed (``BitMask``: 270 kB instead of 2.2 MB at 1800x1200 for the trip to the ingress).
        """
        view = self.predictor_for(emb)
        out = []
        with self.loaded.autocast():
            for prompt in prompts:
                # Upstream's ``predict`` minus its last step, which turns the full-size boolean masks into float32
                # arrays (that callers threshold again): here they stay boolean, ~4 ms less a click at 1800x1200.
                mask_in, coords, labels, box = sam2_internals.prep_prompts(
                    view, prompt.point_coords, prompt.point_labels, prompt.box, mask_input)
                masks, scores, logits = sam2_internals.predict_tensors(view, coords, labels, box, mask_in,
                                                                      multimask_output)
                out.append(MaskPrediction(
                    masks=tuple(BitMask.pack(m) for m in masks.squeeze(0).cpu().numpy()),
                    scores=scores.squeeze(0).float().cpu().numpy(),
                    low_res_logits=logits.squeeze(0).float().cpu().numpy() if with_logits else None,
                    track_id=prompt.track_id,
                ))
        return out


def _to_numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().to("cpu", torch.float32).contiguous().numpy()
