"""The ASSD optimiser on tiny models (outside ComfyUI): the DDS property, joint guidance on
keyframes only, batched == separate branch calls, both video priors, interrupt, model checks."""

from __future__ import annotations

import copy
import json
import os

import pytest
import torch

from fdd.assd import (ABLATIONS, ASSDConfig, ASSDOptimizer, ImagePrior, LatentSpaceMismatch, assd_edit,
                      decode_latent, encode_source, load_t2v_folder_parts, motion_models, t2v_models)
from fdd.models.errors import ModelLoadError
from fdd.models.sd1 import SD1Backbone
from fdd.sampling import Cancelled, add_noise, classifier_free_guidance
from fdd.testing import tiny
from fdd.testing.clip import moving_shapes_clip

FRAMES, SIZE = 4, 32


@pytest.fixture(scope="module")
def backbone(tmp_path_factory):
    from transformers import CLIPTokenizer

    tok = CLIPTokenizer.from_pretrained(tiny.write_tiny_tokenizer(tmp_path_factory.mktemp("tok")),
                                        local_files_only=True)
    return SD1Backbone(unet=tiny.tiny_unet(), vae=tiny.tiny_vae(), text_encoder=tiny.tiny_text_encoder(),
                       tokenizer=tok, source="tiny", vae_scale_factor=4)


@pytest.fixture(scope="module")
def models(backbone):
    """UNet3D prior borrowing the backbone's text encoder / VAE, backbone as image model."""
    return t2v_models(tiny.tiny_unet3d(), None, fallback=backbone).with_image_model(ImagePrior.from_backbone(backbone))


@pytest.fixture(scope="module")
def frames():
    return moving_shapes_clip(FRAMES, SIZE, SIZE)


def _cfg(**kw):
    base = dict(steps=2, keyframe_stride=2, seed=3)
    base.update(kw)
    return ASSDConfig(**base)


def _source(models, frames):
    with torch.no_grad():
        return encode_source(models, frames)[0]


@pytest.mark.parametrize("stage", ["dds", "assd", "assd_joint"])
def test_same_prompt_without_fusion_leaves_the_video_unchanged(models, frames, stage):
    """The DDS property: target = source prompt, fusion off -> both branches see the same input,
    the update is exactly zero and the output is the source latent decoded. Holds with smoothing
    and mask on too (the mask is 0 where eps_edit = eps_ref, so Eq. 8 reduces to Eq. 5)."""
    kw = {"dds": ABLATIONS["dds"], "assd": ABLATIONS["assd"],
          "assd_joint": dict(ABLATIONS["full"], attention_fusion=False)}[stage]
    cfg = _cfg(steps=3, **kw)
    z0 = _source(models, frames)
    with torch.no_grad():
        out, z = assd_edit(models, frames, "a red ball", "a red ball", cfg, return_latent=True)
        decoded = decode_latent(models, z0)
    assert torch.equal(z, z0)
    from fdd.video import pixels_to_frames

    assert torch.equal(out, pixels_to_frames(decoded))
    # a different target prompt does move the latent with the same settings
    with torch.no_grad():
        _, z_edit = assd_edit(models, frames, "a red ball", "a green cube", cfg, return_latent=True)
    assert (z_edit - z0).abs().max() > 1e-3


def test_joint_guidance_adds_image_dds_on_keyframes_only(models, frames):
    """Same t and eps: the gradient with joint guidance minus without it is zero off the
    keyframes and, on them, equals the image model's guided DDS (Eq. 9) computed branch by
    branch with separate UNet2D calls."""
    z0 = _source(models, frames)
    with torch.no_grad():
        on = ASSDOptimizer(models, z0, "a red ball", "a green ball", _cfg(attention_fusion=False))
        off = ASSDOptimizer(models, z0, "a red ball", "a green ball", _cfg(attention_fusion=False, joint_guidance=False))
        on.z += 0.05 * torch.randn_like(on.z)  # an edited latent different from the source
        off.z.copy_(on.z)
        t, eps = on.sample_t_eps()
        g_on, g_off = on.gradient(t, eps), off.gradient(t, eps)
        diff = g_on - g_off
        assert on.keyframes == [0, 2]
        for f in range(FRAMES):
            if f not in on.keyframes:
                assert torch.equal(diff[:, :, f], torch.zeros_like(diff[:, :, f]))
        im = models.image
        ab = models.schedule.alpha_bar(t)
        emb = {p: im.encode_text([p]) for p in ("", "a red ball", "a green ball")}
        for f in on.keyframes:
            zr = add_noise(z0[:, :, f], eps[:, :, f], ab)
            ze = add_noise(on.z[:, :, f], eps[:, :, f], ab)
            ref = classifier_free_guidance(im.predict(zr, t, emb[""]), im.predict(zr, t, emb["a red ball"]), 7.5)
            edit = classifier_free_guidance(im.predict(ze, t, emb[""]), im.predict(ze, t, emb["a green ball"]), 7.5)
            torch.testing.assert_close(diff[:, :, f], edit - ref, rtol=1e-4, atol=1e-4)
        assert diff.abs().max() > 1e-4


