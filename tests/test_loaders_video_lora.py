"""Video adapter (AnimateDiff) loader, text-to-video UNet3D loader, and LoRA read/apply/write."""

import copy
import json
import os

os.environ["HF_HUB_OFFLINE"] = "1"

import pytest
import torch

from fdd.models.errors import ModelLoadError
from fdd.models.lora import (
    LoraLayer,
    LoraPatcher,
    LoraStack,
    LoraWeights,
    lora_layers_from_peft,
    read_lora,
    resolve_lora_targets,
    save_kohya_lora,
)
from fdd.models.motion import build_motion_unet, load_motion_adapter
from fdd.models.state_dict import (
    read_safetensors_metadata,
    read_state_dict,
    save_safetensors_atomic,
)
from fdd.models.t2v import load_t2v_unet
from fdd.models.motion_formats import adapter_to_original, save_animatediff_original
from fdd.testing.tiny import (
    CROSS_DIM,
    tiny_motion_adapter,
    tiny_text_encoder,
    tiny_unet,
    tiny_unet3d,
)

torch.set_num_threads(2)


def _state_equal(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.fixture(scope="module")
def unet():
    return tiny_unet(seed=0)


@pytest.fixture(scope="module")
def frames():
    g = torch.Generator().manual_seed(1)
    b, f = 2, 4
    sample = torch.randn(b, 4, f, 16, 16, generator=g)  # UNetMotionModel: (B, C, F, H, W)
    text = torch.randn(b * f, 7, CROSS_DIM, generator=g)  # (B*F, L, D): not repeated per frame inside
    return sample, text


def _motion_out(unet2d, adapter, frames, path=None):
    model = build_motion_unet(copy.deepcopy(unet2d), adapter, path)
    with torch.no_grad():
        return model(frames[0], 10, frames[1]).sample


# ----------------------------------------------------------------------------------- motion


MOTION_VARIANTS = [  # (name, mid block, pe length, extension)
    ("v1", False, 24, ".ckpt"),
    ("v2", True, 32, ".ckpt"),
    ("v2", True, 32, ".safetensors"),
    ("v3", False, 32, ".safetensors"),
]


@pytest.mark.parametrize("name,mid,length,ext", MOTION_VARIANTS)
def test_motion_original_roundtrip_bit_identical(tmp_path, unet, frames, name, mid, length, ext):
    ad = tiny_motion_adapter(seed=3, mid_block=mid, max_seq_length=length)
    path = tmp_path / f"mm_{name}{ext}"
    save_animatediff_original(path, ad)
    sd = read_state_dict(path)
    assert any(".temporal_transformer." in k for k in sd)
    assert any(k.endswith("attention_blocks.1.pos_encoder.pe") for k in sd)
    assert any(k.startswith("mid_block.") for k in sd) == mid

    loaded = load_motion_adapter(path)
    assert loaded.config.use_motion_mid_block == mid
    assert loaded.config.motion_max_seq_length == length
    assert tuple(loaded.config.block_out_channels) == tuple(ad.config.block_out_channels)
    assert loaded.config.motion_num_attention_heads == 8
    assert _state_equal(loaded, ad)
    ref = _motion_out(unet, ad, frames)
    out = _motion_out(unet, loaded, frames, path)
    assert out.shape == frames[0].shape
    assert torch.equal(out, ref)


def test_motion_diffusers_folder_and_dtype(tmp_path, unet, frames):
    ad = tiny_motion_adapter(seed=7, mid_block=True)
    ad.save_pretrained(tmp_path / "adapter")
    loaded = load_motion_adapter(tmp_path / "adapter")
    assert _state_equal(loaded, ad)
    assert loaded.config.use_motion_mid_block and loaded.config.motion_max_seq_length == 32
    assert torch.equal(_motion_out(unet, loaded, frames), _motion_out(unet, ad, frames))
    # the same weights as one single file in diffusers key names
    save_safetensors_atomic(ad.state_dict(), tmp_path / "mm_diffusers_names.safetensors")
    assert _state_equal(load_motion_adapter(tmp_path / "mm_diffusers_names.safetensors"), ad)
    half = load_motion_adapter(tmp_path / "adapter", dtype=torch.float16)
    assert all(p.dtype == torch.float16 for p in half.parameters())
    save_animatediff_original(tmp_path / "mm.safetensors", ad)
    half2 = load_motion_adapter(tmp_path / "mm.safetensors", dtype=torch.float16)
    assert all(p.dtype == torch.float16 for p in half2.parameters())


def test_motion_stored_pe_buffer_is_used(tmp_path):
    """The file's pe buffers (e.g. a half-precision release) are loaded, not recomputed."""
    ad = tiny_motion_adapter(seed=1, mid_block=False, max_seq_length=24)
    sd = adapter_to_original(ad)
    for k in sd:
        if k.endswith("pos_encoder.pe"):
            sd[k] = sd[k].half().float()
    save_safetensors_atomic(sd, tmp_path / "mm.safetensors")
    loaded = load_motion_adapter(tmp_path / "mm.safetensors")
    pe = loaded.down_blocks[0].motion_modules[0].transformer_blocks[0].pos_embed.pe
    key = "down_blocks.0.motion_modules.0.temporal_transformer.transformer_blocks.0.attention_blocks.0.pos_encoder.pe"
    assert torch.equal(pe, sd[key])


def test_motion_channel_mismatch_names_file(tmp_path):
    from diffusers import MotionAdapter

    ad = MotionAdapter(block_out_channels=(64, 64), motion_layers_per_block=1, motion_num_attention_heads=8,
                       motion_norm_num_groups=32, motion_max_seq_length=32, use_motion_mid_block=False)
    path = tmp_path / "mm_other_base.safetensors"
    save_animatediff_original(path, ad)
    loaded = load_motion_adapter(path)
    assert tuple(loaded.config.block_out_channels) == (64, 64)
    with pytest.raises(ModelLoadError, match="mm_other_base.safetensors.*channels"):
        build_motion_unet(tiny_unet(), loaded, path)


def test_motion_layers_mismatch(tmp_path):
    from diffusers import MotionAdapter

    ad = MotionAdapter(block_out_channels=(32, 64), motion_layers_per_block=2, motion_num_attention_heads=8,
                       motion_norm_num_groups=32, use_motion_mid_block=False)
    path = tmp_path / "mm2.ckpt"
    save_animatediff_original(path, ad)
    loaded = load_motion_adapter(path)
    assert tuple(loaded.config.motion_layers_per_block) == (2, 2)
    with pytest.raises(ModelLoadError, match="mm2.ckpt.*layers per block"):
        build_motion_unet(tiny_unet(), loaded, path)


def test_motion_rejects_other_files(tmp_path):
    sd_ckpt = {"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(32, 4, 3, 3),
               "first_stage_model.encoder.conv_in.weight": torch.zeros(32, 3, 3, 3)}
    p = tmp_path / "sd15.safetensors"
    save_safetensors_atomic(sd_ckpt, p)
    with pytest.raises(ModelLoadError, match="sd15.safetensors.*Stable Diffusion checkpoint"):
        load_motion_adapter(p)
    cn = {"control_model.input_hint_block.0.weight": torch.zeros(16, 3, 3, 3)}
    p = tmp_path / "cn.ckpt"
    torch.save(cn, p)
    with pytest.raises(ModelLoadError, match="ControlNet"):
        load_motion_adapter(p)
    p = tmp_path / "odd.safetensors"
    save_safetensors_atomic({"foo.bar": torch.zeros(2)}, p)
    with pytest.raises(ModelLoadError, match="odd.safetensors"):
        load_motion_adapter(p)
    # a motion module with its up blocks cut off
    sd = {k: v for k, v in adapter_to_original(tiny_motion_adapter()).items() if not k.startswith("up_blocks.")}
    p = tmp_path / "partial.safetensors"
    save_safetensors_atomic(sd, p)
    with pytest.raises(ModelLoadError, match="partial.safetensors.*incomplete"):
        load_motion_adapter(p)
    (tmp_path / "not_adapter").mkdir()
    tiny_unet().save_pretrained(tmp_path / "not_adapter")
    with pytest.raises(ModelLoadError, match="not a MotionAdapter"):
        load_motion_adapter(tmp_path / "not_adapter")


# -------------------------------------------------------------------------------------- t2v


def test_t2v_pipeline_and_unet_folder(tmp_path):
    ref = tiny_unet3d()
    pipe = tmp_path / "zeroscope"
    ref.save_pretrained(pipe / "unet")
    (pipe / "model_index.json").write_text(json.dumps({"_class_name": "TextToVideoSDPipeline"}))
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 4, 3, 16, 16, generator=g)
    e = torch.randn(1, 7, CROSS_DIM, generator=g)
    from_pipe, from_unet = load_t2v_unet(pipe), load_t2v_unet(pipe / "unet")
    assert type(from_pipe).__name__ == "UNet3DConditionModel"
    assert _state_equal(from_pipe, ref) and _state_equal(from_unet, ref)
    with torch.no_grad():
        assert torch.equal(from_pipe(x, 10, e).sample, ref(x, 10, e).sample)
    half = tmp_path / "half"
    ref.save_pretrained(half, variant="fp16")
    m = load_t2v_unet(half, dtype=torch.float16)
    assert next(m.parameters()).dtype == torch.float16


