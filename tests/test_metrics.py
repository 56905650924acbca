"""Metrics (fdd.metrics) on tiny random CLIP / PickScore / ViCLIP models in their real formats:
checked against hand computations from raw embeddings, invariances, and loader errors."""

from __future__ import annotations

import math
import os
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fdd.metrics import EmbeddingCache, evaluate_edit, load_metric_models
from fdd.metrics import definitions as D
from fdd.models.errors import ModelLoadError
from fdd.testing.clip import moving_shapes_clip


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
    from fdd.testing.metric_models import write_metric_models

    return write_metric_models(tmp_path_factory.mktemp("fdd_metrics"))


@pytest.fixture(scope="module")
def models(paths):
    return load_metric_models(paths["clip"], paths["pickscore"], paths["viclip"])


@pytest.fixture(scope="module")
def clips():
    a = moving_shapes_clip(10, 48, 48, seed=0)
    b = (moving_shapes_clip(10, 48, 48, seed=1).flip(1) * 0.8 + 0.1)
    return a, b


def _cos(u, v):
    u, v = np.asarray(u, np.float64), np.asarray(v, np.float64)
    return float(u @ v / (np.linalg.norm(u) * np.linalg.norm(v)))


def test_metrics_equal_hand_computations_from_raw_embeddings(models, clips):
    a, b = clips
    cin, cout = "a red ball and a blue square", "a green ball and a blue square"
    res = evaluate_edit(models, a, b, cout, cin)
    m = res["metrics"]
    assert res["skipped"] == {}
    # raw embeddings straight from the transformers model + processor
    clip = models.clip
    px = clip.processor(images=list((b.numpy() * 255).round().astype(np.uint8)), return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        img = clip.model.get_image_features(pixel_values=px).pooler_output.numpy()
        px_in = clip.processor(images=list((a.numpy() * 255).round().astype(np.uint8)),
                               return_tensors="pt")["pixel_values"]
        img_in = clip.model.get_image_features(pixel_values=px_in).pooler_output.numpy()
    t_out = clip.embed_text([cout])[0].numpy()
    t_in = clip.embed_text([cin])[0].numpy()
    n = len(img)
    pairs = [_cos(img[i], img[j]) for i in range(n) for j in range(n) if i != j]
    assert m["clip_frame_consistency"] == pytest.approx(sum(pairs) / len(pairs), abs=1e-5)
    assert m["clip_frame_consistency_x100"] == pytest.approx(100 * sum(pairs) / len(pairs), abs=1e-3)
    align = np.mean([_cos(e, t_out) for e in img])
    assert m["clip_text_alignment"] == pytest.approx(align, abs=1e-5)
    assert m["clip_text_alignment_x100"] == pytest.approx(100 * align, abs=1e-3)
    unit = lambda x: x / np.linalg.norm(x)
    dirs = [_cos(unit(img[i]) - unit(img_in[i]), unit(t_out) - unit(t_in)) for i in range(n)]
    assert m["clip_dir"] == pytest.approx(np.mean(dirs), abs=1e-5)
    # PickScore: exp(logit_scale) * cosine, averaged over frames
    ps = models.pickscore
    assert ps.logit_scale == pytest.approx(100.0, rel=1e-5)
    p_img = ps.embed_images(b).numpy()
    p_txt = ps.embed_text([cout])[0].numpy()
    assert m["pickscore"] == pytest.approx(100.0 * np.mean([_cos(e, p_txt) for e in p_img]), abs=1e-3)
    # ViCLIP: one embedding per video
    vc = models.viclip
    v_in, v_out = vc.embed_video(a).numpy(), vc.embed_video(b).numpy()
    vt_in, vt_out = vc.embed_text([cin])[0].numpy(), vc.embed_text([cout])[0].numpy()
    assert m["viclip_out"] == pytest.approx(_cos(v_out, vt_out), abs=1e-5)
    assert m["viclip_dir"] == pytest.approx(_cos(unit(v_out) - unit(v_in), unit(vt_out) - unit(vt_in)), abs=1e-5)
    # model-free
    an, bn = a.numpy().astype(np.float64), b.numpy().astype(np.float64)
    assert m["temporal_flicker"] == pytest.approx(np.abs(np.diff(bn, axis=0)).mean(), abs=1e-6)
    assert m["temporal_flicker_input"] == pytest.approx(np.abs(np.diff(an, axis=0)).mean(), abs=1e-6)
    assert 0 < m["structure_ssim"] < 1 and -1 <= m["edge_agreement"] <= 1


def test_identical_frames_and_permutations(models, clips):
    a, b = clips
    still = a[:1].repeat(6, 1, 1, 1)
    m = evaluate_edit(models, a, still, "a ball")["metrics"]
    assert m["clip_frame_consistency"] == pytest.approx(1.0, abs=1e-6)
    assert m["temporal_flicker"] == 0.0
    assert D.clip_frame_consistency(torch.randn(1, 8)) == 1.0
    perm = torch.randperm(b.shape[0], generator=torch.Generator().manual_seed(3))
    m1 = evaluate_edit(models, a, b, "a ball")["metrics"]
    m2 = evaluate_edit(models, a, b[perm], "a ball")["metrics"]
    for k in ("clip_frame_consistency", "clip_text_alignment", "pickscore"):
        assert m1[k] == pytest.approx(m2[k], abs=1e-5), k
    # identical input and output: structure metrics at their maximum
    same = evaluate_edit(models, a, a.clone(), "a ball")["metrics"]
    assert same["structure_ssim"] == pytest.approx(1.0, abs=1e-4)
    assert same["edge_agreement"] == pytest.approx(1.0, abs=1e-5)


def test_direction_metrics_flip_sign_when_input_and_output_swap(models, clips):
    a, b = clips
    fwd = evaluate_edit(models, a, b, "a green ball", "a red ball")["metrics"]
    swapped = evaluate_edit(models, b, a, "a green ball", "a red ball")["metrics"]
    both = evaluate_edit(models, b, a, "a red ball", "a green ball")["metrics"]
    for k in ("clip_dir", "viclip_dir"):
        assert abs(fwd[k]) > 1e-4
        assert swapped[k] == pytest.approx(-fwd[k], abs=1e-5), k
        # swapping the captions too turns both changes around: the direction agrees again
        assert both[k] == pytest.approx(fwd[k], abs=1e-5), k
    # without an input caption the direction metrics are skipped, with the reason
    res = evaluate_edit(models, a, b, "a green ball")
    assert "clip_dir" not in res["metrics"] and res["skipped"]["viclip_dir"] == "no input caption given"


def test_definitions_on_known_vectors():
    e = torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 3.0]])
    c = 1 / math.sqrt(2)
    assert D.clip_frame_consistency(e) == pytest.approx((0 + c + c) * 2 / 6)
    assert D.clip_text_alignment(e, torch.tensor([1.0, 0.0])) == pytest.approx((1 + 0 + c) / 3)
    assert D.pick_score(e, torch.tensor([1.0, 0.0]), 100.0) == pytest.approx(100 * (1 + c) / 3)
    # a visual change along the caption change -> 1; opposite -> -1
    assert D.direction_similarity(torch.tensor([1.0, 0]), torch.tensor([0, 1.0]),
                                  torch.tensor([2.0, 0]), torch.tensor([0, 5.0])) == pytest.approx(1.0)
    assert D.direction_similarity(torch.tensor([0, 1.0]), torch.tensor([1.0, 0]),
                                  torch.tensor([2.0, 0]), torch.tensor([0, 5.0])) == pytest.approx(-1.0)
    assert D.viclip_output_similarity(torch.tensor([1.0, 1.0]), torch.tensor([0.0, 3.0])) == pytest.approx(c)
    x = torch.zeros(3, 4, 4, 3)
    x[1] += 0.5
    assert D.temporal_flicker(x) == pytest.approx(0.5)


