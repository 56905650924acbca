"""EI² building blocks against independent formulas: Instance Centering (Eq. 6), FFAM's context
(Eq. 10) and attention, the sparse-causal / full baselines, and inflation at initialisation."""

from __future__ import annotations

import math

import pytest
import torch

from fdd.ei2 import InflationConfig, inflate_unet
from fdd.ei2.ffam import (
    EI2SelfAttnProcessor,
    FrameState,
    attention_matrix_elements,
    expected_ffam_keys,
    ffam_context,
)
from fdd.ei2.stam import TemporalModule, instance_centering, instance_norm_frames
from fdd.testing.tiny import tiny_unet


@pytest.fixture(scope="module")
def unet2d():
    return tiny_unet(0)


# --------------------------------------------------------------------------------------------
# Instance Centering (Eq. 6)


def test_instance_centering_zero_temporal_mean_and_same_temporal_variance():
    g = torch.Generator().manual_seed(0)
    n, d = 8, 16
    # per-channel offsets (the temporal mean LayerNorm leaves in place) and varied scales
    z = torch.randn(5, n, d, generator=g) * torch.linspace(0.05, 2.0, d) + torch.randn(5, 1, d, generator=g) * 3
    out = instance_centering(z, "frames")
    zz, oo = z.double().numpy(), out.double().numpy()
    # zero mean over the centred (frames) axis, every sample and channel
    assert abs(oo.mean(axis=1)).max() < 1e-5
    # Eq. 6 preserves the temporal variance: sum_i (x_i - mean)^2 / (n - 1) per sample and channel
    var_in = ((zz - zz.mean(axis=1, keepdims=True)) ** 2).sum(axis=1) / (n - 1)
    var_out = ((oo - oo.mean(axis=1, keepdims=True)) ** 2).sum(axis=1) / (n - 1)
    assert abs(var_in - var_out).max() < 1e-4 * max(1.0, var_in.max())
    # no rescaling: IC(z) is z minus a per-(sample, channel) constant
    assert torch.allclose(out - z, (out - z)[:, :1].expand_as(z), atol=1e-5)
    # the other axes: per-token over channels, and over frames and channels together
    ch = instance_centering(z, "channels").double().numpy()
    assert abs(ch.mean(axis=2)).max() < 1e-5
    both = instance_centering(z, "frames_channels").double().numpy()
    assert abs(both.mean(axis=(1, 2))).max() < 1e-5
    with pytest.raises(ValueError, match="centering_axis"):
        instance_centering(z, "space")


def test_instance_norm_variant_standardises_over_frames():
    z = torch.randn(3, 6, 4) * 5 + 2
    out = instance_norm_frames(z, eps=0.0).double().numpy()
    assert abs(out.mean(axis=1)).max() < 1e-5
    assert abs(((out - out.mean(axis=1, keepdims=True)) ** 2).mean(axis=1) - 1).max() < 1e-4


def test_temporal_module_uses_the_configured_norm_and_is_identity_at_init():
    state = FrameState(num_frames=4)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2 * 4, 9, 32)
    for cfg in (InflationConfig(), InflationConfig.tune_a_video(),
                InflationConfig(temporal_norm="instance_norm", spectral_norm=False),
                InflationConfig(centering_axis="channels")):
        m = TemporalModule(32, 8, cfg, state, gen)
        assert torch.equal(m(x), x), cfg  # zero gate / zero output: exactly the identity
    m = TemporalModule(32, 8, InflationConfig(), state, gen)
    with torch.no_grad():
        m.gate.fill_(0.5)
    y = m(x)
    assert not torch.allclose(y, x)
    # the residual branch sees IC(z): adding a per-(location, channel) constant over time to the
    # input shifts the output by exactly that constant (mean shift cannot leak through STAM)
    shift = torch.randn(2, 1, 9, 32).expand(2, 4, 9, 32).reshape(8, 9, 32)
    assert torch.allclose(m(x + shift), y + shift, atol=1e-5)


# --------------------------------------------------------------------------------------------
# FFAM (Eq. 10)


