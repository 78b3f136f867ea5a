"""sam2_serve.models.mask_decoder: sam2's mask decoder, wrapped, computes what sam2's computes; stop and resume give the same."""

import copy

import numpy as np
import pytest
import torch

from sam2_serve.models import mask_decoder, sam2_internals
from sam2_serve.models.loader import load_model


@pytest.fixture(scope="module")
def plain_and_ours(tiny_checkpoint):
    return (load_model("sam2.1-hiera-tiny", tiny_checkpoint, device="cpu", sam2_exact=True).model,
            load_model("sam2.1-hiera-tiny", tiny_checkpoint, device="cpu").model)


def _inputs(prompts: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    image = torch.randn(1, 256, 64, 64, generator=g)
    high_res = [torch.randn(1, 32, 256, 256, generator=g), torch.randn(1, 64, 128, 128, generator=g)]
    points = torch.rand(prompts, 2, 2, generator=g) * 1024
    labels = torch.tensor([[1, 0]] * prompts)
    return image, high_res, points, labels


def _decode(model, image, high_res, points, labels, multimask_output=True):
    """What SAM2ImagePredictor._predict asks of the decoder, for ``points``/``labels`` (N x 2 x 2, N x 2)."""
    with torch.inference_mode():
        sparse, dense = model.sam_prompt_encoder(points=(points, labels), boxes=None, masks=None)
        return model.sam_mask_decoder(
            image_embeddings=image, image_pe=model.sam_prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense, multimask_output=multimask_output,
            repeat_image=points.shape[0] > 1, high_res_features=high_res)


def test_loader_wraps_unless_asked_for_sam2_exact(plain_and_ours):
    plain, ours = plain_and_ours
    assert not mask_decoder.can_stop(plain) and mask_decoder.can_stop(ours)
    wrapped, original = sam2_internals.mask_decoder_transformer(ours), sam2_internals.mask_decoder_transformer(plain)
    assert wrapped.transformer.__class__ is original.__class__
    assert set(ours.state_dict()) == {k.replace("transformer.", "transformer.transformer.", 1)
                                      if k.startswith("sam_mask_decoder.transformer.") else k
                                      for k in plain.state_dict()}  # the same weights, one level deeper
    copy.deepcopy(ours.sam_mask_decoder)  # no per-thread state on the module


@pytest.mark.parametrize("prompts", [1, 5])
def test_outputs_match_sam2(plain_and_ours, prompts):
    """A click (one prompt, the image not repeated) and a batch (the image repeated per prompt, as in AMG)."""
    plain, ours = plain_and_ours
    inputs = _inputs(prompts)
    (ref_masks, ref_iou, ref_tokens, _), (masks, iou, tokens, _) = _decode(plain, *inputs), _decode(ours, *inputs)
    assert masks.shape == ref_masks.shape == (prompts, 3, 256, 256)
    assert ref_masks.abs().max() > 1  # not a degenerate comparison
    np.testing.assert_allclose(masks.numpy(), ref_masks.numpy(), atol=1e-4, rtol=1e-5)
    np.testing.assert_allclose(iou.numpy(), ref_iou.numpy(), atol=1e-5)
    np.testing.assert_allclose(tokens.numpy(), ref_tokens.numpy(), atol=1e-5)
    assert ((masks > 0) == (ref_masks > 0)).float().mean() > 0.9999


def test_stop_gives_sam2s_ious_and_resume_its_masks(plain_and_ours):
    plain, ours = plain_and_ours
    image, high_res, points, labels = _inputs(6, seed=1)
    ref_masks, ref_iou, _, _ = _decode(plain, image, high_res, points, labels, multimask_output=False)
    with torch.inference_mode():
        out = mask_decoder.transformer_pass(ours, lambda: _decode(ours, image, high_res, points, labels, False))
    assert out.ious.shape == (6, 4)
    # multimask_output=False reports the single-mask token's IoU, or (dynamic multimask) one of the other three.
    assert all(any(abs(float(r) - float(x)) < 1e-5 for x in row) for r, row in zip(ref_iou[:, 0], out.ious))
    keep = torch.tensor([4, 1, 2])
    with torch.inference_mode():
        masks, iou, _, _ = mask_decoder.resume(
            ours, out, keep, lambda: _decode(ours, image, high_res, points[keep], labels[keep], False))
    np.testing.assert_allclose(masks.numpy(), ref_masks[keep].numpy(), atol=1e-4, rtol=1e-5)
    np.testing.assert_allclose(iou.numpy(), ref_iou[keep].numpy(), atol=1e-5)
    # The wrapper is back to normal afterwards, and a resume with other prompts than the pass's is refused.
    np.testing.assert_allclose(_decode(ours, image, high_res, points, labels, False)[0].numpy(), ref_masks.numpy(),
                               atol=1e-4, rtol=1e-5)
    with pytest.raises(RuntimeError, match="other prompts"), torch.inference_mode():
        mask_decoder.resume(ours, out, keep, lambda: _decode(ours, image, high_res, points[:3], labels[:3], False))


def test_each_positional_encoding_is_used_as_given(plain_and_ours):
    """The wrapper keeps the last encoding in channels-last storage; another one must not be answered from it."""
    plain, ours = plain_and_ours
    g = torch.Generator().manual_seed(2)
    image, tokens = torch.randn(2, 256, 64, 64, generator=g), torch.randn(2, 8, 256, generator=g)
    for _ in range(2):
        pe = torch.randn(1, 256, 64, 64, generator=g).repeat(2, 1, 1, 1)
        with torch.inference_mode():
            ref_tokens, ref_image = sam2_internals.mask_decoder_transformer(plain)(image, pe, tokens)
            got_tokens, got_image = sam2_internals.mask_decoder_transformer(ours)(image, pe, tokens)
        np.testing.assert_allclose(got_tokens.numpy(), ref_tokens.numpy(), atol=1e-4)
        np.testing.assert_allclose(got_image.numpy(), ref_image.numpy(), atol=1e-4)


def test_a_batch_on_one_image_runs_the_image_once(plain_and_ours):
    """Prompts on one image: the decoder runs under SharedRows, the image reaches the transformer as one row
    broadcast (stride 0 over the batch) and the first block's image-side projections run once; the outputs are those
    of the same image handed over as B real copies (every row computed). Different images: every row."""
    plain, ours = plain_and_ours
    transformer = sam2_internals.mask_decoder_transformer(ours)
    block = transformer.transformer.layers[0]
    projections = [block.cross_attn_token_to_image.k_proj, block.cross_attn_token_to_image.v_proj,
                   block.cross_attn_image_to_token.q_proj]
    strides: list[int] = []
    hooks = [p.register_forward_hook(lambda mod, args, out: strides.append(out.stride(0))) for p in projections]
    image, high_res, points, labels = _inputs(4)
    try:
        shared = _decode(ours, image, high_res, points, labels)
        assert strides == [0, 0, 0]
        with torch.inference_mode():  # the same decode, the image repeated by hand: nothing to share
            sparse, dense = ours.sam_prompt_encoder(points=(points, labels), boxes=None, masks=None)
            copies = ours.sam_mask_decoder(
                image_embeddings=image.repeat(4, 1, 1, 1), image_pe=ours.sam_prompt_encoder.get_dense_pe(),
                sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense, multimask_output=True,
                repeat_image=False, high_res_features=high_res)
        assert len(strides) == 6 and all(s > 0 for s in strides[3:])
        g = torch.Generator().manual_seed(4)
        images, pe, tokens = torch.randn(2, 256, 64, 64, generator=g), torch.randn(1, 256, 64, 64, generator=g), \
            torch.randn(2, 8, 256, generator=g)
        with torch.inference_mode():
            got = transformer(images, pe.expand(2, -1, -1, -1), tokens)
            ref = sam2_internals.mask_decoder_transformer(plain)(images, pe.expand(2, -1, -1, -1), tokens)
        assert len(strides) == 9 and all(s > 0 for s in strides[6:])
    finally:
        for h in hooks:
            h.remove()
    assert shared[0].abs().max() > 1 and (shared[0] > 0).any() and not (shared[0] > 0).all()
    for a, b in zip(shared, copies):
        assert torch.equal(a, b)
    for a, b in zip(got, ref):
        np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-4)


