"""SD 1.x backbone and ControlNet loaders: tiny model -> real on-disk format -> loader ->
bit-identical module; and the errors users see for wrong files."""

from __future__ import annotations

import copy
import os

os.environ["HF_HUB_OFFLINE"] = "1"

import pytest
import torch

from fdd.models.controlnet import check_controlnet_matches_unet, load_controlnet
from fdd.models.errors import ModelLoadError
from fdd.models.sd1 import SD1Backbone, load_sd1, load_sd1_checkpoint
from fdd.models.state_dict import read_state_dict, save_safetensors_atomic
from fdd.models import ldm_formats as L
from fdd.testing.tiny import (tiny_controlnet, tiny_text_encoder, tiny_unet, tiny_vae,
                              write_tiny_tokenizer)


@pytest.fixture(scope="module")
def models():
    u = tiny_unet(0)
    return {"unet": u, "vae": tiny_vae(0), "te": tiny_text_encoder(0), "cn": tiny_controlnet(u)}


def _inputs(ctx_dim=64, size=16, scale=4):
    g = torch.Generator().manual_seed(123)
    return dict(
        x=torch.randn(2, 4, size, size, generator=g),
        t=torch.tensor([10, 500]),
        ctx=torch.randn(2, 7, ctx_dim, generator=g),
        img=torch.rand(1, 3, size * scale, size * scale, generator=g) * 2 - 1,
        hint=torch.rand(2, 3, size * scale, size * scale, generator=g),
        ids=torch.tensor([[49406, 10, 20, 30, 49407, 49407, 49407]]),
    )


@torch.no_grad()
def assert_same_backbone(b: SD1Backbone, unet, vae, te):
    i = _inputs(unet.config.cross_attention_dim, scale=b.vae_scale_factor)
    assert torch.equal(unet(i["x"], i["t"], i["ctx"]).sample, b.unet(i["x"], i["t"], i["ctx"]).sample)
    assert torch.equal(vae.encode(i["img"]).latent_dist.mean, b.vae.encode(i["img"]).latent_dist.mean)
    assert torch.equal(vae.encode(i["img"]).latent_dist.logvar, b.vae.encode(i["img"]).latent_dist.logvar)
    assert torch.equal(vae.decode(i["x"][:1]).sample, b.vae.decode(i["x"][:1]).sample)
    assert torch.equal(te(i["ids"]).last_hidden_state, b.text_encoder(i["ids"]).last_hidden_state)
    assert torch.equal(te(i["ids"]).pooler_output, b.text_encoder(i["ids"]).pooler_output)


@torch.no_grad()
def assert_same_controlnet(a, b, scale=4):
    i = _inputs(a.config.cross_attention_dim, scale=scale)
    da, ma = a(i["x"], i["t"], i["ctx"], i["hint"], return_dict=False)
    db, mb = b(i["x"], i["t"], i["ctx"], i["hint"], return_dict=False)
    assert len(da) == len(db)
    assert all(torch.equal(p, q) for p, q in zip(da, db))
    assert torch.equal(ma, mb)


def _raises(fn, *needles):
    with pytest.raises(ModelLoadError) as ei:
        fn()
    msg = str(ei.value)
    for n in needles:
        assert n.lower() in msg.lower(), msg
    return msg


# ---------------------------------------------------------------------------- backbone


@pytest.mark.parametrize("name,kw", [
    ("sd.safetensors", {}),
    ("sd.ckpt", {}),
    ("nested.ckpt", {"nested": True}),
    ("nopos.safetensors", {"position_ids": False}),
    ("flatclip.safetensors", {"text_model_level": False}),
])
def test_ldm_single_file_bit_identical(tmp_path, models, name, kw):
    p = L.save_ldm_sd1_checkpoint(tmp_path / name, models["unet"], models["vae"], models["te"], **kw)
    b = load_sd1(p)
    assert isinstance(b, SD1Backbone) and b.source == str(p)
    assert b.vae_scale_factor == 4 and b.scaling_factor == pytest.approx(0.18215)
    assert b.tokenizer is None
    assert_same_backbone(b, models["unet"], models["vae"], models["te"])
    assert b.unet.config.block_out_channels == models["unet"].config.block_out_channels
    assert b.text_encoder.config.num_attention_heads == 1  # hidden 64 // CLIP head dim 64


