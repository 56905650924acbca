"""``bench/ablation_assd.py`` (the ASSD paper's Fig. 4 ablation on the toy world): a smoke run on
an untrained toy run with the smallest settings, its argument checks, and the claim-verdict rule
against hand-computed paired statistics."""

from __future__ import annotations

import importlib.util
import json
import math
import os

import pytest

pytestmark = pytest.mark.slow

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load(name):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", os.path.join(ROOT, "bench", f"{name}.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def bench():
    return _load("ablation_assd")


def test_smoke_run_writes_every_variant_scored_table_and_grid(bench, toy_untrained, tmp_path):
    from fdd.assd import ABLATIONS

    out = tmp_path / "ablation_assd.json"
    path = bench.main(["--run", toy_untrained, "--clips", "2", "--iters", "2", "--threads", "1",
                       "--grid-clips", "2", "--out", str(out)])
    assert path == str(out)
    doc = json.loads(out.read_text())
    assert doc["bench"] == "ablation_assd" and doc["machine"]["threads"] == 1
    s = doc["settings"]
    assert s["clips"] == 2 and s["iters"] == 2 and s["run_kind"] == "untrained"
    assert s["tasks"] == ["Local", "Texture", "Style"] and s["frames"] == 8 and s["latent"] == [16, 16]

    variants = doc["variants"]
    assert list(variants) == ["dds", "assd", "assd+fusion", "full"]
    for name, v in variants.items():
        assert v["switches"] == ABLATIONS[name]
        assert {k: v["config"][k] for k in ABLATIONS[name]} == ABLATIONS[name]
        assert v["config"]["steps"] == 2 and v["config"]["seed"] == variants["dds"]["config"]["seed"]
        agg = v["aggregate"]
        assert agg["n"] == 2 and set(agg["per_task"]) == {"Local", "Texture"}
        for m in ("edit_accuracy", "preservation", "contamination", "attributes_constant",
                  "attribute_accuracy", "fully_right"):
            assert 0.0 <= agg[m] <= 1.0, (name, m, agg[m])
        pr = agg["path_residual_px_median"]
        assert pr is None or pr >= 0.0
        assert len(v["per_clip"]) == 2
        assert v["seconds_per_clip"]["min"] > 0
        # only the variants with smoothing + mask report a mask fraction
        mf = v["diagnostics"]["mask_fraction_mean"]
        assert (mf is None) == (name == "dds") and (mf is None or 0.0 <= mf <= 1.0)

    # the variants really differ: each one's output differs from DDS-only (DDS from itself: 0)
    assert variants["dds"]["output_diff_vs_dds"]["max_abs"] == 0.0
    for name in ("assd", "assd+fusion", "full"):
        assert variants[name]["output_diff_vs_dds"]["mean_abs"] > 1e-3, name

    # the scoring is wired to the right edits: the ground truth scores perfectly, no contamination
    gt = doc["reference"]["ground truth (target render)"]["aggregate"]
    assert gt["edit_accuracy"] == 1.0 and gt["preservation"] == 1.0 and gt["contamination"] == 0.0

    assert {c["variant"] for c in doc["claims"]} == {"assd", "assd+fusion", "full"}
    for c in doc["claims"]:
        assert c["verdict"] in ("reproduced", "opposite", "no clear change", "not measurable")
        assert c["diff"]["n"] <= 2 and c["source"]
        assert c["diff"]["min_effect"] == s["min_effect"][c["metric"]]
    assert s["verdict_rule"] == bench.common.VERDICT_RULE

    assert [c["name"] for c in doc["comparisons"]] == [
        "assd_vs_dds_edit_time_per_clip", "assd_fusion_vs_dds_edit_time_per_clip", "full_vs_dds_edit_time_per_clip"]
    assert "ablation_assd" in _load("run_all").table(str(tmp_path))  # readable by the bench table

    md = (tmp_path / "ablation_assd.md").read_text()
    assert "| variant | metrics | paper's claimed direction | ours (reproduced / not) |" in md
    for _, label in bench.VARIANTS:
        assert label in md
    from PIL import Image

    with Image.open(tmp_path / "ablation_assd_grid.png") as im:  # 2 clips x (input, truth, 4 variants)
        assert im.size == (8 * 34 * 2, 2 * 6 * 34 * 2)


@pytest.mark.parametrize("argv, needle", [
    (["--tasks", "Local,Global"], "contamination"),
    (["--tasks", "Recolour"], "unknown"),
    (["--clips", "0"], ">= 1"),
    (["--set", "mask=false"], "ablation"),
    (["--set", "nonsense=1"], "key=value"),
])
def test_bad_arguments_are_refused_before_loading(bench, argv, needle):
    with pytest.raises(SystemExit) as exc:
        bench.main(["--run", "/nonexistent/toy_run", *argv])
    assert needle in str(exc.value)


def test_missing_run_is_a_clear_error(bench, tmp_path):
    with pytest.raises(SystemExit, match="neither a shipped toy tree"):
        bench.main(["--run", str(tmp_path), "--clips", "1", "--iters", "1", "--threads", "1"])


def test_claims_use_the_shared_rule_in_the_claimed_direction(bench):
    # the rule itself is tested in tests/test_bench_common.py; here: which variant is "first",
    # and that a claimed decrease (direction -1) is reproduced by a decrease
    per_clip = {"dds": [{"contamination": c} for c in (0.02, 0.03, 0.025, 0.04)],
                "assd": [{"contamination": c} for c in (0.01, 0.015, 0.012, 0.02)]}
    claim = {"variant": "assd", "vs": "dds", "metric": "contamination", "direction": -1}
    got = bench.check_claim(per_clip, claim)
    # assd - dds = -0.01, -0.015, -0.013, -0.02: mean -0.0145, sample sd 0.004203, se 0.0021016
    assert got["verdict"] == "reproduced"
    d = got["diff"]
    assert d["n"] == 4 and math.isclose(d["mean"], -0.0145) and math.isclose(d["se"], 0.0021016, rel_tol=1e-4)
    assert (d["clip_wins"], d["clip_losses"], d["clip_ties"]) == (4, 0, 0) and d["min_effect"] == 0.001
    assert bench.check_claim(per_clip, {**claim, "direction": +1})["verdict"] == "opposite"
    assert bench.check_claim(per_clip, {**claim, "variant": "dds", "vs": "assd"})["verdict"] == "opposite"
    # undefined values (no object tracked: NaN / None) are left out of the pairs
    per_clip = {"a": [{"edit_accuracy": v} for v in (1.0, float("nan"), None)],
                "b": [{"edit_accuracy": 0.5}] * 3}
    got = bench.check_claim(per_clip, {"variant": "a", "vs": "b", "metric": "edit_accuracy", "direction": +1})
    assert got["diff"]["n"] == 1 and got["verdict"] == "not measurable"