def test_t2v_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="no config.json"):
        load_t2v_unet(tmp_path / "empty")
    tiny_unet().save_pretrained(tmp_path / "sd" / "unet")
    with pytest.raises(ModelLoadError, match="UNet2DConditionModel.*not a UNet3DConditionModel"):
        load_t2v_unet(tmp_path / "sd")
    tiny_unet3d().save_pretrained(tmp_path / "noweights")
    for f in os.listdir(tmp_path / "noweights"):
        if f.startswith("diffusion_pytorch_model"):
            os.remove(tmp_path / "noweights" / f)
    with pytest.raises(ModelLoadError, match="no weights"):
        load_t2v_unet(tmp_path / "noweights")
    (tmp_path / "pipe_only").mkdir()
    (tmp_path / "pipe_only" / "model_index.json").write_text("{}")
    with pytest.raises(ModelLoadError, match="unet/config.json"):
        load_t2v_unet(tmp_path / "pipe_only")


# ------------------------------------------------------------------------------------- LoRA


TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]
R, ALPHA, STRENGTH = 4, 8, 0.7


@pytest.fixture(scope="module")
def peft_unet(unet):
    from peft import LoraConfig

    model = copy.deepcopy(unet)
    model.add_adapter(LoraConfig(r=R, lora_alpha=ALPHA, target_modules=TARGETS))
    g = torch.Generator().manual_seed(11)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:  # peft zero-initialises B; make the adapter do something
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return model.eval()