def test_fp16_file_loads_as_rounded_fp32(tmp_path, models):
    p = L.save_ldm_sd1_checkpoint(tmp_path / "sd16.safetensors", models["unet"], models["vae"], models["te"],
                                  dtype=torch.float16)
    assert read_state_dict(p)["model.diffusion_model.out.2.weight"].dtype == torch.float16
    b = load_sd1(p)
    assert next(b.unet.parameters()).dtype == torch.float32
    rounded = [copy.deepcopy(models[k]).half().float() for k in ("unet", "vae", "te")]
    assert_same_backbone(b, *rounded)
    b16 = load_sd1(p, dtype=torch.float16)
    assert {q.dtype for m in (b16.unet, b16.vae, b16.text_encoder) for q in m.parameters()} == {torch.float16}


def test_tokenizer_folder_and_object(tmp_path, models):
    p = L.save_ldm_sd1_checkpoint(tmp_path / "sd.safetensors", models["unet"], models["vae"], models["te"])
    tok_dir = write_tiny_tokenizer(tmp_path / "tok")
    b = load_sd1_checkpoint(p, tokenizer=tok_dir)
    ids = b.tokenizer("a cat", padding="max_length", max_length=77, truncation=True).input_ids
    assert ids[0] == 49406 and len(ids) == 77
    b2 = load_sd1_checkpoint(p, tokenizer=b.tokenizer)
    assert b2.tokenizer is b.tokenizer
    _raises(lambda: load_sd1_checkpoint(p, tokenizer=tmp_path / "nope"), "nope", "tokenizer")


def test_diffusers_folder(tmp_path, models):
    root = tmp_path / "pipe"
    models["unet"].save_pretrained(root / "unet")
    models["vae"].save_pretrained(root / "vae")
    models["te"].save_pretrained(root / "text_encoder")
    write_tiny_tokenizer(root / "tokenizer")
    b = load_sd1(root)
    assert b.tokenizer is not None and b.vae_scale_factor == 4
    assert_same_backbone(b, models["unet"], models["vae"], models["te"])
    _raises(lambda: load_sd1(tmp_path), str(tmp_path), "unet/", "Expected")


def test_converters_generalise_over_block_counts(tmp_path):
    """3 UNet levels with 2 resnets each and a 2-deep transformer, a 2-level VAE with 2 resnets:
    the writer and the inference must follow the model, not SD 1.5's or the tiny sizes."""
    from diffusers import AutoencoderKL, ControlNetModel, UNet2DConditionModel

    torch.manual_seed(5)
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(32, 32, 64),
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        layers_per_block=2, cross_attention_dim=64, attention_head_dim=8, transformer_layers_per_block=2,
    ).eval()
    vae = AutoencoderKL(block_out_channels=(32, 64), down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, layers_per_block=2, latent_channels=4).eval()
    te = tiny_text_encoder(3)
    p = L.save_ldm_sd1_checkpoint(tmp_path / "deep.safetensors", unet, vae, te)
    b = load_sd1(p)
    assert b.vae_scale_factor == 2
    for k in ("block_out_channels", "down_block_types", "up_block_types", "layers_per_block",
              "transformer_layers_per_block", "cross_attention_dim"):
        assert b.unet.config[k] == unet.config[k], k
    assert tuple(b.vae.config.block_out_channels) == (32, 64) and b.vae.config.layers_per_block == 2
    assert_same_backbone(b, unet, vae, te)

    # the real hint encoder depth: 8 convs, conv_out at input_hint_block.14
    cn = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(16, 32, 32, 64))
    with torch.no_grad():
        for n, prm in cn.named_parameters():
            if "controlnet_" in n or "conv_out" in n:
                prm.normal_(0, 0.02)
    ldm = L.controlnet_to_ldm(cn)
    assert "input_hint_block.14.weight" in ldm
    cp = L.save_ldm_controlnet(tmp_path / "cn_deep.safetensors", cn)
    c2 = load_controlnet(cp)
    assert tuple(c2.config.conditioning_embedding_out_channels) == (16, 32, 32, 64)
    assert_same_controlnet(cn.eval(), c2, scale=8)