def test_batched_branches_equal_separate_unet_calls(models, frames):
    """One batched call of the four branches (with fusion pairing edit/ref twins inside the
    batch) gives the same update as four separate calls with recorded reference attention."""
    z0 = _source(models, frames)
    results = []
    for batched in (True, False):
        opt = ASSDOptimizer(models, z0, "a red ball", "a green ball", _cfg(batch_branches=batched))
        results.append(opt.run())
    torch.testing.assert_close(results[0], results[1], rtol=1e-4, atol=1e-4)
    assert (results[0] - z0).abs().max() > 1e-3


def test_video_prior_calls_per_step(models, frames):
    """Issue item 8: one video UNet call per step holding all four branches (and one image UNet
    call for the keyframes)."""
    z0 = _source(models, frames)
    calls = {"video": [], "image": []}
    hooks = [models.video.unet.register_forward_pre_hook(lambda m, a, k: calls["video"].append(a[0].shape), with_kwargs=True),
             models.image.unet.register_forward_pre_hook(lambda m, a, k: calls["image"].append(a[0].shape), with_kwargs=True)]
    try:
        ASSDOptimizer(models, z0, "a red ball", "a green ball", _cfg(steps=2)).run()
    finally:
        for h in hooks:
            h.remove()
    assert calls["video"] == [torch.Size([4, 4, FRAMES, 8, 8])] * 2
    assert calls["image"] == [torch.Size([4 * 2, 4, 8, 8])] * 2
    # cfg 1 needs no unconditional branches
    calls["video"].clear()
    hooks = [models.video.unet.register_forward_pre_hook(lambda m, a, k: calls["video"].append(a[0].shape), with_kwargs=True)]
    try:
        ASSDOptimizer(models, z0, "a", "b", _cfg(steps=1, guidance_scale=1.0, joint_guidance=False)).run()
    finally:
        hooks[0].remove()
    assert calls["video"] == [torch.Size([2, 4, FRAMES, 8, 8])]


def test_few_steps_move_the_latent_and_keep_shapes_both_priors(models, backbone):
    from fdd.models.motion import build_motion_unet

    clip = moving_shapes_clip(5, 36, 44)  # not a multiple of the model size: resized and back
    out, z = assd_edit(models, clip, "a red ball", "a green ball", _cfg(steps=2), return_latent=True)
    assert out.shape == clip.shape and torch.isfinite(out).all()
    assert z.shape == (1, 4, 5, 8, 10)  # 36x44 px -> 32x40 (multiples of 8) -> 8x10 latent
    z0 = _source(models, clip)
    assert (z - z0).abs().max() > 1e-3
    # SD 1.x + AnimateDiff prior, same optimiser code
    motion_unet = build_motion_unet(backbone.unet, tiny.tiny_motion_adapter())
    mm = motion_models(backbone, motion_unet).with_image_model(ImagePrior.from_backbone(backbone))
    out2, z2 = assd_edit(mm, clip, "a red ball", "a green ball", _cfg(steps=2), return_latent=True)
    assert out2.shape == clip.shape and torch.isfinite(out2).all()
    assert (z2 - z0).abs().max() > 1e-3


def test_seeds_reproduce(models, frames):
    a = assd_edit(models, frames, "a red ball", "a green ball", _cfg(seed=7), return_latent=True)[1]
    b = assd_edit(models, frames, "a red ball", "a green ball", _cfg(seed=7), return_latent=True)[1]
    c = assd_edit(models, frames, "a red ball", "a green ball", _cfg(seed=8), return_latent=True)[1]
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_interrupt_mid_run_returns_nothing_and_restores_attention(models, frames):
    seen = []
    originals = {n: m.processor for n, m in models.video.unet.named_modules() if hasattr(m, "processor")}

    class Stop(Exception):
        pass

    def cb(step, total, latents):
        seen.append(step)
        if step == 2:
            raise Stop()

    with pytest.raises(Stop):
        assd_edit(models, frames, "a red ball", "a green ball", _cfg(steps=50), callback=cb)
    assert seen == [1, 2]
    with pytest.raises(Cancelled):
        assd_edit(models, frames, "a", "b", _cfg(steps=50), should_cancel=lambda: True)
    # the fusion processors were removed on the way out
    assert all(m.processor is originals[n] for n, m in models.video.unet.named_modules() if hasattr(m, "processor"))


