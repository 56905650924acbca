"""The fixed held-out set the toy ablations are measured on, and how a set of outputs is scored.

- :func:`heldout_edits` draws ``n`` edits from a seed no trainer uses (``HELDOUT_SEED``), the
  task types cycled evenly so every table row sees the same mix;
- :func:`contamination` is the ASSD paper's "contamination" (Fig. 4) made exact: the fraction
  of pixels OUTSIDE the edited object (the union of the source and target objects' rendered
  silhouettes, dilated by ``dilate`` px to forgive edge blur) whose colour moved more than
  ``threshold`` (RGB L2, 0..1 scale) from the input frame;
- :func:`score_set` averages :func:`fdd.toy.evaluate.score_clip` over a set (plus "fully
  right" = every frame edited as instructed and preserved, and contamination), overall and
  per task;
- :func:`save_strip_grid` writes input / output rows of a few clips as one PNG.
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Sequence

import numpy as np

from .evaluate import score_clip
from .world import BACKGROUNDS, TASKS, Edit, _inverse, make_edit, random_scene, render_frame

#: seed of the held-out set (the trainers draw from ``default_rng([seed, step])`` with small seeds)
HELDOUT_SEED = 20261122


def heldout_edits(n: int, tasks: Sequence[str] = TASKS, seed: int = HELDOUT_SEED, size: int = 32,
                  frames: int = 8) -> list[Edit]:
    """``n`` edits, task ``i`` = ``tasks[i % len(tasks)]``, scenes and edit choices from ``seed``."""
    for t in tasks:
        if t not in TASKS:
            raise ValueError(f"tasks: unknown task {t!r}; expected a subset of {TASKS}")
    rng = np.random.default_rng(seed)
    return [make_edit(random_scene(rng, size, frames), tasks[i % len(tasks)], rng, frames) for i in range(n)]


def _object_mask(scene, frame: int, inverted: bool) -> np.ndarray:
    img = render_frame(scene.at(frame), inverted)
    bgname = _inverse(scene.background) if inverted else scene.background
    bg = np.asarray(BACKGROUNDS[bgname], np.float32)
    return np.sqrt(((img - bg) ** 2).sum(-1)) > 0.05


def _dilate(mask: np.ndarray, px: int) -> np.ndarray:
    m = mask.copy()
    for _ in range(px):
        n = m.copy()
        n[1:, :] |= m[:-1, :]
        n[:-1, :] |= m[1:, :]
        n[:, 1:] |= m[:, :-1]
        n[:, :-1] |= m[:, 1:]
        m = n
    return m


def contamination(input_clip: np.ndarray, output_clip: np.ndarray, edit: Edit, threshold: float = 0.3,
                  dilate: int = 1) -> float:
    """Fraction of pixels outside the edited object that changed (see the module doc). Frames are
    ``[F, H, W, 3]`` in 0..1. Edits that legitimately change the whole frame (Background, Global)
    have no "outside" and raise, so callers choose object-level tasks for this measure."""
    if edit.task in ("Background", "Global"):
        raise ValueError(f"contamination: a {edit.task} edit changes every pixel; use object-level tasks")
    a = np.asarray(input_clip, np.float32)
    b = np.asarray(output_clip, np.float32)
    if a.shape != b.shape or a.ndim != 4:
        raise ValueError(f"contamination: input {a.shape} and output {b.shape} must both be [F, H, W, 3]")
    changed_outside = total_outside = 0
    for f in range(len(a)):
        obj = _object_mask(edit.source, f, False) | _object_mask(edit.target, f, edit.inverted)
        outside = ~_dilate(obj, dilate)
        moved = np.sqrt(((a[f] - b[f]) ** 2).sum(-1)) > threshold
        changed_outside += int((moved & outside).sum())
        total_outside += int(outside.sum())
    return changed_outside / max(total_outside, 1)


def score_set(outputs: Sequence[np.ndarray], edits: Sequence[Edit], inputs: Sequence[np.ndarray] | None = None,
              with_contamination: bool = False) -> dict:
    """Mean of each :func:`score_clip` field over the set (``path_residual_px`` as a median over
    clips where it is defined), ``fully_right`` (fraction of clips with edit accuracy and
    preservation both 1), optionally mean contamination; ``per_task`` holds the same per task."""
    if len(outputs) != len(edits):
        raise ValueError(f"score_set: {len(outputs)} outputs for {len(edits)} edits")
    rows = []
    for i, (out, e) in enumerate(zip(outputs, edits)):
        inp = None if inputs is None else inputs[i]
        sc = score_clip(np.asarray(out), e, inp)
        sc["fully_right"] = float(sc["edit_accuracy"] == 1 and sc["preservation"] == 1)
        sc["attributes_constant"] = float(sc["attributes_constant"])
        if with_contamination:
            ref = inp if inp is not None else e.render(len(out))[0]
            sc["contamination"] = contamination(ref, out, e)
        rows.append((e.task, sc))

    def agg(items):
        keys = [k for k in items[0] if k != "path_residual_px"]
        res = {k: float(np.mean([r[k] for r in items])) for k in keys}
        pr = np.array([r["path_residual_px"] for r in items], float)
        res["path_residual_px_median"] = float(np.nanmedian(pr)) if np.isfinite(pr).any() else float("nan")
        res["n"] = len(items)
        return res

    by_task = defaultdict(list)
    for t, r in rows:
        by_task[t].append(r)
    return {**agg([r for _, r in rows]), "per_task": {t: agg(v) for t, v in by_task.items()}}


def save_strip_grid(path: str | os.PathLike, rows: Sequence[np.ndarray], scale: int = 2) -> str:
    """Write clips ``[F, H, W, 3]`` (0..1) as one PNG: one row per clip, frames left to right,
    nearest-neighbour upscaled by ``scale``; written atomically."""
    from PIL import Image

    if not rows:
        raise ValueError("save_strip_grid: no rows")
    F_ = max(len(r) for r in rows)
    H, W = rows[0].shape[1:3]
    canvas = np.ones((len(rows) * (H + 2), F_ * (W + 2), 3), np.float32)
    for i, clip in enumerate(rows):
        for j, fr in enumerate(clip):
            canvas[i * (H + 2):i * (H + 2) + H, j * (W + 2):j * (W + 2) + W] = np.asarray(fr, np.float32)[..., :3]
    img = Image.fromarray((np.clip(canvas, 0, 1) * 255).round().astype(np.uint8))
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}.png"
    img.save(tmp)
    os.replace(tmp, path)
    return path
