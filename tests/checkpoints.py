"""Checkpoints that tests write themselves: sam2's own network built from its config with a fixed seed.

Real weights cannot be downloaded in CI, and fake models prove nothing, so tests exercise the real loading path
(``torch.load(weights_only=True)`` of ``{"model": state_dict}``) on random-but-deterministic weights.
"""

from __future__ import annotations

from pathlib import Path

import torch

from models.registry import get_spec


def write_checkpoint(path: Path, model: str = "sam2.1-hiera-tiny", seed: int = 0,
                     hydra_overrides: tuple[str, ...] = ()) -> Path:
    """Build ``model``'s network with random weights (seeded) and save it as sam2 checkpoints are saved.

    The object-score head's last bias is set to +10: with random weights it is negative, and SAM 2 would then
    report "no object" on every video frame (image prediction does not read it).
    """
    from sam2.build_sam import build_sam2_video_predictor

    torch.manual_seed(seed)
    net = build_sam2_video_predictor(get_spec(model).config, ckpt_path=None, device="cpu",
                                     hydra_overrides_extra=list(hydra_overrides))
    state = net.state_dict()
    key = "sam_mask_decoder.pred_obj_score_head.layers.2.bias"
    if key in state:
        state[key] = torch.full_like(state[key], 10.0)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": state}, path)
    return path
