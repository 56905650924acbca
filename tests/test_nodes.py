"""The nodes called directly, with ComfyUI imported in-process (no server)."""

from __future__ import annotations

import pytest
import torch

from fdd.testing.clip import moving_shapes_clip

EXPECTED = {"FDD_LoadBackbone", "FDD_LoadEditAdapter", "FDD_LoadVideoAdapter", "FDD_LoraLoader",
            "FDD_LoadT2VUNet", "FDD_PlugAndPlayVideoEdit", "FDD_ASSDOptimize",
            "FDD_VideoEditMetrics", "FDD_EI2Inflate", "FDD_EI2Tune", "FDD_EI2SaveTuned", "FDD_EI2LoadTuned",
            "FDD_EI2Edit", "FDD_LoadDINOv2", "FDD_Dataset", "FDD_Align", "FDD_EVEVideoEdit"}


def _run(node, **kw):
    out = node.execute(**kw)
    return out.result if hasattr(out, "result") else out


def test_node_list_and_schemas_document_every_input(comfy_pack):
    assert EXPECTED <= set(comfy_pack)
    for node_id, cls in comfy_pack.items():
        schema = cls.GET_SCHEMA()
        assert schema.display_name and schema.description, node_id
        info = cls.GET_NODE_INFO_V1()
        for section in ("required", "optional"):
            for name, spec in info["input"].get(section, {}).items():
                opts = spec[1] if len(spec) > 1 else {}
                assert opts.get("tooltip"), f"{node_id}.{name} has no tooltip"


def test_loader_options_list_the_tiny_models(comfy_pack):
    info = comfy_pack["FDD_LoadBackbone"].GET_NODE_INFO_V1()
    options = info["input"]["required"]["ckpt_name"][0]
    if isinstance(options, str):  # newer COMBO spec: options in the dict
        options = info["input"]["required"]["ckpt_name"][1]["options"]
    assert "v1-5-pruned-emaonly.safetensors" in options
    assert "diffusers/tiny-sd15" in options
    mm = comfy_pack["FDD_LoadVideoAdapter"].GET_NODE_INFO_V1()["input"]["required"]["motion_module"]
    assert "mm_sd_v15_v2.ckpt" in str(mm)


def test_loader_lists_hide_the_inner_files_of_diffusers_folders(comfy_pack, tmp_path):
    """A diffusers-folder ControlNet is listed once as 'diffusers/NAME', never as its inner
    diffusion_pytorch_model.safetensors (which the loader would refuse as a single file)."""
    import folder_paths

    root = tmp_path / "cn_root"
    (root / "my_cn").mkdir(parents=True)
    (root / "my_cn" / "config.json").write_text('{"_class_name": "ControlNetModel"}')
    (root / "my_cn" / "diffusion_pytorch_model.safetensors").write_bytes(b"x")
    (root / "single_cn.safetensors").write_bytes(b"x")
    folder_paths.add_model_folder_path("controlnet", str(root))
    try:
        spec = comfy_pack["FDD_LoadEditAdapter"].GET_NODE_INFO_V1()["input"]["required"]["controlnet_name"]
        options = spec[0] if isinstance(spec[0], list) else spec[1]["options"]
        assert "diffusers/my_cn" in options and "single_cn.safetensors" in options
        assert not [o for o in options if "diffusion_pytorch_model" in o], options
    finally:
        folder_paths.folder_names_and_paths["controlnet"][0].remove(str(root))


@pytest.fixture(scope="module")
def loaded(comfy_pack):
    bb = _run(comfy_pack["FDD_LoadBackbone"], ckpt_name="v1-5-pruned-emaonly.safetensors")[0]
    cn = _run(comfy_pack["FDD_LoadEditAdapter"], controlnet_name="control_v11e_sd15_ip2p.safetensors")[0]
    mm = _run(comfy_pack["FDD_LoadVideoAdapter"], motion_module="mm_sd_v15_v2.ckpt")[0]
    return bb, cn, mm


def test_loaders_cache_and_lora_stack(comfy_pack, loaded):
    bb, cn, mm = loaded
    again = _run(comfy_pack["FDD_LoadBackbone"], ckpt_name="v1-5-pruned-emaonly.safetensors")[0]
    assert again.backbone is bb.backbone  # cached, not reloaded
    with_lora = _run(comfy_pack["FDD_LoraLoader"], backbone=bb, lora_name="fdd_demo_lora.safetensors",
                     strength=0.5)[0]
    twice = _run(comfy_pack["FDD_LoraLoader"], backbone=with_lora, lora_name="fdd_demo_lora.safetensors",
                 strength=0.25)[0]
    assert bb.loras == () and len(with_lora.loras) == 1 and len(twice.loras) == 2
    assert [s for _, s, _ in twice.loras] == [0.5, 0.25]
    diff = _run(comfy_pack["FDD_LoadBackbone"], ckpt_name="diffusers/tiny-sd15")[0]
    assert diff.backbone.tokenizer is not None
    t2v = _run(comfy_pack["FDD_LoadT2VUNet"], model_folder="tiny-zeroscope")[0]
    assert type(t2v.module).__name__ == "UNet3DConditionModel"


def test_loader_bad_name_errors(comfy_pack):
    with pytest.raises(ValueError, match="ckpt_name.*nope.safetensors"):
        _run(comfy_pack["FDD_LoadBackbone"], ckpt_name="nope.safetensors")