def _pool_ref(grid: torch.Tensor, r: int) -> torch.Tensor:
    """r x r block means of (d, h, w) with r dividing h and w, flattened to (h/r * w/r, d)."""
    d, h, w = grid.shape
    return grid.reshape(d, h // r, r, w // r, r).mean(dim=(2, 4)).reshape(d, -1).t()


@pytest.mark.parametrize("n,h,w,r", [(4, 8, 8, 2), (3, 8, 4, 4), (8, 16, 16, 2), (2, 4, 4, 1), (5, 8, 8, 8)])
def test_ffam_context_has_l_plus_coarse_keys_of_every_other_frame(n, h, w, r):
    l, d, B = h * w, 6, 2
    tokens = torch.randn(B * n, l, d)
    ctx = ffam_context(tokens, n, (h, w), r)
    assert ctx.shape == (B * n, l + (n - 1) * l // (r * r), d)
    assert ctx.shape[1] == expected_ffam_keys(l, n, r)
    t = tokens.view(B, n, l, d)
    for b in range(B):
        for i in range(n):
            want = [t[b, i]] + [_pool_ref(t[b, j].t().reshape(d, h, w), r) for j in range(n) if j != i]
            assert torch.allclose(ctx[b * n + i], torch.cat(want), atol=1e-6)


def _attn_layer(dim=32, heads=4, seed=0):
    from diffusers.models.attention_processor import Attention

    torch.manual_seed(seed)
    return Attention(query_dim=dim, heads=heads, dim_head=dim // heads, bias=False).eval()


def _reference_attention(attn, q_tokens, kv_tokens):
    """Independent multi-head attention: explicit softmax(QK^T / sqrt(dh)) V, per head."""
    H = attn.heads
    q = attn.to_q(q_tokens)
    k = attn.to_k(kv_tokens)
    v = attn.to_v(kv_tokens)
    dh = q.shape[-1] // H
    outs = []
    for hh in range(H):
        sl = slice(hh * dh, (hh + 1) * dh)
        w = torch.softmax(q[:, sl] @ k[:, sl].t() / math.sqrt(dh), dim=-1)
        outs.append(w @ v[:, sl])
    return attn.to_out[0](torch.cat(outs, dim=-1))


def _run_processor(attn, x, mode, n, hw, r=2):
    state = FrameState(num_frames=n, latent_hw=hw)
    attn.set_processor(EI2SelfAttnProcessor(mode, state, r))
    with torch.no_grad():
        return attn(x)


@pytest.mark.parametrize("r", [2, 4])
def test_ffam_matches_per_frame_reference_built_from_pooled_features(r):
    """Eq. 10 as written (downsample the features z of the other frames, then project keys and
    values from z_FC) equals the processor (which pools K and V instead)."""
    attn = _attn_layer()
    n, h, w, d = 3, 8, 8, 32
    x = torch.randn(n, h * w, d)
    got = _run_processor(attn, x, "ffam", n, (h, w), r)
    with torch.no_grad():
        for i in range(n):
            zfc = torch.cat([x[i]] + [_pool_ref(x[j].t().reshape(d, h, w), r) for j in range(n) if j != i])
            assert zfc.shape[0] == h * w + (n - 1) * h * w // r ** 2
            want = _reference_attention(attn, x[i], zfc)
            assert torch.allclose(got[i], want, atol=1e-5), i


def test_ffam_with_one_frame_is_per_frame_self_attention():
    from diffusers.models.attention_processor import AttnProcessor2_0

    attn = _attn_layer()
    x = torch.randn(2, 64, 32)  # two videos of one frame each
    got = _run_processor(attn, x, "ffam", 1, (8, 8), 2)
    attn.set_processor(AttnProcessor2_0())
    with torch.no_grad():
        want = attn(x)
    assert torch.allclose(got, want, atol=1e-6)
    for i in range(2):
        with torch.no_grad():
            assert torch.allclose(got[i], _reference_attention(attn, x[i], x[i]), atol=1e-5)


def test_sparse_causal_and_full_attention_match_references():
    attn = _attn_layer()
    n, l, d = 4, 16, 32
    x = torch.randn(n, l, d)
    sc = _run_processor(attn, x, "sparse_causal", n, (4, 4))
    full = _run_processor(attn, x, "full", n, (4, 4))
    with torch.no_grad():
        for i in range(n):
            ctx = torch.cat([x[0], x[max(i - 1, 0)]])  # Tune-A-Video: first + previous (frame 0: itself twice)
            assert torch.allclose(sc[i], _reference_attention(attn, x[i], ctx), atol=1e-5)
            assert torch.allclose(full[i], _reference_attention(attn, x[i], x.reshape(n * l, d)), atol=1e-5)


def test_inflated_unet_attends_over_the_expected_keys_at_every_layer(unet2d):
    model = inflate_unet(unet2d, InflationConfig(ffam_ratio=2))
    model.state.record_keys = True
    n = 4
    with torch.no_grad():
        model(torch.randn(1, 4, n, 16, 16), 500, torch.randn(1, 77, 64))
    seen = model.state.keys_seen
    n_blocks = sum(1 for k in model.unet.attn_processors if k.endswith("attn1.processor"))
    assert len(seen) == n_blocks and {l for l, _ in seen} == {256, 64}  # 16x16 and the 8x8 mid block
    for l, keys in seen:
        assert keys == l + (n - 1) * l // 4


def test_attention_matrix_sizes():
    n, l = 8, 4096
    full = attention_matrix_elements("full", l, n)
    assert attention_matrix_elements("ffam", l, n, 2) / full == pytest.approx((n - 1 + 4) / (4 * n))
    assert attention_matrix_elements("sparse_causal", l, n) / full == pytest.approx(2 / n)


# --------------------------------------------------------------------------------------------
# inflation


@pytest.mark.parametrize("cfg", [
    InflationConfig(ffam_ratio=1),
    InflationConfig.tune_a_video(),
    InflationConfig(attention="full", temporal_norm="layer_norm_no_affine", spectral_norm=False),
    InflationConfig(ffam_ratio=1, temporal_position="after_cross_attention", temporal_norm="instance_norm"),
], ids=["ei2_r1", "tune_a_video", "full_ln_star", "after_ca_in"])
def test_inflated_unet_at_init_gives_the_2d_unet_on_every_frame(unet2d, cfg):
    n = 4
    x1 = torch.randn(2, 4, 16, 16)
    emb = torch.randn(2, 77, 64)
    model = inflate_unet(unet2d, cfg)
    with torch.no_grad():
        want = unet2d(x1, 321, encoder_hidden_states=emb).sample
        got = model(x1.unsqueeze(2).expand(2, 4, n, 16, 16).contiguous(), 321, emb)
    assert got.shape == (2, 4, n, 16, 16)
    for i in range(n):
        assert torch.allclose(got[:, :, i], want, atol=1e-4), (cfg, i)


def test_inflation_leaves_the_source_untouched_and_works_from_inference_tensors(unet2d):
    before = {k: v.clone() for k, v in unet2d.state_dict().items()}
    with torch.inference_mode():
        src = tiny_unet(0)  # a backbone loaded under ComfyUI's inference mode
        model = inflate_unet(src, InflationConfig())
    assert not any(p.is_inference() for p in model.parameters())
    from fdd.ei2 import set_trainable

    set_trainable(model)
    out = model(torch.randn(1, 4, 2, 16, 16), 10, torch.randn(1, 77, 64))
    out.square().mean().backward()  # autograd works on the copy
    inflate_unet(unet2d, InflationConfig())
    for k, v in unet2d.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert not any("temporal" in n for n, _ in unet2d.named_modules())


def test_inflation_config_switches_and_validation():
    c = InflationConfig(attention="sparse_causal", ffam_ratio=4, temporal_norm="layer_norm", spectral_norm=False,
                        identity_init="zero_output", seed=3)
    assert InflationConfig.from_json(c.to_json()) == c
    with pytest.raises(ValueError, match="identity_init.*NaN"):
        InflationConfig(identity_init="zero_output").validate()
    with pytest.raises(ValueError, match="attention"):
        InflationConfig(attention="causal").validate()
    with pytest.raises(ValueError, match="ffam_ratio"):
        InflationConfig(ffam_ratio=0).validate()
    with pytest.raises(ValueError, match="unknown fields"):
        InflationConfig.from_dict({"attention": "ffam", "bogus": 1})


def test_downsample_on_sides_r_does_not_divide():
    tokens = torch.randn(3 * 2, 6 * 5, 4)
    ctx = ffam_context(tokens, 3, (6, 5), 4)
    assert ctx.shape[1] == 30 + 2 * (2 * 2)  # ceil(6/4) x ceil(5/4) coarse tokens per other frame
    near = ffam_context(tokens, 3, (6, 5), 2, mode="nearest")
    grid = tokens[1].t().reshape(4, 6, 5)
    assert torch.allclose(near[0, 30:30 + 9], grid[:, ::2, ::2].reshape(4, -1).t())