def test_bare_unet_file_is_refused(tmp_path, models):
    p = L.save_ldm_sd1_checkpoint(tmp_path / "unet_only.safetensors", models["unet"], unet_prefix=False)
    assert "input_blocks.0.0.weight" in read_state_dict(p)
    _raises(lambda: load_sd1(p), "unet_only.safetensors", "UNet-only", "full SD 1.x checkpoint")


def test_missing_parts_and_keys(tmp_path, models):
    p = L.save_ldm_sd1_checkpoint(tmp_path / "novae.safetensors", models["unet"], None, models["te"])
    _raises(lambda: load_sd1(p), "novae.safetensors", "no VAE")
    sd = L.save_ldm_sd1_checkpoint(tmp_path / "full.safetensors", models["unet"], models["vae"], models["te"])
    sd = read_state_dict(sd)
    del sd["model.diffusion_model.input_blocks.1.0.emb_layers.1.weight"]
    sd["first_stage_model.encoder.bogus.weight"] = torch.zeros(1)
    save_safetensors_atomic(sd, tmp_path / "holes.safetensors")
    msg = _raises(lambda: load_sd1(tmp_path / "holes.safetensors"), "holes.safetensors", "missing", "Expected")
    assert "time_emb_proj" in msg


def _sd1_keys(models):
    sd = {L.UNET_PREFIX + k: v for k, v in L.unet_to_ldm(models["unet"]).items()}
    sd.update({L.VAE_PREFIX + k: v for k, v in L.vae_to_ldm(models["vae"]).items()})
    return sd


def test_sdxl_file_is_refused(tmp_path, models):
    sd = _sd1_keys(models)
    sd["model.diffusion_model.label_emb.0.0.weight"] = torch.zeros(8, 8)
    sd["conditioner.embedders.0.transformer.text_model.embeddings.token_embedding.weight"] = torch.zeros(8, 8)
    sd["conditioner.embedders.1.model.ln_final.weight"] = torch.zeros(8)
    p = save_safetensors_atomic(sd, tmp_path / "sdxl.safetensors")
    _raises(lambda: load_sd1(p), "sdxl.safetensors", "SDXL checkpoint", "Expected: an SD 1.x")
    _raises(lambda: load_controlnet(p), "sdxl.safetensors", "SDXL", "not a ControlNet")


def test_sd2_file_is_refused(tmp_path, models):
    sd = _sd1_keys(models)
    sd["cond_stage_model.model.transformer.resblocks.0.attn.in_proj_weight"] = torch.zeros(24, 8)
    sd["cond_stage_model.model.ln_final.weight"] = torch.zeros(8)
    p = save_safetensors_atomic(sd, tmp_path / "sd2.safetensors")
    _raises(lambda: load_sd1(p), "sd2.safetensors", "SD 2.x", "Expected: an SD 1.x")


def test_wrong_files_to_each_loader(tmp_path, models):
    cp = L.save_ldm_controlnet(tmp_path / "control_v11e_sd15_ip2p.safetensors", models["cn"])
    _raises(lambda: load_sd1(cp), "control_v11e_sd15_ip2p.safetensors", "ControlNet", "not an SD 1.x backbone",
            "Expected: an SD 1.x")
    bp = L.save_ldm_sd1_checkpoint(tmp_path / "v1-5.safetensors", models["unet"], models["vae"], models["te"])
    _raises(lambda: load_controlnet(bp), "v1-5.safetensors", "backbone", "not a ControlNet",
            "Expected: an SD 1.x ControlNet")
    mm = {"down_blocks.0.motion_modules.0.temporal_transformer.proj_in.weight": torch.zeros(4, 4),
          "down_blocks.0.motion_modules.0.temporal_transformer.norm.weight": torch.zeros(4)}
    mp = save_safetensors_atomic(mm, tmp_path / "mm_sd_v15_v2.safetensors")
    _raises(lambda: load_sd1(mp), "mm_sd_v15_v2.safetensors", "motion module")
    _raises(lambda: load_controlnet(mp), "mm_sd_v15_v2.safetensors", "motion module", "not a ControlNet")
    up = save_safetensors_atomic({"foo.bar.weight": torch.zeros(2)}, tmp_path / "odd.safetensors")
    _raises(lambda: load_sd1(up), "odd.safetensors", "not recognised", "Expected")
    _raises(lambda: load_controlnet(up), "odd.safetensors", "not a ControlNet", "Expected")