def test_plug_and_play_node(comfy_pack, loaded):
    import comfy.utils

    bb, cn, mm = loaded
    frames = moving_shapes_clip(6, 40, 40)
    calls = []
    comfy.utils.set_progress_bar_global_hook(lambda v, t, p, node_id=None: calls.append((v, t)))
    try:
        out = _run(comfy_pack["FDD_PlugAndPlayVideoEdit"], backbone=bb, edit_adapter=cn, frames=frames,
                   instruction="make the ball green", output_caption="", video_adapter=mm, steps=3,
                   seed=5, context_frames=4, context_overlap=2)[0]
    finally:
        comfy.utils.set_progress_bar_global_hook(None)
    assert out.shape == frames.shape
    assert out.std() > 1e-3
    assert calls == [(1, 3), (2, 3), (3, 3)]
    # without the video adapter (edit adapter alone, per frame) the result differs
    alone = _run(comfy_pack["FDD_PlugAndPlayVideoEdit"], backbone=bb, edit_adapter=cn, frames=frames,
                 instruction="make the ball green", output_caption="", steps=3, seed=5,
                 context_frames=4, context_overlap=2)[0]
    assert alone.shape == frames.shape and not torch.equal(alone, out)
    # the video adapter's motion_scale: 1 is the default (bit-identical), 0 the edit adapter alone
    kw = dict(backbone=bb, edit_adapter=cn, frames=frames, instruction="make the ball green", output_caption="",
              steps=3, seed=5, context_frames=4, context_overlap=2)
    at = {s: _run(comfy_pack["FDD_LoadVideoAdapter"], motion_module="mm_sd_v15_v2.ckpt", motion_scale=s)[0]
          for s in (0.0, 0.5, 1.0)}
    assert at[0.0].module is mm.module and at[0.0].motion_scale == 0.0  # the cached module, its own scale
    one = _run(comfy_pack["FDD_PlugAndPlayVideoEdit"], video_adapter=at[1.0], **kw)[0]
    zero = _run(comfy_pack["FDD_PlugAndPlayVideoEdit"], video_adapter=at[0.0], **kw)[0]
    half = _run(comfy_pack["FDD_PlugAndPlayVideoEdit"], video_adapter=at[0.5], **kw)[0]
    assert torch.equal(one, out)
    assert (zero - alone).abs().max() < 2e-3, (zero - alone).abs().max()
    assert not torch.equal(half, out) and not torch.equal(half, zero)
    again = _run(comfy_pack["FDD_PlugAndPlayVideoEdit"], video_adapter=mm, **kw)[0]
    assert torch.equal(again, out)  # the shared motion UNet went back to 1
    with pytest.raises(ValueError, match="motion_scale"):
        _run(comfy_pack["FDD_LoadVideoAdapter"], motion_module="mm_sd_v15_v2.ckpt", motion_scale=float("nan"))
    # a caption over 75 tokens is encoded whole (77-token chunks), not cut: the tiny tokenizer is
    # character-level, so "abc " x 25 is exactly the first 75 tokens of "abc " x 60
    first, whole = ("abc " * 25).strip(), ("abc " * 25 + "red ball " * 20).strip()
    kw["video_adapter"] = mm
    cut = _run(comfy_pack["FDD_PlugAndPlayVideoEdit"], **{**kw, "output_caption": first})[0]
    full = _run(comfy_pack["FDD_PlugAndPlayVideoEdit"], **{**kw, "output_caption": whole})[0]
    assert (full - cut).abs().max() > 1e-3
    # the LATENT output (raw VAE latents, frames in the batch) decodes to the IMAGE output; 32 px
    # frames need no resize (the tiny UNet takes multiples of 16)
    from fdd.video import decode_video, from_latent_batch, pixels_to_frames

    small = moving_shapes_clip(4, 32, 32)
    img, latent = _run(comfy_pack["FDD_PlugAndPlayVideoEdit"], **{**kw, "frames": small})
    f = bb.backbone.vae_scale_factor
    assert latent["samples"].shape == (4, 4, 32 // f, 32 // f)
    vae, sf = bb.backbone.vae, bb.backbone.scaling_factor
    with torch.no_grad():
        decoded = pixels_to_frames(decode_video(vae, from_latent_batch(latent["samples"], sf), sf))
    assert (decoded - img).abs().max() <= 1 / 255


def test_plug_and_play_node_errors_and_interrupt(comfy_pack, loaded):
    import comfy.model_management as mm_

    bb, cn, mm = loaded
    frames = moving_shapes_clip(2, 32, 32)
    with pytest.raises(ValueError, match="context_overlap"):
        _run(comfy_pack["FDD_PlugAndPlayVideoEdit"], backbone=bb, edit_adapter=cn, frames=frames,
             instruction="a", output_caption="b", context_frames=4, context_overlap=4)
    with pytest.raises(ValueError, match="frames"):
        _run(comfy_pack["FDD_PlugAndPlayVideoEdit"], backbone=bb, edit_adapter=cn,
             frames=torch.zeros(2, 32, 32), instruction="a", output_caption="b")
    mm_.interrupt_current_processing(True)
    try:
        with pytest.raises(mm_.InterruptProcessingException):
            _run(comfy_pack["FDD_PlugAndPlayVideoEdit"], backbone=bb, edit_adapter=cn, frames=frames,
                 instruction="a", output_caption="b", steps=3)
    finally:
        mm_.interrupt_current_processing(False)