def test_embeddings_are_computed_once_per_clip_and_caption(models, clips):
    a, b = clips
    cache = EmbeddingCache()
    evaluate_edit(models, a, b, "a green ball", "a red ball", cache=cache)
    # clip: 2 clips + 2 captions; pickscore: 1 clip + 1 caption; viclip: 2 videos + 2 captions
    assert cache.computed == 10
    evaluate_edit(models, a, b, "a green ball", "a red ball", cache=cache)
    assert cache.computed == 10
    evaluate_edit(models, a, b.flip(0), "a blue ball", "a red ball", cache=cache)  # new output + caption
    assert cache.computed == 10 + 2 + 2 + 2


def test_viclip_checkpoint_keys_follow_the_reference(paths):
    """The tiny file holds {'model': state_dict} with the reference's key names and shapes."""
    from fdd.testing.metric_models import VICLIP_FILE

    obj = torch.load(os.path.join(paths["viclip"], VICLIP_FILE), weights_only=True)
    sd = obj["model"]
    for k in ("temp", "vision_encoder.conv1.weight", "vision_encoder.class_embedding",
              "vision_encoder.positional_embedding", "vision_encoder.temporal_positional_embedding",
              "vision_encoder.ln_pre.weight", "vision_encoder.transformer.resblocks.0.attn.in_proj_weight",
              "vision_encoder.transformer.resblocks.0.attn.out_proj.weight",
              "vision_encoder.transformer.resblocks.1.mlp.c_fc.weight",
              "vision_encoder.transformer.resblocks.1.mlp.c_proj.bias", "vision_encoder.transformer.resblocks.0.ln_2.bias",
              "vision_encoder.ln_post.weight", "vision_encoder.proj", "text_encoder.token_embedding.weight",
              "text_encoder.positional_embedding", "text_encoder.transformer.resblocks.0.attn.in_proj_bias",
              "text_encoder.ln_final.weight", "text_encoder.text_projection"):
        assert k in sd, k
    assert sd["vision_encoder.conv1.weight"].shape == (64, 3, 1, 8, 8)  # Conv3d, temporal kernel 1
    assert sd["vision_encoder.temporal_positional_embedding"].shape == (1, 8, 64)
    assert sd["text_encoder.positional_embedding"].shape[0] == 32


