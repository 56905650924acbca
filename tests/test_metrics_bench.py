"""The benchmark runner and ``python -m fdd eval`` on tiny models: a two-item manifest edited
with plug-and-play end to end, the TGVE 2023 / TGVE+ CSV layout, the method registry."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from fdd.testing.clip import moving_shapes_clip, write_video


@pytest.fixture(scope="module")
def metric_paths(tmp_path_factory):
    from fdd.testing.metric_models import write_metric_models

    return write_metric_models(tmp_path_factory.mktemp("fdd_metrics"))


def _frame_folder(path, frames):
    from PIL import Image

    os.makedirs(path, exist_ok=True)
    for i, f in enumerate(frames):
        Image.fromarray((f.numpy() * 255).round().astype(np.uint8)).save(os.path.join(path, f"{i:05d}.jpg"))
    return path


@pytest.mark.integration
def test_cli_runs_a_two_item_manifest_end_to_end(models_tree, metric_paths, tmp_path, capsys):
    from fdd.metrics.cli import main

    write_video(moving_shapes_clip(6, 32, 32, seed=0), tmp_path / "clips" / "balls.mp4")
    _frame_folder(tmp_path / "clips" / "shapes", moving_shapes_clip(5, 32, 32, seed=2))
    manifest = tmp_path / "bench.jsonl"
    manifest.write_text(
        json.dumps({"clip": "clips/balls.mp4", "input_caption": "a red ball", "instruction": "make the ball green",
                    "output_caption": "a green ball", "task": "object"}) + "\n"
        + json.dumps({"clip": "clips/shapes", "input_caption": "shapes on grey", "instruction": "make it snowy",
                      "output_caption": "shapes in snow", "task": "background", "id": "snow"}) + "\n")
    out = tmp_path / "run"
    rc = main(["bench", str(manifest), "--method", "plug_and_play", "--out", str(out), "--seed", "7",
               "--frames", "4", "--clip", metric_paths["clip"], "--pickscore", metric_paths["pickscore"],
               "--viclip", metric_paths["viclip"],
               "--set", f"checkpoint={models_tree['checkpoint']}", "--set", f"controlnet={models_tree['controlnet']}",
               "--set", f"motion_module={models_tree['motion']}", "--set", f"tokenizer={models_tree['tokenizer']}",
               "--set", "steps=2", "--set", "context_frames=4", "--set", "context_overlap=1"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert rc == 0, lines
    assert json.loads(lines[-1])["done"] and json.loads(lines[-1])["items"] == 2
    res = json.loads((out / "results.json").read_text())
    assert [r["id"] for r in res["items"]] == ["balls__object", "snow"]
    assert res["method"] == "plug_and_play" and res["seed"] == 7
    for r in res["items"]:
        assert r["frames"] == 4 and r["seed"] == 7
        assert set(r["metrics"]) >= {"clip_frame_consistency", "clip_text_alignment", "clip_dir", "pickscore",
                                     "viclip_dir", "viclip_out", "structure_ssim", "temporal_flicker"}
        per = json.loads((out / "items" / r["id"] / "metrics.json").read_text())
        assert per["metrics"] == pytest.approx(r["metrics"])
        from PIL import Image

        grid = np.asarray(Image.open(out / r["grid"]))
        assert grid.ndim == 3 and grid.shape[0] > grid.shape[1] / 8 and grid.std() > 5
    agg = json.loads((out / "aggregate.json").read_text())
    assert agg["all"]["n"] == 2 and set(agg["by_task"]) == {"object", "background"}
    mean_pick = np.mean([r["metrics"]["pickscore"] for r in res["items"]])
    assert agg["all"]["pickscore"] == pytest.approx(mean_pick)
    page = (out / "report.html").read_text()
    assert "items/snow/grid.png" in page and "items/balls__object/grid.png" in page and "pickscore" in page
    # the same seed gives the same edit: re-running reproduces the metrics
    rc = main(["bench", str(manifest), "--method", "plug_and_play", "--out", str(tmp_path / "again"), "--seed", "7",
               "--frames", "4", "--clip", metric_paths["clip"], "--limit", "1",
               "--set", f"checkpoint={models_tree['checkpoint']}", "--set", f"controlnet={models_tree['controlnet']}",
               "--set", f"motion_module={models_tree['motion']}", "--set", f"tokenizer={models_tree['tokenizer']}",
               "--set", "steps=2", "--set", "context_frames=4", "--set", "context_overlap=1"])
    assert rc == 0
    again = json.loads((tmp_path / "again" / "results.json").read_text())["items"][0]["metrics"]
    assert again["clip_text_alignment"] == pytest.approx(res["items"][0]["metrics"]["clip_text_alignment"], abs=1e-6)


def test_tgve_layout_with_tgve_plus_tasks(metric_paths, tmp_path):
    from fdd.metrics.benchmark import load_dataset, run_benchmark
    from fdd.metrics.evaluate import load_metric_models

    root = tmp_path / "loveu-tgve-2023"
    _frame_folder(root / "DAVIS_480p" / "blackswan", moving_shapes_clip(8, 32, 32, seed=1))
    write_video(moving_shapes_clip(8, 32, 32, seed=4), root / "cat.mp4")
    (root / "LOVEU-TGVE-2023_Dataset.csv").write_text(
        "Video name,Our GT caption,Style Change Caption,Object Change Caption,Background Change Caption,"
        "Multiple Changes Caption,Remove Caption,Remove Instruction,Texture Caption,Texture Instruction\n"
        "blackswan,a black swan swims,a black swan in van gogh style,a white duck swims,a black swan on a lake "
        "at night,a duck at night in watercolor,an empty pond,remove the swan,,\n"
        "cat,a cat walks,,,,,,,a furry metal cat walks,make the cat metal\n")
    items = load_dataset(str(root))
    assert [(i.video, i.task) for i in items] == [
        ("blackswan", "style"), ("blackswan", "object"), ("blackswan", "background"), ("blackswan", "multiple"),
        ("blackswan", "remove"), ("cat", "texture")]
    assert items[0].input_caption == "a black swan swims" and items[0].edit_instruction == items[0].output_caption
    assert items[4].edit_instruction == "remove the swan" and items[5].clip.endswith("cat.mp4")
    models = load_metric_models(clip=metric_paths["clip"])
    res = run_benchmark(items, "identity", models, str(tmp_path / "out"), max_frames=4, size=24)
    assert res["aggregate"]["all"]["n"] == 6 and len(res["aggregate"]["by_task"]) == 6
    for r in res["items"]:
        m = r["metrics"]
        # no edit: the visual change is zero -> direction 0; structure kept perfectly
        assert m["clip_dir"] == pytest.approx(0.0, abs=1e-6)
        assert m["structure_ssim"] == pytest.approx(1.0, abs=1e-4)
        assert "pickscore" not in m and r["skipped"]["pickscore"] == "no pickscore model given"
        assert r["size"] == [24, 24]
    # the input clip was embedded once for its five prompts
    assert (tmp_path / "out" / "report.html").exists()


def test_method_registry_and_errors(metric_paths, tmp_path):
    from fdd.metrics.benchmark import METHODS, BenchItem, register_method, run_benchmark
    from fdd.metrics.cli import main
    from fdd.metrics.evaluate import MetricModels

    assert {"plug_and_play", "eve", "assd", "identity"} <= set(METHODS)
    _frame_folder(tmp_path / "c", moving_shapes_clip(3, 16, 16))
    item = BenchItem(id="x", clip=str(tmp_path / "c"), output_caption="a dark clip")
    calls = []

    def darken(frames, it, seed, ctx):
        calls.append((it.id, seed, ctx.options.get("amount")))
        return frames * float(ctx.options["amount"])

    register_method("darken_test", darken)
    try:
        res = run_benchmark([item], "darken_test", MetricModels(), str(tmp_path / "o"), options={"amount": 0.5}, seed=3)
    finally:
        METHODS.pop("darken_test")
    assert calls == [("x", 3, 0.5)]
    assert res["items"][0]["metrics"]["temporal_flicker"] == pytest.approx(
        0.5 * res["items"][0]["metrics"]["temporal_flicker_input"], rel=1e-5)
    with pytest.raises(ValueError, match="unknown 'nope'.*identity"):
        run_benchmark([item], "nope", MetricModels(), str(tmp_path / "o2"))
    # a method missing its model option fails that item; --keep-going records it
    res = run_benchmark([item], "eve", MetricModels(), str(tmp_path / "o3"), keep_going=True)
    assert "needs the option 'lora'" in res["items"][0]["error"] and res["aggregate"]["failed"] == 1
    # the CLI reports a missing model folder clearly, exit code 2
    rc = main(["measure", "--input", str(tmp_path / "c"), "--output", str(tmp_path / "c"),
               "--output-caption", "x", "--clip", str(tmp_path / "missing-clip")])
    assert rc == 2


def test_cli_measure_writes_json_and_grid(metric_paths, tmp_path, capsys):
    from fdd.metrics.cli import main

    a = _frame_folder(tmp_path / "in", moving_shapes_clip(4, 32, 32, seed=0))
    b = _frame_folder(tmp_path / "out", moving_shapes_clip(4, 32, 32, seed=5))
    rc = main(["measure", "--input", str(a), "--output", str(b), "--output-caption", "a ball",
               "--input-caption", "a red ball", "--viclip", metric_paths["viclip"],
               "--json", str(tmp_path / "m.json"), "--grid", str(tmp_path / "g.png")])
    assert rc == 0
    m = json.loads((tmp_path / "m.json").read_text())
    assert {"viclip_dir", "viclip_out", "structure_ssim"} <= set(m["metrics"])
    assert m["skipped"]["clip_frame_consistency"] == "no clip model given"
    assert (tmp_path / "g.png").stat().st_size > 0
    assert json.loads(capsys.readouterr().out)["metrics"] == m["metrics"]


def test_comparison_grid_layout():
    from fdd.metrics.grid import comparison_grid

    a = torch.zeros(10, 20, 40, 3)
    b = torch.ones(3, 10, 20, 3) * 0.5
    g = comparison_grid(a, b, max_columns=4, tile_height=16, gap=2)
    # 4 columns of 32-wide tiles (aspect 2) + 3 gaps; two rows of 16 + a gap
    assert g.shape == (1, 34, 4 * 32 + 3 * 2, 3)
    assert g[0, :16, :32].max() == 0 and g[0, 18:, :32].mean() == pytest.approx(0.5, abs=1e-3)
    # the output has 3 frames: the 4th tile of its row is blank (white)
    assert g[0, 18:, -32:].min() == 1.0


@pytest.mark.slow
def test_eve_and_assd_methods_run_on_the_tiny_models(models_tree, tmp_path):
    from fdd.metrics.benchmark import BenchItem, run_benchmark
    from fdd.metrics.evaluate import MetricModels

    clip = _frame_folder(tmp_path / "c", moving_shapes_clip(4, 32, 32))
    item = BenchItem(id="a", clip=str(clip), output_caption="a green ball", input_caption="a red ball",
                     instruction="make the ball green")
    common = dict(checkpoint=models_tree["checkpoint"], tokenizer=models_tree["tokenizer"], steps=2)
    eve = run_benchmark([item], "eve", MetricModels(), str(tmp_path / "eve"), seed=1,
                        options=dict(common, controlnet=models_tree["controlnet"], lora=models_tree["lora"],
                                     context_frames=4, context_overlap=1))
    pnp = run_benchmark([item], "plug_and_play", MetricModels(), str(tmp_path / "pnp"), seed=1,
                        options=dict(common, controlnet=models_tree["controlnet"], context_frames=4,
                                     context_overlap=1))
    # the aligned LoRA changes the result
    assert eve["items"][0]["metrics"]["structure_ssim"] != pnp["items"][0]["metrics"]["structure_ssim"]
    assd = run_benchmark([item], "assd", MetricModels(), str(tmp_path / "assd"), seed=1,
                         options=dict(common, t2v=models_tree["t2v"]))
    assert "error" not in assd["items"][0] and (tmp_path / "assd" / "items" / "a" / "grid.png").exists()
    ei2 = {v: run_benchmark([item], "ei2", MetricModels(), str(tmp_path / v), seed=1,
                            options=dict(common, variant=v, tune_steps=2, num_frames=4, lr=1e-3))
           for v in ("ei2", "tune_a_video")}
    for r in ei2.values():
        assert "error" not in r["items"][0], r["items"][0].get("error")
    # the two inflations give different edits of the same clip
    assert ei2["ei2"]["items"][0]["metrics"] != ei2["tune_a_video"]["items"][0]["metrics"]
    bad = run_benchmark([item], "ei2", MetricModels(), str(tmp_path / "bad"), keep_going=True,
                        options=dict(common, variant="nope"))
    assert "variant: expected 'ei2' or 'tune_a_video'" in bad["items"][0]["error"]


def test_viclip_reference_bpe_file_is_accepted(tmp_path):
    import gzip

    from fdd.metrics.viclip import load_clip_tokenizer

    with gzip.open(tmp_path / "bpe_simple_vocab_16e6.txt.gz", "wt", encoding="utf-8") as fh:
        fh.write("#version: 0.2\nh e\nl l\nhe ll\nhell o</w>\n")
    tok = load_clip_tokenizer(str(tmp_path), "x")
    ids = tok("hello", add_special_tokens=True)["input_ids"]
    assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id == 512 + 4 + 1
    assert tok.convert_tokens_to_ids("hell") == 512 + 2  # merges become vocabulary entries in order
