"""The plug-and-play stack and sampler (EVE §3.1.3) on tiny models, outside ComfyUI."""

from __future__ import annotations

import pytest
import torch

from fdd.models.controlnet import load_controlnet
from fdd.models.lora import read_lora
from fdd.models.motion import load_motion_adapter
from fdd.models.sd1 import load_sd1
from fdd.pipelines import PlugAndPlayConfig, VideoEditStack, plug_and_play_edit
from fdd.pipelines.plug_and_play import make_edit_eps_fn
from fdd.pipelines.common import encode_prompts
from fdd.testing.clip import moving_shapes_clip


@pytest.fixture(scope="module")
def stack(models_tree):
    bb = load_sd1(models_tree["checkpoint"], tokenizer=models_tree["tokenizer"])
    cn = load_controlnet(models_tree["controlnet"])
    ad = load_motion_adapter(models_tree["motion"])
    return VideoEditStack(bb, controlnet=cn, motion_adapter=ad)


def _embs(stack, *texts):
    bb = stack.backbone
    return [encode_prompts(bb.tokenizer, bb.text_encoder, [t]) for t in texts]


def test_guidance_branches_match_hand_combination(stack):
    """eps_fn's output equals InstructPix2Pix Eq. 3 computed from three separate predictions."""
    torch.manual_seed(0)
    frames = 4
    x = torch.randn(1, 4, frames, 8, 8)
    img = torch.rand(frames, 3, 32, 32)
    cap, ins, emp = _embs(stack, "a green ball", "make it green", "")
    cfg = PlugAndPlayConfig(text_cfg=5.0, image_cfg=1.7, context_frames=16)
    with torch.no_grad():
        fn = make_edit_eps_fn(stack, img, cap, ins, emp, cfg)
        got = fn(x, 501)
        full = stack.predict_noise(x, 501, cap, ins, img, [True])
        image = stack.predict_noise(x, 501, emp, emp, img, [True])
        uncond = stack.predict_noise(x, 501, emp, emp, img, [False])
    assert fn.plan == ["full", "image", "uncond"]
    want = uncond + 1.7 * (image - uncond) + 5.0 * (full - image)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    # the edit adapter matters: with and without it the predictions differ
    assert (image - uncond).abs().max() > 1e-4
    # image_cfg = 1 drops the unconditional branch and equals plain CFG around the image branch
    with torch.no_grad():
        fn1 = make_edit_eps_fn(stack, img, cap, ins, emp, PlugAndPlayConfig(text_cfg=5.0, image_cfg=1.0))
        got1 = fn1(x, 501)
    assert fn1.plan == ["full", "image"]
    torch.testing.assert_close(got1, image + 5.0 * (full - image), rtol=1e-4, atol=1e-5)


def test_no_image_branch_is_backbone_without_residuals(stack):
    torch.manual_seed(1)
    x = torch.randn(1, 4, 3, 8, 8)
    img = torch.rand(3, 3, 32, 32)
    (emp,) = _embs(stack, "")
    with torch.no_grad():
        a = stack.predict_noise(x, 300, emp, emp, img, [False])
        b = stack.motion_unet(x, 300, encoder_hidden_states=emp.repeat_interleave(3, 0)).sample
    torch.testing.assert_close(a, b)


def test_batched_branches_equal_separate_calls(stack):
    """One batched call over branches gives the same predictions as separate calls."""
    torch.manual_seed(2)
    x = torch.randn(1, 4, 3, 8, 8)
    img = torch.rand(3, 3, 32, 32)
    cap, ins, emp = _embs(stack, "a cat", "turn it into a cat", "")
    with torch.no_grad():
        both = stack.predict_noise(x.expand(3, -1, -1, -1, -1), 700, torch.cat([cap, emp, emp]),
                                   torch.cat([ins, emp, emp]), img, [True, True, False])
        sep = [stack.predict_noise(x, 700, c, i, img, [on]) for c, i, on in
               [(cap, ins, True), (emp, emp, True), (emp, emp, False)]]
    torch.testing.assert_close(both, torch.cat(sep), rtol=1e-4, atol=1e-5)


