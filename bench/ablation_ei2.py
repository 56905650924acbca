"""Ablation "ablation_ei2": EI²'s Fig. 4 and Fig. 5 ablations re-run on the toy world (issue 7).

Four variants, each only a setting of the existing switches (:class:`fdd.ei2.InflationConfig`),
nothing re-implemented here:

| key | temporal module (§4.3, Fig. 4) | spatial self-attention (§4.4, Fig. 5) | config |
|---|---|---|---|
| ``tav`` | LayerNorm temporal attention (Tune-A-Video, zero-initialised W_L) | sparse-causal | ``InflationConfig.tune_a_video()`` |
| ``stam_sc`` | STAM: Instance Centering + spectral norm (gated identity init) | sparse-causal | ``InflationConfig.ei2(attention="sparse_causal")`` |
| ``ln_ffam`` | LayerNorm temporal attention (as ``tav``) | FFAM r = 2 | ``InflationConfig.tune_a_video(attention="ffam")`` |
| ``ei2`` | STAM | FFAM r = 2 | ``InflationConfig.ei2()`` |

For every held-out edit (``fdd.toy.heldout.heldout_edits``, the same edits for every variant)
and every variant: one-shot tuning on the input clip with its source caption
(:func:`fdd.ei2.ei2_tune`, §5's tuned set and optimiser), DDIM inversion with the empty prompt
and DDIM sampling with the target caption and classifier-free guidance
(:func:`fdd.ei2.ei2_edit`), decoding, and scoring with :func:`fdd.toy.heldout.score_set`.
One seed for everything (inflation weights, tuning noise, edit). Variants run interleaved
inside each clip so that a slow phase of a shared machine hits all of them alike.

Tasks: ``Local`` (colour / shape), ``Background``, ``Texture`` and ``Style`` by default: the
attribute edits of an existing layout that EI² / Tune-A-Video perform through the prompt (the
paper's object and style edits). ``Add`` / ``Remove`` change the layout, which editing from the
inverted noise of the input keeps by design, and ``Global`` (invert every colour) is a
Background + Local compound; ``--tasks`` adds them back.

Learning rate: the paper tunes 500 steps at 3e-5 (§5). Budgets here are far smaller, so by
default the learning rate keeps the paper's total Adam update budget, ``3e-5 x 500 /
tune_steps`` (``--lr`` sets it explicitly). The STAM gates learn ``gate_lr_scale`` (100) times
faster, as in every other use of the tuner (see :class:`fdd.ei2.TuneConfig`).

Outputs (``--out``, default ``bench/results/ablation_ei2.json``; the markdown and the grid are
written next to it as ``<stem>.md`` and ``<stem>_grid.png``):

- JSON in the shared bench shape (``bench``, ``machine``, ``comparisons``: the wall time per
  clip of EI² against Tune-A-Video, so ``run_all.py --table-only`` lists it) plus
  ``settings``, ``variants`` (config, aggregate and per-task scores, per-clip scores, wall
  times and process CPU times of tuning + editing, output distance to ``tav``) and ``claims``
  (paper direction vs ours, per metric and per claim);
- a markdown table: variant | metrics | paper's claimed direction | ours;
- a PNG grid: for each of the first ``--grid-clips`` clips, rows input, ground truth, then one
  row per variant in the order above (frames left to right).

Claims checked (the paper's Fig. 4 / Fig. 5 are qualitative; the directions are its text):

- Fig. 4, §5.2 "Restricting covariate shift": LayerNorm in the temporal attention "restrain[s]
  the textual guidance"; replacing it with IC and weight (spectral) normalisation "further
  enhance[s] the results" -> edit accuracy IC+SN > LN (pairs ``stam_sc`` vs ``tav`` and ``ei2``
  vs ``ln_ffam``).
- Fig. 5, §5.2 "Fine-coarse Frame Attention": "combining the SCA Module with STAM ... obvious
  flickering. In contrast, FFAM effectively addresses this issue" -> temporal consistency FFAM >
  sparse-causal (pairs ``ei2`` vs ``stam_sc``, the paper's setting, and ``ln_ffam`` vs ``tav``).
- Table 1, §5.1: EI² beats Tune-A-Video in textual alignment and frame consistency (``ei2`` vs
  ``tav``).

Verdicts: every (pair, metric) of a claim is decided by the rule all toy-world ablation benches
share, :func:`common.paired_verdict` (paired per-clip differences, mean beyond 2 standard errors
and a per-metric minimum effect; wording :data:`common.VERDICT_RULE`), and the claim by
:func:`common.claim_verdict` over them (:data:`common.CLAIM_RULE`); both texts head the markdown.
``--rescore`` recomputes the verdicts and the markdown from the per-clip rows saved in ``--out``
without running any model (for a changed rule).

Temporal consistency is read with the toy reader (``attributes_constant``: every frame reads the
same attributes; ``path_residual_px``: centroid path's distance from a straight line) plus one
pixel diagnostic computed here, ``frame_diff_error``: mean |(out[f+1] - out[f]) - (gt[f+1] -
gt[f])| over frames and pixels (0 when the output changes between frames exactly as the ground
truth does; flicker raises it).

Caveats of the comparison (the switches, not this script): ``tav`` -> ``stam_sc`` changes three
things at once, as the paper's STAM does: LN -> IC, no SN -> SN on W_v and W_L, and the
zero-W_L identity init -> the gated one (whose gate learns ``gate_lr_scale`` x faster). The LN
affine parameters are in the tuned set here ("all parameters of the temporal module"); the
official Tune-A-Video code tunes ``attn_temp`` but not ``norm_temp``.

Recommended run (8 clips x 4 variants; about 23 CPU-seconds per clip and variant at 1 thread):

    python bench/ablation_ei2.py --run /work/toy_run --clips 8 --tune-steps 80 --edit-steps 20 --threads 2
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import ablation
import common
import numpy as np
import torch

BENCH = "ablation_ei2"
DEFAULT_TASKS = ("Local", "Background", "Texture", "Style")
PAPER_LR, PAPER_STEPS = 3e-5, 500

#: key -> (label, InflationConfig preset, its keyword overrides)
VARIANTS = {
    "tav": ("Tune-A-Video-like: sparse-causal + LN temporal attention", "tune_a_video", {}),
    "stam_sc": ("STAM (IC + SN) + sparse-causal", "ei2", {"attention": "sparse_causal"}),
    "ln_ffam": ("LN temporal attention + FFAM", "tune_a_video", {"attention": "ffam"}),
    "ei2": ("EI²: STAM + FFAM", "ei2", {}),
}
#: metric -> True when higher is better
METRICS = {"edit_accuracy": True, "attribute_accuracy": True, "preservation": True,
           "attributes_constant": True, "fully_right": True, "path_residual_px": False,
           "frame_diff_error": False}
FRACTIONS = ("edit_accuracy", "attribute_accuracy", "preservation", "attributes_constant", "fully_right")

#: (claim id, source, the paper's words, metrics, [(ours, versus), ...])
CLAIMS = [
    ("fig4_ic_sn_over_ln", "Fig. 4; §5.2 'Restricting covariate shift'",
     "LN temporal attention restrains textual guidance; IC + weight (spectral) normalisation improves the edit",
     ("edit_accuracy", "attribute_accuracy"), [("stam_sc", "tav"), ("ei2", "ln_ffam")]),
    ("fig5_ffam_over_sca", "Fig. 5; §5.2 'Fine-coarse Frame Attention'",
     "SCA with STAM flickers; FFAM improves temporal consistency",
     ("attributes_constant", "path_residual_px", "frame_diff_error"), [("ei2", "stam_sc"), ("ln_ffam", "tav")]),
    ("tab1_ei2_over_tav", "Table 1; §5.1",
     "EI² beats Tune-A-Video in textual alignment and frame consistency",
     ("edit_accuracy", "attributes_constant", "frame_diff_error"), [("ei2", "tav")]),
]

SHORT = {"fig4_ic_sn_over_ln": "Fig. 4", "fig5_ffam_over_sca": "Fig. 5", "tab1_ei2_over_tav": "Tab. 1"}


def variant_config(key: str, seed: int):
    from fdd.ei2 import InflationConfig

    _, preset, kw = VARIANTS[key]
    return getattr(InflationConfig, preset)(seed=seed, **kw)


def frame_diff_error(output: np.ndarray, truth: np.ndarray) -> float:
    """Mean |Δ output − Δ truth| over consecutive frames and pixels (see the module doc)."""
    d_out = np.diff(np.asarray(output, np.float64), axis=0)
    d_gt = np.diff(np.asarray(truth, np.float64), axis=0)
    return float(np.abs(d_out - d_gt).mean())


def _clip_scores(out: np.ndarray, edit, inp: np.ndarray, gt: np.ndarray) -> dict:
    from fdd.toy.heldout import score_set

    s = score_set([out], [edit], [inp])
    row = {k: float(s[k]) for k in FRACTIONS}
    row["path_residual_px"] = float(s["path_residual_px_median"])
    row["frame_diff_error"] = frame_diff_error(out, gt)
    return row


def _aggregate(outputs, edits, inputs, truths) -> dict:
    from fdd.toy.heldout import score_set

    agg = score_set(outputs, edits, inputs)
    fde = [frame_diff_error(o, g) for o, g in zip(outputs, truths)]
    agg["frame_diff_error"] = float(np.mean(fde))
    by_task: dict[str, list[float]] = {}
    for e, v in zip(edits, fde):
        by_task.setdefault(e.task, []).append(v)
    for t, vals in by_task.items():
        agg["per_task"][t]["frame_diff_error"] = float(np.mean(vals))
    return agg


def compare(per_clip: dict, metric: str, ours: str, versus: str) -> dict:
    """Is ``ours`` better than ``versus`` on ``metric`` over the clips (:func:`ablation.compare`)?"""
    return ablation.compare(per_clip, metric, ours, versus, METRICS[metric], roles=("ours", "versus"))


def score_claims(per_clip: dict) -> list[dict]:
    """Every claim of :data:`CLAIMS` with at least one of its pairs run: :func:`compare` per pair
    and metric, and the claim's verdict over them (:func:`ablation.claim`)."""
    claims = []
    for cid, source, words, metrics, pairs in CLAIMS:
        results = [compare(per_clip, m, a, b) for a, b in pairs if a in per_clip and b in per_clip for m in metrics]
        if results:
            claims.append(ablation.claim(results, id=cid, source=source, paper=words))
    return claims


