"""The shipped toy models: ``python -m fdd.toy ship`` writes the ComfyUI-category tree with cards,
and the committed tree (models/toy) loads through the pack's loaders and still scores what its
cards say on a small sample."""

from __future__ import annotations

import json
import math
import os
from dataclasses import replace

import pytest
import torch

from fdd.toy.ship import FLOORS, LAYOUT, SHIPPED_DIR, floors_met, measure, ship, toy_paths


@pytest.mark.slow
def test_ship_writes_the_category_tree_with_cards_in_fp16(toy_untrained, tmp_path):
    from safetensors import safe_open

    out = tmp_path / "toy"
    cards = ship(toy_untrained, str(out), torch.float16, n_image=2, n_video=1, compare_fp32=False)
    for rel in LAYOUT.values():
        assert (out / rel).exists(), rel
    assert not (tmp_path / "toy.partial").exists()
    with safe_open(str(out / LAYOUT["backbone"]), "pt") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} - {"I64"} == {"F16"}  # position_ids stay ints
    on_disk = json.loads((out / "cards.json").read_text())
    assert on_disk["models"].keys() == {"backbone", "controlnet", "motion", "t2v"}
    assert on_disk["settings"]["dtype"] == "float16" and on_disk["total_bytes"] == cards["total_bytes"]
    for comp in ("backbone", "controlnet", "motion", "t2v"):
        assert on_disk["models"][comp]["quality"]["n"] in (1, 2)
        assert on_disk["models"][comp]["bytes"] > 0
    assert "## backbone: `checkpoints/toy_sd1.safetensors`" in (out / "README.md").read_text()
    assert toy_paths(str(out))["t2v"] == str(out / LAYOUT["t2v"])
    assert set(on_disk["models"]["controlnet"]["vae_ceiling"]) >= {"edit_accuracy", "preservation"}
    assert on_disk["models"]["motion"]["vae_ceiling"]["n"] == 1 and on_disk["models"]["t2v"]["vae_ceiling"] is None
    assert "- ceiling (ground truth through the shipped VAE" in (out / "README.md").read_text()
    # an untrained set meets no floor
    assert floors_met(cards["models"] and {k: v["quality"] for k, v in cards["models"].items()}) == {
        "backbone": False, "controlnet": False, "motion": False}


class _IdentityVAE:
    """A kit whose VAE is exact: encode is the pixels, decode maps them back to 0..1 frames."""

    def encode_images(self, pixels):
        return pixels.clone()

    def decode(self, latents):
        return ((latents + 1) / 2).permute(0, 2, 3, 1).numpy()


def test_vae_ceilings_score_ground_truth_through_the_vae():
    from fdd.toy import train as T

    cfg = T.TrainConfig(eval_samples=48)
    edit = T.vae_ceiling_edit(_IdentityVAE(), cfg)
    # rendered ground truth scores (almost) perfectly: the evaluator misreads ~1 % of edits
    assert edit["n"] == 48 and edit["edit_accuracy"] >= 0.95 and edit["preservation"] >= 0.95
    video = T.vae_ceiling_video(_IdentityVAE(), replace(cfg, eval_samples=12))
    assert video["n"] == 12 and video["attributes_constant"] >= 11 / 12 and video["attribute_accuracy_f0"] == 1.0
    assert video["path_residual_px_median"] < 0.3  # rendered truth: ~0.19 px of pixelation
    assert edit.keys() == {"edit_accuracy", "preservation", "attribute_accuracy", "fully_right",
                           "per_task_fully_right", "n"}


def test_floors_rule():
    ok = {"backbone": {"all_correct": 0.9}, "controlnet": {"edit_accuracy": 0.8, "preservation": 0.95},
          "motion": {"attributes_constant": 0.95, "path_residual_px_median": 0.9}}
    assert floors_met(ok) == {"backbone": True, "controlnet": True, "motion": True}
    ok["motion"]["path_residual_px_median"] = 1.2
    ok["controlnet"]["preservation"] = 0.89
    assert floors_met(ok) == {"backbone": True, "controlnet": False, "motion": False}
    assert set(FLOORS) == {"backbone", "controlnet", "motion"}