def test_shared_rows_is_left_when_the_decoder_raises_and_skipped_for_a_click(plain_and_ours):
    """transformer_pass stops the decoder with an exception: the mode entered around the decoder is left all the
    same, and ops after it run as usual. A single prompt (nothing to share) runs without the mode, and so does a
    batch off the CPU."""
    _, ours = plain_and_ours
    image, high_res, points, labels = _inputs(3, seed=5)
    before = torch._C._len_torch_function_stack()
    modes: list[int] = []
    hook = sam2_internals.mask_decoder_transformer(ours).register_forward_pre_hook(
        lambda m, a: modes.append(torch._C._len_torch_function_stack() - before))
    try:
        with torch.inference_mode():
            mask_decoder.transformer_pass(ours, lambda: _decode(ours, image, high_res, points, labels, False))
            _decode(ours, image, high_res, points[:1], labels[:1])
    finally:
        hook.remove()
    assert modes == [1, 0]
    assert torch._C._len_torch_function_stack() == before and not mask_decoder._tap.shared_rows
    # Off the CPU (here the meta device stands for CUDA) a batch runs without the mode too.
    mask_decoder._enter_shared_rows(None, (torch.zeros(4, 8, device="meta"),), {})
    assert torch._C._len_torch_function_stack() == before
    mask_decoder._exit_shared_rows(None, (), None)
    assert not mask_decoder._tap.shared_rows
    x = torch.zeros(1, 4).expand(3, 4)
    assert (x + x).stride(0) != 0  # an ordinary add, not SharedRows'
