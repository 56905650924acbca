"""Ablation "ablation_eve": EVE's Table 2 (§4.3) re-run on the toy world (issue 7).

Rows (every FDD row trains its own θ_align LoRA with the pack's trainer,
:mod:`fdd.distill.trainer`, on the same toy dataset, seed and number of iterations, then edits
every held-out clip with the EVE sampler, :func:`fdd.distill.eve.eve_edit`):

| key | Table 2 row | trainer switches (:class:`fdd.distill.FDDConfig`) |
|---|---|---|
| ``pnp`` | w/o alignment (plug-and-play) | no training: the unaligned stack, sampled with the teachers' guidance |
| ``fdd`` | EVE (full FDD) | SDS (first 2/3 of the iterations, the paper's 1000 of 1500), then SDS + discriminators; K-bin steps |
| ``no_sds`` | w/o SDS | ``use_sds=False``; every iteration adversarial (``iterations_sds=0``) |
| ``no_disc`` | w/o Discriminators | ``use_discriminators=False`` (SDS only, same schedule as ``fdd``) |
| ``uniform`` | uniform timesteps instead of K-bin | ``timestep_sampling="uniform"`` (the same k DDIM steps every iteration) |

``no_sds`` schedule: with the paper's SDS-only first phase, "w/o SDS" would make no update at
all for the first 2/3 of the iterations, so that row is adversarial from the first iteration
(the same number of generator updates as every other row). Table 2's "Random Init" row is not
run (the toy adapters are not re-initialised here).

Conditioning, as the toy adapters were trained (:func:`fdd.toy.train._cn_eps`): the ControlNet
gets each input frame (0..1) and the instruction, the backbone the output caption; the toy's
edit evaluation guides with cfg 4 over the text only (the "image" branch keeps the frame with
empty texts), i.e. InstructPix2Pix guidance with ``image_cfg`` 1. The teachers (SDS and the
discriminators' real samples) and the plug-and-play row use that guidance (``--cfg``,
``--image-cfg``); the aligned student is trained without guidance (``student_cfg`` 1) and
sampled so (``--eve-cfg`` 1), as the pack's ``FDD EVE Edit`` node defaults. The first frame is
edited by the edit teacher and anchored (``--first-frame edit``, EVE §4.0.4); the ``pnp`` row is
sampled by the same :func:`eve_edit` on the unaligned stack (no LoRA) at the teachers' guidance,
so the rows differ only in θ_align (with ``--first-frame none`` that is exactly
:func:`fdd.pipelines.plug_and_play.plug_and_play_edit`).

Discriminators: D_e / D_v sit on DINOv2 features. Nothing is downloaded, so unless ``--dino``
names a real DINOv2 folder they use a tiny RANDOM DINOv2 (:func:`fdd.testing.fdd_fixtures.
write_tiny_dinov2`), i.e. random frozen ViT features: a weaker discriminator than the paper's.

Scoring: :func:`fdd.toy.heldout.score_set` on ``--clips`` held-out edits (``heldout_edits``, all
seven tasks cycled; the training set is written with ``--data-seed``, not the held-out seed).

Outputs (``--out``, default ``bench/results/ablation_eve.json``; ``<stem>.md`` and
``<stem>_grid.png`` beside it):

- JSON in the shared bench shape (``bench``, ``machine``, ``comparisons``: EVE's edit wall time
  per clip against plug-and-play's) plus ``settings``, ``rows`` (FDD config, training log
  summary, LoRA size and distance to ``fdd``'s LoRA, aggregate and per-task scores, per-clip
  scores, training and sampling wall times) and ``claims`` (paper direction vs ours);
- a markdown table: row | metrics | paper's claimed direction | ours;
- a PNG grid: for the first ``--grid-clips`` clips, rows input, ground truth, then one row per
  table row (frames left to right).

Claims (Table 2 reports human preference for EVE on TGVE; the directions are §4.3's text):

- w/o alignment: "using no alignment leads to poor results for both structure preservation and
  quality" -> ``fdd`` > ``pnp``;
- "the SDS term has a larger impact on the alignment process" -> ``no_disc`` > ``no_sds``;
- "employing the adversarial term alone is sufficient to achieve some level of alignment" ->
  ``no_sds`` > ``pnp``;
- "the use of both terms is vital for successful alignment" -> ``fdd`` > ``no_sds`` and
  ``fdd`` > ``no_disc``;
- "sampling steps from k bins further enhances the performance of FDD" (§4.3, §3.3.1) ->
  ``fdd`` > ``uniform``.

Each is checked per clip (paired) on ``fully_right``, ``edit_accuracy``, ``preservation`` and
``attributes_constant``, every metric by the rule all toy-world ablation benches share,
:func:`common.paired_verdict` (paired mean change beyond 2 standard errors and a per-metric
minimum effect; wording :data:`common.VERDICT_RULE`), and the claim by :func:`common.claim_verdict`
over its metrics (:data:`common.CLAIM_RULE`: "reproduced" when some metric is reproduced and none
is opposite, "opposite" the reverse, "mixed" both, otherwise "no clear change"); both texts head
the markdown.

Finished LoRAs are kept under ``--work`` (one folder per row, named by a hash of its config) and
reused by a later run with identical settings; an interrupted training resumes from its
checkpoint.

    python bench/ablation_eve.py --run /work/toy_run --clips 21 --train-steps 36 --edit-steps 10 --threads 2
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import ablation
import common
import numpy as np
import torch

BENCH = "ablation_eve"
PAPER_SDS_FRACTION = 1000 / 1500  # §4.0.4: 1000 SDS-only iterations of 1500
PAPER_LR, PAPER_ITERATIONS = 1e-5, 1500  # §4.0.4

#: key -> (label, FDDConfig overrides or None for the unaligned stack)
ROWS = {
    "pnp": ("plug-and-play (w/o alignment)", None),
    "fdd": ("FDD (full: SDS + discriminators, K-bin)", {}),
    "no_sds": ("FDD w/o SDS (adversarial only)", {"use_sds": False, "iterations_sds": 0}),
    "no_disc": ("FDD w/o discriminators (SDS only)", {"use_discriminators": False}),
    "uniform": ("FDD, uniform timesteps instead of K-bin", {"timestep_sampling": "uniform"}),
}
#: metric -> True when higher is better
METRICS = {"fully_right": True, "edit_accuracy": True, "attribute_accuracy": True, "preservation": True,
           "attributes_constant": True, "path_residual_px": False}
FRACTIONS = ("fully_right", "edit_accuracy", "attribute_accuracy", "preservation", "attributes_constant")
CLAIM_METRICS = ("fully_right", "edit_accuracy", "preservation", "attributes_constant")
SOURCE = "Table 2; §4.3"

#: (claim id, row it is shown on, better, worse, the paper's words, source)
CLAIMS = [
    ("no_alignment_poor", "pnp", "fdd", "pnp",
     "'using no alignment leads to poor results for both structure preservation and quality'", "Table 2; §4.3 ¶2"),
    ("both_terms_vital_sds", "no_sds", "fdd", "no_sds",
     "'the use of both terms is vital for successful alignment'", "Table 2; §4.3 ¶2"),
    ("sds_larger_impact", "no_sds", "no_disc", "no_sds",
     "'the SDS term has a larger impact on the alignment process'", "Table 2; §4.3 ¶2"),
    ("adversarial_alone_some_alignment", "no_sds", "no_sds", "pnp",
     "'employing the adversarial term alone is sufficient to achieve some level of alignment'", "Table 2; §4.3 ¶2"),
    ("both_terms_vital_disc", "no_disc", "fdd", "no_disc",
     "'the use of both terms is vital for successful alignment'", "Table 2; §4.3 ¶2"),
    ("kbin_helps", "uniform", "fdd", "uniform",
     "'sampling steps from k bins further enhances the performance of FDD'", "Table 2; §4.3 ¶3, §3.3.1"),
]


# --------------------------------------------------------------------------------------------
# configs


def fdd_config(key: str, args, paths: dict, out_dir: str):
    """The :class:`~fdd.distill.FDDConfig` of row ``key``: the shared toy settings plus the row's
    switches (see the module doc)."""
    from fdd.distill import FDDConfig

    n = int(args.train_steps)
    n_sds = round(n * PAPER_SDS_FRACTION)
    kw = {"backbone": paths["backbone"], "tokenizer": paths["tokenizer"], "controlnet": paths["controlnet"], "motion_module": paths["motion"],
          "dino": paths["dino"], "dataset": paths["dataset"], "num_frames": args.frames, "height": args.size, "width": args.size,
          "iterations_sds": n_sds, "iterations_adv": n - n_sds, "global_batch": args.batch, "micro_batch": args.micro_batch,
          "lr": args.lr, "d_lr": args.d_lr, "lora_rank": args.lora_rank, "k_steps": args.k_steps,
          "timestep_sampling": "kbin", "student_cfg": 1.0, "student_image_cfg": 1.0,
          "edit_teacher_cfg": args.cfg, "edit_teacher_image_cfg": args.image_cfg, "video_teacher_cfg": args.cfg,
          "teacher_sample_steps": args.teacher_steps, "dino_resolution": args.dino_resolution, "augment": True,
          "gradient_checkpointing": False, "device": args.device, "seed": args.seed, "output_dir": out_dir,
          "checkpoint_every": args.checkpoint_every, "resume": True}
    over = dict(ROWS[key][1])
    if "iterations_sds" in over:
        over["iterations_adv"] = n - over["iterations_sds"]
    kw.update(over)
    return FDDConfig(**kw).validate()


def config_hash(cfg) -> str:
    d = cfg.to_dict()
    d.pop("output_dir", None)
    d.pop("device", None)
    d.pop("checkpoint_every", None)
    d.pop("resume", None)
    return hashlib.blake2b(json.dumps(d, sort_keys=True).encode(), digest_size=5).hexdigest()


def lora_deltas(path: str) -> dict[str, torch.Tensor]:
    """ΔW = up @ down · alpha / rank of every layer of a kohya LoRA file (float64)."""
    from safetensors.torch import load_file

    sd = load_file(path)
    out = {}
    for k in sd:
        if not k.endswith(".lora_up.weight"):
            continue
        base = k[: -len(".lora_up.weight")]
        up = sd[k].double().flatten(1)
        down = sd[base + ".lora_down.weight"].double().flatten(1)
        alpha = float(sd[base + ".alpha"]) if base + ".alpha" in sd else float(down.shape[0])
        out[base] = (up @ down) * (alpha / down.shape[0])
    return out


def delta_norm(d: dict) -> float:
    return float(math.sqrt(sum(float(v.pow(2).sum()) for v in d.values())))


def delta_distance(a: dict, b: dict) -> float:
    if set(a) != set(b):
        return float("nan")
    return float(math.sqrt(sum(float((a[k] - b[k]).pow(2).sum()) for k in a)))


def summarize_history(history: list[dict]) -> dict:
    """Means of the logged terms over the last quarter of the iterations (at least one), the
    phases seen and the timesteps of the first iterations."""
    if not history:
        return {}
    tail = history[-max(1, len(history) // 4):]
    keys = sorted({k for h in tail for k, v in h.items() if isinstance(v, (int, float)) and k not in ("step", "phase")})
    out = {f"tail_mean_{k}": float(np.mean([h[k] for h in tail if k in h])) for k in keys}
    out["phases"] = sorted({int(h["phase"]) for h in history})
    out["adversarial_iterations"] = int(sum("loss_d" in h for h in history))
    out["first_timesteps"] = [h["timesteps"] for h in history[:3]]
    return out


# --------------------------------------------------------------------------------------------
# training


def train_row(key: str, cfg, loaded, log_prefix: str) -> dict:
    """Train (or reuse) the row's LoRA; returns paths, history, timings and the SDS probe."""
    from fdd.distill.trainer import make_trainer

    done = os.path.join(cfg.output_dir, "done.json")
    if os.path.isfile(done):
        with open(done) as fh:
            rec = json.load(fh)
        if os.path.isfile(rec.get("lora", "")):
            rec["reused"] = True
            print(f"{log_prefix} {key}: reusing {rec['lora']}", flush=True)
            return rec
    os.makedirs(cfg.output_dir, exist_ok=True)
    with open(os.path.join(cfg.output_dir, "config.json"), "w") as fh:
        json.dump(cfg.to_dict(), fh, indent=1)
    with torch.inference_mode(False), torch.enable_grad():
        t0 = time.perf_counter()
        tr = make_trainer(cfg, loaded)
        build_s = time.perf_counter() - t0
        start = tr.step

        def log(entry):
            extra = " ".join(f"{k} {entry[k]:.4g}" for k in ("loss_g", "sds_edit_gap", "sds_video_gap", "loss_d")
                             if k in entry)
            print(f"{log_prefix} {key} it {entry['step']}/{cfg.iterations} ph {entry['phase']} "
                  f"t {entry['timesteps']} {extra} ({entry['seconds']:.1f}s)", flush=True)

        t1 = time.perf_counter()
        tr.train(log=log)
        train_s = time.perf_counter() - t1
        tr.save_checkpoint()
        lora = tr.export_lora()
        t2 = time.perf_counter()
        probe = tr.probe(0)
        probe_s = time.perf_counter() - t2
    steps_now = tr.step - start
    rec = {"lora": lora, "history": tr.history, "build_s": build_s, "train_s": train_s,
           "iterations_this_run": steps_now, "resumed_from": start,
           "s_per_iteration": train_s / steps_now if steps_now else float("nan"),
           "iteration_seconds": [h["seconds"] for h in tr.history], "probe_after": probe, "probe_s": probe_s,
           "reused": False}
    with open(done, "w") as fh:
        json.dump(rec, fh)
    del tr
    return rec


