"""The comparison grid: input frames over output frames, as one image."""

from __future__ import annotations

import os

import numpy as np
import torch
import torch.nn.functional as F


def _pick(n: int, k: int) -> list[int]:
    if n <= k:
        return list(range(n))
    return [round(i * (n - 1) / (k - 1)) for i in range(k)] if k > 1 else [0]


def comparison_grid(input_frames: torch.Tensor, output_frames: torch.Tensor, max_columns: int = 8,
                    tile_height: int = 128, gap: int = 2) -> torch.Tensor:
    """``[1, H, W, 3]`` image (ComfyUI IMAGE): up to ``max_columns`` frames at evenly spaced
    indices (first and last included), the input clip on the top row and the output clip below,
    each tile scaled to ``tile_height`` (aspect kept), separated by ``gap`` white pixels."""
    rows = []
    n = min(max_columns, max(input_frames.shape[0], output_frames.shape[0]))
    for clip in (input_frames, output_frames):
        idx = _pick(clip.shape[0], n)
        x = clip[idx].float().clamp(0, 1).permute(0, 3, 1, 2)
        h, w = x.shape[-2:]
        tw = max(1, round(w * tile_height / h))
        x = F.interpolate(x, size=(tile_height, tw), mode="bilinear", align_corners=False, antialias=True)
        tiles = [t for t in x]
        while len(tiles) < n:  # a shorter clip leaves blank tiles
            tiles.append(torch.ones_like(tiles[0]))
        row = []
        for i, t in enumerate(tiles):
            if i:
                row.append(torch.ones(3, tile_height, gap))
            row.append(t)
        rows.append(torch.cat(row, dim=2))
    width = max(r.shape[2] for r in rows)
    rows = [F.pad(r, (0, width - r.shape[2]), value=1.0) for r in rows]
    grid = torch.cat([rows[0], torch.ones(3, gap, width), rows[1]], dim=1)
    return grid.permute(1, 2, 0).unsqueeze(0).clamp(0, 1)


def save_png(image: torch.Tensor, path: str | os.PathLike) -> str:
    """Write ``[1, H, W, 3]`` / ``[H, W, 3]`` 0..1 as a PNG, atomically."""
    from PIL import Image

    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    img = image[0] if image.ndim == 4 else image
    arr = (img.clamp(0, 1).cpu().numpy() * 255).round().astype(np.uint8)
    tmp = f"{path}.tmp-{os.getpid()}.png"
    Image.fromarray(arr).save(tmp)
    os.replace(tmp, path)
    return path
