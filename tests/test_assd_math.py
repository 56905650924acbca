"""ASSD equations (paper Eq. 5-10) checked against hand-written formulas on known tensors."""

from __future__ import annotations

import pytest
import torch

from fdd.assd.gradients import (adaptive_mask, assd_gradient, dds_update_scale, image_dds_gradient,
                                joint_gradient, keyframe_indices, sgd_step, sliding_window_smooth,
                                video_dds_gradient)


def _video(frames=5, c=2, h=2, w=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(1, c, frames, h, w, generator=g, dtype=torch.float64)


def test_smoothing_equals_hand_weighted_sum_interior_and_boundaries():
    """Eq. 6 with gamma_i = 0.67, neighbours 0.165 each, per frame; the three boundary rules at
    frame 0 and frame F-1 written out by hand."""
    x = _video(frames=5)
    f = [x[:, :, i] for i in range(5)]
    c, s = 0.67, 0.165
    interior = {i: s * f[i - 1] + c * f[i] + s * f[i + 1] for i in (1, 2, 3)}
    ends = {
        "renormalize": ((c * f[0] + s * f[1]) / (c + s), (s * f[3] + c * f[4]) / (c + s)),
        "replicate": ((c + s) * f[0] + s * f[1], s * f[3] + (c + s) * f[4]),
        "reflect": (c * f[0] + 2 * s * f[1], 2 * s * f[3] + c * f[4]),
    }
    for mode, (first, last) in ends.items():
        got = sliding_window_smooth(x, 0.67, frame_dim=2, boundary=mode)
        assert got.shape == x.shape
        for i, want in interior.items():
            torch.testing.assert_close(got[:, :, i], want, rtol=0, atol=1e-12)
        torch.testing.assert_close(got[:, :, 0], first, rtol=0, atol=1e-12)
        torch.testing.assert_close(got[:, :, 4], last, rtol=0, atol=1e-12)
    # the weights sum to one: a video constant over time is left unchanged, boundaries included
    const = x[:, :, :1].expand_as(x).clone()
    for mode in ends:
        torch.testing.assert_close(sliding_window_smooth(const, 0.67, boundary=mode), const, rtol=0, atol=1e-12)


def test_smoothing_known_numbers_and_edge_cases():
    # frames 0, 10, 20, 30 as scalars: interior 0.165*0 + 0.67*10 + 0.165*20 = 10 (linear ramps keep)
    x = torch.tensor([0.0, 10.0, 20.0, 30.0], dtype=torch.float64).view(1, 1, 4, 1, 1)
    got = sliding_window_smooth(x, 0.67, boundary="renormalize").flatten().tolist()
    assert got[1] == pytest.approx(10.0) and got[2] == pytest.approx(20.0)
    assert got[0] == pytest.approx(0.165 * 10 / 0.835)
    assert got[3] == pytest.approx((0.165 * 20 + 0.67 * 30) / 0.835)
    # one frame: unchanged; two frames: each frame mixes with the other only
    one = _video(frames=1)
    torch.testing.assert_close(sliding_window_smooth(one), one, rtol=0, atol=0)
    two = _video(frames=2)
    a, b = two[:, :, 0], two[:, :, 1]
    got = sliding_window_smooth(two, 0.67, boundary="replicate")
    torch.testing.assert_close(got[:, :, 0], 0.835 * a + 0.165 * b, rtol=0, atol=1e-12)
    # gamma_i = 1 is the identity; any frame axis works
    torch.testing.assert_close(sliding_window_smooth(two, 1.0), two, rtol=0, atol=0)
    y = x.movedim(2, 0)
    torch.testing.assert_close(sliding_window_smooth(y, 0.67, frame_dim=0),
                               sliding_window_smooth(x, 0.67).movedim(2, 0), rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="boundary"):
        sliding_window_smooth(x, 0.67, boundary="wrap")
    with pytest.raises(ValueError, match="center_weight"):
        sliding_window_smooth(x, 1.5)


def test_mask_matches_eq7_on_constructed_example():
    """m = 1 where |eps - eps^| < max over frames - tau, else 0; per latent element."""
    ref = torch.zeros(1, 2, 3, 1, 2)
    edit = torch.zeros_like(ref)
    # channel 0, pixel (0,0): |diff| over frames = 1.0, 0.5, 0.95 -> peak 1.0
    edit[0, 0, :, 0, 0] = torch.tensor([1.0, -0.5, 0.95])
    # channel 0, pixel (0,1): all frames equal 0.3 -> nothing is below the peak
    edit[0, 0, :, 0, 1] = 0.3
    # channel 1, pixel (0,0): 2.0, 0.0, 1.0
    edit[0, 1, :, 0, 0] = torch.tensor([2.0, 0.0, -1.0])
    m = adaptive_mask(edit, ref, tau=0.1)
    assert m.shape == ref.shape
    assert m[0, 0, :, 0, 0].tolist() == [0.0, 1.0, 0.0]   # 0.95 is not < 1.0 - 0.1
    assert m[0, 0, :, 0, 1].tolist() == [0.0, 0.0, 0.0]
    assert m[0, 1, :, 0, 0].tolist() == [0.0, 1.0, 1.0]
    assert m[0, 1, :, 0, 1].tolist() == [0.0, 0.0, 0.0]   # all zero: 0 < 0 - tau is false
    # larger tau: fewer positions smoothed (1.0 < 2.0 - 1.5 is false)
    assert adaptive_mask(edit, ref, tau=1.5)[0, 1, :, 0, 0].tolist() == [0.0, 1.0, 0.0]
    # tau = 0: everything below the peak
    assert adaptive_mask(edit, ref, tau=0.0)[0, 0, :, 0, 0].tolist() == [0.0, 1.0, 1.0]
    # same as an independent loop over positions
    g = torch.Generator().manual_seed(3)
    e, r = torch.randn(1, 3, 4, 2, 2, generator=g), torch.randn(1, 3, 4, 2, 2, generator=g)
    m = adaptive_mask(e, r, tau=0.3)
    for c in range(3):
        for y in range(2):
            for x in range(2):
                d = [abs(float(e[0, c, f, y, x] - r[0, c, f, y, x])) for f in range(4)]
                assert m[0, c, :, y, x].tolist() == [1.0 if v < max(d) - 0.3 else 0.0 for v in d]
    # channel-averaged variant: one mask per pixel, shared by channels
    mm = adaptive_mask(e, r, tau=0.3, channels="mean")
    assert mm.shape == (1, 1, 4, 2, 2)
    d = (e - r).abs().mean(1, keepdim=True)
    torch.testing.assert_close(mm, (d < d.amax(2, keepdim=True) - 0.3).float())
    torch.testing.assert_close(adaptive_mask(e, r, tau=0.3, invert=True), 1 - m)


def test_assd_gradient_combines_eq8_and_reduces_to_dds():
    g = torch.Generator().manual_seed(1)
    e, r = torch.randn(1, 2, 4, 3, 3, generator=g), torch.randn(1, 2, 4, 3, 3, generator=g)
    s = sliding_window_smooth(r)
    m = adaptive_mask(e, r, tau=0.2)
    got = assd_gradient(e, r, s, m)
    want = torch.where(m.bool(), e - s, e - r)
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(assd_gradient(e, r, s, torch.zeros_like(m)), video_dds_gradient(e, r))
    torch.testing.assert_close(assd_gradient(e, r, s, torch.ones(())), e - s)
    torch.testing.assert_close(video_dds_gradient(e, r), e - r)


def test_joint_guidance_changes_only_the_keyframes_gradient():
    g = torch.Generator().manual_seed(2)
    video = torch.randn(1, 4, 9, 2, 2, generator=g)
    kf = keyframe_indices(9, 4)
    assert kf == [0, 4, 8]
    e_img, r_img = torch.randn(3, 4, 2, 2, generator=g), torch.randn(3, 4, 2, 2, generator=g)
    img = image_dds_gradient(e_img, r_img).permute(1, 0, 2, 3).unsqueeze(0)  # (1, C, K, h, w)
    total = joint_gradient(video, img, kf, frame_dim=2)
    for f in range(9):
        if f in kf:
            k = kf.index(f)
            torch.testing.assert_close(total[:, :, f], video[:, :, f] + (e_img[k] - r_img[k]).unsqueeze(0))
        else:
            assert torch.equal(total[:, :, f], video[:, :, f])
    half = joint_gradient(video, img, kf, image_weight=0.5)
    torch.testing.assert_close(half[:, :, 4], video[:, :, 4] + 0.5 * img[:, :, 1])
    assert keyframe_indices(16, 4, offset=2) == [2, 6, 10, 14]
    assert keyframe_indices(3, 8) == [0]
    with pytest.raises(ValueError, match="keyframes"):
        joint_gradient(video, img[:, :, :2], kf)
    with pytest.raises(ValueError, match="keyframe_stride"):
        keyframe_indices(8, 0)


def test_dds_scaling_and_sgd_step_work_under_inference_mode():
    assert dds_update_scale(2000.0, 64, 64) == pytest.approx(2000 / 4096)
    assert dds_update_scale(2000.0, 64, 64, normalize_by_area=False) == 2000.0
    with torch.inference_mode():
        z = torch.ones(1, 1, 2, 2, 2)
        grad = torch.full_like(z, 2.0)
        sgd_step(z, grad, lr=0.1, scale=0.5)
    torch.testing.assert_close(z, torch.full_like(z, 0.9))
