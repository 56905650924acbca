"""The 'FDD Video Edit Metrics' node called in-process (ComfyUI imported, no server)."""

from __future__ import annotations

import json

import pytest
import torch

from fdd.testing.clip import moving_shapes_clip


def _run(node, **kw):
    out = node.execute(**kw)
    return out.result if hasattr(out, "result") else out, getattr(out, "ui", None)


@pytest.fixture(scope="module")
def metrics_root(comfy_pack, tmp_path_factory):
    import folder_paths

    from fdd.testing.metric_models import write_metric_models

    root = tmp_path_factory.mktemp("models_fdd_metrics") / "fdd_metrics"
    write_metric_models(root)
    folder_paths.add_model_folder_path("fdd_metrics", str(root))
    return root


def test_schema_lists_models_and_documents_every_input(comfy_pack, metrics_root):
    node = comfy_pack["FDD_VideoEditMetrics"]
    info = node.GET_NODE_INFO_V1()
    assert info["output_node"] is True and info["display_name"] == "FDD Video Edit Metrics"
    req = info["input"]["required"]
    for name, spec in list(req.items()) + list(info["input"].get("optional", {}).items()):
        assert (spec[1] if len(spec) > 1 else {}).get("tooltip"), name
    for key, want in (("clip_model", "clip-vit-large-patch14"), ("pickscore_model", "PickScore_v1"),
                      ("viclip_model", "ViCLIP-InternVid-10M-FLT")):
        assert want in json.dumps(req[key]) and "none" in json.dumps(req[key])
    assert info["output"] == ["STRING", "IMAGE"]


def test_node_measures_and_writes_json(comfy_pack, metrics_root, tmp_path, monkeypatch):
    import folder_paths

    monkeypatch.setattr(folder_paths, "get_output_directory", lambda: str(tmp_path))
    node = comfy_pack["FDD_VideoEditMetrics"]
    a = moving_shapes_clip(8, 32, 32, seed=0)
    b = moving_shapes_clip(8, 32, 32, seed=3)
    (text, grid), ui = _run(node, input_frames=a, output_frames=b, output_caption="a green ball",
                            input_caption="a red ball", instruction="make the ball green", clip_model="clip-vit-large-patch14",
                            pickscore_model="PickScore_v1", viclip_model="ViCLIP-InternVid-10M-FLT", grid_columns=4,
                            filename_prefix="fdd/metrics")
    res = json.loads(text)
    assert {"clip_frame_consistency", "clip_dir", "pickscore", "viclip_dir", "viclip_out",
            "structure_ssim"} <= set(res["metrics"])
    assert res["captions"]["instruction"] == "make the ball green" and res["frames"] == {"input": 8, "output": 8}
    saved = tmp_path / res["file"]
    assert saved.is_file() and json.loads(saved.read_text())["metrics"] == res["metrics"]
    assert grid.shape[0] == 1 and grid.shape[-1] == 3 and grid.shape[1] == 2 * 128 + 2
    assert ui["text"][0] == text
    # the library gives the same numbers
    from fdd.metrics import evaluate_edit, load_metric_models

    lib = evaluate_edit(load_metric_models(*(str(metrics_root / k / n) for k, n in
                                             (("clip", "clip-vit-large-patch14"), ("pickscore", "PickScore_v1"),
                                              ("viclip", "ViCLIP-InternVid-10M-FLT")))), a, b, "a green ball", "a red ball")
    assert res["metrics"] == pytest.approx(lib["metrics"], abs=1e-5)
    # model-free only, no file
    (text2, _), _ = _run(node, input_frames=a, output_frames=a, output_caption="x", clip_model="none",
                         filename_prefix="")
    res2 = json.loads(text2)
    assert "file" not in res2 and res2["metrics"]["structure_ssim"] == pytest.approx(1.0, abs=1e-4)
    assert res2["skipped"]["clip_text_alignment"] == "no clip model given"


def test_node_errors_name_the_input(comfy_pack, metrics_root, tmp_path):
    import shutil

    node = comfy_pack["FDD_VideoEditMetrics"]
    a = moving_shapes_clip(2, 16, 16)
    with pytest.raises(ValueError, match="input 'clip_model' must be one of .*got 'nope'"):
        _run(node, input_frames=a, output_frames=a, output_caption="x", clip_model="nope", filename_prefix="")
    with pytest.raises(ValueError, match="output_caption"):
        _run(node, input_frames=a, output_frames=a, output_caption=" ", filename_prefix="")
    broken = metrics_root / "viclip" / "broken-viclip"
    broken.mkdir()
    try:
        with pytest.raises(ValueError, match=r"viclip_model: .*broken-viclip'.*no ViCLIP weights file"):
            _run(node, input_frames=a, output_frames=a, output_caption="x", clip_model="none",
                 viclip_model="broken-viclip", filename_prefix="")
    finally:
        shutil.rmtree(broken)
    with pytest.raises(ValueError, match="output_frames"):
        _run(node, input_frames=a, output_frames=torch.zeros(2, 16, 16), output_caption="x", clip_model="none",
             filename_prefix="")
