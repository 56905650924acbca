"""A loss-curve picture drawn with PIL only (no plotting library), as ComfyUI IMAGE."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch


def _smooth(values: Sequence[float], window: int) -> list[float]:
    if window <= 1 or len(values) < 3:
        return list(values)
    out, acc = [], 0.0
    for i, v in enumerate(values):
        acc += v
        if i >= window:
            acc -= values[i - window]
        out.append(acc / min(i + 1, window))
    return out


def render_loss_curve(history: Sequence[float], width: int = 512, height: int = 256,
                      title: str = "EI2 one-shot tuning loss", resumed_from: int = 0) -> torch.Tensor:
    """Plot per-step losses (grey) and their moving average (blue) on a white canvas with axes
    and min / max / last labels. Returns a ComfyUI IMAGE ``[1, height, width, 3]`` in 0..1.
    ``resumed_from`` > 0 draws a dashed line where a resumed run picked up."""
    from PIL import Image, ImageDraw, ImageFont

    img = Image.new("RGB", (width, height), (255, 255, 255))
    d = ImageDraw.Draw(img)
    font = ImageFont.load_default()
    left, right, top, bottom = 56, 12, 22, 28
    x0, x1, y0, y1 = left, width - right, top, height - bottom
    d.text((left, 4), title, fill=(0, 0, 0), font=font)
    d.rectangle([x0, y0, x1, y1], outline=(0, 0, 0))
    vals = [float(v) for v in history if v is not None and math.isfinite(float(v))]
    if not vals:
        d.text((x0 + 8, (y0 + y1) // 2), "no steps yet", fill=(120, 120, 120), font=font)
    else:
        lo, hi = min(vals), max(vals)
        if hi - lo < 1e-12:
            lo, hi = lo - 0.5 * abs(lo or 1.0) * 0.1, hi + 0.5 * abs(hi or 1.0) * 0.1
        n = len(vals)

        def xy(i, v):
            x = x0 + (x1 - x0) * (i / max(1, n - 1))
            y = y1 - (y1 - y0) * ((v - lo) / (hi - lo))
            return (x, y)

        if n == 1:
            x, y = xy(0, vals[0])
            d.ellipse([x - 2, y - 2, x + 2, y + 2], fill=(30, 90, 200))
        else:
            d.line([xy(i, v) for i, v in enumerate(vals)], fill=(185, 185, 185), width=1)
            sm = _smooth(vals, max(1, n // 20))
            d.line([xy(i, v) for i, v in enumerate(sm)], fill=(30, 90, 200), width=2)
        if 0 < resumed_from < n:
            x = xy(resumed_from, lo)[0]
            for yy in range(y0, y1, 6):
                d.line([(x, yy), (x, min(yy + 3, y1))], fill=(220, 120, 0))
        d.text((4, y0), f"{hi:.4g}", fill=(0, 0, 0), font=font)
        d.text((4, y1 - 10), f"{lo:.4g}", fill=(0, 0, 0), font=font)
        d.text((x0, y1 + 6), "step 1", fill=(0, 0, 0), font=font)
        label = f"step {n}  last {vals[-1]:.4g}"
        d.text((max(x0 + 60, x1 - 6 * len(label)), y1 + 6), label, fill=(0, 0, 0), font=font)
    arr = np.asarray(img, dtype=np.float32) / 255.0
    return torch.from_numpy(arr).unsqueeze(0)