@pytest.fixture(scope="module")
def image_batch():
    g = torch.Generator().manual_seed(2)
    return torch.randn(2, 4, 16, 16, generator=g), torch.randn(2, 7, CROSS_DIM, generator=g)


def _expected_weights(base, layers, strength):
    """Independent formula: W + s * alpha / r * B @ A for every target."""
    want = {}
    mods = dict(base.named_modules())
    for name, layer in layers.items():
        w = mods[name].weight.detach().double()
        b, a = layer.up.double().flatten(1), layer.down.double().flatten(1)
        want[name] = (w + strength * (layer.alpha / a.shape[0]) * (b @ a).reshape(w.shape)).float()
    return want


def test_peft_extract_and_kohya_keys(tmp_path, peft_unet):
    layers = lora_layers_from_peft(peft_unet)
    n_attn = sum(1 for n, _ in peft_unet.named_modules() if n.endswith(("attn1.to_q", "attn2.to_q")))
    assert len(layers) == 4 * n_attn
    assert all("base_layer" not in k and "lora_" not in k for k in layers)
    path = save_kohya_lora(tmp_path / "aligned.safetensors", layers)
    sd = read_state_dict(path)
    base = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
    assert sd[f"{base}.lora_down.weight"].shape == (R, 32)
    assert sd[f"{base}.lora_up.weight"].shape == (32, R)
    assert sd[f"{base}.alpha"].ndim == 0 and sd[f"{base}.alpha"].item() == ALPHA
    assert "lora_unet_up_blocks_1_attentions_0_transformer_blocks_0_attn2_to_out_0.alpha" in sd
    assert len(sd) == 3 * len(layers)
    assert all(k.startswith("lora_unet_") and k.endswith((".lora_down.weight", ".lora_up.weight", ".alpha"))
               for k in sd)
    meta = read_safetensors_metadata(path)
    assert meta["ss_network_dim"] == str(R) and float(meta["ss_network_alpha"]) == ALPHA


