"""A loss-curve image drawn with PIL (no plotting library): ComfyUI IMAGE ``[1, H, W, 3]``."""

from __future__ import annotations

import math

import numpy as np
import torch

#: curves drawn when present in the history, with their colours
CURVES = (("loss_g", (30, 90, 200)), ("sds_edit_gap", (40, 160, 60)), ("sds_video_gap", (150, 190, 40)),
          ("loss_d", (200, 60, 40)), ("g_edit", (160, 60, 170)), ("g_video", (230, 140, 30)))


def render_loss_curve(history: list[dict], width: int = 512, height: int = 320) -> torch.Tensor:
    """The training losses per iteration (one line per logged quantity, phase 2 shaded, legend);
    returns ``[1, height, width, 3]`` float 0..1."""
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (width, height), (255, 255, 255))
    d = ImageDraw.Draw(img)
    left, right, top, bottom = 48, width - 10, 24, height - 28
    d.rectangle([left, top, right, bottom], outline=(0, 0, 0))
    steps = [h["step"] for h in history]
    series = [(k, c, [h.get(k) for h in history]) for k, c in CURVES if any(k in h for h in history)]
    vals = [v for _, _, s in series for v in s if v is not None and math.isfinite(v)]
    if not steps or not vals:
        d.text((left + 8, top + 8), "no iterations yet", fill=(0, 0, 0))
    else:
        lo, hi = min(vals), max(vals)
        if hi - lo < 1e-12:
            lo, hi = lo - 1, hi + 1
        s0, s1 = min(steps), max(max(steps), min(steps) + 1)
        X = lambda s: left + (s - s0) / (s1 - s0) * (right - left)
        Y = lambda v: bottom - (v - lo) / (hi - lo) * (bottom - top)
        p2 = [h["step"] for h in history if h.get("phase") == 2]
        if p2:
            x0 = min(max(left + 1, X(min(p2) - 0.5)), right - 1)
            d.rectangle([x0, top + 1, right - 1, bottom - 1], fill=(245, 240, 230))
        if lo < 0 < hi:
            d.line([(left, Y(0)), (right, Y(0))], fill=(200, 200, 200))
        for _, colour, s in series:
            pts = [(X(st), Y(v)) for st, v in zip(steps, s) if v is not None and math.isfinite(v)]
            if len(pts) == 1:
                x, y = pts[0]
                d.ellipse([x - 2, y - 2, x + 2, y + 2], fill=colour)
            elif pts:
                d.line(pts, fill=colour, width=2)
        d.text((4, top - 2), f"{hi:.3g}", fill=(0, 0, 0))
        d.text((4, bottom - 10), f"{lo:.3g}", fill=(0, 0, 0))
        d.text((left, bottom + 6), f"iteration {s0}", fill=(0, 0, 0))
        d.text((right - 60, bottom + 6), f"{s1}", fill=(0, 0, 0))
    x = left + 4
    for name, colour, _ in series:
        d.rectangle([x, 6, x + 10, 16], fill=colour)
        d.text((x + 13, 5), name, fill=(0, 0, 0))
        x += 14 + 7 * len(name)
    arr = np.asarray(img, dtype=np.float32) / 255.0
    return torch.from_numpy(arr)[None]
