"""How sharp the toy models draw each shape, read the way the evaluator reads it.

The evaluator tells a square from a circle by the silhouette's bounding-box fill
(:attr:`fdd.toy.evaluate.ObjReading.fill`, square above ``square_above`` = 0.9). Rendered squares
fill 1.0 and circles ~0.79, but a model's soft-cornered squares sit near the threshold, and a
clip whose frames straddle it is not attribute-constant. :func:`shape_fill_report` gives the
fill percentiles per shape for rendered truth, the backbone's images and the motion module's
clip frames (issue 7: 17 of the 19 square clips of the shipped motion module's card failed
constancy this way). ``python -m fdd.toy fill [--models DIR]`` prints it as JSON.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch

from . import train as T
from .evaluate import read_frame
from .world import SHAPES, random_scene, render_frame


def fill_stats(fills: list[float], square_above: float = 0.9) -> dict:
    """Percentiles (5 / 50 / 95) of box fills, and the share above the square threshold."""
    v = np.asarray([f for f in fills if np.isfinite(f)], dtype=np.float64)
    if not len(v):
        return {"n": 0}
    p5, p50, p95 = np.percentile(v, [5, 50, 95])
    return {"n": int(len(v)), "p5": round(float(p5), 3), "p50": round(float(p50), 3), "p95": round(float(p95), 3),
            "above_square_threshold": round(float((v > square_above).mean()), 3)}


def _largest_fill(frame: np.ndarray) -> float:
    objs = read_frame(frame).objects
    return max(objs, key=lambda o: o.area).fill if objs else float("nan")


def _scenes(seed: int, n: int) -> list:
    """``n`` random one-object scenes with the shapes cycled, so every shape gets n / 3."""
    rng = np.random.default_rng(seed)
    return [replace(s, objects=(replace(s.objects[0], shape=SHAPES[k % len(SHAPES)]),))
            for k, s in enumerate(random_scene(rng) for _ in range(n))]


def _by_shape(scenes, fills_per_scene) -> dict:
    return {sh: fill_stats([f for s, fs in zip(scenes, fills_per_scene) if s.objects[0].shape == sh for f in fs])
            for sh in SHAPES}


@torch.no_grad()
def shape_fill_report(paths: dict | None = None, n_image: int = 96, n_video: int = 24, seed: int = 7,
                      cfg_scale: float = 4.0) -> dict:
    """Box-fill statistics per shape of: ``rendered`` truth (the same captions' scenes), the
    ``backbone``'s samples (n_image) and the ``motion`` module's clip frames (n_video clips),
    from the toy model files in ``paths`` (default: the shipped tree), 20 DDIM steps at
    ``cfg_scale``."""
    from .ship import load_backbone_kit, motion_denoiser, toy_paths

    paths = paths or toy_paths()
    kit = load_backbone_kit(paths)
    cfg = T.TrainConfig(cfg_scale=cfg_scale)
    out = {"settings": {"n_image": n_image, "n_video": n_video, "seed": seed, "cfg_scale": cfg_scale,
                        "sample_steps": cfg.sample_steps}}
    scenes = _scenes(seed, n_image)
    out["rendered"] = _by_shape(scenes, [[_largest_fill(render_frame(s))] for s in scenes])
    imgs = T.sample_t2i(kit, kit.unet, scenes, cfg, seed)
    out["backbone"] = _by_shape(scenes, [[_largest_fill(im)] for im in imgs])
    if n_video:
        vs = _scenes(seed + 1, n_video)
        clips = T.sample_t2v(kit, motion_denoiser(kit, paths), vs, cfg, seed)
        out["motion"] = _by_shape(vs, [[_largest_fill(f) for f in clip] for clip in clips])
    return out
