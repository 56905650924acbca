"""The EI² nodes called in-process under ComfyUI's inference mode (as its executor runs them):
inflate -> tune -> save -> load -> edit, progress, interrupt keeping a checkpoint, resume."""

from __future__ import annotations

import os

import pytest
import torch

from fdd.testing.clip import moving_shapes_clip

EI2_NODES = {"FDD_EI2Inflate", "FDD_EI2Tune", "FDD_EI2SaveTuned", "FDD_EI2LoadTuned", "FDD_EI2Edit"}


def _run(node, **kw):
    with torch.inference_mode():  # ComfyUI executes every node under inference mode
        out = node.execute(**kw)
    return out


@pytest.fixture()
def ei2_dir(comfy_pack, tmp_path):
    """A temporary models/fdd_ei2 folder placed first in ComfyUI's list (where nodes write)."""
    import folder_paths

    folder_paths.add_model_folder_path("fdd_ei2", str(tmp_path), is_default=True)
    yield tmp_path
    paths = folder_paths.folder_names_and_paths["fdd_ei2"][0]
    if str(tmp_path) in paths:
        paths.remove(str(tmp_path))


@pytest.fixture(scope="module")
def backbone(comfy_pack):
    return _run(comfy_pack["FDD_LoadBackbone"], ckpt_name="v1-5-pruned-emaonly.safetensors").result[0]


def _tune(comfy_pack, model, frames, **kw):
    args = dict(ei2_model=model, frames=frames, caption="a red ball and a blue square", steps=4,
                learning_rate=1e-3, num_frames=4, frame_stride=2, size=0, seed=0, gate_lr_scale=100.0,
                gradient_checkpointing=True, mixed_precision="auto", checkpoint_every=2, run_name="", resume=False)
    args.update(kw)
    return _run(comfy_pack["FDD_EI2Tune"], **args)


def test_ei2_nodes_registered_with_tooltips(comfy_pack):
    assert EI2_NODES <= set(comfy_pack)
    for node_id in EI2_NODES:
        info = comfy_pack[node_id].GET_NODE_INFO_V1()
        for section in ("required", "optional"):
            for name, spec in info["input"].get(section, {}).items():
                assert (spec[1] if len(spec) > 1 else {}).get("tooltip"), f"{node_id}.{name}"


def test_inflate_tune_save_load_edit(comfy_pack, backbone, ei2_dir):
    import comfy.utils

    unet_before = {k: v.clone() for k, v in backbone.backbone.unet.state_dict().items()}
    inflated = _run(comfy_pack["FDD_EI2Inflate"], backbone=backbone).result[0]
    assert inflated.tuned is None and inflated.config.attention == "ffam"
    frames = moving_shapes_clip(8, 32, 32)
    calls = []
    comfy.utils.set_progress_bar_global_hook(lambda v, t, p, node_id=None: calls.append((v, t)))
    try:
        model, used, curve = _tune(comfy_pack, inflated, frames, run_name="demo").result
    finally:
        comfy.utils.set_progress_bar_global_hook(None)
    assert calls == [(1, 4), (2, 4), (3, 4), (4, 4)]
    assert used.shape == (4, 32, 32, 3)
    assert torch.allclose(used, frames[::2][:4], atol=1e-6)  # 32x32 needs no resize
    assert curve.shape == (1, 256, 512, 3) and curve.min() < 0.5 < curve.max()
    assert len(model.history) == 4 and model.tuned is not None
    assert os.path.isfile(os.path.join(ei2_dir, "checkpoints", "demo.safetensors"))
    # the cached backbone's UNet is untouched (tuning worked on its own copy)
    for k, v in backbone.backbone.unet.state_dict().items():
        assert torch.equal(v, unet_before[k]), k

    saved = _run(comfy_pack["FDD_EI2SaveTuned"], ei2_model=model, filename_prefix="tests/ei2").result[0]
    assert saved == "tests/ei2_00001.safetensors" and os.path.isfile(os.path.join(ei2_dir, saved))
    assert _run(comfy_pack["FDD_EI2SaveTuned"], ei2_model=model,
                filename_prefix="tests/ei2").result[0] == "tests/ei2_00002.safetensors"
    with pytest.raises(ValueError, match="filename_prefix"):
        _run(comfy_pack["FDD_EI2SaveTuned"], ei2_model=model, filename_prefix="../escape")
    outside = os.path.join(os.path.dirname(str(ei2_dir)), "outside_ei2")
    os.makedirs(outside, exist_ok=True)
    os.symlink(outside, os.path.join(ei2_dir, "link_out"))  # a link inside the folder pointing out
    with pytest.raises(ValueError, match="points outside models/fdd_ei2"):
        _run(comfy_pack["FDD_EI2SaveTuned"], ei2_model=model, filename_prefix="link_out/ei2")
    assert os.listdir(outside) == []
    loaded, loaded_curve = _run(comfy_pack["FDD_EI2LoadTuned"], backbone=backbone, tuned_weights=saved).result
    assert loaded.config == model.config and list(loaded.history) == list(model.history)
    assert loaded_curve.shape == (1, 256, 512, 3)

    edit = dict(frames=used, edit_prompt="a green ball", inversion_prompt="", negative_prompt="", steps=2,
                cfg=7.5, init="inversion", seed=0, size=0)
    calls.clear()
    comfy.utils.set_progress_bar_global_hook(lambda v, t, p, node_id=None: calls.append((v, t)))
    try:
        a = _run(comfy_pack["FDD_EI2Edit"], ei2_model=model, **edit).result[0]
    finally:
        comfy.utils.set_progress_bar_global_hook(None)
    assert calls == [(1, 4), (2, 4), (3, 4), (4, 4)]
    b = _run(comfy_pack["FDD_EI2Edit"], ei2_model=loaded, **edit).result[0]
    assert a.shape == used.shape and torch.equal(a, b)  # save -> load -> identical edit
    untuned = _run(comfy_pack["FDD_EI2Edit"], ei2_model=inflated, **edit).result[0]
    assert not torch.equal(untuned, a)
    # the checkpoint is loadable too (it holds the tuned tensors; its spectral estimates are those
    # before the final convergence of the power iteration, hence not bit-identical)
    from_ckpt = _run(comfy_pack["FDD_EI2LoadTuned"], backbone=backbone,
                     tuned_weights="checkpoints/demo.safetensors").result[0]
    assert torch.allclose(_run(comfy_pack["FDD_EI2Edit"], ei2_model=from_ckpt, **edit).result[0], a, atol=2e-3)