def probe_unaligned(cfg, loaded) -> dict:
    """The SDS probe of a zero LoRA (the plug-and-play student at cfg 1) on the yardstick batch."""
    from fdd.distill.trainer import make_trainer

    with torch.inference_mode(False), torch.enable_grad():
        c = type(cfg)(**{**cfg.__dict__, "resume": False})
        tr = make_trainer(c, loaded)
        return tr.probe(0)


# --------------------------------------------------------------------------------------------
# scoring and claims


def clip_scores(out: np.ndarray, edit, inp: np.ndarray) -> dict:
    from fdd.toy.heldout import score_set

    s = score_set([out], [edit], [inp])
    row = {k: float(s[k]) for k in FRACTIONS}
    row["path_residual_px"] = float(s["path_residual_px_median"])
    return row


def compare(per_clip: dict, metric: str, better: str, worse: str) -> dict:
    """Is ``better`` better than ``worse`` on ``metric`` over the clips (:func:`ablation.compare`)?"""
    return ablation.compare(per_clip, metric, better, worse, METRICS[metric], roles=("better", "worse"))


def score_claims(per_clip: dict) -> list[dict]:
    """Every claim of :data:`CLAIMS` whose two rows were run: per-metric :func:`compare` and the
    claim's verdict (:func:`ablation.claim`)."""
    claims = []
    for cid, row, better, worse, words, source in CLAIMS:
        if better in per_clip and worse in per_clip:
            res = [compare(per_clip, m, better, worse) for m in CLAIM_METRICS]
            claims.append(ablation.claim(res, id=cid, row=row, better=better, worse=worse, paper=words,
                                         source=source, metrics=list(CLAIM_METRICS)))
    return claims