def test_card_command_names_the_continuation_and_splits_its_minutes(tmp_path):
    """A run past the CPU recipe's last stage gets each continuation leg it reached in its
    command (the leg's flags and stages) and its minutes split at the legs' ends (read from the
    training log)."""
    from fdd.toy import train as T
    from fdd.toy.ship import _command, _training_record

    end = T.STAGES["controlnet"][-1][0]
    h100, cpu = T.CONTINUATIONS["controlnet"]
    h_end = h100["stages"][-1][0]

    def run(last, steps):
        (tmp_path / "controlnet").mkdir(exist_ok=True)
        (tmp_path / "controlnet" / "log.jsonl").write_text(
            "\n".join(json.dumps({"step": k, "elapsed_s": 2.0 * k}) for k in steps) + "\n")
        (tmp_path / "controlnet" / "result.json").write_text(json.dumps(
            {"step": last, "elapsed_s": 2.0 * last, "config": {"seed": 0, "batch": 32, "lr": 1e-4}}))
        return _command(str(tmp_path), "controlnet", _training_record(str(tmp_path), "controlnet"))

    # into the first leg only
    cmd, minutes = run(end + 50, (10, end, end + 50))
    assert "then on one H100: --device cuda --batch 128" in cmd and f"--steps {h_end} --lr 0.0001" in cmd
    assert "task-weights" not in cmd
    assert minutes == {"recipe_minutes_cpu": round(2.0 * end / 60, 2),
                       "continuations": [{"where": "one H100", "to_step": end + 50, "minutes": round(100 / 60, 2)}]}
    # through the first leg and into the second
    last = h_end + 300
    cmd, minutes = run(last, (10, end, h_end - 3, h_end, last))
    assert "then on 1 CPU thread: --batch 32 --eval-every 500 --eval-samples 128 --task-weights Add=3,Local=3" in cmd
    assert f"--steps {cpu['stages'][-1][0]} --lr 0.0001" in cmd
    assert minutes["continuations"] == [
        {"where": "one H100", "to_step": h_end, "minutes": round(2.0 * (h_end - end) / 60, 2)},
        {"where": "1 CPU thread", "to_step": last, "minutes": round(2.0 * (last - h_end) / 60, 2)}]
    # the recipe alone: no continuation named
    cmd, minutes = run(end, (10, end))
    assert "then on" not in cmd and minutes == {}


