"""Smoke test of bench/ablation_eve.py (EVE Table 2 on the toy world) on the untrained toy run:
every row trained / sampled and scored, the files written, and the ablation switches really
changing what the trainer does."""

from __future__ import annotations

import json
import math
import os
import sys

import pytest

pytestmark = pytest.mark.slow

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "bench"))

ROW_KEYS = ["pnp", "fdd", "no_sds", "no_disc", "uniform"]
SMALL = ["--clips", "2", "--train-steps", "2", "--batch", "1", "--micro-batch", "1", "--k-steps", "2",
         "--teacher-steps", "1", "--edit-steps", "1", "--dataset-items", "7", "--dino-resolution", "32",
         "--lr", "1e-2", "--threads", "1", "--grid-clips", "1"]


@pytest.fixture(scope="module")
def result(toy_untrained, tmp_path_factory):
    import ablation_eve

    d = tmp_path_factory.mktemp("ablation_eve")
    out = d / "res" / "ablation_eve.json"
    rc = ablation_eve.main(["--run", toy_untrained, "--work", str(d / "work"), "--out", str(out), *SMALL])
    assert rc == 0
    with open(out) as fh:
        return json.load(fh), out, d


def test_every_row_scored_and_files_written(result):
    doc, out, _ = result
    assert doc["bench"] == "ablation_eve" and doc["machine"]["threads"] == 1
    assert list(doc["rows"]) == ROW_KEYS
    for key, row in doc["rows"].items():
        a = row["aggregate"]
        for m in ("fully_right", "edit_accuracy", "attribute_accuracy", "preservation", "attributes_constant"):
            assert 0.0 <= a[m] <= 1.0, (key, m, a[m])
        pr = a["path_residual_px_median"]
        assert math.isnan(pr) or pr >= 0
        assert a["n"] == 2 and len(row["per_clip"]) == 2
        assert row["edit_s_per_clip"] > 0
    for key in ROW_KEYS[1:]:
        tr = doc["rows"][key]["training"]
        assert len(tr["history"]) == 2 and tr["train_s"] > 0 and os.path.isfile(tr["lora"])
    # every claim of the table evaluated on the four metrics, with a verdict
    assert {c["id"] for c in doc["claims"]} == {"no_alignment_poor", "both_terms_vital_sds", "sds_larger_impact",
                                                "adversarial_alone_some_alignment", "both_terms_vital_disc",
                                                "kbin_helps"}
    import ablation_eve

    for c in doc["claims"]:
        assert len(c["results"]) == 4
        assert c["verdict"] == ablation_eve.common.claim_verdict([r["verdict"] for r in c["results"]])
        for r in c["results"]:
            assert r["verdict"] in ablation_eve.common.VERDICTS and r["min_effect"] == doc["settings"]["min_effect"][r["metric"]]
    md = out.with_suffix(".md")
    grid = out.parent / "ablation_eve_grid.png"
    assert md.is_file() and grid.is_file()
    text = md.read_text()
    for key in ROW_KEYS:
        assert f"`{key}`" in text
    assert "paper's claimed direction" in text
    from PIL import Image

    with Image.open(grid) as im:  # 1 clip: input, ground truth, 5 rows
        assert im.height == 7 * (32 + 2) * 2


def test_claims_aggregate_the_shared_per_metric_verdicts():
    import ablation_eve

    # fdd beats pnp on edit accuracy on every clip (reproduced), preservation unchanged
    per_clip = {"fdd": [{"fully_right": 0.0, "edit_accuracy": 0.9 + 0.01 * i, "preservation": 0.5,
                         "attributes_constant": 1.0} for i in range(4)],
                "pnp": [{"fully_right": 0.0, "edit_accuracy": 0.5, "preservation": 0.5,
                         "attributes_constant": 1.0} for _ in range(4)]}
    (c,) = ablation_eve.score_claims(per_clip)
    assert c["id"] == "no_alignment_poor" and [r["verdict"] for r in c["results"]] == [
        "no clear change", "reproduced", "no clear change", "no clear change"]
    assert c["verdict"] == "reproduced"
    r = c["results"][1]
    assert (r["clip_wins"], r["clip_losses"], r["n"]) == (4, 0, 4) and math.isclose(r["delta"], 0.415)
    # ... and worse on preservation on every clip: mixed
    for row in per_clip["fdd"]:
        row["preservation"] = 0.25
    assert ablation_eve.score_claims(per_clip)[0]["verdict"] == "mixed"


