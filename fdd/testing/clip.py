"""A short synthetic clip of moving coloured shapes: the demo and test input video."""

from __future__ import annotations

import os

import numpy as np
import torch


def moving_shapes_clip(num_frames: int = 16, height: int = 64, width: int = 64, seed: int = 0) -> torch.Tensor:
    """Frames ``[F, H, W, 3]`` in 0..1 (ComfyUI IMAGE layout): a red disc moving left to right
    and a blue square moving top to bottom over a light green-grey background, constant speed."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    bg = np.array([0.85, 0.9, 0.8], np.float32)
    r = 0.16 * min(height, width)
    s = 0.12 * min(height, width)
    cy0 = height * (0.35 + 0.1 * rng.random())
    cx1 = width * (0.6 + 0.1 * rng.random())
    frames = []
    for i in range(num_frames):
        f = i / max(1, num_frames - 1)
        img = np.broadcast_to(bg, (height, width, 3)).copy()
        cx = r + f * (width - 2 * r)
        disc = (xx - cx) ** 2 + (yy - cy0) ** 2 <= r ** 2
        img[disc] = (0.9, 0.15, 0.1)
        cy1 = s + f * (height - 2 * s)
        sq = (np.abs(xx - cx1) <= s) & (np.abs(yy - cy1) <= s)
        img[sq] = (0.1, 0.2, 0.85)
        frames.append(img)
    return torch.from_numpy(np.stack(frames)).float()


def write_video(frames: torch.Tensor, path: str | os.PathLike, fps: float = 8.0) -> str:
    """Encode ``[F, H, W, 3]`` 0..1 frames as an H.264 mp4 (yuv420p) with PyAV, atomically."""
    import av

    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".partial.mp4"
    arr = (frames.clamp(0, 1).numpy() * 255).round().astype(np.uint8)
    with av.open(tmp, mode="w") as container:
        stream = container.add_stream("libx264", rate=int(round(fps)))
        stream.width, stream.height = arr.shape[2], arr.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "12"}
        for img in arr:
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    os.replace(tmp, path)
    return path