def rule_settings() -> dict:
    """The verdict rule's text and minimum effects, recorded in ``settings``."""
    return {"verdict_rule": common.VERDICT_RULE, "claim_rule": common.CLAIM_RULE,
            "min_effect": {m: common.min_effect_of(m) for _, _, _, ms, _ in CLAIMS for m in ms}}


def rescore(out: str) -> int:
    """Recompute the claims and the markdown of the result ``out`` from its saved per-clip rows
    (:func:`ablation.rescore`; nothing is run)."""
    def score(doc: dict) -> list[dict]:
        order = doc["settings"].get("variant_order") or list(doc["variants"])
        return score_claims({k: doc["variants"][k]["per_clip"] for k in order})

    return ablation.rescore(out, BENCH, score, markdown, rule_settings())


def _fmt(x) -> str:
    if x is None:  # NaN after a JSON round trip (common.json_safe)
        return "nan"
    if isinstance(x, float):
        if not math.isfinite(x):
            return "nan"
        return f"{x:.3f}" if x == 0 or abs(x) >= 0.01 else f"{x:.2e}"
    return str(x)


def markdown(doc: dict) -> str:
    s = doc["settings"]
    lines = [f"# EI² ablation on the toy world ({BENCH})", "",
             (f"Run `{s['run']}`, {s['clips']} held-out edits ({', '.join(s['tasks'])}), tuning {s['tune_steps']} "
             f"steps at lr {s['learning_rate']:.3g} (gates x{s['gate_lr_scale']:g}), {s['edit_steps']} DDIM steps, "
             f"CFG {s['cfg']}, seed {s['seed']}, {doc['machine']['threads']} thread(s) on {doc['machine']['device']}. "
             "Metrics are means over clips (path residual: median over clips where an object was read). "
             "Fig. 4 / Fig. 5 of the paper are qualitative figures; the directions below are its text."), "",
             common.VERDICT_RULE + " " + common.CLAIM_RULE + " Below: Δ = m ± SE, then clips better / worse.", ""]
    if doc.get("rescored"):
        lines += [f"Verdicts: {doc['rescored']}.", ""]
    lines += [("| variant | edit acc. | attr. acc. | preservation | attrs constant | path resid. px | frame-diff err. "
             "| wall s / clip | paper's claimed direction | ours |"),
             "|---|---|---|---|---|---|---|---|---|---|"]
    by_variant: dict[str, list[tuple[str, str]]] = {k: [] for k in VARIANTS}
    for c in doc["claims"]:
        for r in c["results"]:
            rel = (">" if r["higher_is_better"] else "<") if r.get("n") else "vs"
            by_variant[r["ours"]].append((f"{SHORT[c['id']]}: {r['metric']} {rel} `{r['versus']}`",
                                          (f"{r['verdict']} (Δ {_fmt(r.get('delta', float('nan')))} ± "
                                          f"{_fmt(r.get('se', float('nan')))}, "
                                          f"{r.get('clip_wins', 0)}/{r.get('clip_losses', 0)} clip wins/losses)")))
    for key, v in doc["variants"].items():
        a = v["aggregate"]
        claims = by_variant[key]
        paper = "<br>".join(c for c, _ in claims) or "reference (baseline of the comparisons)"
        ours = "<br>".join(o for _, o in claims) or "-"
        lines.append(f"| `{key}` {v['label']} | {_fmt(a['edit_accuracy'])} | {_fmt(a['attribute_accuracy'])} | "
                     f"{_fmt(a['preservation'])} | {_fmt(a['attributes_constant'])} | "
                     f"{_fmt(a['path_residual_px_median'])} | {_fmt(a['frame_diff_error'])} | "
                     f"{_fmt(v['wall_s_per_clip'])} | {paper} | {ours} |")
    lines += ["", "## Claims", ""]
    for c in doc["claims"]:
        lines.append(f"- **{c['id']}** ({c['source']}): {c['paper']}: **{c.get('verdict', '?')}**")
        for r in c["results"]:
            if not r.get("n"):
                lines.append(f"  - {r['metric']}: `{r['ours']}` vs `{r['versus']}`: {r['verdict']}")
                continue
            lines.append(f"  - {r['metric']} ({'higher' if r['higher_is_better'] else 'lower'} is better): "
                         f"`{r['ours']}` {_fmt(r['mean_ours'])} vs `{r['versus']}` {_fmt(r['mean_versus'])}, "
                         f"Δ {_fmt(r['delta'])} ± {_fmt(r.get('se', float('nan')))} (min effect {_fmt(r.get('min_effect'))}), "
                         f"clips {r['clip_wins']} better / {r['clip_losses']} worse / {r['clip_ties']} tied "
                         f"(sign test p {r['sign_test_p']:.2f}): **{r['verdict']}**")
    lines += ["", "## Per task (edit accuracy / attributes constant)", "",
              "| variant | " + " | ".join(s["tasks"]) + " |", "|---|" + "---|" * len(s["tasks"])]
    for key, v in doc["variants"].items():
        pt = v["aggregate"]["per_task"]
        cells = [f"{_fmt(pt[t]['edit_accuracy'])} / {_fmt(pt[t]['attributes_constant'])}" if t in pt else "-"
                 for t in s["tasks"]]
        lines.append(f"| `{key}` | " + " | ".join(cells) + " |")
    lines += ["", (f"Grid `{os.path.basename(doc['grid'])}`: for each of the first {min(s['grid_clips'], s['clips'])} clips, rows "
              f"input, ground truth, then {', '.join(s['variant_order'])}; frames left to right."), ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", default=None,
                   help="toy models: a training run / export folder, or the shipped tree (default)")
    p.add_argument("--clips", type=int, default=8, help="held-out edits (tasks cycled evenly)")
    p.add_argument("--tasks", default=",".join(DEFAULT_TASKS), help="comma-separated toy tasks")
    p.add_argument("--tune-steps", type=int, default=80)
    p.add_argument("--lr", type=float, default=None,
                   help=f"tuning learning rate (default {PAPER_LR:g} x {PAPER_STEPS} / tune-steps)")
    p.add_argument("--edit-steps", type=int, default=20, help="DDIM steps of inversion and of sampling")
    p.add_argument("--cfg", type=float, default=7.5, help="classifier-free guidance (EI² §5: 7.5)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default $BENCH_THREADS or 2)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--grid-clips", type=int, default=4)
    p.add_argument("--variants", default=",".join(VARIANTS), help="subset of " + ",".join(VARIANTS))
    ablation.add_result_args(p, BENCH)
    args = p.parse_args(argv)
    if args.rescore:
        return rescore(args.out)
    ablation.set_threads(args.threads)
    tasks = tuple(t.strip() for t in args.tasks.split(",") if t.strip())
    keys = [k.strip() for k in args.variants.split(",") if k.strip()]
    unknown = sorted(set(keys) - set(VARIANTS))
    if unknown or not keys:
        p.error(f"--variants: unknown {unknown}; expected a subset of {list(VARIANTS)}")
    if args.clips < 1 or args.tune_steps < 1 or args.edit_steps < 1:
        p.error("--clips, --tune-steps and --edit-steps must be >= 1")
    lr = args.lr if args.lr is not None else PAPER_LR * PAPER_STEPS / args.tune_steps
    from fdd.toy.ship import toy_paths

    try:
        paths = toy_paths(args.run)
    except FileNotFoundError as exc:
        p.error(f"--run: {exc}")

    from fdd.ei2 import EditConfig, TuneConfig, ei2_edit, ei2_tune, tuned_state_dict
    from fdd.models.sd1 import load_sd1
    from fdd.toy.heldout import heldout_edits

    device = torch.device(args.device)
    t_load = time.perf_counter()
    bb = load_sd1(paths["backbone"], tokenizer=paths["tokenizer"])
    bb.unet.to(device)
    bb.vae.to(device)
    bb.text_encoder.to(device)
    load_s = time.perf_counter() - t_load
    tune_cfg = TuneConfig(steps=args.tune_steps, learning_rate=lr, seed=args.seed)
    edit_cfg = EditConfig(steps=args.edit_steps, cfg=args.cfg, seed=args.seed)
    configs = {k: variant_config(k, args.seed) for k in keys}

    edits = heldout_edits(args.clips, tasks=tasks, frames=args.frames)
    rendered = [e.render(args.frames) for e in edits]
    inputs = [r[0] for r in rendered]
    truths = [r[1] for r in rendered]
    outputs = {k: [] for k in keys}
    per_clip = {k: [] for k in keys}
    times = {k: {"tune": [], "edit": [], "cpu": []} for k in keys}
    final_loss = {k: [] for k in keys}
    tuned_keys: dict[str, list[str]] = {}
    t_all = time.perf_counter()
    for i, e in enumerate(edits):
        frames = torch.from_numpy(inputs[i])
        for k in keys:
            t0, c0 = time.perf_counter(), time.process_time()
            model, result, used = ei2_tune(bb, configs[k], frames, e.source_caption, tune_cfg, device=device)
            common.sync(device)
            t1 = time.perf_counter()
            out = ei2_edit(bb, model, used, e.target_caption, config=edit_cfg)
            common.sync(device)
            t2, c2 = time.perf_counter(), time.process_time()
            if k not in tuned_keys:
                tuned_keys[k] = sorted(tuned_state_dict(model))
            del model
            out = out.detach().float().cpu().clamp(0, 1).numpy()
            outputs[k].append(out)
            per_clip[k].append({"clip": i, "task": e.task, "source": e.source_caption, "target": e.target_caption,
                                **_clip_scores(out, e, inputs[i], truths[i])})
            times[k]["tune"].append(t1 - t0)
            times[k]["edit"].append(t2 - t1)
            times[k]["cpu"].append(c2 - c0)
            final_loss[k].append(float(np.mean(result.history[-max(1, len(result.history) // 10):])))
            print(f"[{BENCH}] clip {i + 1}/{len(edits)} {e.task:<10} {k:<8} tune {t1 - t0:6.1f}s edit {t2 - t1:5.1f}s "
                  f"edit_acc {per_clip[k][-1]['edit_accuracy']:.2f} const {per_clip[k][-1]['attributes_constant']:.0f}",
                  flush=True)
    total_s = time.perf_counter() - t_all

    variants = {}
    for k in keys:
        tt = np.array(times[k]["tune"]) + np.array(times[k]["edit"])
        variants[k] = {
            "label": VARIANTS[k][0], "preset": VARIANTS[k][1], "config": configs[k].to_dict(),
            "tuned_tensors": len(tuned_keys[k]),
            "tuned_tensor_suffixes": sorted({n.split("transformer_blocks.0.", 1)[-1] for n in tuned_keys[k]}),
            "aggregate": _aggregate(outputs[k], edits, inputs, truths),
            "per_clip": per_clip[k],
            "wall_s": float(tt.sum()), "wall_s_per_clip": float(tt.mean()),
            "tune_s_per_clip": float(np.mean(times[k]["tune"])), "edit_s_per_clip": float(np.mean(times[k]["edit"])),
            "cpu_s_per_clip": float(np.mean(times[k]["cpu"])),
            "final_tune_loss_mean": float(np.mean(final_loss[k])),
        }
        ref = keys[0]
        variants[k][f"mean_abs_output_diff_vs_{ref}"] = ablation.mean_abs_diff(outputs[k], outputs[ref])

    claims = score_claims(per_clip)

    grid_path, md_path = ablation.result_paths(args.out)
    rows = ablation.grid_rows(inputs, truths, outputs, keys, args.grid_clips)

    machine = common.machine_info(device)
    comparisons = []
    if "ei2" in variants and "tav" in variants:
        w_e = np.array(times["ei2"]["tune"]) + np.array(times["ei2"]["edit"])
        w_t = np.array(times["tav"]["tune"]) + np.array(times["tav"]["edit"])
        comparisons.append(common.comparison(
            "ablation_ei2_wall_time_per_clip_ei2_vs_tav", float(w_e.mean()), float(w_t.mean()), "s", None,
            len(w_e), float((w_e.max() - w_e.min()) / w_e.min()) if w_e.min() > 0 else 0.0,
            note="mean over clips of tune + edit wall time, not a minimum over repeats"))
    doc = {"bench": BENCH, "machine": machine, "comparisons": comparisons,
           "settings": {"run": os.path.abspath(args.run) if args.run else "shipped", "backbone": paths["backbone"], "clips": len(edits), "tasks": list(tasks),
                        "frames": args.frames, "tune_steps": args.tune_steps, "learning_rate": lr,
                        "learning_rate_rule": "explicit" if args.lr is not None
                        else f"{PAPER_LR:g} x {PAPER_STEPS} / tune_steps (the paper's update budget)",
                        "gate_lr_scale": tune_cfg.gate_lr_scale, "edit_steps": args.edit_steps, "cfg": args.cfg,
                        "inversion_prompt": "", "negative_prompt": "", "seed": args.seed,
                        "grid_clips": args.grid_clips, "variant_order": keys, **rule_settings(),
                        "edits": [{"task": e.task, "instruction": e.instruction, "source": e.source_caption,
                                   "target": e.target_caption} for e in edits]},
           "timing": {"load_s": load_s, "total_s": total_s},
           "variants": variants, "claims": claims, "markdown": md_path, "grid": grid_path}
    ablation.write_outputs(args.out, doc, markdown, rows, grid_path)
    print(markdown(common.json_safe(doc)))
    print(f"[{BENCH}] wrote {args.out}, {md_path}, {grid_path} ({total_s:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
