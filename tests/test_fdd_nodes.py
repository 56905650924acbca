"""FDD nodes called in-process with ComfyUI imported: the aligned LoRA through ComfyUI's own
LoRA loading (no unmatched keys), the align node (progress, loss curve, interrupt ->
checkpoint -> resume), the dataset / DINOv2 loaders and the EVE sampler node."""

from __future__ import annotations

import logging
import os

import pytest
import torch

from fdd.testing.clip import moving_shapes_clip


def _run(node, **kw):
    out = node.execute(**kw)
    return out.result if hasattr(out, "result") else out


@pytest.fixture(scope="module")
def fdd_pack(comfy_pack, models_tree, tmp_path_factory):
    import folder_paths

    from fdd.testing.fdd_fixtures import write_fdd_tree

    root = os.path.dirname(os.path.dirname(models_tree["checkpoint"]))
    paths = write_fdd_tree(root, models_tree)
    folder_paths.add_model_folder_path("dinov2", os.path.dirname(paths["dino"]))
    folder_paths.add_model_folder_path("fdd_datasets", os.path.dirname(paths["dataset"]))
    old = folder_paths.get_output_directory()
    folder_paths.set_output_directory(str(tmp_path_factory.mktemp("comfy_out")))
    yield comfy_pack, paths
    folder_paths.set_output_directory(old)


def test_aligned_lora_loads_through_comfyui_lora_loading_with_no_unmatched_keys(fdd_pack, models_tree, caplog):
    """ComfyUI's own LoRA path (what core LoraLoader calls: comfy.sd.load_lora_for_models, with
    comfy.lora's kohya key map of the checkpoint's UNet) patches every layer of the exported
    LoRA, logs no unloaded key, and the patched weight is W + (alpha / r) up @ down."""
    import comfy.model_detection
    import comfy.model_patcher
    import comfy.sd
    import comfy.supported_models
    import comfy.utils

    from fdd.models.lora import read_lora

    _, paths = fdd_pack
    sd = comfy.utils.load_torch_file(models_tree["checkpoint"])
    pre = "model.diffusion_model."
    # the tiny UNet is too small for ComfyUI's SD1.5 detector (context 64): build the SD15
    # model class directly with the config ComfyUI detects from the weights
    model_config = comfy.supported_models.SD15(comfy.model_detection.detect_unet_config(sd, pre))
    model = model_config.get_model(sd, pre)
    model.load_model_weights(sd, pre)
    cpu = torch.device("cpu")
    patcher = comfy.model_patcher.ModelPatcher(model, load_device=cpu, offload_device=cpu)
    lora_sd = comfy.utils.load_torch_file(paths["aligned_lora"], safe_load=True)
    with caplog.at_level(logging.WARNING):
        patched, _ = comfy.sd.load_lora_for_models(patcher, None, lora_sd, 1.0, 0.0)
    bad = [r.getMessage() for r in caplog.records if "not loaded" in r.getMessage().lower()]
    assert not bad, bad[:5]
    layers = read_lora(paths["aligned_lora"]).unet
    assert len(patched.patches) == len(layers) == len(lora_sd) // 3
    key = "diffusion_model.input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight"
    w0 = model.state_dict()[key].clone()
    patched.patch_model()
    try:
        w1 = patched.model.state_dict()[key]
        layer = layers["down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"]
        assert torch.allclose(w1 - w0, layer.delta(w0.shape), atol=1e-6)
        assert layer.delta(w0.shape).abs().max() > 0
    finally:
        patched.unpatch_model()


def test_loaders_list_and_validate(fdd_pack):
    pack, paths = fdd_pack
    info = pack["FDD_LoadDINOv2"].GET_NODE_INFO_V1()
    assert "tiny-dinov2" in str(info["input"]["required"]["dino_name"])
    dino = _run(pack["FDD_LoadDINOv2"], dino_name="tiny-dinov2")[0]
    assert type(dino.module).__name__ == "Dinov2Model"
    ds = _run(pack["FDD_Dataset"], dataset_name="tiny-edit", manifest="manifest.csv", num_frames=4, width=32,
              height=32, frame_stride=1)[0]
    assert len(ds.dataset) == 3
    with pytest.raises(ValueError, match="manifest.jsonl:1: the clip 'clips/clip_000' is too short"):
        _run(pack["FDD_Dataset"], dataset_name="tiny-edit", manifest="manifest.jsonl", num_frames=20, width=32,
             height=32, frame_stride=1)


@pytest.fixture(scope="module")
def handles(fdd_pack):
    pack, _ = fdd_pack
    bb = _run(pack["FDD_LoadBackbone"], ckpt_name="v1-5-pruned-emaonly.safetensors")[0]
    cn = _run(pack["FDD_LoadEditAdapter"], controlnet_name="control_v11e_sd15_ip2p.safetensors")[0]
    mm = _run(pack["FDD_LoadVideoAdapter"], motion_module="mm_sd_v15_v2.ckpt")[0]
    dino = _run(pack["FDD_LoadDINOv2"], dino_name="tiny-dinov2")[0]
    ds = _run(pack["FDD_Dataset"], dataset_name="tiny-edit", manifest="manifest.jsonl", num_frames=4, width=32,
              height=32, frame_stride=1)[0]
    return bb, cn, mm, dino, ds


TINY = dict(global_batch=2, micro_batch=1, learning_rate=1e-3, lora_rank=4, k_steps=2, teacher_sample_steps=2,
            dino_resolution=32, checkpoint_every=0)


