"""Toy-world nodes: a generated clip with a known edit, and the exact evaluator of an edited clip.

With the shipped toy models (models/toy, registered by the pack) these make a graph that edits
a video and scores the result with no download: FDD Toy Clip -> an edit node -> FDD Toy Score.
"""

from __future__ import annotations

import json

import numpy as np
import torch
from comfy_api.v0_0_2 import io

from ..fdd.toy.dataset import edit_from_json, edit_to_json
from ..fdd.toy.heldout import contamination
from ..fdd.toy.evaluate import score_clip
from ..fdd.toy.world import BACKGROUNDS, BASE_COLOURS, SHAPES, TASKS, seeded_edit
from . import _runtime as rt
from ._inputs import PackNode

CATEGORY = "video edit (fdd)/toy world"
RANDOM = "random"


def _frames(clip: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(clip, dtype=np.float32))


class ToyClip(PackNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="FDD_ToyClip",
            display_name="FDD Toy Clip (generated edit)",
            category=CATEGORY,
            description="Generates a toy-world clip (one coloured shape moving at constant speed on a white or black "
                        "background) and an edit of it with its ground truth: the instruction, the captions before "
                        "and after, and the edit as JSON for 'FDD Toy Score'. The shipped toy models were trained "
                        "on this world.",
            inputs=[
                io.Int.Input("seed", default=3, min=0, max=0xFFFFFFFF, control_after_generate=True,
                             tooltip="Seed of the scene (position, speed, size, unpinned attributes) and of the edit."),
                io.Combo.Input("task", options=[RANDOM, *TASKS], default="Local",
                               tooltip="EVE edit type: Local (colour or shape of the object), Background, Remove, "
                                       "Add (a second shape), Texture (stripes), Style (outline), Global (invert)."),
                io.Combo.Input("shape", options=[RANDOM, *SHAPES], default=RANDOM, tooltip="The object's shape."),
                io.Combo.Input("colour", options=[RANDOM, *BASE_COLOURS], default=RANDOM,
                               tooltip="The object's colour."),
                io.Combo.Input("background", options=[RANDOM, *BACKGROUNDS], default=RANDOM,
                               tooltip="The background colour."),
                io.Int.Input("frames", default=8, min=2, max=64, tooltip="Clip length (the toy models saw 8)."),
                io.Combo.Input("size", options=["32", "64"], default="32",
                               tooltip="Frame size in pixels (the toy models were trained at 32)."),
            ],
            outputs=[io.Image.Output(display_name="frames"), io.Image.Output(display_name="ground_truth"),
                     io.String.Output(display_name="instruction"), io.String.Output(display_name="source_caption"),
                     io.String.Output(display_name="target_caption"), io.String.Output(display_name="edit_json")],
        )

    @classmethod
    def execute(cls, seed=3, task="Local", shape=RANDOM, colour=RANDOM, background=RANDOM, frames=8,
                size="32") -> io.NodeOutput:
        def pick(v):
            return None if v == RANDOM else v

        edit = seeded_edit(int(seed), task, int(size), int(frames), pick(shape), pick(colour), pick(background))
        inp, gt = edit.render(int(frames))
        return io.NodeOutput(_frames(inp), _frames(gt), edit.instruction, edit.source_caption, edit.target_caption,
                             json.dumps(edit_to_json(edit)))


class ToyScore(PackNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="FDD_ToyScore",
            display_name="FDD Toy Score (exact evaluator)",
            category=CATEGORY,
            description="Scores an edited toy clip by reading shape, colour, background, texture, style and position "
                        "back from the pixels: attribute accuracy against the target, edit accuracy, preservation "
                        "(untouched attributes kept, centroid within 1 px), temporal consistency, and contamination "
                        "(pixels changed outside the object, object-level edits only). Writes the JSON to the output "
                        "folder.",
            is_output_node=True,
            inputs=[
                io.Image.Input("edited_frames", tooltip="The edited clip at the toy clip's size (IMAGE batch)."),
                io.Image.Input("input_frames", tooltip="The clip that was edited ('frames' of FDD Toy Clip)."),
                io.String.Input("edit_json", force_input=True, tooltip="'edit_json' of FDD Toy Clip."),
                io.String.Input("filename_prefix", default="fdd/toy_score",
                                tooltip="Where the JSON goes in ComfyUI's output folder; empty: not written."),
            ],
            outputs=[io.String.Output(display_name="scores_json")],
        )

    @classmethod
    def execute(cls, edited_frames, input_frames, edit_json, filename_prefix="fdd/toy_score") -> io.NodeOutput:
        try:
            edit = edit_from_json(json.loads(edit_json))
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"edit_json: not an edit written by FDD Toy Clip ({exc})") from exc
        out = edited_frames[..., :3].float().cpu().numpy()
        inp = input_frames[..., :3].float().cpu().numpy()
        size = edit.source.size
        for name, x in (("edited_frames", out), ("input_frames", inp)):
            if x.shape[1:3] != (size, size):
                raise ValueError(f"{name}: expected {size}x{size} frames (the toy clip's size), got "
                                 f"{x.shape[2]}x{x.shape[1]}; score before any upscaling")
        if len(out) != len(inp):
            raise ValueError(f"edited_frames: {len(out)} frames for an input of {len(inp)}")
        sc = score_clip(out, edit, inp)
        res = {"task": edit.task, "instruction": edit.instruction, "target_caption": edit.target_caption,
               "attribute_accuracy": sc["attribute_accuracy"], "edit_accuracy": sc["edit_accuracy"],
               "preservation": sc["preservation"], "attributes_constant": bool(sc["attributes_constant"]),
               "path_residual_px": sc["path_residual_px"] if np.isfinite(sc["path_residual_px"]) else None,
               "contamination": None if edit.task in ("Background", "Global") else contamination(inp, out, edit),
               "frames": len(out)}
        text = json.dumps(res, indent=1)
        if filename_prefix.strip():
            res["file"] = rt.save_output_json(text, filename_prefix.strip())
            text = json.dumps(res, indent=1)
        return io.NodeOutput(text, ui={"text": [text]})