def test_edit_is_deterministic_and_seed_dependent(stack):
    frames = moving_shapes_clip(4, 32, 32)
    cfg = PlugAndPlayConfig(steps=3, seed=7)
    a = plug_and_play_edit(stack, frames, "make it green", "a green ball", cfg)
    b = plug_and_play_edit(stack, frames, "make it green", "a green ball", cfg)
    c = plug_and_play_edit(stack, frames, "make it green", "a green ball", PlugAndPlayConfig(steps=3, seed=8))
    assert a.shape == frames.shape and a.dtype == torch.float32
    assert 0.0 <= a.min() and a.max() <= 1.0
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert a.std() > 1e-3


def test_long_clip_uses_windows_and_odd_sizes_round_trip(stack):
    frames = moving_shapes_clip(10, 36, 44)  # 36x44 is not a multiple of 8: resized and back
    calls = []
    orig = stack.predict_noise

    def spy(x, *a, **k):
        calls.append(x.shape[2])
        return orig(x, *a, **k)

    stack.predict_noise = spy
    try:
        out = plug_and_play_edit(stack, frames, "x", "y",
                                 PlugAndPlayConfig(steps=2, context_frames=6, context_overlap=2))
    finally:
        del stack.predict_noise
    assert out.shape == frames.shape
    # 10 frames, windows of 6 overlapping by 2: (0,6), (4,10) -> 2 windows per step
    assert calls == [6, 6, 6, 6]


def test_lora_changes_output_and_is_removed(stack, models_tree):
    frames = moving_shapes_clip(2, 32, 32)
    cfg = PlugAndPlayConfig(steps=2, seed=3)
    base = plug_and_play_edit(stack, frames, "a", "b", cfg)
    w_before = {k: v.clone() for k, v in stack.denoiser.state_dict().items()}
    stack.loras = [(read_lora(models_tree["lora"]), 1.0)]
    try:
        with_lora = plug_and_play_edit(stack, frames, "a", "b", cfg)
    finally:
        stack.loras = []
    assert not torch.equal(base, with_lora)
    for k, v in stack.denoiser.state_dict().items():
        assert torch.equal(v, w_before[k]), k
    again = plug_and_play_edit(stack, frames, "a", "b", cfg)
    assert torch.equal(base, again)


def test_progress_and_denoise(stack):
    frames = moving_shapes_clip(2, 32, 32)
    seen = []
    plug_and_play_edit(stack, frames, "a", "b", PlugAndPlayConfig(steps=10, denoise=0.3),
                       callback=lambda i, n, lat: seen.append((i, n)))
    assert seen == [(1, 3), (2, 3), (3, 3)]
    with pytest.raises(ValueError, match="denoise"):
        plug_and_play_edit(stack, frames, "a", "b", PlugAndPlayConfig(denoise=0.0))


def _oom_above(limit):
    def check(n):
        if n > limit:
            raise torch.OutOfMemoryError(f"CUDA out of memory (simulated: batch {n} > {limit})")
    return check


def test_branch_split_gives_the_same_edit_and_auto_falls_back_on_oom(stack, monkeypatch):
    """Guidance branches one at a time ("sequential") give the batched result; "auto" meets an
    out-of-memory error on the batched call, switches to one branch at a time and gives the same
    frames; "batched" lets the error through."""
    frames = moving_shapes_clip(4, 32, 32)
    run = lambda split: plug_and_play_edit(stack, frames, "make it green", "a green ball",  # noqa: E731
                                           PlugAndPlayConfig(steps=2, seed=3, branch_split=split))
    batched = run("batched")
    sequential = run("sequential")
    torch.testing.assert_close(sequential, batched, atol=2e-5, rtol=0)
    real = stack.predict_noise
    calls = []

    def tight(x, *a, **k):
        calls.append(x.shape[0])
        _oom_above(1)(x.shape[0])
        return real(x, *a, **k)

    monkeypatch.setattr(stack, "predict_noise", tight)
    auto = run("auto")
    torch.testing.assert_close(auto, sequential, atol=0, rtol=0)
    assert calls[0] == 3 and set(calls[1:]) == {1}, calls  # one failed batched call, then split
    with pytest.raises(torch.OutOfMemoryError):
        run("batched")
    with pytest.raises(ValueError, match="branch_split"):
        PlugAndPlayConfig(branch_split="sideways").validate()


