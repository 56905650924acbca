"""Smoke test of bench/ablation_ei2.py (EI² Fig. 4-5 ablation on the toy world) on an untrained
toy run: the smallest settings, every output written, every variant scored, and the variants
really are different models (different tuned tensors, different edited videos)."""

from __future__ import annotations

import json
import math
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "bench"))

import ablation_ei2

pytestmark = pytest.mark.slow

FRACTIONS = ("edit_accuracy", "attribute_accuracy", "preservation", "attributes_constant", "fully_right")
EXPECTED = {  # the switches each variant must carry (DESIGN: the paper's Fig. 4 / Fig. 5 settings)
    "tav": {"attention": "sparse_causal", "temporal_norm": "layer_norm", "spectral_norm": False},
    "stam_sc": {"attention": "sparse_causal", "temporal_norm": "instance_centering", "spectral_norm": True},
    "ln_ffam": {"attention": "ffam", "temporal_norm": "layer_norm", "spectral_norm": False},
    "ei2": {"attention": "ffam", "temporal_norm": "instance_centering", "spectral_norm": True},
}


@pytest.fixture(scope="module")
def ablation(toy_untrained, tmp_path_factory):
    out = tmp_path_factory.mktemp("ablation_ei2") / "ablation_ei2.json"
    rc = ablation_ei2.main(["--run", toy_untrained, "--clips", "2", "--tune-steps", "2", "--edit-steps", "2",
                            "--threads", "1", "--grid-clips", "2", "--out", str(out)])
    assert rc == 0
    with open(out) as fh:
        return out, json.load(fh)


def test_every_variant_is_scored_with_its_configuration(ablation):
    _, doc = ablation
    assert doc["bench"] == "ablation_ei2" and doc["machine"]["threads"] == 1
    assert list(doc["variants"]) == list(EXPECTED)
    assert doc["settings"]["clips"] == 2 and len(doc["settings"]["edits"]) == 2
    for key, want in EXPECTED.items():
        v = doc["variants"][key]
        for field, value in want.items():
            assert v["config"][field] == value, (key, field)
        agg = v["aggregate"]
        assert agg["n"] == 2 and len(v["per_clip"]) == 2
        for m in FRACTIONS:
            assert 0.0 <= agg[m] <= 1.0, (key, m, agg[m])
            for row in v["per_clip"]:
                assert 0.0 <= row[m] <= 1.0, (key, m, row)
        assert set(agg["per_task"]) == {"Local", "Background"}  # the default tasks, cycled
        assert math.isfinite(agg["frame_diff_error"]) and agg["frame_diff_error"] > 0  # noise is not the truth
        assert v["wall_s"] > 0 and v["tune_s_per_clip"] > 0 and v["edit_s_per_clip"] > 0
    # every claim pair is compared on every listed metric, with a verdict
    ids = {c["id"] for c in doc["claims"]}
    assert ids == {"fig4_ic_sn_over_ln", "fig5_ffam_over_sca", "tab1_ei2_over_tav"}
    for c in doc["claims"]:
        assert c["verdict"] in ("reproduced", "opposite", "mixed", "no clear change", "not measurable")
        assert c["verdict"] == ablation_ei2.common.claim_verdict([r["verdict"] for r in c["results"]])
        for r in c["results"]:
            assert r["verdict"] in ablation_ei2.common.VERDICTS, r
            assert r["min_effect"] == doc["settings"]["min_effect"][r["metric"]]
    (cmp,) = doc["comparisons"]
    assert cmp["unit"] == "s" and cmp["ours"] > 0 and cmp["baseline"] > 0


def test_the_variants_are_different_models(ablation):
    _, doc = ablation
    v = doc["variants"]
    ln = set(v["tav"]["tuned_tensor_suffixes"])
    ic = set(v["stam_sc"]["tuned_tensor_suffixes"])
    assert "temporal.norm.weight" in ln and "temporal.norm.weight" not in ic
    assert {"temporal.gate", "temporal.to_v.u", "temporal.to_out.u"} <= ic and "temporal.gate" not in ln
    assert set(v["ln_ffam"]["tuned_tensor_suffixes"]) == ln and set(v["ei2"]["tuned_tensor_suffixes"]) == ic
    # the edited videos differ from the baseline's (temporal module and attention both matter)
    for key in ("stam_sc", "ln_ffam", "ei2"):
        assert v[key]["mean_abs_output_diff_vs_tav"] > 1e-4, key
    assert v["tav"]["mean_abs_output_diff_vs_tav"] == 0.0


def test_markdown_and_grid_are_written(ablation):
    from PIL import Image

    out, doc = ablation
    md_path, grid_path = doc["markdown"], doc["grid"]
    assert os.path.dirname(md_path) == os.path.dirname(str(out))
    with open(md_path) as fh:
        md = fh.read()
    assert "| variant |" in md and "paper's claimed direction" in md
    for key in EXPECTED:
        assert f"`{key}`" in md
    img = Image.open(grid_path)
    rows = 2 * (2 + len(EXPECTED))  # 2 clips x (input, ground truth, 4 variants)
    assert img.size == (8 * 34 * 2, rows * 34 * 2)


def test_rescore_recomputes_the_verdicts_from_the_saved_rows(ablation, tmp_path):
    import shutil

    out, doc = ablation
    copy = tmp_path / "ablation_ei2.json"
    shutil.copy(out, copy)
    saved = json.loads(copy.read_text())
    for c in saved["claims"]:  # stale verdicts, as written by an older rule
        c["verdict"] = "stale"
        for r in c["results"]:
            r["verdict"] = "stale"
    copy.write_text(json.dumps(saved))
    assert ablation_ei2.main(["--rescore", "--out", str(copy)]) == 0
    new = json.loads(copy.read_text())
    assert [c["verdict"] for c in new["claims"]] == [c["verdict"] for c in doc["claims"]]
    assert [[r["verdict"] for r in c["results"]] for c in new["claims"]] == \
        [[r["verdict"] for r in c["results"]] for c in doc["claims"]]
    assert new["variants"] == doc["variants"] and new["machine"] == doc["machine"] and new["rescored"]
    md = (tmp_path / "ablation_ei2.md").read_text()
    assert new["markdown"] == str(tmp_path / "ablation_ei2.md") and "--rescore" in md and "stale" not in md
    assert ablation_ei2.common.VERDICT_RULE in md