def test_variants_train_differently(result):
    doc, _, _ = result
    rows = doc["rows"]
    hist = {k: rows[k]["training"]["history"] for k in ROW_KEYS[1:]}
    # schedule: fdd / uniform / no_disc: one SDS-only iteration then phase 2; no_sds adversarial throughout
    assert [h["phase"] for h in hist["fdd"]] == [1, 2]
    assert [h["phase"] for h in hist["no_sds"]] == [2, 2]
    # discriminators: trained in fdd's phase 2 and every no_sds iteration, never in no_disc
    assert ["loss_d" in h for h in hist["fdd"]] == [False, True]
    assert all("loss_d" in h for h in hist["no_sds"])
    assert not any("loss_d" in h for h in hist["no_disc"])
    # w/o SDS: the generator loss is the adversarial terms alone (SDS is logged, not used)
    for h in hist["no_sds"]:
        assert h["loss_g"] == pytest.approx(0.5 * h["g_edit"] + 0.5 * h["g_video"], rel=1e-5, abs=1e-7)
        assert h["sds_edit_gap"] > 0
    h = hist["fdd"][1]
    assert h["loss_g"] != pytest.approx(0.5 * h["g_edit"] + 0.5 * h["g_video"], rel=1e-5, abs=1e-7)
    # timesteps: uniform = the k-step DDIM timesteps every iteration; K-bin one per bin, drawn anew
    from fdd.sampling import DDIMSchedule

    assert [h["timesteps"] for h in hist["uniform"]] == [DDIMSchedule().timesteps(2)] * 2
    kb = [h["timesteps"] for h in hist["fdd"]]
    assert all(500 <= t[0] < 1000 and 0 <= t[1] < 500 for t in kb) and kb != [DDIMSchedule().timesteps(2)] * 2
    # the LoRAs differ: every ablation's weight change is away from full FDD's
    assert rows["fdd"]["lora_delta_norm"] > 0
    for k in ("no_sds", "no_disc", "uniform"):
        assert rows[k]["lora_delta_distance_to_fdd"] > 1e-3 * rows["fdd"]["lora_delta_norm"], k
    assert rows["pnp"]["lora_delta_norm"] == 0.0
    # the configs written for the rows differ exactly in the ablation switches
    cfg = {k: rows[k]["fdd_config"] for k in ROW_KEYS[1:]}
    diff = {k: {n for n in cfg[k] if cfg[k][n] != cfg["fdd"][n] and n != "output_dir"} for k in cfg}
    assert diff == {"fdd": set(), "no_sds": {"use_sds", "iterations_sds", "iterations_adv"},
                    "no_disc": {"use_discriminators"}, "uniform": {"timestep_sampling"}}


def test_second_run_reuses_finished_loras(result, toy_untrained):
    import ablation_eve

    _, _, d = result
    out = d / "res2" / "ablation_eve.json"
    args = [a for a in SMALL]
    args[args.index("--clips") + 1] = "1"
    assert ablation_eve.main(["--run", toy_untrained, "--work", str(d / "work"), "--out", str(out),
                              "--rows", "fdd,no_disc", *args]) == 0
    doc = json.loads(out.read_text())
    assert list(doc["rows"]) == ["fdd", "no_disc"]
    assert all(doc["rows"][k]["training"]["reused"] for k in doc["rows"])
    # a changed training setting names another folder (so it trains anew); the folder name
    # ignores where the run writes and on which device
    import argparse

    ns = argparse.Namespace(train_steps=2, frames=8, size=32, batch=1, micro_batch=1, lr=1e-2, d_lr=1e-2, lora_rank=8,
                            k_steps=2, cfg=4.0, image_cfg=1.0, teacher_steps=1, dino_resolution=32, device="cpu",
                            seed=0, checkpoint_every=25)
    paths = doc["settings"]["paths"]
    h = ablation_eve.config_hash(ablation_eve.fdd_config("no_disc", ns, paths, "/a"))
    assert os.path.basename(os.path.dirname(doc["rows"]["no_disc"]["training"]["lora"])) == f"no_disc-{h}"
    assert h == ablation_eve.config_hash(ablation_eve.fdd_config("no_disc", argparse.Namespace(
        **{**vars(ns), "device": "cuda"}), paths, "/b"))
    assert h != ablation_eve.config_hash(ablation_eve.fdd_config("no_disc", argparse.Namespace(
        **{**vars(ns), "lr": 2e-2}), paths, "/a"))
    assert h != ablation_eve.config_hash(ablation_eve.fdd_config("fdd", ns, paths, "/a"))