def test_vae_decode_halves_its_batch_on_oom_with_the_same_pixels(stack, monkeypatch):
    from fdd.video import vae_decode, vae_encode

    vae = stack.backbone.vae
    lat = torch.randn(7, 4, 4, 4)
    want = vae_decode(vae, lat, 0.18215, batch=8)
    real = vae.decode
    seen = []

    def tight(z, *a, **k):
        seen.append(z.shape[0])
        _oom_above(2)(z.shape[0])
        return real(z, *a, **k)

    monkeypatch.setattr(vae, "decode", tight)
    got = vae_decode(vae, lat, 0.18215, batch=8)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    assert seen[:3] == [7, 4, 2] and max(seen[2:]) <= 2, seen
    monkeypatch.setattr(vae, "decode", lambda z, *a, **k: _oom_above(0)(z.shape[0]))
    with pytest.raises(RuntimeError, match="VAE decode: out of memory even one frame at a time"):
        vae_decode(vae, lat, 0.18215)
    real_enc = vae.encode
    monkeypatch.setattr(vae, "encode", lambda p, *a, **k: (_oom_above(3)(p.shape[0]), real_enc(p))[1])
    pix = torch.rand(5, 3, 32, 32) * 2 - 1
    monkeypatch.undo()
    want_enc = vae_encode(vae, pix, 0.18215)
    monkeypatch.setattr(vae, "encode", lambda p, *a, **k: (_oom_above(3)(p.shape[0]), real_enc(p))[1])
    torch.testing.assert_close(vae_encode(vae, pix, 0.18215), want_enc, atol=1e-5, rtol=0)


def test_non_finite_latents_stop_the_sampler_at_their_step(stack, monkeypatch):
    """A prediction that turns NaN at the second step ends the edit with an error naming the step
    and the likely causes, instead of returning black frames."""
    from fdd.numerics import NonFiniteError

    real = stack.predict_noise
    calls = {"n": 0}

    def poisoned(x, *a, **k):
        calls["n"] += 1
        out = real(x, *a, **k)
        return out * float("nan") if calls["n"] >= 2 else out

    monkeypatch.setattr(stack, "predict_noise", poisoned)
    frames = moving_shapes_clip(4, 32, 32)
    with pytest.raises(NonFiniteError, match=r"the latents became non-finite \(NaN or inf\) at step 2/3.*guidance"):
        plug_and_play_edit(stack, frames, "make it green", "a green ball", PlugAndPlayConfig(steps=3, seed=1))


def test_an_edit_adapter_for_another_backbone_is_refused_naming_both_files(models_tree):
    """The toy edit adapter on the SD 1.5-named tiny backbone: before, a size mismatch deep in
    diffusers; now an error naming the ControlNet file, the backbone file and what differs."""
    import os

    from fdd.models.errors import ModelLoadError

    toy_cn = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "models", "toy", "controlnet",
                          "toy_controlnet_edit.safetensors")
    bb = load_sd1(models_tree["checkpoint"], tokenizer=models_tree["tokenizer"])
    stack = VideoEditStack(bb, controlnet=load_controlnet(toy_cn), controlnet_source=toy_cn)
    with pytest.raises(ModelLoadError, match=r"toy_controlnet_edit\.safetensors.*does not match the backbone "
                                             r"'.*v1-5-pruned-emaonly\.safetensors'.*image encoder reduces"):
        plug_and_play_edit(stack, moving_shapes_clip(4, 32, 32), "x", "y", PlugAndPlayConfig(steps=1))
