"""The papers' video-editing metrics as functions of raw embeddings (and two model-free ones).

Every embedding argument is the raw model output; each function L2-normalises itself, so a
hand computation from the same raw embeddings reproduces it. Conventions: cosine similarities
in [-1, 1]; TGVE / EI² tables print CLIP scores ×100 (see :func:`x100`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _unit(x: torch.Tensor) -> torch.Tensor:
    x = x.float()
    return x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def x100(value: float) -> float:
    """TGVE's reporting convention for CLIP scores (cosine × 100, e.g. EI² Tab. 1's 29.84)."""
    return 100.0 * value


def clip_frame_consistency(image_emb: torch.Tensor) -> float:
    """CLIP frame consistency (CLIPFrame; EVE §4.0.1, TGVE; ASSD "Auto Metrics"; EI² §5.1):
    the mean cosine similarity of the CLIP image embeddings over all pairs of distinct frames,

        (1 / (F (F - 1))) Σ_{i ≠ j} cos(e_i, e_j).

    ``image_emb`` ``[F, D]``. Invariant to the frame order; 1.0 for identical frames and for a
    single frame (no pair to compare)."""
    e = _unit(image_emb)
    n = e.shape[0]
    if n < 2:
        return 1.0
    sim = e @ e.T
    return float((sim.sum() - sim.diagonal().sum()) / (n * (n - 1)))


def clip_text_alignment(image_emb: torch.Tensor, text_emb: torch.Tensor) -> float:
    """CLIP text alignment (ASSD "CLIP Text Alignment Score"; EI² §5.1 "textual alignment";
    TGVE's CLIPScore): the mean over frames of cos(image embedding of frame f, text embedding of
    the output caption). ``image_emb`` ``[F, D]``, ``text_emb`` ``[D]`` or ``[1, D]``."""
    return float((_unit(image_emb) @ _unit(text_emb.reshape(-1))).mean())


def pick_score(image_emb: torch.Tensor, text_emb: torch.Tensor, logit_scale: float) -> float:
    """PickScore (Kirstain et al. 2023; EVE §4.0.1, TGVE): the PickScore model's scaled score
    ``exp(logit_scale) · cos(image, caption)`` averaged over frames. ``logit_scale`` is the
    already exponentiated multiplier (≈100 for PickScore_v1); embeddings from the PickScore
    model (a fine-tuned CLIP-H)."""
    return float(logit_scale) * clip_text_alignment(image_emb, text_emb)


def direction_similarity(visual_in: torch.Tensor, visual_out: torch.Tensor,
                         text_in: torch.Tensor, text_out: torch.Tensor) -> float:
    """Directional similarity (CLIP_dir of StyleGAN-NADA / InstructPix2Pix; ViCLIP_dir of EVE
    §4.0.1): the cosine between the change of the visual embedding and the change of the
    caption embedding, each embedding L2-normalised first,

        cos(ê(out) − ê(in), t̂(c_out) − t̂(c_in)).

    ``visual_*`` ``[D]`` (one video embedding: ViCLIP_dir) or ``[F, D]`` (one per frame, frame f
    of the output against frame f of the input, averaged over frames: CLIP_dir). Swapping input
    and output flips its sign; 0 when either change is zero."""
    dv = _unit(visual_out) - _unit(visual_in)
    dt = (_unit(text_out.reshape(-1)) - _unit(text_in.reshape(-1)))
    dv = dv.reshape(-1, dv.shape[-1])
    return float(F.cosine_similarity(dv, dt.expand_as(dv), dim=-1, eps=1e-8).mean())


def viclip_output_similarity(video_emb: torch.Tensor, text_emb: torch.Tensor) -> float:
    """ViCLIP_out (EVE §4.0.1): cosine between the ViCLIP video embedding of the output video
    and the ViCLIP text embedding of the output caption."""
    return float(_unit(video_emb.reshape(-1)) @ _unit(text_emb.reshape(-1)))


def align_frames(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Pair frames of two clips: the same count -> unchanged; otherwise the longer clip is
    sampled at a uniform stride down to the shorter one's length."""
    na, nb = a.shape[0], b.shape[0]
    if na == nb:
        return a, b
    n = min(na, nb)
    ia = [int(i * na / n) for i in range(n)]
    ib = [int(i * nb / n) for i in range(n)]
    return a[ia], b[ib]


def _to_nchw(frames: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
    x = frames.float().permute(0, 3, 1, 2).clamp(0, 1)
    if size is not None and tuple(x.shape[-2:]) != tuple(size):
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
    return x


def _luma(x: torch.Tensor) -> torch.Tensor:
    w = torch.tensor([0.299, 0.587, 0.114], dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x * w).sum(1, keepdim=True)


def structure_ssim(frames_in: torch.Tensor, frames_out: torch.Tensor, window: int = 11) -> float:
    """Structure preservation (model-free): the mean SSIM (Wang et al. 2004, Gaussian window
    ``window``, kornia) between the luminance of each output frame and its input frame, the
    output resized to the input size. 1 = the structure (and brightness) is unchanged."""
    import kornia

    a, b = align_frames(frames_in, frames_out)
    x = _luma(_to_nchw(a))
    y = _luma(_to_nchw(b, tuple(x.shape[-2:])))
    win = min(window, x.shape[-1], x.shape[-2])
    win = win if win % 2 == 1 else win - 1
    return float(kornia.metrics.ssim(x, y, win).mean())


def edge_agreement(frames_in: torch.Tensor, frames_out: torch.Tensor) -> float:
    """Edge agreement (model-free): the mean over frames of the Pearson correlation between the
    Sobel gradient magnitudes (kornia) of the input and output luminance. 1 = edges in the same
    places with proportional strength, 0 = unrelated; insensitive to colour / texture changes
    that keep the layout (an edit that keeps structure scores high)."""
    import kornia

    a, b = align_frames(frames_in, frames_out)
    x = kornia.filters.sobel(_luma(_to_nchw(a))).flatten(1)
    y = kornia.filters.sobel(_luma(_to_nchw(b, tuple(a.shape[1:3])))).flatten(1)
    x = x - x.mean(1, keepdim=True)
    y = y - y.mean(1, keepdim=True)
    return float(F.cosine_similarity(x, y, dim=1, eps=1e-8).mean())


def temporal_flicker(frames: torch.Tensor) -> float:
    """Temporal flicker (model-free): the mean absolute difference of consecutive frames,
    ``mean_{t,pixels,channels} |x_{t+1} − x_t|`` on the 0..1 scale, NOT motion-compensated
    (no warping): true motion counts too, so compare it with the input clip's value
    (``temporal_flicker_input``), not against 0. 0 for a single frame."""
    if frames.shape[0] < 2:
        return 0.0
    x = frames.float()
    return float((x[1:] - x[:-1]).abs().mean())
