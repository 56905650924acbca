"""The video adapter's strength (issue 24): each motion module's output blended with its input,
x + s * (module(x) - x); 1 = as trained (bit-identical to no hook), 0 = frames independent."""

from __future__ import annotations

import pytest
import torch

from fdd.models.motion import blend_motion, build_motion_unet, motion_scale_of, set_motion_scale
from fdd.testing.tiny import CROSS_DIM, tiny_motion_adapter, tiny_unet

torch.set_num_threads(2)
F = 4


@pytest.fixture(scope="module")
def models():
    unet = tiny_unet(0).eval()
    adapter = tiny_motion_adapter(0, mid_block=True)
    with torch.no_grad():  # random (non-zero) motion modules, so they change the output
        for n, p in adapter.named_parameters():
            if "proj_out" in n:
                p.normal_(0, 0.2, generator=torch.Generator().manual_seed(3))
    return unet, build_motion_unet(unet, adapter).eval()


def _inputs():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 4, F, 16, 16, generator=g)
    emb = torch.randn(F, 7, CROSS_DIM, generator=g)
    return x, emb


@torch.no_grad()
def _motion(mu, x, emb):
    return mu(x, 500, encoder_hidden_states=emb).sample


@torch.no_grad()
def test_scale_one_is_bit_identical_and_zero_is_the_image_unet_per_frame(models):
    unet, mu = models
    x, emb = _inputs()
    plain = _motion(mu, x, emb)
    set_motion_scale(mu, 1.0)
    assert torch.equal(_motion(mu, x, emb), plain)
    set_motion_scale(mu, 0.0)
    try:
        zero = _motion(mu, x, emb)
    finally:
        set_motion_scale(mu, 1.0)
    frames = x[0].permute(1, 0, 2, 3)  # (F, C, h, w): the clip's frames as a batch
    per_frame = unet(frames, 500, encoder_hidden_states=emb).sample.permute(1, 0, 2, 3)[None]
    assert (zero - per_frame).abs().max() < 1e-4
    assert (plain - per_frame).abs().max() > 1e-2  # the modules do act at 1


@torch.no_grad()
def test_each_module_is_blended_with_its_input(models):
    _, mu = models
    module = mu.down_blocks[0].motion_modules[0]
    c = mu.config.block_out_channels[0]
    h = torch.randn(F, c, 8, 8, generator=torch.Generator().manual_seed(1))
    set_motion_scale(mu, 1.0)
    full = module(h, num_frames=F)
    set_motion_scale(mu, 0.3)
    try:
        part = module(h, num_frames=F)
    finally:
        set_motion_scale(mu, 1.0)
    assert torch.allclose(part, h + 0.3 * (full - h), atol=1e-6)
    assert torch.allclose(blend_motion(h, full, 0.3), part, atol=1e-6) and blend_motion(h, full, 1.0) is full


def test_bad_scales_and_models_are_refused(models):
    _, mu = models
    for bad in (float("nan"), -0.5, float("inf")):
        with pytest.raises(ValueError, match="motion_scale: expected a finite number >= 0"):
            set_motion_scale(mu, bad)
    assert motion_scale_of(mu) == 1.0
    with pytest.raises(ValueError, match="no motion modules"):
        set_motion_scale(tiny_unet(0), 0.5)


@torch.no_grad()
def test_the_stack_runs_its_motion_unet_at_its_scale(models):
    """VideoEditStack.motion_scale 0 predicts what the stack without a video adapter does."""
    from fdd.models.sd1 import SD1Backbone  # noqa: F401  (the stack's backbone type)
    from fdd.pipelines import VideoEditStack
    from fdd.testing.tiny import tiny_text_encoder, tiny_vae

    unet, _ = models
    adapter = tiny_motion_adapter(0, mid_block=True)
    with torch.no_grad():
        for n, p in adapter.named_parameters():
            if "proj_out" in n:
                p.normal_(0, 0.2, generator=torch.Generator().manual_seed(3))

    class BB:  # the parts of an SD1Backbone the stack reads
        pass

    bb = BB()
    bb.unet, bb.vae, bb.text_encoder, bb.source = unet, tiny_vae(0), tiny_text_encoder(0), "tiny"
    x, emb = _inputs()
    text = emb[:1]
    video = VideoEditStack(bb, motion_adapter=adapter, motion_scale=0.0)
    image = VideoEditStack(bb)
    a = video.predict_noise(x, 500, text)
    b = image.predict_noise(x, 500, text)
    assert (a - b).abs().max() < 1e-4
    video.motion_scale = 1.0
    assert (video.predict_noise(x, 500, text) - b).abs().max() > 1e-2
