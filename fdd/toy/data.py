"""Training data of the toy world: captioned frames, edits and clips drawn from seeded generators.
"""

from __future__ import annotations

import numpy as np
import torch

from .world import SHAPES, TASKS, caption, make_edit, random_scene, render_clip, render_frame


def _to_pixels(imgs) -> torch.Tensor:
    """``[N, H, W, 3]`` 0..1 -> ``[N, 3, H, W]`` -1..1."""
    return torch.from_numpy(np.ascontiguousarray(np.stack(imgs))).permute(0, 3, 1, 2).float() * 2 - 1


def sample_captioned(rng, n: int, size: int = 32, frames: int = 8, edited: float = 0.5,
                     task_weights: dict | None = None):
    """``n`` frames with captions: a random scene at a random frame, or (prob. ``edited``) the
    ground-truth result of a random edit of it, so the backbone learns every output caption.
    The edit's task is uniform unless ``task_weights`` (see :func:`draw_probabilities`) is given;
    the uniform draw is the recipe's, so existing seeds draw the same frames."""
    p = draw_probabilities(task_weights, TASKS, "task_weights")
    imgs, caps = [], []
    for _ in range(n):
        sc = random_scene(rng, size, frames)
        i = int(rng.integers(frames))
        if rng.random() < edited:
            e = make_edit(sc, _draw_task(rng, p), rng, frames)
            imgs.append(render_frame(e.target.at(i), e.inverted))
            caps.append(e.target_caption)
        else:
            imgs.append(render_frame(sc.at(i)))
            caps.append(caption(sc))
    return _to_pixels(imgs), caps


def draw_probabilities(weights: dict | None, names: tuple, field: str) -> np.ndarray | None:
    """Sampling probabilities over ``names`` from relative ``weights`` ({name: weight}; names left
    out get 0); None stays None (the recipe's uniform draw). Unknown names, negative weights or
    an all-zero dict are refused, naming ``field`` (the setting they came from)."""
    if weights is None:
        return None
    unknown = sorted(set(weights) - set(names))
    if unknown:
        raise ValueError(f"{field}: unknown name(s) {unknown}; expected names from {names}")
    w = np.array([float(weights.get(t, 0.0)) for t in names])
    if (w < 0).any() or not np.isfinite(w).all() or w.sum() <= 0:
        raise ValueError(f"{field}: expected finite weights >= 0 with a positive sum, got {weights}")
    return w / w.sum()


def _draw_task(rng, p: np.ndarray | None) -> str:
    """One edit task: uniform by ``rng.integers`` (the recipe's draw, so its seeds keep their
    data) when ``p`` is None, else by :func:`draw_probabilities`' ``p``."""
    return TASKS[int(rng.integers(len(TASKS)))] if p is None else TASKS[int(rng.choice(len(TASKS), p=p))]


def sample_edits(rng, n: int, size: int = 32, frames: int = 8, task_weights: dict | None = None):
    """(input frames, target frames, instructions, output captions, edits, frame indices).
    Tasks are uniform unless ``task_weights`` (see :func:`draw_probabilities`) is given; the
    uniform draw is the recipe's, so existing seeds draw the same edits."""
    p = draw_probabilities(task_weights, TASKS, "task_weights")
    src, tgt, ins, caps, edits, idx = [], [], [], [], [], []
    for _ in range(n):
        scene = random_scene(rng, size, frames)  # drawn before the task, as the recipe always has
        e = make_edit(scene, _draw_task(rng, p), rng, frames)
        i = int(rng.integers(frames))
        src.append(render_frame(e.source.at(i)))
        tgt.append(render_frame(e.target.at(i), e.inverted))
        ins.append(e.instruction)
        caps.append(e.target_caption)
        edits.append(e)
        idx.append(i)
    return _to_pixels(src), _to_pixels(tgt), ins, caps, edits, idx


def sample_clips(rng, n: int, size: int = 32, frames: int = 8, edited: float = 0.5,
                 shape_weights: dict | None = None):
    """``[n, F, 3, H, W]`` clips in -1..1 with captions. Shapes are uniform unless
    ``shape_weights`` (see :func:`draw_probabilities`) is given; the uniform draw is the recipe's."""
    p = draw_probabilities(shape_weights, SHAPES, "shape_weights")
    clips, caps = [], []
    for _ in range(n):
        sc = random_scene(rng, size, frames, shape_p=p)
        if rng.random() < edited:
            e = make_edit(sc, TASKS[int(rng.integers(len(TASKS)))], rng, frames)
            clips.append(render_clip(e.target, frames, e.inverted))
            caps.append(e.target_caption)
        else:
            clips.append(render_clip(sc, frames))
            caps.append(caption(sc))
    x = torch.from_numpy(np.stack(clips)).permute(0, 1, 4, 2, 3).float() * 2 - 1
    return x, caps
