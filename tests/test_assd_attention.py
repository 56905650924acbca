"""Weighted attention fusion (ASSD Eq. 11-13) against diffusers' own attention processor."""

from __future__ import annotations

import pytest
import torch
from diffusers.models.attention_processor import AttnProcessor2_0

from fdd.assd.attention import (AttentionFusion, FusionAttnProcessor, reference_attention, self_attention,
                                spatial_self_attention_layers, weighted_attention_fusion)
from fdd.testing import tiny

FRAMES = 3


@pytest.fixture(scope="module")
def unet3d():
    return tiny.tiny_unet3d(seed=1)


def _layout(attn, frames=FRAMES, tokens=16, seed=0):
    """Hidden states of 4 videos [ref_uncond, ref_cond, edit_uncond, edit_cond], (4 * F, N, C)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(4 * frames, tokens, attn.to_q.in_features, generator=g)


def _rows(e, frames=FRAMES):
    return slice(e * frames, (e + 1) * frames)


def test_eq11_13_functions():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 4, 5, 8, generator=g) for _ in range(3))
    kr, vr = torch.randn(2, 4, 7, 8, generator=g), torch.randn(2, 4, 7, 8, generator=g)
    soft = lambda a, b: torch.softmax(a @ b.transpose(-1, -2) / 8 ** 0.5, dim=-1)  # noqa: E731
    torch.testing.assert_close(self_attention(q, k, v), soft(q, k) @ v)
    torch.testing.assert_close(reference_attention(q, kr, vr), soft(q, kr) @ vr)
    a, b = torch.randn(3, 4, generator=g), torch.randn(3, 4, generator=g)
    torch.testing.assert_close(weighted_attention_fusion(a, b, 0.8), 0.2 * a + 0.8 * b)


def test_fusion_lambda0_is_self_attention_and_lambda1_is_reference_attention(unet3d):
    name, attn = spatial_self_attention_layers(unet3d)[-1]
    h = _layout(attn)
    base = AttnProcessor2_0()
    plain = base(attn, h)
    proc = FusionAttnProcessor(base, name)
    proc.mode, proc.frames, proc.pairs = "batched", FRAMES, [(2, 0), (3, 1)]
    with torch.no_grad():
        proc.lam = 0.0
        torch.testing.assert_close(proc(attn, h), plain, rtol=1e-5, atol=1e-6)
        proc.lam = 1.0
        out1 = proc(attn, h)
        proc.lam = 0.3
        out3 = proc(attn, h)
    for e, r in ((2, 0), (3, 1)):
        # RefAttn (Eq. 12): queries of the editing frames, keys / values of the reference frames
        # of the same layer, frame by frame: diffusers' processor with those as encoder states
        ref_attn = base(attn, h[_rows(e)], encoder_hidden_states=h[_rows(r)])
        torch.testing.assert_close(out1[_rows(e)], ref_attn, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(out3[_rows(e)], 0.7 * plain[_rows(e)] + 0.3 * ref_attn, rtol=1e-5, atol=1e-6)
        # the reference branch itself is untouched
        torch.testing.assert_close(out1[_rows(r)], plain[_rows(r)], rtol=1e-5, atol=1e-6)
    # frame i of the editing branch attends to frame i of the reference branch only
    # (rows: element e, frame i is row e * F + i; edit_cond frame 1 = row 10, ref_cond frame 1 = row 4)
    frame1 = base(attn, h[10:11], encoder_hidden_states=h[4:5])
    torch.testing.assert_close(out1[10:11], frame1, rtol=1e-5, atol=1e-6)
    proc.mode = "off"
    torch.testing.assert_close(proc(attn, h), plain)


def test_only_last_spatial_self_attention_layers_fuse_in_execution_order(unet3d):
    names = [n for n, _ in spatial_self_attention_layers(unet3d)]
    assert names == ["down_blocks.0.attentions.0.transformer_blocks.0.attn1",
                     "mid_block.attentions.0.transformer_blocks.0.attn1",
                     "up_blocks.1.attentions.0.transformer_blocks.0.attn1",
                     "up_blocks.1.attentions.1.transformer_blocks.0.attn1"]
    originals = {n: m.processor for n, m in unet3d.named_modules() if hasattr(m, "processor")}
    with AttentionFusion(unet3d, 2, lam=0.8) as fusion:
        assert fusion.layer_names == names[-2:]
        changed = {n for n, m in unet3d.named_modules() if hasattr(m, "processor") and m.processor is not originals[n]}
        assert changed == set(names[-2:])  # temporal attention (temp_attentions, transformer_in) untouched
    assert all(m.processor is originals[n] for n, m in unet3d.named_modules() if hasattr(m, "processor"))


def test_motion_unet_layers_exclude_motion_modules():
    from fdd.models.motion import build_motion_unet

    unet2d = tiny.tiny_unet()
    motion = build_motion_unet(unet2d, tiny.tiny_motion_adapter())
    names = [n for n, _ in spatial_self_attention_layers(motion)]
    assert names and not any("motion_modules" in n for n in names)
    assert len(names) == len(spatial_self_attention_layers(unet2d))


def test_unet_level_fusion(unet3d):
    """Whole UNet3D: lambda 0 changes nothing; lambda 1 changes only the editing elements; the
    batched layout equals separate calls with recorded reference hidden states."""
    g = torch.Generator().manual_seed(5)
    ref = torch.randn(1, 4, FRAMES, 8, 8, generator=g)
    edit = torch.randn(1, 4, FRAMES, 8, 8, generator=g)
    emb = torch.randn(2, 77, tiny.CROSS_DIM, generator=g)
    x = torch.cat([ref, edit])
    with torch.no_grad():
        plain = unet3d(x, 400, encoder_hidden_states=emb).sample
        with AttentionFusion(unet3d, 2, lam=0.0) as f:
            f.batched(FRAMES, [(1, 0)])
            torch.testing.assert_close(unet3d(x, 400, encoder_hidden_states=emb).sample, plain,
                                       rtol=1e-4, atol=1e-5)
        with AttentionFusion(unet3d, 2, lam=1.0) as f:
            f.batched(FRAMES, [(1, 0)])
            fused = unet3d(x, 400, encoder_hidden_states=emb).sample
            f.record()
            ref_alone = unet3d(ref, 400, encoder_hidden_states=emb[:1]).sample
            f.inject()
            edit_alone = unet3d(edit, 400, encoder_hidden_states=emb[1:]).sample
            f.off()
    torch.testing.assert_close(fused[:1], plain[:1], rtol=1e-4, atol=1e-5)
    assert (fused[1:] - plain[1:]).abs().max() > 1e-3
    torch.testing.assert_close(ref_alone, plain[:1], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(edit_alone, fused[1:], rtol=1e-4, atol=1e-5)


def test_fusion_argument_errors(unet3d):
    with pytest.raises(ValueError, match="fusion_lambda"):
        AttentionFusion(unet3d, 2, lam=1.5)
    with pytest.raises(ValueError, match="fusion_layers"):
        AttentionFusion(unet3d, 0)
    name, attn = spatial_self_attention_layers(unet3d)[-1]
    proc = FusionAttnProcessor(AttnProcessor2_0(), name)
    proc.mode = "inject"
    with pytest.raises(RuntimeError, match="record"):
        proc(attn, _layout(attn))
