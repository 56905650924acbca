"""The toy world: coloured shapes moving on plain backgrounds, with captions, edit
instructions over EVE's task types, ground-truth edited clips, and an evaluator that reads
the attributes back from pixels. See :mod:`fdd.toy.world` and :mod:`fdd.toy.evaluate`."""

from .world import (BACKGROUNDS, COLOURS, SHAPES, TASKS, Edit, Obj, Scene, caption, make_edit,
                    random_scene, render_clip, render_frame)
from .evaluate import FrameReading, read_frame, score_clip, score_frames

__all__ = ["BACKGROUNDS", "COLOURS", "SHAPES", "TASKS", "Edit", "Obj", "Scene", "caption", "make_edit",
           "random_scene", "render_clip", "render_frame", "FrameReading", "read_frame", "score_clip",
           "score_frames"]
