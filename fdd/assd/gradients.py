"""The update gradients of ASSD (paper: "Adaptive Sliding Score Distillation for Zero-Shot
Video Editing", Method section, Eq. 4-10), one named function per equation.

Tensors are noise predictions of one video, laid out ``(B, C, F, h, w)`` (``frame_dim`` = 2)
unless said otherwise. All predictions are the classifier-free-guided ones, eps^w (the paper
drops the superscript from Eq. 6 on). Nothing here calls a model: the functions take the
predictions, so each can be checked against a hand-written formula.

Naming follows the paper: the *reference* branch predicts on the noised source latent Z^_t with
the source prompt y (eps^ = eps_theta^w(Z^_t, t, y)), the *editing* branch on the noised edited
latent Z_t(phi) with the target prompt y* (eps = eps_theta^w(Z_t, t, y*)).
"""

from __future__ import annotations

from typing import Sequence

import torch

#: boundary rules of :func:`sliding_window_smooth` at the first and last frame
SMOOTH_BOUNDARIES = ("renormalize", "replicate", "reflect")
#: how :func:`adaptive_mask` treats the latent channels
MASK_CHANNEL_MODES = ("elementwise", "mean")


def video_dds_gradient(eps_edit: torch.Tensor, eps_ref: torch.Tensor) -> torch.Tensor:
    """Video DDS gradient, paper Eq. 5 (the gradient of the Video-DDS loss, Eq. 4):

        grad_phi L_Video-DDS = (eps_theta^w(Z_t, y*, t) - eps_theta^w(Z^_t, y, t)) dZ/dphi

    With phi = Z_0 itself (the latent is optimised directly) dZ/dphi is the identity, so the
    gradient is the difference of the two guided predictions. As in DDS and SDS the UNet
    Jacobian is omitted (score distillation): no gradient flows through the UNet.
    """
    return eps_edit - eps_ref


def sliding_window_smooth(eps: torch.Tensor, center_weight: float = 0.67, frame_dim: int = 2,
                          boundary: str = "renormalize") -> torch.Tensor:
    """Sliding time-window smoothing of the reference prediction, paper Eq. 6:

        Smooth(eps^_t^i) = g_{i-1} eps^_t^{i-1} + g_i eps^_t^i + g_{i+1} eps^_t^{i+1},
        g_{i-1} + g_i + g_{i+1} = 1,

    with g_i = ``center_weight`` (paper: 0.67) and the two neighbours equal,
    g_{i-1} = g_{i+1} = (1 - g_i) / 2 (0.165 by default).

    The paper does not say what happens at the first and last frame, where one neighbour is
    missing. ``boundary`` picks (every rule keeps the weights summing to 1, as Eq. 6 requires):

    - ``"renormalize"`` (default): drop the missing neighbour and rescale the two remaining
      weights to sum to 1, keeping their ratio: frame 0 gets
      ``(g_i eps^0 + g_n eps^1) / (g_i + g_n)`` (0.802 / 0.198 for g_i = 0.67);
    - ``"replicate"``: the missing neighbour is the frame itself (edge padding): frame 0 gets
      ``(g_i + g_n) eps^0 + g_n eps^1`` (0.835 / 0.165);
    - ``"reflect"``: the missing neighbour is the other neighbour (mirror padding): frame 0 gets
      ``g_i eps^0 + 2 g_n eps^1`` (0.67 / 0.33).

    A one-frame video is returned unchanged. ``center_weight`` = 1 is the identity.
    """
    if not 0.0 <= center_weight <= 1.0:
        raise ValueError(f"center_weight: expected 0 <= g_i <= 1, got {center_weight}")
    if boundary not in SMOOTH_BOUNDARIES:
        raise ValueError(f"boundary: expected one of {SMOOTH_BOUNDARIES}, got {boundary!r}")
    x = eps.movedim(frame_dim, 0)
    n = x.shape[0]
    if n == 1:
        return eps.clone()
    c = float(center_weight)
    s = (1.0 - c) / 2.0
    out = c * x
    out[1:] += s * x[:-1]
    out[:-1] += s * x[1:]
    # the first and last frame: out holds c*x0 + s*x1 (and c*x_{n-1} + s*x_{n-2})
    if boundary == "renormalize":
        if c + s > 0:
            out[0] = out[0] / (c + s)
            out[-1] = out[-1] / (c + s)
    elif boundary == "replicate":
        out[0] += s * x[0]
        out[-1] += s * x[-1]
    else:  # reflect
        out[0] += s * x[1]
        out[-1] += s * x[-2]
    return out.movedim(0, frame_dim)