@pytest.mark.slow
def test_align_node_progress_curve_lora_and_eve(fdd_pack, handles):
    import comfy.utils

    pack, _ = fdd_pack
    bb, cn, mm, dino, ds = handles
    calls = []
    comfy.utils.set_progress_bar_global_hook(lambda v, t, p, node_id=None: calls.append((v, t)))
    try:
        with torch.inference_mode():  # as ComfyUI executes nodes
            aligned, curve, path = _run(pack["FDD_Align"], backbone=bb, edit_adapter=cn, dino=dino, dataset=ds,
                                        video_adapter=mm, iterations=2, sds_iterations=1, run_name="t_align",
                                        resume=False, lora_name="t_align", **TINY)
    finally:
        comfy.utils.set_progress_bar_global_hook(None)
    assert calls == [(1, 2), (2, 2)]
    assert os.path.isfile(path) and path.endswith("t_align.safetensors")
    assert curve.shape[0] == 1 and curve.shape[-1] == 3 and curve.std() > 0.01
    assert len(aligned.loras) == 1 and bb.loras == ()
    frames = moving_shapes_clip(5, 32, 32)
    with torch.inference_mode():
        out = _run(pack["FDD_EVEVideoEdit"], backbone=aligned, edit_adapter=cn, video_adapter=mm, frames=frames,
                   instruction="make it snowy", output_caption="", steps=2, first_frame_steps=2,
                   context_frames=4, context_overlap=2)[0]
    assert out.shape == frames.shape and out.std() > 1e-3


@pytest.mark.slow
def test_align_node_interrupt_writes_checkpoint_and_resume_continues(fdd_pack, handles):
    import comfy.model_management as cmm
    import comfy.utils
    import folder_paths

    pack, _ = fdd_pack
    bb, cn, mm, dino, ds = handles
    seen = []

    def hook(v, t, p, node_id=None):
        seen.append(v)
        if v == 1:
            cmm.interrupt_current_processing(True)  # the user presses Cancel after iteration 1

    comfy.utils.set_progress_bar_global_hook(hook)
    try:
        with pytest.raises(cmm.InterruptProcessingException):
            _run(pack["FDD_Align"], backbone=bb, edit_adapter=cn, dino=dino, dataset=ds, video_adapter=mm,
                 iterations=3, sds_iterations=1, run_name="t_interrupt", resume=True, lora_name="t_int", **TINY)
    finally:
        cmm.interrupt_current_processing(False)
    ck = os.path.join(folder_paths.get_output_directory(), "fdd", "runs", "t_interrupt", "checkpoint.pt")
    assert os.path.isfile(ck)
    assert torch.load(ck, weights_only=True)["step"] == 2  # the iteration after which Cancel was seen
    seen.clear()
    try:
        _, curve, path = _run(pack["FDD_Align"], backbone=bb, edit_adapter=cn, dino=dino, dataset=ds,
                              video_adapter=mm, iterations=3, sds_iterations=1, run_name="t_interrupt",
                              resume=True, lora_name="t_int", **TINY)
    finally:
        comfy.utils.set_progress_bar_global_hook(None)
    assert seen == [2, 3] and torch.load(ck, weights_only=True)["step"] == 3


def test_align_node_refuses_inconsistent_inputs(fdd_pack, handles):
    pack, _ = fdd_pack
    bb, cn, mm, dino, ds = handles
    with pytest.raises(ValueError, match="video_adapter"):
        _run(pack["FDD_Align"], backbone=bb, edit_adapter=cn, dino=dino, dataset=ds, iterations=1,
             sds_iterations=1, **TINY)
    with pytest.raises(ValueError, match="sds_iterations"):
        _run(pack["FDD_Align"], backbone=bb, edit_adapter=cn, dino=dino, dataset=ds, video_adapter=mm,
             iterations=1, sds_iterations=2, **TINY)


@pytest.mark.slow
def test_align_node_edit_plus_lora_combination(fdd_pack, handles, tmp_path):
    """§4.4 through the nodes: no video adapter, a style LoRA stacked on the backbone is the
    second teacher; the output backbone carries the style LoRA and the aligned one."""
    from fdd.testing.fdd_fixtures import write_tiny_lora_dataset

    pack, _ = fdd_pack
    bb, cn, mm, dino, _ = handles
    import folder_paths

    write_tiny_lora_dataset(str(tmp_path / "ds"))
    folder_paths.add_model_folder_path("fdd_datasets", str(tmp_path))
    ds = _run(pack["FDD_Dataset"], dataset_name="ds",
              manifest="manifest.jsonl", num_frames=1, width=32, height=32, frame_stride=1)[0]
    assert ds.dataset.needs_clips is False
    styled = _run(pack["FDD_LoraLoader"], backbone=bb, lora_name="fdd_demo_lora.safetensors", strength=1.0)[0]
    with torch.inference_mode():
        aligned, curve, path = _run(pack["FDD_Align"], backbone=styled, edit_adapter=cn, dino=dino, dataset=ds,
                                    iterations=2, sds_iterations=1, run_name="t_lora", resume=False,
                                    lora_name="t_lora", **TINY)
    assert os.path.isfile(path) and [n for _, _, n in aligned.loras] == ["fdd_demo_lora.safetensors",
                                                                         "t_lora.safetensors"]
    with pytest.raises(ValueError, match="edit\\+video combination needs a dataset of clips"):
        _run(pack["FDD_Align"], backbone=bb, edit_adapter=cn, dino=dino, dataset=ds, video_adapter=mm,
             iterations=1, sds_iterations=1, **TINY)