CARDS = os.path.join(SHIPPED_DIR, "cards.json")


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isfile(CARDS), reason="no shipped toy models in this checkout")
def test_shipped_models_load_and_score_what_their_cards_say():
    with open(CARDS) as fh:
        cards = json.load(fh)
    assert cards["total_bytes"] <= 40e6
    got = measure(toy_paths(), n_image=16, n_video=4, cfg_scale=cards["settings"]["cfg_scale"])
    checks = {"backbone": "all_correct", "controlnet": "edit_accuracy", "motion": "attributes_constant",
              "t2v": "attributes_constant"}
    for comp, key in checks.items():
        want = cards["models"][comp]["quality"][key]
        n = got[comp]["n"]
        # a small sample: allow 3 binomial standard deviations below the card's figure
        slack = 3 * math.sqrt(max(want * (1 - want), 0.04) / n)
        assert got[comp][key] >= want - slack, (comp, key, got[comp][key], want)


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isfile(CARDS), reason="no shipped toy models in this checkout")
def test_cli_fill_reports_box_fill_per_shape_for_each_source(capsys):
    from fdd.toy.__main__ import main

    assert main(["fill", "--n-image", "3", "--n-video", "1", "--seed", "1"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert set(rep) == {"settings", "rendered", "backbone", "motion"}
    assert rep["rendered"]["square"] == {"n": 1, "p5": 1.0, "p50": 1.0, "p95": 1.0, "above_square_threshold": 1.0}
    assert rep["backbone"]["circle"]["n"] == 1 and 0 < rep["backbone"]["circle"]["p50"] <= 1
    assert sum(v["n"] for v in rep["motion"].values()) == 8  # one clip: 8 frames, one shape


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isfile(CARDS), reason="no shipped toy models in this checkout")
def test_unpack_rebuilds_a_run_that_continues_and_reships_with_the_same_records(tmp_path):
    """``unpack`` turns the shipped tree into a run folder: its components compute what the shipped
    files compute, its records give back each card's command, steps and minutes split, a
    component continues from the card's step (no optimizer state: AdamW starts afresh), and a
    non-empty destination or a non-shipped source is refused by name."""
    from fdd.models.sd1 import load_sd1
    from fdd.toy import train as T
    from fdd.toy.ship import _command, _elapsed_at, _training_record, unpack

    run = tmp_path / "run"
    res = unpack(None, run)
    assert res["components"] == ["controlnet", "decoder", "motion", "t2v", "unet", "vae"]
    assert not (tmp_path / "run.partial").exists()
    shipped = load_sd1(toy_paths()["backbone"], tokenizer=toy_paths()["tokenizer"])
    kit = T.Toolkit(str(run))
    x = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    emb = kit.emb(["a red circle on a white background", ""])
    with torch.no_grad():
        want = shipped.unet.float()(x, torch.tensor([500, 500]), encoder_hidden_states=emb).sample
        got = kit.unet(x, torch.tensor([500, 500]), encoder_hidden_states=emb).sample
        assert torch.allclose(got, want, atol=1e-5)
        ids = shipped.tokenizer(["make the circle blue"], padding="max_length", max_length=20,
                                return_tensors="pt").input_ids
        assert torch.allclose(kit.emb(["make the circle blue"])[0], shipped.text_encoder.float()(ids)[0][0],
                              atol=1e-5)
        assert torch.equal(kit.vae.decoder.conv_out.weight, shipped.vae.float().decoder.conv_out.weight)
    cards = json.loads(open(CARDS).read())["models"]
    for comp, name in (("backbone", "unet"), ("controlnet", "controlnet"), ("motion", "motion"), ("t2v", "t2v")):
        rec = _training_record(str(run), name)
        cmd, minutes = _command(str(run), name, rec)
        card = cards[comp]
        assert cmd == card["command"] and rec["steps"] == card["steps"], comp
        assert rec["train_minutes"] == card["train_minutes"] and rec["lr"] == card["lr"], comp
        assert minutes.get("continuations") == card.get("continuations"), comp
    dec = cards["backbone"]["decoder_training"]
    assert _training_record(str(run), "decoder")["steps"] == dec["steps"]
    assert _elapsed_at(str(run), "decoder", dec["steps"]) == round(dec["train_minutes"] * 60, 2)
    # continue the edit adapter one step from the card's step
    step0 = cards["controlnet"]["steps"]
    out = T.train("controlnet", str(run), T.TrainConfig(steps=step0 + 1, minutes=1e6, batch=2, eval_samples=1,
                                                        sample_steps=2, eval_every=0, lr=1e-5))
    assert out["step"] == step0 + 1
    st = torch.load(run / "controlnet" / "state.pt", weights_only=True)
    assert st["step"] == step0 + 1 and st["opt"] is not None
    log = [json.loads(line) for line in open(run / "controlnet" / "log.jsonl")]
    assert log[-2] == {"step": step0, "elapsed_s": round(cards["controlnet"]["train_minutes"] * 60, 2), "unpacked": True}
    assert log[-1]["step"] == step0 + 1 and log[-1]["final"]
    with pytest.raises(FileExistsError, match="run: .*already holds files"):
        unpack(None, run)
    with pytest.raises(ValueError, match="models: .*not a shipped toy tree"):
        unpack(str(run), tmp_path / "again")
