"""The ASSD node called directly, ComfyUI imported in-process, tiny models from the models tree."""

from __future__ import annotations

import pytest
import torch

from fdd.testing.clip import moving_shapes_clip


def _run(node, **kw):
    out = node.execute(**kw)
    return out.result if hasattr(out, "result") else out


@pytest.fixture(scope="module")
def loaded(comfy_pack):
    bb = _run(comfy_pack["FDD_LoadBackbone"], ckpt_name="v1-5-pruned-emaonly.safetensors")[0]
    t2v = _run(comfy_pack["FDD_LoadT2VUNet"], model_folder="tiny-zeroscope")[0]
    mm = _run(comfy_pack["FDD_LoadVideoAdapter"], motion_module="mm_sd_v15_v2.ckpt")[0]
    return bb, t2v, mm


@pytest.mark.slow
def test_assd_node_progress_previews_and_outputs(comfy_pack, loaded):
    import comfy.utils

    bb, t2v, _ = loaded
    frames = moving_shapes_clip(4, 40, 40)
    calls = []
    comfy.utils.set_progress_bar_global_hook(lambda v, t, p, node_id=None: calls.append((v, t, p)))
    try:
        out, previews, _ = _run(comfy_pack["FDD_ASSDOptimize"], frames=frames, source_prompt="a red ball",
                             target_prompt="a green ball", t2v_unet=t2v, backbone=bb, steps=3,
                             keyframe_stride=2, preview_every=2, seed=1)
    finally:
        comfy.utils.set_progress_bar_global_hook(None)
    assert out.shape == frames.shape and torch.isfinite(out).all()
    assert [(v, t) for v, t, _ in calls] == [(1, 3), (2, 3), (3, 3)]
    sent = [p for _, _, p in calls]
    assert sent[0] is None and sent[1][0] == "JPEG" and sent[1][1].size == (4 * 40, 40) and sent[2] is not None
    assert previews.shape == (2, 40, 160, 3)
    # the same inputs give the same video (seeded); the prompts matter
    again = _run(comfy_pack["FDD_ASSDOptimize"], frames=frames, source_prompt="a red ball",
                 target_prompt="a green ball", t2v_unet=t2v, backbone=bb, steps=3, keyframe_stride=2,
                 preview_every=0, seed=1)
    assert torch.equal(again[0], out) and again[1].shape == (1, 40, 160, 3)


def test_assd_node_animatediff_prior_and_lora(comfy_pack, loaded):
    bb, _, mm = loaded
    with_lora = _run(comfy_pack["FDD_LoraLoader"], backbone=bb, lora_name="fdd_demo_lora.safetensors",
                     strength=0.5)[0]
    unet_w = {k: v.clone() for k, v in bb.backbone.unet.state_dict().items()}
    te_w = {k: v.clone() for k, v in bb.backbone.text_encoder.state_dict().items()}
    frames = moving_shapes_clip(3, 32, 32)
    out, _, latent = _run(comfy_pack["FDD_ASSDOptimize"], frames=frames, source_prompt="a red ball",
                          target_prompt="a green ball", backbone=with_lora, video_adapter=mm, steps=2,
                          preview_every=0)
    assert out.shape == frames.shape and torch.isfinite(out).all()
    # the LATENT output: raw VAE latents, frames in the batch; decoded it gives the IMAGE output
    from fdd.video import decode_video, from_latent_batch, pixels_to_frames

    bbm = bb.backbone
    f = bbm.vae_scale_factor
    assert latent["samples"].shape == (3, 4, 32 // f, 32 // f)
    with torch.no_grad():
        decoded = pixels_to_frames(decode_video(bbm.vae, from_latent_batch(latent["samples"], bbm.scaling_factor),
                                                bbm.scaling_factor))
    assert (decoded - out).abs().max() <= 1 / 255
    # LoRAs are applied only during the run: weights restored bit-exactly
    assert all(torch.equal(v, unet_w[k]) for k, v in bb.backbone.unet.state_dict().items())
    assert all(torch.equal(v, te_w[k]) for k, v in bb.backbone.text_encoder.state_dict().items())
    plain, _, _ = _run(comfy_pack["FDD_ASSDOptimize"], frames=frames, source_prompt="a red ball",
                    target_prompt="a green ball", backbone=bb, video_adapter=mm, steps=2, preview_every=0)
    assert not torch.equal(plain, out)


def test_assd_node_errors_and_interrupt(comfy_pack, loaded):
    import comfy.model_management as mm_

    bb, t2v, mm = loaded
    node = comfy_pack["FDD_ASSDOptimize"]
    frames = moving_shapes_clip(2, 32, 32)
    kw = dict(frames=frames, source_prompt="a", target_prompt="b", steps=2)
    with pytest.raises(ValueError, match="not both"):
        _run(node, t2v_unet=t2v, backbone=bb, video_adapter=mm, **kw)
    with pytest.raises(ValueError, match="no video prior"):
        _run(node, backbone=bb, **kw)
    with pytest.raises(ValueError, match="joint_guidance"):
        _run(node, t2v_unet=t2v, **kw)
    with pytest.raises(ValueError, match="needs a backbone"):
        _run(node, video_adapter=mm, joint_guidance=False, **kw)
    with pytest.raises(ValueError, match="frames"):
        _run(node, t2v_unet=t2v, backbone=bb, **dict(kw, frames=torch.zeros(2, 32, 32)))
    # Cancel pressed during step 2 (as POST /interrupt does): the node stops at its next progress
    # report and returns nothing
    import comfy.utils

    seen = []

    def hook(value, total, preview, node_id=None):
        seen.append(value)
        if value == 2:
            mm_.interrupt_current_processing(True)

    comfy.utils.set_progress_bar_global_hook(hook)
    try:
        with pytest.raises(mm_.InterruptProcessingException):
            _run(node, t2v_unet=t2v, backbone=bb, **dict(kw, steps=50, preview_every=0))
    finally:
        mm_.interrupt_current_processing(False)
        comfy.utils.set_progress_bar_global_hook(None)
    assert seen == [1, 2]