def adaptive_mask(eps_edit: torch.Tensor, eps_ref: torch.Tensor, tau: float, frame_dim: int = 2,
                  channels: str = "elementwise", channel_dim: int = 1, invert: bool = False) -> torch.Tensor:
    """Adaptive mask, paper Eq. 7:

        m = 1  where abs(eps_t - eps^_t) < max(abs(eps_t - eps^_t)) - tau,   else 0,

    max taken along the temporal dimension (per latent position), eps_t the editing branch's
    prediction for all frames, eps^_t the reference branch's (unsmoothed). Where m = 1 the
    combined gradient (Eq. 8) uses the smoothed reference, elsewhere plain Video DDS.

    Choices where the paper is silent (configurable):

    - ``channels``: ``"elementwise"`` (default) applies Eq. 7 literally to every latent element,
      so the maximum is per (channel, y, x); ``"mean"`` first averages abs(eps - eps^) over the
      latent channels and gives one mask value per (frame, y, x), shared by the channels.
    - ``invert``: the paper's prose motivates the mask by large gradients marking artefacts while
      Eq. 7 smooths where the gradient is *below* its temporal peak; ``invert=True`` swaps 1 and
      0 for users who want the other reading. The default follows the equation.

    Returns a float tensor of 0 / 1 that broadcasts against ``eps_edit``.
    """
    if channels not in MASK_CHANNEL_MODES:
        raise ValueError(f"channels: expected one of {MASK_CHANNEL_MODES}, got {channels!r}")
    diff = (eps_edit - eps_ref).abs()
    if channels == "mean":
        diff = diff.mean(dim=channel_dim, keepdim=True)
    peak = diff.amax(dim=frame_dim, keepdim=True)
    m = (diff < peak - float(tau)).to(eps_edit.dtype)
    return 1.0 - m if invert else m


def assd_gradient(eps_edit: torch.Tensor, eps_ref: torch.Tensor, eps_ref_smooth: torch.Tensor,
                  mask: torch.Tensor) -> torch.Tensor:
    """Adaptive sliding score distillation gradient, paper Eq. 8:

        grad_phi L_ASSD = ( m * (eps_theta^w(Z_t, y*, t) - Smooth(eps_theta^w(Z^_t, y, t)))
                          + (1 - m) * (eps_theta^w(Z_t, y*, t) - eps_theta^w(Z^_t, y, t)) ) dZ/dphi

    ``eps_ref_smooth`` is :func:`sliding_window_smooth` of ``eps_ref``, ``mask`` the
    :func:`adaptive_mask` m (an all-ones mask smooths everywhere, an all-zeros one is Eq. 5).
    """
    return mask * (eps_edit - eps_ref_smooth) + (1.0 - mask) * (eps_edit - eps_ref)


def image_dds_gradient(eps_edit_image: torch.Tensor, eps_ref_image: torch.Tensor) -> torch.Tensor:
    """Image-based joint guidance for the selected frames, paper Eq. 9 (DDS with Stable
    Diffusion eps_Omega on the i-th frame alone):

        grad_phi L_DDS-SD = (eps_Omega^w(z_t^i, y*, t) - eps_Omega^w(z^_t^i, y, t)) dz^i/dphi

    Inputs are the image model's guided predictions for the keyframes (any layout); the result
    is their difference (the UNet Jacobian omitted, as in Eq. 5).
    """
    return eps_edit_image - eps_ref_image


def joint_gradient(video_grad: torch.Tensor, image_grad: torch.Tensor, keyframes: Sequence[int],
                   frame_dim: int = 2, image_weight: float = 1.0) -> torch.Tensor:
    """Total gradient, paper Eq. 10:  grad L_total = grad L_ASSD + grad L_DDS-SD.

    ``image_grad`` holds the Eq. 9 gradients of the keyframes only, stacked along ``frame_dim``
    in the order of ``keyframes``; it is added to those frames of ``video_grad`` (the other
    frames keep the video gradient alone, since dz^i/dphi is zero for them). ``image_weight``
    (1 = the paper's plain sum) scales the image term.
    """
    kf = list(keyframes)
    if image_grad.shape[frame_dim] != len(kf):
        raise ValueError(f"image_grad: has {image_grad.shape[frame_dim]} frames for {len(kf)} keyframes")
    out = video_grad.clone()
    idx = torch.tensor(kf, device=video_grad.device, dtype=torch.long)
    return out.index_add_(frame_dim, idx, image_grad.to(out.dtype), alpha=float(image_weight))


def keyframe_indices(num_frames: int, stride: int, offset: int = 0) -> list[int]:
    """Keyframes for the joint guidance "at a fixed step size" (paper §Image-based Joint
    Guidance): ``offset, offset + stride, ...`` below ``num_frames``."""
    if stride < 1:
        raise ValueError(f"keyframe_stride: expected >= 1, got {stride}")
    if not 0 <= offset < max(1, num_frames):
        raise ValueError(f"keyframe_offset: expected 0 <= offset < {num_frames} frames, got {offset}")
    return list(range(offset, num_frames, stride))


def dds_update_scale(loss_scale: float, height: int, width: int, normalize_by_area: bool = True) -> float:
    """The factor between the score-distillation gradient and the latent's actual gradient.

    The paper states SGD with lr 0.1 for 200 steps but not the loss scaling. We follow the DDS
    reference implementation (Hertz et al. 2023), which the paper builds on: the surrogate loss
    is ``sum(z * grad) / (h * w)`` (h, w the latent's spatial size), back-propagated multiplied
    by 2000, so dL/dz = 2000 * grad / (h * w). For a video latent we normalise by the spatial
    area of one frame (not by the frame count), so a frame moves exactly as DDS moves an image
    of that size. With ``normalize_by_area`` False the factor is ``loss_scale`` alone.
    """
    return float(loss_scale) / (height * width) if normalize_by_area else float(loss_scale)


def sgd_step(latent: torch.Tensor, grad: torch.Tensor, lr: float, scale: float = 1.0) -> torch.Tensor:
    """Plain SGD (no momentum, as DDS / ASSD use ``torch.optim.SGD(lr=0.1)``), written by hand so
    it also runs under ``torch.inference_mode``: ``z <- z - lr * scale * grad`` (in place)."""
    return latent.sub_(grad.to(latent.dtype), alpha=float(lr) * float(scale))