def test_truncated_and_unsafe_files(tmp_path, models):
    p = L.save_ldm_sd1_checkpoint(tmp_path / "cut.safetensors", models["unet"], models["vae"], models["te"])
    data = open(p, "rb").read()
    with open(p, "wb") as fh:
        fh.write(data[: len(data) // 2])
    _raises(lambda: load_sd1(p), "cut.safetensors", "truncated", "Expected")
    _raises(lambda: load_controlnet(p), "cut.safetensors", "truncated")

    q = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "obj": _NotWeights()}, q)
    _raises(lambda: load_sd1(q), "evil.ckpt", "not weights-only", "safetensors")
    _raises(lambda: load_controlnet(q), "evil.ckpt", "not weights-only")


class _NotWeights:
    def __init__(self):
        self.x = 1


# ---------------------------------------------------------------------------- ControlNet


@pytest.mark.parametrize("prefix", [True, False])
def test_controlnet_ldm_file_bit_identical(tmp_path, models, prefix):
    p = L.save_ldm_controlnet(tmp_path / "cn.safetensors", models["cn"], prefix=prefix)
    keys = read_state_dict(p)
    assert any(k.startswith("control_model.") for k in keys) == prefix
    c2 = load_controlnet(p)
    assert tuple(c2.config.conditioning_embedding_out_channels) == (16, 32, 32)
    assert c2.config.conditioning_channels == 3
    assert_same_controlnet(models["cn"], c2)
    check_controlnet_matches_unet(c2, models["unet"], p)


def test_controlnet_full_v10_file_ignores_backbone(tmp_path, models):
    """v1.0 ControlNet releases carry the backbone next to control_model.*"""
    sd = {L.CONTROLNET_PREFIX + k: v for k, v in L.controlnet_to_ldm(models["cn"]).items()}
    sd.update(_sd1_keys(models))
    p = save_safetensors_atomic(sd, tmp_path / "control_sd15_full.safetensors")
    assert_same_controlnet(models["cn"], load_controlnet(p))


def test_controlnet_diffusers_folder(tmp_path, models):
    models["cn"].save_pretrained(tmp_path / "cn")
    c2 = load_controlnet(tmp_path / "cn")
    assert_same_controlnet(models["cn"], c2)
    models["unet"].save_pretrained(tmp_path / "notcn")
    _raises(lambda: load_controlnet(tmp_path / "notcn"), "notcn", "UNet2DConditionModel", "not a ControlNetModel")


def test_controlnet_mismatching_backbone(tmp_path, models):
    from diffusers import ControlNetModel

    torch.manual_seed(9)
    other = ControlNetModel(block_out_channels=(64, 64), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                            layers_per_block=1, cross_attention_dim=64, attention_head_dim=8,
                            conditioning_embedding_out_channels=(16, 32, 32)).eval()
    p = L.save_ldm_controlnet(tmp_path / "wide_cn.safetensors", other)
    c2 = load_controlnet(p)
    assert tuple(c2.config.block_out_channels) == (64, 64)
    _raises(lambda: check_controlnet_matches_unet(c2, models["unet"], p), "wide_cn.safetensors",
            "does not match the backbone", "block_out_channels (64, 64)", "Expected: a ControlNet trained")