def _reference_viclip_video(sd, video, heads):
    """The reference forward written out with torch primitives (seq-first attention, the
    reference's (b t) -> (b n) t -> b (n t) rearranges), independent of fdd.metrics.viclip."""
    p = "vision_encoder."
    x = F.conv3d(video, sd[p + "conv1.weight"], stride=sd[p + "conv1.weight"].shape[2:])
    B, C, T, H, W = x.shape
    x = x.permute(0, 2, 3, 4, 1).reshape(B * T, H * W, C)
    x = torch.cat([sd[p + "class_embedding"] + torch.zeros(x.shape[0], 1, C), x], 1)
    x = x + sd[p + "positional_embedding"]
    cls = x[:B, :1]
    x = x[:, 1:].reshape(B, T, H * W, C).permute(0, 2, 1, 3).reshape(B * H * W, T, C)
    x = x + sd[p + "temporal_positional_embedding"]
    x = x.reshape(B, H * W * T, C)
    x = torch.cat([cls, x], 1)
    x = F.layer_norm(x, (C,), sd[p + "ln_pre.weight"], sd[p + "ln_pre.bias"]).permute(1, 0, 2)
    i = 0
    while f"{p}transformer.resblocks.{i}.ln_1.weight" in sd:
        q = f"{p}transformer.resblocks.{i}."
        h = F.layer_norm(x, (C,), sd[q + "ln_1.weight"], sd[q + "ln_1.bias"])
        a, _ = F.multi_head_attention_forward(h, h, h, C, heads, sd[q + "attn.in_proj_weight"],
                                              sd[q + "attn.in_proj_bias"], None, None, False, 0.0,
                                              sd[q + "attn.out_proj.weight"], sd[q + "attn.out_proj.bias"],
                                              need_weights=False)
        x = x + a
        h = F.layer_norm(x, (C,), sd[q + "ln_2.weight"], sd[q + "ln_2.bias"])
        h = F.linear(h, sd[q + "mlp.c_fc.weight"], sd[q + "mlp.c_fc.bias"])
        h = h * torch.sigmoid(1.702 * h)
        x = x + F.linear(h, sd[q + "mlp.c_proj.weight"], sd[q + "mlp.c_proj.bias"])
        i += 1
    x = F.layer_norm(x, (C,), sd[p + "ln_post.weight"], sd[p + "ln_post.bias"])
    return x[0] @ sd[p + "proj"]


