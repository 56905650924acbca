"""fdd.testing.realsize: SD 1.5-size configs (counted on the meta device) and small real-format
fixtures that go through the pack's real loaders."""

from __future__ import annotations

import pytest
import torch


@pytest.mark.slow
def test_full_size_parameter_counts_on_meta():
    from fdd.testing.realsize import EXPECTED_FULL_PARAMS, parameter_counts

    counts = parameter_counts("full")
    # the published SD 1.5 counts (UNet, VAE, CLIP ViT-L/14 text tower) exactly
    assert counts["unet"] == 859_520_964
    assert counts["vae"] == 83_653_863
    assert counts["text"] == 123_060_480
    # ControlNet ~361M, AnimateDiff v2 motion module ~453M, DINOv2 ViT-S/14 ~22M
    assert abs(counts["controlnet"] - 361.3e6) < 0.5e6
    assert abs(counts["motion"] - 453.2e6) < 0.5e6
    assert abs(counts["dino"] - 22.06e6) < 0.1e6
    assert counts == EXPECTED_FULL_PARAMS


@pytest.mark.slow
def test_small_fixtures_load_through_the_pack_loaders(tmp_path):
    from fdd.distill.discriminators import load_dinov2
    from fdd.models.controlnet import check_controlnet_matches_unet, load_controlnet
    from fdd.models.motion import build_motion_unet, load_motion_adapter
    from fdd.models.sd1 import load_sd1
    from fdd.testing.realsize import SMALL, write_realsize_tree

    p = write_realsize_tree(tmp_path / "models", "small", "cpu", log=lambda *_: None)
    assert p["checkpoint"].endswith("checkpoints/v1-5-pruned-emaonly.safetensors")
    assert p["controlnet"].endswith("controlnet/control_v11e_sd15_ip2p.safetensors")
    assert p["motion"].endswith("animatediff_models/mm_sd_v15_v2.ckpt")
    bb = load_sd1(p["checkpoint"], tokenizer=p["tokenizer"], dtype=torch.float16)
    assert bb.unet.dtype == torch.float16
    assert tuple(bb.unet.config.block_out_channels) == SMALL["unet"]["block_out_channels"]
    assert bb.unet.config.layers_per_block == 2 and bb.vae_scale_factor == 8
    assert bb.text_encoder.config.vocab_size == 49408
    cn = load_controlnet(p["controlnet"])
    check_controlnet_matches_unet(cn, bb.unet, p["controlnet"])
    assert tuple(cn.config.conditioning_embedding_out_channels) == SMALL["controlnet"]["conditioning_embedding_out_channels"]
    ad = load_motion_adapter(p["motion"])
    assert ad.config.use_motion_mid_block and ad.config.motion_max_seq_length == 32
    mu = build_motion_unet(bb.unet.float(), ad, p["motion"])
    assert sum(q.numel() for q in mu.parameters()) > sum(q.numel() for q in bb.unet.parameters())
    assert load_dinov2(p["dino"]).config.patch_size == 14
    # written once: a second call finds the stamp
    assert write_realsize_tree(tmp_path / "models", "small", "cpu", log=lambda *_: None) == p


@pytest.mark.slow
def test_scale_bench_runs_at_small_size_on_the_cpu(tmp_path):
    """bench/scale.py (the GPU command's script) end to end on small fixtures: the sections it
    ran wrote well-formed comparisons and no section failed."""
    import json
    import os
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = tmp_path / "scale.json"
    r = subprocess.run([sys.executable, os.path.join(root, "bench", "scale.py"), "--device", "cpu", "--size",
                        "small", "--models", str(tmp_path / "models"), "--out", str(out), "--frames", "4",
                        "--resolution", "128", "--steps", "2", "--threads", "1", "--only", "plug_and_play,cap_8gib"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    doc = json.loads(out.read_text())
    assert [s["name"] for s in doc["sections"]] == ["load", "plug_and_play", "cap_8gib"]
    assert not [s for s in doc["sections"] if "error" in s], doc["sections"]
    names = {c["name"] for c in doc["comparisons"]}
    assert {"load_resident_vs_parameter_bytes", "pnp_vs_diffusers_2branch_peak_memory_growth"} <= names
    for c in doc["comparisons"]:
        # ratio = ours / baseline, rounded to 4 decimals by bench/common.comparison (CPU memory
        # growth may be 0 or negative at this size: only the arithmetic is checked)
        if c["baseline"]:
            assert abs(c["ratio"] - c["ours"] / c["baseline"]) <= 0.5e-4 + 1e-9, c