def test_latent_space_agreement(models, backbone):
    # shared VAE: trivially the same latent space; an identical copy measures 0
    assert models.with_image_model(ImagePrior.from_backbone(backbone)).image is not None
    twin = copy.copy(backbone)
    twin.vae = copy.deepcopy(backbone.vae)
    models.with_image_model(ImagePrior.from_backbone(twin))
    other = copy.copy(backbone)
    other.vae = tiny.tiny_vae(seed=11)  # same architecture, other weights: another latent space
    with pytest.raises(LatentSpaceMismatch, match="encode the same image differently"):
        models.with_image_model(ImagePrior.from_backbone(other))
    other.vae_scale_factor = 8
    with pytest.raises(LatentSpaceMismatch, match="downsamples"):
        models.with_image_model(ImagePrior.from_backbone(other))
    wide = copy.copy(backbone)
    wide.unet = tiny.tiny_unet(in_channels=8)
    with pytest.raises(LatentSpaceMismatch, match="8-channel"):
        models.with_image_model(ImagePrior.from_backbone(wide))


def test_configuration_errors(models, frames, backbone):
    z0 = _source(models, frames)
    video_only = t2v_models(models.video.unet, None, fallback=backbone)
    with pytest.raises(ValueError, match="joint_guidance"):
        ASSDOptimizer(video_only, z0, "a", "b", _cfg())
    ASSDOptimizer(video_only, z0, "a", "b", _cfg(joint_guidance=False))
    for bad, match in ((dict(steps=0), "steps"), (dict(t_min=900, t_max=100), "t_min"),
                       (dict(tau=-1.0), "tau"), (dict(fusion_lambda=2.0), "fusion_lambda"),
                       (dict(smooth_boundary="wrap"), "smooth_boundary"), (dict(keyframe_offset=9), "keyframe_offset")):
        with pytest.raises(ValueError, match=match):
            ASSDOptimizer(models, z0, "a", "b", _cfg(**bad))
    with pytest.raises(ValueError, match="frames"):
        assd_edit(models, torch.zeros(2, 32, 32), "a", "b", _cfg())
    assert ASSDConfig.ablation("dds").smoothing is False
    assert ASSDConfig.ablation("full", steps=5).steps == 5
    with pytest.raises(ValueError, match="stage"):
        ASSDConfig.ablation("nope")


def _write_t2v_folder(root, with_parts=True, prediction="epsilon", te_seed=0):
    unet = tiny.tiny_unet3d()
    unet.save_pretrained(os.path.join(root, "unet"))
    if with_parts:
        tiny.tiny_vae().save_pretrained(os.path.join(root, "vae"))
        tiny.tiny_text_encoder(seed=te_seed).save_pretrained(os.path.join(root, "text_encoder"))
        tiny.write_tiny_tokenizer(os.path.join(root, "tokenizer"))
        os.makedirs(os.path.join(root, "scheduler"))
        with open(os.path.join(root, "scheduler", "scheduler_config.json"), "w") as fh:
            json.dump({"_class_name": "DDIMScheduler", "beta_start": 0.00085, "beta_end": 0.012,
                       "beta_schedule": "scaled_linear", "num_train_timesteps": 1000,
                       "prediction_type": prediction}, fh)
    with open(os.path.join(root, "model_index.json"), "w") as fh:
        json.dump({"_class_name": "TextToVideoSDPipeline"}, fh)
    return unet


def test_t2v_folder_parts_and_backbone_fallback(tmp_path, backbone, frames):
    from fdd.models.t2v import load_t2v_unet

    full = tmp_path / "ms"
    _write_t2v_folder(str(full), te_seed=5)
    unet = load_t2v_unet(str(full))
    parts = load_t2v_folder_parts(str(full / "unet"))  # the unet folder finds its pipeline folder
    assert parts.vae is not None and parts.text_encoder is not None and parts.tokenizer is not None
    assert parts.schedule.beta_end == 0.012
    m = t2v_models(unet, parts, fallback=backbone)
    assert m.video.text_encoder is parts.text_encoder and m.vae is parts.vae  # the folder's own parts win
    out = assd_edit(m.with_image_model(ImagePrior.from_backbone(backbone)), frames, "a", "b", _cfg(steps=1))
    assert out.shape == frames.shape
    # a folder with only unet/ borrows the backbone's text encoder and VAE, or says what is missing
    bare = tmp_path / "bare"
    _write_t2v_folder(str(bare), with_parts=False)
    parts = load_t2v_folder_parts(str(bare))
    assert parts.vae is None and parts.text_encoder is None
    m = t2v_models(unet, parts, fallback=backbone)
    assert m.vae is backbone.vae and m.video.text_encoder is backbone.text_encoder
    with pytest.raises(ModelLoadError, match="no text_encoder"):
        t2v_models(unet, parts, fallback=None)
    narrow = copy.copy(backbone)
    narrow.text_encoder = type("TE", (), {"config": type("C", (), {"hidden_size": 32})()})()
    with pytest.raises(ModelLoadError, match="does not fit"):
        t2v_models(unet, parts, fallback=narrow)
    vpred = tmp_path / "vpred"
    _write_t2v_folder(str(vpred), prediction="v_prediction")
    with pytest.raises(ModelLoadError, match="epsilon"):
        load_t2v_folder_parts(str(vpred))
