"""Toy-world nodes (in-process ComfyUI), the held-out set / contamination measure, and the
tokenizer-beside-checkpoint rule the shipped toy backbone relies on."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
import torch

from fdd.toy.heldout import contamination, heldout_edits, save_strip_grid, score_set
from fdd.toy.world import TASKS, seeded_edit


def _run(node, **kw):
    out = node.execute(**kw)
    return out.result if hasattr(out, "result") else out, getattr(out, "ui", None)


def test_heldout_set_is_fixed_task_balanced_and_ground_truth_scores_perfectly():
    a, b = heldout_edits(14), heldout_edits(14)
    assert [e.task for e in a] == list(TASKS) * 2 and a == b
    assert heldout_edits(3, seed=1) != heldout_edits(3)
    pairs = [e.render() for e in a]
    res = score_set([gt for _, gt in pairs], a, [inp for inp, _ in pairs])
    assert res["edit_accuracy"] == 1.0 and res["attribute_accuracy"] == 1.0 and res["n"] == 14
    # a count, not a flag: numpy bools summed as logical OR once capped it at 1 clip
    assert res["fully_right"] >= 12 / 14
    assert set(res["per_task"]) == set(TASKS) and all(v["n"] == 2 for v in res["per_task"].values())
    # the unedited input as output: the instructed change is missing
    miss = score_set([inp for inp, _ in pairs], a, [inp for inp, _ in pairs])
    assert miss["edit_accuracy"] < 0.5 and miss["fully_right"] < res["fully_right"]
    with pytest.raises(ValueError, match="tasks: unknown task"):
        heldout_edits(2, tasks=("Local", "Zoom"))


def test_contamination_counts_changed_pixels_outside_the_object_only():
    e = heldout_edits(1, tasks=("Local",))[0]
    inp, gt = e.render()
    assert contamination(inp, gt, e) == 0.0  # the edit itself changes only the object
    out = gt.copy()
    out[:, :3, :3] = 1.0 - out[:, :3, :3]  # flip a 3x3 corner (background, black <-> white)
    # independent count: 9 flipped pixels per frame, all outside the (dilated) object, over the
    # number of outside pixels summed over frames
    got = contamination(inp, out, e)
    from fdd.toy.heldout import _dilate, _object_mask

    tot = sum(int((~_dilate(_object_mask(e.source, f, False) | _object_mask(e.target, f, False), 1)).sum())
              for f in range(8))
    assert got == pytest.approx(9 * 8 / tot) and tot < 8 * 32 * 32
    with pytest.raises(ValueError, match="Background edit changes every pixel"):
        contamination(inp, gt, heldout_edits(2)[1])


def test_strip_grid_written_atomically(tmp_path):
    from PIL import Image

    a, b = heldout_edits(1)[0].render()
    p = save_strip_grid(tmp_path / "g.png", [a, b], scale=2)
    img = np.asarray(Image.open(p))
    assert img.shape == (2 * 34 * 2, 8 * 34 * 2, 3) and not list(tmp_path.glob("*.tmp*"))
    assert np.allclose(img[0:64:2, 0:64:2] / 255.0, a[0], atol=1 / 255)


def test_seeded_edit_pins_attributes_and_refuses_bad_values():
    e = seeded_edit(3, "Local", shape="circle", colour="red", background="white")
    assert e.instruction == "make the circle blue" and e.source_caption == "a red circle on a white background"
    assert e.target_caption == "a blue circle on a white background"
    assert seeded_edit(3, "Local", shape="circle", colour="red", background="white") == e
    with pytest.raises(ValueError, match="colour: expected one of"):
        seeded_edit(0, "Local", colour="purple")
    with pytest.raises(ValueError, match="task: expected one of"):
        seeded_edit(0, "Zoom")


def test_toy_clip_and_score_nodes(comfy_pack, tmp_path, monkeypatch):
    import folder_paths

    monkeypatch.setattr(folder_paths, "get_output_directory", lambda: str(tmp_path))
    clip, score = comfy_pack["FDD_ToyClip"], comfy_pack["FDD_ToyScore"]
    for node in (clip, score):
        info = node.GET_NODE_INFO_V1()
        for name, spec in info["input"]["required"].items():
            assert (spec[1] if len(spec) > 1 else {}).get("tooltip"), name
    (frames, gt, ins, src, tgt, ej), _ = _run(clip, seed=3, task="Local", shape="circle", colour="red",
                                              background="white", frames=8, size="32")
    assert frames.shape == (8, 32, 32, 3) and frames.dtype == torch.float32 and gt.shape == frames.shape
    assert ins == "make the circle blue" and tgt == "a blue circle on a white background"
    assert src == "a red circle on a white background"
    (text,), ui = _run(score, edited_frames=gt, input_frames=frames, edit_json=ej, filename_prefix="fdd/toy")
    res = json.loads(text)
    assert res["edit_accuracy"] == 1.0 and res["preservation"] == 1.0 and res["contamination"] == 0.0
    assert res["attributes_constant"] is True and ui["text"] == [text]
    assert json.loads((tmp_path / res["file"]).read_text())["edit_accuracy"] == 1.0
    (text,), _ = _run(score, edited_frames=frames, input_frames=frames, edit_json=ej, filename_prefix="")
    unedited = json.loads(text)
    assert unedited["edit_accuracy"] == 0.0 and "file" not in unedited
    with pytest.raises(ValueError, match="edit_json: not an edit"):
        _run(score, edited_frames=gt, input_frames=frames, edit_json="{}", filename_prefix="")
    big = torch.nn.functional.interpolate(gt.permute(0, 3, 1, 2), scale_factor=2).permute(0, 2, 3, 1)
    with pytest.raises(ValueError, match="edited_frames: expected 32x32 frames"):
        _run(score, edited_frames=big, input_frames=frames, edit_json=ej, filename_prefix="")
    with pytest.raises(ValueError, match="edited_frames: 4 frames for an input of 8"):
        _run(score, edited_frames=gt[:4], input_frames=frames, edit_json=ej, filename_prefix="")


def test_single_file_backbone_uses_the_tokenizer_beside_it(toy_untrained, tmp_path):
    from fdd.models.sd1 import companion_tokenizer, load_sd1

    exp = os.path.join(toy_untrained, "export")
    f = tmp_path / "toy.safetensors"
    shutil.copy(os.path.join(exp, "toy_sd1.safetensors"), f)
    assert companion_tokenizer(f) is None and load_sd1(f).tokenizer is None
    shutil.copytree(os.path.join(exp, "tokenizer"), tmp_path / "toy_tokenizer")
    assert companion_tokenizer(f) == str(tmp_path / "toy_tokenizer")
    bb = load_sd1(f)
    ids = bb.tokenizer(["a red circle on a white background"]).input_ids[0]
    assert max(ids) < bb.text_encoder.config.vocab_size and len(ids) == 9  # bos + 7 words + eos