def test_kohya_roundtrip_apply_matches_peft_and_restores(tmp_path, unet, peft_unet, image_batch):
    layers = lora_layers_from_peft(peft_unet)
    path = save_kohya_lora(tmp_path / "aligned.safetensors", layers)
    lw = read_lora(path)
    assert lw.source == os.fspath(path) and not lw.text_encoder
    assert "down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q" in lw.unet  # unresolved, underscored
    resolved = resolve_lora_targets(lw.unet, unet, path)
    assert set(resolved) == set(layers)

    model = copy.deepcopy(unet)
    x, e = image_batch
    want_w = _expected_weights(unet, layers, STRENGTH)
    with torch.no_grad():
        with LoraPatcher(model, [(lw, STRENGTH)]):
            mods = dict(model.named_modules())
            for name, w in want_w.items():
                assert torch.allclose(mods[name].weight, w, atol=1e-6, rtol=0)
            got = model(x, 10, e).sample
        want = peft_unet(x, 10, e, cross_attention_kwargs={"scale": STRENGTH}).sample
    assert (got - want).abs().max().item() < 1e-5
    assert _state_equal(model, unet)  # restore() is bit-exact


def test_patcher_fp16_and_stacking(tmp_path, unet, peft_unet):
    layers = lora_layers_from_peft(peft_unet)
    lw = read_lora(save_kohya_lora(tmp_path / "a.safetensors", layers))
    half = copy.deepcopy(unet).half()
    orig = copy.deepcopy(half)
    p = LoraPatcher(half, [(lw, 0.5), (lw, 0.25)]).apply()
    want = _expected_weights(unet, layers, 0.75)
    mods = dict(half.named_modules())
    for name, w in want.items():
        assert mods[name].weight.dtype == torch.float16
        assert torch.allclose(mods[name].weight.float(), w, atol=2e-3, rtol=1e-3)
    p.restore()
    assert _state_equal(half, orig)


def test_lora_stack_patch_merge_and_parts(tmp_path, unet, peft_unet):
    """LoraStack: patch adds the strengths' sum of deltas and restores bit-exactly (also after an
    exception); merge_into leaves the same weights for good; unet_only / text_only drop the other
    side; the stack is frozen (added returns a new one) and iterates as (lora, strength) pairs."""
    layers = lora_layers_from_peft(peft_unet)
    te = tiny_text_encoder()
    te_name = next(n for n, m in te.named_modules() if n.endswith("q_proj"))
    te_w = dict(te.named_modules())[te_name].weight
    te_layer = LoraLayer(torch.full((2, te_w.shape[1]), 0.1), torch.full((te_w.shape[0], 2), 0.1), 2.0)
    lw = read_lora(save_kohya_lora(tmp_path / "both.safetensors", layers, {te_name: te_layer}))
    stack = LoraStack().added(lw, 0.5).added(lw, 0.25)
    assert len(stack) == 2 and [s for _, s in stack] == [0.5, 0.25] and not LoraStack()
    assert LoraStack.of(stack) is stack and LoraStack.of([(lw, 1)]).entries == ((lw, 1.0),)
    want = _expected_weights(unet, layers, 0.75)
    model, text, te0 = copy.deepcopy(unet), copy.deepcopy(te), copy.deepcopy(te)
    with pytest.raises(RuntimeError, match="boom"):
        with stack.patch(model, text_encoder=text):
            mods = dict(model.named_modules())
            for name, w in want.items():
                assert torch.allclose(mods[name].weight, w, atol=1e-6)
            assert not _state_equal(text, te0)
            raise RuntimeError("boom")
    assert _state_equal(model, unet) and _state_equal(text, te0)
    merged, patched = copy.deepcopy(unet), copy.deepcopy(unet)
    stack.merge_into(merged)
    with stack.patch(patched):
        assert _state_equal(merged, patched)
    assert not _state_equal(merged, unet)
    with stack.unet_only().patch(model, text_encoder=text):
        assert _state_equal(text, te0) and not _state_equal(model, unet)
    with stack.text_only().patch(model, text_encoder=text):
        assert _state_equal(model, unet) and not _state_equal(text, te0)
    assert stack.has_text_layers and not stack.unet_only().has_text_layers


