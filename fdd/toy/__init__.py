"""The toy world: coloured shapes moving on plain backgrounds, with captions, edit
instructions over EVE's task types, ground-truth edited clips, and an evaluator that reads
the attributes back from pixels. See :mod:`fdd.toy.world`, :mod:`fdd.toy.evaluate` and
:mod:`fdd.toy.dataset` (datasets in the FDD format: ``python -m fdd.toy dataset --out DIR``)."""

from .world import (BACKGROUNDS, COLOURS, SHAPES, TASKS, Edit, Obj, Scene, caption, make_edit,
                    random_scene, render_clip, render_frame)
from .evaluate import FrameReading, read_frame, score_clip, score_frames

__all__ = ["BACKGROUNDS", "COLOURS", "SHAPES", "TASKS", "Edit", "Obj", "Scene", "caption", "make_edit",
           "random_scene", "render_clip", "render_frame", "FrameReading", "read_frame", "score_clip",
           "score_frames"]
