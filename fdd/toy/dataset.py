"""Toy-world datasets in the FDD dataset format (EVE §4.0.2: inputs only, y = (c_out,
c_instruct, c_vid) with a task label), plus what FDD never sees but evaluation needs: the
ground-truth edited clip and the edit itself, so every item can be scored exactly.

    python -m fdd.toy dataset --out DIR --items 64 [--frames 8 --size 32 --seed 0]

Layout: ``clips/NNNN/`` input frames (PNG), ``targets/NNNN/`` ground-truth edited frames,
``manifest.jsonl`` with ``clip``, ``instruction``, ``output_caption``, ``task`` (the fields
:class:`fdd.distill.dataset.FDDDataset` reads) and ``input_caption``, ``target_clip``, ``edit``
(the scene and edit as JSON, read back with :func:`edit_from_json`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from typing import Sequence

import numpy as np

from .world import TASKS, Edit, Obj, Scene, make_edit, random_scene


def edit_to_json(edit: Edit) -> dict:
    return dataclasses.asdict(edit)


def edit_from_json(data: dict) -> Edit:
    def scene(d):
        return Scene(background=d["background"], objects=tuple(Obj(**o) for o in d["objects"]), size=d["size"])

    return Edit(task=data["task"], instruction=data["instruction"], source=scene(data["source"]),
                target=scene(data["target"]), inverted=bool(data.get("inverted", False)))


def _write_frames(folder: str, frames: np.ndarray) -> None:
    from PIL import Image

    os.makedirs(folder, exist_ok=True)
    for i, f in enumerate(frames):
        Image.fromarray((np.clip(f, 0, 1) * 255).round().astype(np.uint8)).save(os.path.join(folder, f"{i:04d}.png"))


def write_toy_dataset(folder: str | os.PathLike, items: int = 64, frames: int = 8, size: int = 32,
                      seed: int = 0, tasks: Sequence[str] = TASKS) -> str:
    """Write ``items`` edits (tasks in round-robin order, scenes from ``seed``) and return the
    manifest path. The folder is built beside the target and renamed into place, so an
    interrupted run leaves no half-written dataset."""
    folder = os.fspath(folder)
    for t in tasks:
        if t not in TASKS:
            raise ValueError(f"tasks: unknown task {t!r}; expected a subset of {TASKS}")
    stage = folder.rstrip(os.sep) + ".partial"
    shutil.rmtree(stage, ignore_errors=True)
    os.makedirs(stage)
    rng = np.random.default_rng(seed)
    lines = []
    for i in range(items):
        edit = make_edit(random_scene(rng, size, frames), tasks[i % len(tasks)], rng, frames)
        src, tgt = edit.render(frames)
        name = f"{i:04d}"
        _write_frames(os.path.join(stage, "clips", name), src)
        _write_frames(os.path.join(stage, "targets", name), tgt)
        lines.append(json.dumps({"clip": f"clips/{name}", "instruction": edit.instruction,
                                 "output_caption": edit.target_caption, "task": edit.task,
                                 "input_caption": edit.source_caption, "target_clip": f"targets/{name}",
                                 "edit": edit_to_json(edit)}))
    with open(os.path.join(stage, "manifest.jsonl"), "w", encoding="utf-8") as fh:
        fh.write("\n".join(lines) + "\n")
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(stage, folder)
    return os.path.join(folder, "manifest.jsonl")