def test_peft_and_diffusers_formats(tmp_path, unet, peft_unet):
    from diffusers import StableDiffusionPipeline
    from peft.utils import get_peft_model_state_dict

    layers = lora_layers_from_peft(peft_unet)
    peft_sd = get_peft_model_state_dict(peft_unet)
    cfg = peft_unet.peft_config["default"].to_dict()
    # diffusers save_lora_weights: unet.<path>.lora_A.weight + lora_adapter_metadata
    StableDiffusionPipeline.save_lora_weights(tmp_path / "diffusers", unet_lora_layers=peft_sd,
                                              unet_lora_adapter_metadata=cfg)
    # peft folder: base_model.model.<path>.lora_A.weight + adapter_config.json (alpha_pattern honoured)
    folder = tmp_path / "peft"
    save_safetensors_atomic({f"base_model.model.{k}": v for k, v in peft_sd.items()},
                            folder / "adapter_model.safetensors")
    pattern = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"
    (folder / "adapter_config.json").write_text(json.dumps(
        {"peft_type": "LORA", "r": R, "lora_alpha": ALPHA, "alpha_pattern": {pattern: 2 * ALPHA}}))
    # older diffusers layout: <path>.lora.down.weight / .lora.up.weight, no alpha -> r
    old = {}
    for name, layer in layers.items():
        old[f"unet.{name}.lora.down.weight"] = layer.down
        old[f"unet.{name}.lora.up.weight"] = layer.up
    save_safetensors_atomic(old, tmp_path / "old.safetensors")

    for src, alpha_of in ((tmp_path / "diffusers", lambda n: ALPHA),
                          (tmp_path / "diffusers" / "pytorch_lora_weights.safetensors", lambda n: ALPHA),
                          (folder, lambda n: 2 * ALPHA if n == pattern else ALPHA),
                          (tmp_path / "old.safetensors", lambda n: R)):
        lw = read_lora(src)
        assert set(lw.unet) == set(layers), src
        for name, layer in layers.items():
            got = lw.unet[name]
            assert torch.equal(got.down, layer.down) and torch.equal(got.up, layer.up)
            assert (got.alpha if got.alpha is not None else got.rank) == alpha_of(name), (src, name)
        assert set(resolve_lora_targets(lw.unet, unet, src)) == set(layers)


def test_text_encoder_lora(tmp_path, unet):
    te = tiny_text_encoder()
    g = torch.Generator().manual_seed(5)
    te_layers = {}
    for name, mod in te.named_modules():
        if name.endswith(("q_proj", "k_proj", "v_proj", "out_proj", "fc1")):
            out_f, in_f = mod.weight.shape
            te_layers[name] = LoraLayer(torch.randn(2, in_f, generator=g) * 0.1,
                                        torch.randn(out_f, 2, generator=g) * 0.1, 3.0)
    path = save_kohya_lora(tmp_path / "te.safetensors", {}, te_layers)
    sd = read_state_dict(path)
    assert "lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight" in sd
    assert sd["lora_te_text_model_encoder_layers_1_mlp_fc1.alpha"].item() == 3.0
    lw = read_lora(path)
    assert not lw.unet and len(lw.text_encoder) == len(te_layers)

    manual = copy.deepcopy(te)
    want_w = _expected_weights(te, te_layers, 0.6)
    mods = dict(manual.named_modules())
    with torch.no_grad():
        for name, w in want_w.items():
            mods[name].weight.copy_(w)
    ids = torch.tensor([[49406, 10, 20, 30, 49407]])
    model_unet = copy.deepcopy(unet)
    with torch.no_grad(), LoraPatcher(model_unet, [(lw, 0.6)], text_encoder=te):
        got = te(ids).last_hidden_state
        want = manual(ids).last_hidden_state
        assert _state_equal(model_unet, unet)  # no UNet layers in this LoRA
    assert (got - want).abs().max().item() < 1e-5
    assert _state_equal(te, tiny_text_encoder())


def test_conv_lora_roundtrip(tmp_path, unet, image_batch):
    from peft import LoraConfig

    model = copy.deepcopy(unet)
    model.add_adapter(LoraConfig(r=2, lora_alpha=3, target_modules=["conv1", "proj_in"]))
    g = torch.Generator().manual_seed(9)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    layers = lora_layers_from_peft(model)
    conv = layers["down_blocks.0.resnets.0.conv1"]
    assert conv.down.shape == (2, 32, 3, 3) and conv.up.shape == (32, 2, 1, 1)
    lw = read_lora(save_kohya_lora(tmp_path / "conv.safetensors", layers))
    fresh = copy.deepcopy(unet)
    x, e = image_batch
    with torch.no_grad(), LoraPatcher(fresh, [(lw, 1.0)]):
        got = fresh(x, 10, e).sample
        want = model(x, 10, e).sample
    assert (got - want).abs().max().item() < 1e-5
    assert _state_equal(fresh, unet)