def test_viclip_forward_matches_the_reference_formulation(models, clips):
    from fdd.metrics.viclip import preprocess_video, sample_frame_indices

    a, _ = clips
    sd = {k: v.float() for k, v in models.viclip.model.state_dict().items()}
    x = preprocess_video(a, 8, 32)
    assert x.shape == (1, 3, 8, 32, 32)
    ref = _reference_viclip_video(sd, x, heads=1)[0]
    assert torch.allclose(models.viclip.embed_video(a), ref, atol=1e-4)
    # preprocessing: stride len // 8 from frame 0; ImageNet statistics
    assert sample_frame_indices(10) == [0, 1, 2, 3, 4, 5, 6, 7]
    assert sample_frame_indices(32) == [0, 4, 8, 12, 16, 20, 24, 28]
    assert sample_frame_indices(4) == [0, 0, 1, 1, 2, 2, 3, 3]
    grey = torch.full((8, 32, 32, 3), 0.485)
    assert preprocess_video(grey, 8, 32)[0, 0].abs().max() < 1e-5
    # frame order matters to ViCLIP (temporal embedding + joint attention), unlike CLIPFrame
    assert not torch.allclose(models.viclip.embed_video(a), models.viclip.embed_video(a.flip(0)), atol=1e-4)


def test_missing_or_malformed_model_folders_give_clear_errors(paths, tmp_path):
    from fdd.metrics.clip_models import load_clip, load_pickscore
    from fdd.metrics.viclip import load_viclip

    missing = tmp_path / "nope"
    with pytest.raises(ModelLoadError, match=r"nope'.*no such folder.*config\.json.*preprocessor_config\.json"):
        load_clip(missing)
    with pytest.raises(ModelLoadError, match=r"nope'.*no such folder.*ViClip-InternVid-10M-FLT\.pth"):
        load_viclip(missing)
    # a CLIP folder without its processor files
    bad = tmp_path / "clip-no-proc"
    shutil.copytree(paths["clip"], bad)
    os.remove(bad / "preprocessor_config.json")
    with pytest.raises(ModelLoadError, match=r"clip-no-proc'.*missing preprocessor_config\.json"):
        load_pickscore(bad)
    # a malformed config.json
    broken = tmp_path / "clip-broken"
    shutil.copytree(paths["clip"], broken)
    (broken / "config.json").write_text("{not json")
    with pytest.raises(ModelLoadError, match=r"clip-broken'.*could not load a CLIPModel.*Expected"):
        load_clip(broken)
    # ViCLIP: no weights file; weights of another model; a truncated pickle; no tokenizer
    vdir = tmp_path / "viclip-empty"
    vdir.mkdir()
    with pytest.raises(ModelLoadError, match=r"viclip-empty'.*no ViCLIP weights file"):
        load_viclip(vdir)
    other = tmp_path / "viclip-other"
    other.mkdir()
    torch.save({"model": {"conv.weight": torch.zeros(2, 2)}}, other / "ViClip-InternVid-10M-FLT.pth")
    with pytest.raises(ModelLoadError, match=r"not a ViCLIP state dict"):
        load_viclip(other)
    trunc = tmp_path / "viclip-trunc"
    shutil.copytree(paths["viclip"], trunc)
    f = trunc / "ViClip-InternVid-10M-FLT.pth"
    f.write_bytes(f.read_bytes()[:5000])
    with pytest.raises(ModelLoadError, match=r"corrupt or truncated"):
        load_viclip(trunc)
    notok = tmp_path / "viclip-notok"
    shutil.copytree(paths["viclip"], notok)
    os.remove(notok / "vocab.json")
    with pytest.raises(ModelLoadError, match=r"viclip-notok'.*no tokenizer files.*vocab\.json \+ merges\.txt"):
        load_viclip(notok)
    # shape mismatch inside a ViCLIP-looking file
    sd = torch.load(os.path.join(paths["viclip"], "ViClip-InternVid-10M-FLT.pth"), weights_only=True)["model"]
    sd["vision_encoder.ln_post.weight"] = torch.zeros(3)
    wrong = tmp_path / "viclip-wrong"
    shutil.copytree(paths["viclip"], wrong)
    torch.save({"model": sd}, wrong / "ViClip-InternVid-10M-FLT.pth")
    with pytest.raises(ModelLoadError, match=r"wrong shape.*ln_post"):
        load_viclip(wrong)


def test_bad_inputs_name_the_input(models, clips):
    a, b = clips
    with pytest.raises(ValueError, match="output_frames"):
        evaluate_edit(models, a, b[..., 0], "x")
    with pytest.raises(ValueError, match="output_caption"):
        evaluate_edit(models, a, b, "  ")
