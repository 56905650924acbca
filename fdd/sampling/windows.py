"""Overlapping frame windows for clips longer than the video adapter's context.

EVE §4.0.4 generates videos longer than the 8 training frames "following [6]" with a sliding
window over the input video. Here every denoising step predicts the noise window by window and
blends overlapping predictions with weights that ramp linearly over the overlap, so each frame's
prediction is a convex combination and seams fade rather than jump.
"""

from __future__ import annotations

from typing import Callable

import torch


def frame_windows(num_frames: int, window: int, overlap: int) -> list[tuple[int, int]]:
    """Half-open ``[start, end)`` windows of length ``window`` covering ``num_frames`` frames,
    consecutive windows sharing ``overlap`` frames; the last window is shifted back to end at
    the last frame (so it may overlap its neighbour by more). One window if the clip fits."""
    if window < 1:
        raise ValueError(f"context_frames: expected >= 1, got {window}")
    if not 0 <= overlap < window:
        raise ValueError(f"context_overlap: expected 0 <= overlap < context_frames ({window}), got {overlap}")
    if num_frames <= window:
        return [(0, num_frames)]
    stride = window - overlap
    out = []
    start = 0
    while True:
        end = start + window
        if end >= num_frames:
            out.append((num_frames - window, num_frames))
            break
        out.append((start, end))
        start += stride
    # drop a duplicate produced when the shifted last window equals the previous one
    dedup = []
    for w in out:
        if not dedup or dedup[-1] != w:
            dedup.append(w)
    return dedup


def window_blend_weights(length: int, overlap: int, at_start: bool, at_end: bool) -> torch.Tensor:
    """Per-frame blend weights of one window: 1 in the interior, a linear ramp
    ``1/(overlap+1), 2/(overlap+1), ...`` over the first / last ``overlap`` frames unless the
    window touches the clip's start / end (then the edge keeps full weight)."""
    w = torch.ones(length, dtype=torch.float64)
    ramp = torch.arange(1, overlap + 1, dtype=torch.float64) / (overlap + 1)
    k = min(overlap, length)
    if k and not at_start:
        w[:k] = torch.minimum(w[:k], ramp[:k])
    if k and not at_end:
        w[length - k:] = torch.minimum(w[length - k:], ramp[:k].flip(0))
    return w


def windowed_predict(fn: Callable[[torch.Tensor, int, int], torch.Tensor], latents: torch.Tensor,
                     window: int, overlap: int, frame_dim: int = 2) -> torch.Tensor:
    """Apply ``fn(latents_window, start, end)`` on every window along ``frame_dim`` and blend.

    ``fn`` returns a tensor shaped like its input window. Frames covered by several windows get
    the weighted average of their predictions (weights from :func:`window_blend_weights`).
    """
    n = latents.shape[frame_dim]
    wins = frame_windows(n, window, overlap)
    if len(wins) == 1:
        return fn(latents, 0, n)
    acc = None
    norm = torch.zeros(n, dtype=torch.float64)
    for s, e in wins:
        piece = fn(latents.narrow(frame_dim, s, e - s), s, e)
        # real overlap with neighbours, which can exceed `overlap` for the shifted last window
        w = window_blend_weights(e - s, overlap, at_start=(s == 0), at_end=(e == n))
        shape = [1] * latents.dim()
        shape[frame_dim] = e - s
        wt = w.to(piece.dtype).to(piece.device).view(shape)
        if acc is None:
            acc = torch.zeros_like(piece.narrow(frame_dim, 0, 1)).repeat_interleave(n, dim=frame_dim)
        acc.narrow(frame_dim, s, e - s).add_(piece * wt)
        norm[s:e] += w
    shape = [1] * latents.dim()
    shape[frame_dim] = n
    return acc / norm.to(acc.dtype).to(acc.device).view(shape)