def test_lora_on_motion_unet_leaves_motion_modules(tmp_path, unet, peft_unet):
    lw = read_lora(save_kohya_lora(tmp_path / "a.safetensors", lora_layers_from_peft(peft_unet)))
    motion = build_motion_unet(copy.deepcopy(unet), tiny_motion_adapter())
    before = copy.deepcopy(motion.state_dict())
    plain = copy.deepcopy(unet)
    with torch.no_grad(), LoraPatcher(motion, [(lw, STRENGTH)]), LoraPatcher(plain, [(lw, STRENGTH)]):
        after = motion.state_dict()
        flat = plain.state_dict()
        changed = [k for k in after if not torch.equal(after[k], before[k])]
        assert changed and not any("motion_modules" in k for k in changed)
        for k in changed:
            assert torch.equal(after[k], flat[k])
    assert all(torch.equal(v, before[k]) for k, v in motion.state_dict().items())


def test_lora_errors(tmp_path, unet, peft_unet, caplog):
    layers = lora_layers_from_peft(peft_unet)
    first = layers[next(iter(layers))]
    # a partial match: one layer name this UNet does not have -> applied without it, with a warning
    missing = "down_blocks.3.attentions.0.transformer_blocks.0.attn1.to_q"
    partial = dict(layers)
    partial[missing] = first
    path = save_kohya_lora(tmp_path / "partial.safetensors", partial)
    skipped = missing.replace(".", "_")
    with caplog.at_level("WARNING", logger="fdd.models.lora"):
        model = copy.deepcopy(unet)
        with LoraPatcher(model, [(read_lora(path), 1.0)]):
            assert not _state_equal(model, unet)
    msg = " ".join(r.getMessage() for r in caplog.records)
    assert "partial.safetensors" in msg and f"1 of {len(partial)} layers" in msg and skipped in msg
    full = copy.deepcopy(unet)
    with LoraPatcher(full, [(read_lora(save_kohya_lora(tmp_path / "full.safetensors", layers)), 1.0)]):
        assert _state_equal(model, unet) and not _state_equal(full, unet)
        with LoraPatcher(model, [(read_lora(path), 1.0)]):
            assert _state_equal(model, full)  # the matching layers are applied exactly
    # no layer name this UNet has -> an error naming the file and the model
    other = {missing: first, "down_blocks.3.attentions.0.transformer_blocks.0.attn1.to_k": first}
    path = save_kohya_lora(tmp_path / "other_model.safetensors", other)
    with pytest.raises(ModelLoadError, match=r"other_model\.safetensors.*none of its 2 LoRA layers matches.*"
                                             r"UNet2DConditionModel"):
        LoraPatcher(copy.deepcopy(unet), [(read_lora(path), 1.0)]).apply()
    # right names, wrong sizes (a LoRA for a wider model)
    wide = {n: LoraLayer(torch.zeros(R, l.down.shape[1] * 2), torch.zeros(l.up.shape[0] * 2, R), 1.0)
            for n, l in layers.items()}
    path = save_kohya_lora(tmp_path / "wide.safetensors", wide)
    model = copy.deepcopy(unet)
    with pytest.raises(ModelLoadError, match=r"wide\.safetensors.*do not fit"):
        LoraPatcher(model, [(read_lora(path), 1.0)]).apply()
    assert _state_equal(model, unet)  # nothing applied when resolution fails
    # LDM-named kohya keys are reported as such
    ldm = LoraWeights(unet={"input_blocks_1_1_transformer_blocks_0_attn1_to_q": layers[next(iter(layers))]},
                      source="ldm.safetensors")
    with pytest.raises(ModelLoadError, match="LDM names"):
        resolve_lora_targets(ldm.unet, unet, ldm.source)
    # unknown layouts
    p = tmp_path / "weird.safetensors"
    save_safetensors_atomic({"some.weight": torch.zeros(3, 3)}, p)
    with pytest.raises(ModelLoadError, match=r"weird\.safetensors.*unknown LoRA key layout"):
        read_lora(p)
    p = tmp_path / "loha.safetensors"
    save_safetensors_atomic({"lora_unet_x.hada_w1_a": torch.zeros(3, 3)}, p)
    with pytest.raises(ModelLoadError, match="LyCORIS"):
        read_lora(p)
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(ModelLoadError, match="adapter_model.safetensors"):
        read_lora(tmp_path / "empty_dir")