def test_tune_interrupt_keeps_a_checkpoint_and_resume_continues(comfy_pack, backbone, ei2_dir):
    import comfy.model_management as mm

    inflated = _run(comfy_pack["FDD_EI2Inflate"], backbone=backbone, ffam_ratio=4).result[0]
    frames = moving_shapes_clip(4, 32, 32)
    ref = _tune(comfy_pack, inflated, frames, steps=3, num_frames=4, frame_stride=1).result[0]
    mm.interrupt_current_processing(True)
    try:
        with pytest.raises(mm.InterruptProcessingException):
            _tune(comfy_pack, inflated, frames, steps=3, num_frames=4, frame_stride=1, run_name="cut",
                  checkpoint_every=100)
    finally:
        mm.interrupt_current_processing(False)
    ckpt = os.path.join(ei2_dir, "checkpoints", "cut.safetensors")
    assert os.path.isfile(ckpt)  # the interrupt (after step 1) kept a checkpoint
    resumed, _, _curve = _tune(comfy_pack, inflated, frames, steps=3, num_frames=4, frame_stride=1,
                              run_name="cut", checkpoint_every=100, resume=True).result
    assert list(resumed.history) == list(ref.history)
    assert resumed.info["resumed_from"] == 1
    with pytest.raises(ValueError, match="resume"):
        _tune(comfy_pack, inflated, frames, steps=3, resume=True, run_name="")
    with pytest.raises(FileNotFoundError, match=r"resume: no checkpoint to continue at '.*never_ran"):
        _tune(comfy_pack, inflated, frames, steps=3, num_frames=4, frame_stride=1, resume=True, run_name="never_ran")
    with pytest.raises(ValueError, match="run_name"):
        _tune(comfy_pack, inflated, frames, steps=3, run_name="../x")


def test_inflate_rejects_spectral_norm_with_zero_output(comfy_pack, backbone):
    with pytest.raises(ValueError, match="identity_init"):
        _run(comfy_pack["FDD_EI2Inflate"], backbone=backbone, identity_init="zero_output", spectral_norm=True)
    tav = _run(comfy_pack["FDD_EI2Inflate"], backbone=backbone, spatial_attention="sparse_causal",
               temporal_norm="layer_norm", spectral_norm=False, identity_init="zero_output").result[0]
    assert tav.config.attention == "sparse_causal"


def test_backbone_loras_are_merged_into_the_ei2_copy_only(comfy_pack, backbone):
    with_lora = _run(comfy_pack["FDD_LoraLoader"], backbone=backbone, lora_name="fdd_demo_lora.safetensors",
                     strength=1.0).result[0]
    base = {k: v.clone() for k, v in backbone.backbone.unet.state_dict().items()}
    plain = _run(comfy_pack["FDD_EI2Inflate"], backbone=backbone).result[0].get_module()
    lora = _run(comfy_pack["FDD_EI2Inflate"], backbone=with_lora).result[0]
    frames = moving_shapes_clip(2, 32, 32)
    tuned = _tune(comfy_pack, lora, frames, steps=1, num_frames=2, frame_stride=1, checkpoint_every=0).result[0]
    key = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_v.weight"  # a LoRA target, not tuned
    merged = dict(tuned.get_module().unet.named_parameters())[key]
    assert not torch.allclose(merged, base[key]) and torch.equal(dict(plain.unet.named_parameters())[key], base[key])
    for k, v in backbone.backbone.unet.state_dict().items():
        assert torch.equal(v, base[k]), k
    out = _run(comfy_pack["FDD_EI2Edit"], ei2_model=tuned, frames=frames, edit_prompt="a green ball", steps=1).result[0]
    assert out.shape == frames.shape