def rescore(out: str) -> int:
    """Recompute the claims and the markdown of the result ``out`` from its saved per-clip rows
    (:func:`ablation.rescore`; nothing is run)."""
    return ablation.rescore(out, BENCH, lambda doc: score_claims({k: r["per_clip"] for k, r in doc["rows"].items()}),
                            markdown, {"verdict_rule": common.VERDICT_RULE, "claim_rule": common.CLAIM_RULE})


# --------------------------------------------------------------------------------------------
# report


def _fmt(x, nd=3) -> str:
    if x is None:  # NaN after the strict-JSON round trip
        return "nan"
    if isinstance(x, float):
        return "nan" if not math.isfinite(x) else f"{x:.{nd}f}"
    return str(x)


SHORT = {"fully_right": "fully", "edit_accuracy": "edit", "preservation": "pres", "attributes_constant": "const"}


def markdown(doc: dict) -> str:
    s = doc["settings"]
    lines = [f"# EVE Table 2 ablation on the toy world ({BENCH})", "",
             (f"Run `{s['run']}`; {s['clips']} held-out edits (all seven tasks cycled), {s['frames']} frames of "
             f"{s['size']} px. FDD: {s['train_steps']} iterations per row (SDS-only for the first "
             f"{s['iterations_sds']}), global batch {s['batch']}, lr {s['lr']:.3g} ({s['lr_rule']}), LoRA rank {s['lora_rank']}, "
             f"k = {s['k_steps']}, teachers' guidance cfg {s['cfg']} / image {s['image_cfg']}, "
             f"{s['teacher_steps']} DDIM steps for the discriminators' real samples, DINOv2 `{s['dino_kind']}`. "
             f"Editing: {s['edit_steps']} DDIM steps, EVE cfg {s['eve_cfg']} (aligned student), plug-and-play cfg "
             f"{s['cfg']} / image {s['image_cfg']}, first frame `{s['first_frame']}`; seed {s['seed']}; "
             f"{doc['machine']['threads']} thread(s) on {doc['machine']['device']}."), "",
             ("The paper's Table 2 is human preference for EVE on TGVE (its numbers are not in our text copy; "
             "the directions are §4.3's text). Ours are automatic toy-world scores (means over clips; path "
             "residual: median). Each claim is checked on fully-right / edit accuracy / preservation / "
             "attributes-constant, the claimed-better row against the claimed-worse one."), "",
             common.VERDICT_RULE + " " + common.CLAIM_RULE + " Below: per metric Δ = m ± SE, then clips "
             "better / worse.", "",
             ("| row | fully right | edit acc. | attr. acc. | preservation | attrs constant | path resid. px "
             "| train s (s/it) | edit s / clip | paper's claimed direction | ours |"),
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    by_row: dict[str, list[dict]] = {k: [] for k in doc["rows"]}
    for c in doc["claims"]:
        by_row.setdefault(c["row"], []).append(c)
    for key, r in doc["rows"].items():
        a = r["aggregate"]
        tr = r.get("training") or {}
        train = "-" if not tr else f"{_fmt(tr['train_s'], 0)} ({_fmt(tr['s_per_iteration'], 2)})" + (
            " reused" if tr.get("reused") else "")
        claims = by_row.get(key, [])
        if claims:
            paper = "<br>".join(f"`{c['better']}` > `{c['worse']}`: {c['paper']} ({c['source']})" for c in claims)
            ours = "<br>".join(
                f"**{c['verdict']}** (" + ", ".join(
                    f"{SHORT[m['metric']]} Δ{_fmt(m.get('delta', float('nan')), 2)}±{_fmt(m.get('se', float('nan')), 2)} "
                    f"{m.get('clip_wins', 0)}/{m.get('clip_losses', 0)}" for m in c["results"]) + ")"
                for c in claims)
        elif key == "fdd":
            paper, ours = "reference: raters prefer EVE over every ablation row (Table 2)", "see the other rows"
        else:
            paper, ours = "-", "-"
        lines.append(f"| `{key}` {r['label']} | {_fmt(a['fully_right'])} | {_fmt(a['edit_accuracy'])} | "
                     f"{_fmt(a['attribute_accuracy'])} | {_fmt(a['preservation'])} | "
                     f"{_fmt(a['attributes_constant'])} | {_fmt(a['path_residual_px_median'], 2)} | {train} | "
                     f"{_fmt(r['edit_s_per_clip'], 1)} | {paper} | {ours} |")
    lines += ["", "## Per task (fully right / edit accuracy / attributes constant)", "",
              "| row | " + " | ".join(s["tasks"]) + " |", "|---|" + "---|" * len(s["tasks"])]
    for key, r in doc["rows"].items():
        pt = r["aggregate"]["per_task"]
        cells = [f"{_fmt(pt[t]['fully_right'], 2)} / {_fmt(pt[t]['edit_accuracy'], 2)} / "
                 f"{_fmt(pt[t]['attributes_constant'], 2)}" if t in pt else "-" for t in s["tasks"]]
        lines.append(f"| `{key}` | " + " | ".join(cells) + " |")
    lines += ["", "## Training diagnostics", "",
              ("SDS probe: the teachers' mean disagreement with the student's sample on one fixed batch "
              "(iteration 0's items, noise and timesteps) after training; `pnp` = zero LoRA (the unaligned "
              "student at cfg 1). ΔW: Frobenius norm of the LoRA's weight change, and its distance to `fdd`'s."), "",
              "| row | SDS gap edit | SDS gap video | adversarial its | ‖ΔW‖ | ‖ΔW − ΔW_fdd‖ | tail loss_g | tail loss_d |",
              "|---|---|---|---|---|---|---|---|"]
    for key, r in doc["rows"].items():
        tr = r.get("training") or {}
        pr = r.get("probe") or {}
        hs = tr.get("history_summary", {})
        lines.append(f"| `{key}` | {_fmt(pr.get('sds_edit_gap', float('nan')), 5)} | "
                     f"{_fmt(pr.get('sds_video_gap', float('nan')), 5)} | {hs.get('adversarial_iterations', '-')} | "
                     f"{_fmt(r.get('lora_delta_norm', float('nan')), 4)} | "
                     f"{_fmt(r.get('lora_delta_distance_to_fdd', float('nan')), 4)} | "
                     f"{_fmt(hs.get('tail_mean_loss_g', float('nan')), 4)} | "
                     f"{_fmt(hs.get('tail_mean_loss_d', float('nan')), 4)} |")
    lines += ["", "## Claims in detail", ""]
    for c in doc["claims"]:
        lines.append(f"- **{c['id']}** ({c['source']}): {c['paper']} -> `{c['better']}` better than `{c['worse']}`: "
                     f"**{c['verdict']}**")
        for m in c["results"]:
            if not m.get("n"):
                lines.append(f"  - {m['metric']}: not measurable")
                continue
            lines.append(f"  - {m['metric']}: {_fmt(m['mean_better'])} vs {_fmt(m['mean_worse'])}, "
                         f"Δ {_fmt(m['delta'])} ± {_fmt(m.get('se', float('nan')))} (min effect {m.get('min_effect', '?')}), "
                         f"clips {m['clip_wins']} better / {m['clip_losses']} worse / {m['clip_ties']} tied "
                         f"(sign test p {_fmt(m['sign_test_p'], 2)}): {m['verdict']}")
    lines += ["", "## Caveats", "",
              ("- Toy world, tiny adapters and a few dozen FDD iterations on CPU, against 1500 iterations of batch "
              "64 in the paper; automatic toy scores against human ratings."),
              f"- Discriminators on {'a tiny random DINOv2 (random frozen ViT features)' if s['dino_kind'] == 'tiny-random' else 'the DINOv2 at ' + s['dino']}.",
              ("- `no_sds` is adversarial from the first iteration (with the paper's SDS-only first phase it would not "
              "train at all for 2/3 of the run)."),
              (f"- Frame 0 of every row is {'the edit teacher' + chr(39) + 's edit of the first input frame, anchored' if s['first_frame'] == 'edit' else 'sampled with the rest (no anchor)'}; "
              "the rows differ in θ_align (and `pnp` in its guidance)."),
              "", (f"Grid `{os.path.basename(doc['grid'])}`: for each of the first {s['grid_clips']} clips, rows input, "
              f"ground truth, then {', '.join(doc['rows'])}; frames left to right."), ""]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# main


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", default=None,
                   help="toy models: a training run / export folder, or the shipped tree (default)")
    p.add_argument("--clips", type=int, default=21, help="held-out edits (the seven tasks cycled)")
    p.add_argument("--train-steps", type=int, default=36, help="FDD iterations per row")
    p.add_argument("--batch", type=int, default=4, help="FDD global batch (the paper: 64)")
    p.add_argument("--micro-batch", type=int, default=4)
    p.add_argument("--lr", type=float, default=None,
                   help=f"LoRA learning rate (default {PAPER_LR:g} x {PAPER_ITERATIONS} / train-steps: the paper's "
                        "update budget)")
    p.add_argument("--d-lr", type=float, default=None, help="discriminator heads' learning rate (default: --lr)")
    p.add_argument("--lora-rank", type=int, default=8)
    p.add_argument("--k-steps", type=int, default=3, help="student steps in training (the paper: 3)")
    p.add_argument("--teacher-steps", type=int, default=10, help="DDIM steps of the discriminators' real samples")
    p.add_argument("--cfg", type=float, default=4.0, help="teachers' and plug-and-play text guidance (toy eval: 4)")
    p.add_argument("--image-cfg", type=float, default=1.0, help="teachers' and plug-and-play image guidance")
    p.add_argument("--eve-cfg", type=float, default=1.0, help="text guidance of the aligned student when editing")
    p.add_argument("--edit-steps", type=int, default=10, help="DDIM steps when editing (also the first frame's)")
    p.add_argument("--first-frame", choices=("edit", "none"), default="edit")
    p.add_argument("--dino", default=None, help="a DINOv2 transformers folder (default: a tiny random one)")
    p.add_argument("--dino-resolution", type=int, default=64)
    p.add_argument("--dataset-items", type=int, default=140, help="toy training records (FDD manifest)")
    p.add_argument("--data-seed", type=int, default=7, help="seed of the training set (not the held-out seed)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--checkpoint-every", type=int, default=25)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default $BENCH_THREADS or 2)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--grid-clips", type=int, default=7)
    p.add_argument("--rows", default=",".join(ROWS), help="subset of " + ",".join(ROWS))
    p.add_argument("--work", default=os.path.join(tempfile.gettempdir(), "ablation_eve_work"),
                   help="dataset, DINOv2 and the rows' LoRA folders")
    ablation.add_result_args(p, BENCH)
    args = p.parse_args(argv)
    if args.rescore:
        return rescore(args.out)
    ablation.set_threads(args.threads)
    keys = [k.strip() for k in args.rows.split(",") if k.strip()]
    unknown = sorted(set(keys) - set(ROWS))
    if unknown or not keys:
        p.error(f"--rows: unknown {unknown}; expected a subset of {list(ROWS)}")
    keys = [k for k in ROWS if k in keys]  # table order
    if min(args.clips, args.train_steps, args.edit_steps, args.batch, args.micro_batch) < 1:
        p.error("--clips, --train-steps, --edit-steps, --batch and --micro-batch must be >= 1")
    lr_rule = "explicit" if args.lr is not None else f"{PAPER_LR:g} x {PAPER_ITERATIONS} / train_steps"
    if args.lr is None:
        args.lr = PAPER_LR * PAPER_ITERATIONS / args.train_steps
    if args.d_lr is None:
        args.d_lr = args.lr
    from fdd.toy.heldout import HELDOUT_SEED

    if args.data_seed == HELDOUT_SEED:
        p.error("--data-seed: must differ from the held-out seed")
    from fdd.toy.ship import toy_paths

    try:
        paths = {k: v for k, v in toy_paths(args.run).items() if k != "t2v"}
    except FileNotFoundError as exc:
        p.error(f"--run: {exc}")

    from fdd.distill.eve import EVEConfig, eve_edit
    from fdd.distill.trainer import load_models
    from fdd.models.lora import read_lora
    from fdd.pipelines import VideoEditStack
    from fdd.testing.fdd_fixtures import write_tiny_dinov2
    from fdd.toy.dataset import write_toy_dataset
    from fdd.toy.heldout import heldout_edits, score_set
    from fdd.toy.world import TASKS

    device = torch.device(args.device)
    work = os.path.abspath(args.work)
    os.makedirs(work, exist_ok=True)
    ds = os.path.join(work, f"dataset-{args.dataset_items}-{args.frames}-{args.size}-{args.data_seed}")
    if not os.path.isfile(os.path.join(ds, "manifest.jsonl")):
        write_toy_dataset(ds, items=args.dataset_items, frames=args.frames, size=args.size, seed=args.data_seed)
    paths["dataset"] = ds
    if args.dino:
        paths["dino"], dino_kind = args.dino, "given"
    else:
        paths["dino"], dino_kind = os.path.join(work, "tiny-dinov2"), "tiny-random"
        if not os.path.isfile(os.path.join(paths["dino"], "model.safetensors")):
            write_tiny_dinov2(paths["dino"], seed=args.seed)

    t_load = time.perf_counter()
    cfgs = {}
    for k in keys:
        if ROWS[k][1] is not None:
            c0 = fdd_config(k, args, paths, work)
            cfgs[k] = fdd_config(k, args, paths, os.path.join(work, f"{k}-{config_hash(c0)}"))
    any_cfg = next(iter(cfgs.values()), None) or fdd_config("fdd", args, paths, os.path.join(work, "probe"))
    loaded = load_models(any_cfg)
    bb, cn, mm = loaded[0], loaded[1], loaded[2]
    load_s = time.perf_counter() - t_load

    # -- training
    t_all = time.perf_counter()
    training = {k: train_row(k, cfgs[k], loaded, f"[{BENCH}]") for k in cfgs}
    probe_pnp = probe_unaligned(any_cfg, loaded) if "pnp" in keys else None
    deltas = {k: lora_deltas(training[k]["lora"]) for k in cfgs}

    # -- editing (rows interleaved inside each clip)
    edits = heldout_edits(args.clips, tasks=TASKS, size=args.size, frames=args.frames)
    rendered = [e.render(args.frames) for e in edits]
    inputs = [r[0] for r in rendered]
    truths = [r[1] for r in rendered]
    stack = VideoEditStack(bb, controlnet=cn, motion_adapter=mm, loras=[])
    stack.to(device)
    loras = {k: [(read_lora(training[k]["lora"]), 1.0)] for k in cfgs}
    common_kw = {"steps": args.edit_steps, "seed": args.seed, "context_frames": args.frames, "context_overlap": 0,
                 "first_frame": args.first_frame, "first_frame_steps": args.edit_steps, "first_frame_cfg": args.cfg,
                 "first_frame_image_cfg": args.image_cfg}
    eve_cfgs = {k: EVEConfig(text_cfg=args.eve_cfg, image_cfg=1.0, **common_kw) for k in cfgs}
    if "pnp" in keys:
        eve_cfgs["pnp"] = EVEConfig(text_cfg=args.cfg, image_cfg=args.image_cfg, **common_kw)
    outputs = {k: [] for k in keys}
    per_clip = {k: [] for k in keys}
    edit_s = {k: [] for k in keys}
    for i, e in enumerate(edits):
        frames = torch.from_numpy(np.ascontiguousarray(inputs[i])).float()
        for k in keys:
            stack.loras = loras.get(k, [])
            t0 = time.perf_counter()
            out = eve_edit(stack, frames, e.instruction, e.target_caption, eve_cfgs[k])
            common.sync(device)
            dt = time.perf_counter() - t0
            out = out.detach().float().cpu().clamp(0, 1).numpy()
            outputs[k].append(out)
            edit_s[k].append(dt)
            per_clip[k].append({"clip": i, "task": e.task, "instruction": e.instruction, "target": e.target_caption,
                                **clip_scores(out, e, inputs[i])})
            print(f"[{BENCH}] clip {i + 1}/{len(edits)} {e.task:<10} {k:<8} edit {dt:5.1f}s "
                  f"fully {per_clip[k][-1]['fully_right']:.0f} edit_acc {per_clip[k][-1]['edit_accuracy']:.2f} "
                  f"pres {per_clip[k][-1]['preservation']:.2f} const {per_clip[k][-1]['attributes_constant']:.0f}",
                  flush=True)
    stack.loras = []
    total_s = time.perf_counter() - t_all

    rows = {}
    for k in keys:
        r = {"label": ROWS[k][0], "sampler": "eve_edit", "sampler_config": vars(eve_cfgs[k]),
             "aggregate": score_set(outputs[k], edits, inputs), "per_clip": per_clip[k],
             "edit_s_per_clip": float(np.mean(edit_s[k])), "edit_s": [float(x) for x in edit_s[k]]}
        if k in cfgs:
            tr = training[k]
            r["fdd_config"] = cfgs[k].to_dict()
            r["config_overrides"] = {kk: v for kk, v in ROWS[k][1].items()}
            r["training"] = {"lora": tr["lora"], "reused": tr["reused"], "train_s": tr["train_s"],
                             "s_per_iteration": tr["s_per_iteration"], "build_s": tr["build_s"],
                             "iteration_seconds": tr["iteration_seconds"],
                             "history_summary": summarize_history(tr["history"]), "history": tr["history"]}
            r["probe"] = tr["probe_after"]
            r["lora_delta_norm"] = delta_norm(deltas[k])
            if "fdd" in deltas:
                r["lora_delta_distance_to_fdd"] = delta_distance(deltas[k], deltas["fdd"])
        else:
            r["probe"] = probe_pnp
            r["lora_delta_norm"] = 0.0
            if "fdd" in deltas:
                r["lora_delta_distance_to_fdd"] = delta_norm(deltas["fdd"])
        ref = "pnp" if "pnp" in keys else keys[0]
        r[f"mean_abs_output_diff_vs_{ref}"] = ablation.mean_abs_diff(outputs[k], outputs[ref])
        rows[k] = r

    claims = score_claims(per_clip)

    grid_path, md_path = ablation.result_paths(args.out)
    grid = ablation.grid_rows(inputs, truths, outputs, keys, args.grid_clips)

    machine = common.machine_info(device)
    comparisons = []
    if "pnp" in keys and "fdd" in keys:
        a, b = np.array(edit_s["fdd"]), np.array(edit_s["pnp"])
        comparisons.append(common.comparison(
            "ablation_eve_edit_time_per_clip_eve_vs_plug_and_play", float(a.mean()), float(b.mean()), "s", None,
            len(a), float((a.max() - a.min()) / a.min()) if a.min() > 0 else 0.0,
            note="mean edit wall time per clip (EVE with the aligned LoRA at cfg "
                 f"{args.eve_cfg} vs the unaligned stack at cfg {args.cfg}), not a minimum over repeats"))
    n_sds = round(args.train_steps * PAPER_SDS_FRACTION)
    doc = {"bench": BENCH, "machine": machine, "comparisons": comparisons,
           "settings": {"run": os.path.abspath(args.run) if args.run else "shipped", "paths": paths, "dino": paths["dino"], "dino_kind": dino_kind,
                        "clips": len(edits), "tasks": list(TASKS), "frames": args.frames, "size": args.size,
                        "train_steps": args.train_steps, "iterations_sds": n_sds, "batch": args.batch,
                        "micro_batch": args.micro_batch, "lr": args.lr, "lr_rule": lr_rule, "d_lr": args.d_lr, "lora_rank": args.lora_rank,
                        "k_steps": args.k_steps, "teacher_steps": args.teacher_steps, "cfg": args.cfg,
                        "image_cfg": args.image_cfg, "eve_cfg": args.eve_cfg, "edit_steps": args.edit_steps,
                        "first_frame": args.first_frame, "dino_resolution": args.dino_resolution,
                        "dataset_items": args.dataset_items, "data_seed": args.data_seed, "heldout_seed": HELDOUT_SEED,
                        "seed": args.seed, "grid_clips": args.grid_clips, "row_order": keys, "work": work,
                        "verdict_rule": common.VERDICT_RULE, "claim_rule": common.CLAIM_RULE,
                        "min_effect": {m: common.min_effect_of(m) for m in CLAIM_METRICS},
                        "edits": [{"task": e.task, "instruction": e.instruction, "source": e.source_caption,
                                   "target": e.target_caption} for e in edits]},
           "timing": {"load_s": load_s, "total_s": total_s,
                      "train_s": {k: training[k]["train_s"] for k in cfgs},
                      "s_per_iteration": {k: training[k]["s_per_iteration"] for k in cfgs},
                      "edit_s_per_clip": {k: float(np.mean(edit_s[k])) for k in keys}},
           "rows": rows, "claims": claims, "markdown": md_path, "grid": grid_path}
    ablation.write_outputs(args.out, doc, markdown, grid, grid_path)
    print(markdown(common.json_safe(doc)))
    print(f"[{BENCH}] wrote {args.out}, {md_path}, {grid_path} ({total_s:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
