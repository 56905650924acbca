"""Ablation "ablation_assd": the paper's Fig. 4 ablation (ASSD, Zhu, Bao et al.) on the toy world.

Four cumulative variants, each a row of :data:`fdd.assd.ABLATIONS` (the optimiser's own switches;
nothing is re-implemented here), all run on the same held-out edits with the same seed (the same
t and eps at every step):

=============  ==========================================================================
``dds``        Video DDS only (Eq. 5): no smoothing, no mask, no fusion, no joint guidance
``assd``       + sliding-window smoothing (Eq. 6) + adaptive mask (Eq. 7): ASSD (Eq. 8)
``assd+fusion``+ weighted attention fusion in the editing branch (Eq. 11-13)
``full``       + image-based joint guidance on keyframes (Eq. 9-10): full ASSD
=============  ==========================================================================

Models: the toy run's text-to-video prior ``<run>/export/toy_t2v`` (UNet3D with its own VAE,
text encoder and word-level tokenizer) and, for joint guidance, the toy SD 1.x image model
``<run>/export/toy_sd1_diffusers`` (same VAE weights; the latent-space check is recorded).

Edits: :func:`fdd.toy.heldout.heldout_edits` restricted to object-level tasks (default Local,
Texture, Style: one object changes in place and everything else, background and the object's
motion, must stay; the paper's Fig. 4 edits are of that kind). Contamination (pixels changed
outside the edited object) is undefined for Background / Global, which change every pixel, so
those are refused; Add / Remove may be chosen with ``--tasks``.

Scores: :func:`fdd.toy.heldout.score_set` with contamination (edit accuracy, preservation,
contamination, attributes_constant, path residual, ...), overall and per task, plus two
references: the input through the VAE only (what the VAE alone costs) and the ground truth
(sanity: contamination 0, edit accuracy 1). Each claim of the paper's ablation text (one metric,
one variant against the one named in it) is decided by the rule every toy-world ablation bench
shares, :func:`common.paired_verdict` (paired per-clip differences, mean beyond 2 standard errors
and a per-metric minimum effect; its wording, :data:`common.VERDICT_RULE`, heads the markdown):
"reproduced", "opposite", "no clear change" or "not measurable".

Steps: the paper runs 200 SGD steps of lr 0.1; the optimiser scales the gradient by
2000 / (h * w) (DDS), so the toy's 16x16 latent moves 4x farther per step than ModelScope's
32x32 latent at 256 px. The default 50 steps at lr 0.1 give the same total step size as the
paper's 200 on ModelScope at 256 px (50 * 2000/256 = 200 * 2000/1024); ``--set lr=...``
changes it for every variant.

Writes ``--out`` (JSON, bench conventions: ``bench``, ``machine``, ``comparisons`` = wall time
per clip of each variant against DDS, plus settings, per-variant aggregates, references, claims,
per-clip rows and wall time), ``<out stem>.md`` (the table) and ``<out stem>_grid.png`` (per
clip: input, ground truth, then each variant's output, frames left to right).

    python bench/ablation_assd.py --run /work/toy_run --clips 12 --iters 50 --threads 2
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import ablation  # noqa: E402
import common  # noqa: E402  (puts the repo root on sys.path)
import numpy as np  # noqa: E402
import torch  # noqa: E402

BENCH = "ablation_assd"
DEFAULT_RUN = None  # the shipped toy models (models/toy)
DEFAULT_TASKS = ("Local", "Texture", "Style")
FRAMES = 8  # the toy video prior is trained on 8-frame clips

#: (key of fdd.assd.ABLATIONS, row label), cumulative in the order of the paper's Fig. 4
VARIANTS = [
    ("dds", "DDS (video DDS only, Eq. 5)"),
    ("assd", "+ sliding-window smoothing + adaptive mask (ASSD, Eq. 6-8)"),
    ("assd+fusion", "+ weighted attention fusion (Eq. 11-13)"),
    ("full", "+ image joint guidance (Eq. 9-10) = full ASSD"),
]
SWITCHES = ("smoothing", "mask", "attention_fusion", "joint_guidance")

#: metrics reported per variant: (key in score_set's result, short label, better direction)
METRICS = [
    ("edit_accuracy", "edit", +1),
    ("preservation", "pres", +1),
    ("contamination", "contam", -1),
    ("attributes_constant", "const", +1),
    ("path_residual_px_median", "path px", -1),
    ("attribute_accuracy", "attr", +1),
    ("fully_right", "fully right", +1),
]

_ABL = "ASSD paper, Experiments > Ablation Study (text on Fig. 4)"
#: the paper's claims, each a direction of one metric from the previous variant (``vs``)
CLAIMS = [
    {"variant": "assd", "vs": "dds", "metric": "contamination", "direction": -1, "kind": "stated",
     "source": f"{_ABL}: 'by using ASSD to adaptively smoothing the gradient information with "
               "adjacent frames, the contaminations in the resulting video are reduced'"},
    {"variant": "assd", "vs": "dds", "metric": "attributes_constant", "direction": +1, "kind": "implied",
     "source": f"{_ABL}: '... leading to improved video quality'; Introduction: sliding time-windows "
               "'mitigate abrupt gradient fluctuations within local temporal sequences' (our proxy: "
               "attributes read the same on every frame)"},
    {"variant": "assd", "vs": "dds", "metric": "path_residual_px_median", "direction": -1, "kind": "implied",
     "source": "same as above (our proxy: object centroid path closer to a straight line)"},
    {"variant": "assd+fusion", "vs": "assd", "metric": "contamination", "direction": -1, "kind": "stated",
     "source": f"{_ABL}: 'When we further incorporate the proposed Weighted Attention Fusion ... the "
               "contaminations are further reduced'"},
    {"variant": "assd+fusion", "vs": "assd", "metric": "preservation", "direction": +1, "kind": "stated",
     "source": f"{_ABL}: 'the edited video retains more information from the original video, such as "
               "colors and other details'"},
    {"variant": "assd+fusion", "vs": "assd", "metric": "edit_accuracy", "direction": -1, "kind": "trade-off",
     "source": "Fig. 7 caption and Ablation Study: with large lambda (0.8 here) more reference "
               "information enters the editing branch, 'reducing contaminations ... but also weakening "
               "the degree of editing'"},
    {"variant": "full", "vs": "assd+fusion", "metric": "contamination", "direction": -1, "kind": "stated",
     "source": f"{_ABL}: 'the updated gradients from Stable Diffusion further reduce some of the "
               "contaminations in the video'"},
    {"variant": "full", "vs": "assd+fusion", "metric": "edit_accuracy", "direction": +1, "kind": "stated",
     "source": f"{_ABL}: '... and enhanced the detail quality of the edited subjects' (our proxy: "
               "edit accuracy)"},
    {"variant": "full", "vs": "dds", "metric": "contamination", "direction": -1, "kind": "stated",
     "source": "Fig. 4 caption: 'using all the components we propose achieves the best balance "
               "between editing and minimizing contaminations'; Introduction: DDS on video shows "
               "'over-editing and pronounced artifacts ... Contamination'"},
]


# --------------------------------------------------------------------------------------------
# arguments and models


def _config_overrides(pairs: list[str]) -> dict:
    """``--set key=value`` -> typed ASSDConfig overrides (the ablation switches are refused)."""
    from fdd.assd import ASSDConfig

    fields = {f.name: f for f in dataclasses.fields(ASSDConfig)}
    out = {}
    for p in pairs:
        key, sep, raw = p.partition("=")
        key = key.strip()
        if not sep or key not in fields:
            raise SystemExit(f"--set {p!r}: expected key=value with key one of {sorted(fields)}")
        if key in SWITCHES or key in ("steps", "seed"):
            raise SystemExit(f"--set {key}: set by the ablation itself (switches) or by --iters / --seed")
        default = getattr(ASSDConfig(), key)
        if isinstance(default, bool):
            if raw.lower() not in ("true", "false", "1", "0"):
                raise SystemExit(f"--set {key}: expected true / false, got {raw!r}")
            out[key] = raw.lower() in ("true", "1")
        elif isinstance(default, int):
            out[key] = int(raw)
        elif isinstance(default, float):
            out[key] = float(raw)
        else:
            out[key] = raw
    return out


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", default=DEFAULT_RUN, help="toy models: a training run / export folder, or the shipped tree (default)")
    ap.add_argument("--clips", type=int, default=12, help="held-out edits (tasks cycled evenly)")
    ap.add_argument("--iters", type=int, default=50, help="ASSD optimisation steps per clip and variant")
    ap.add_argument("--threads", type=int, default=int(os.environ.get("BENCH_THREADS", "2")))
    ap.add_argument("--tasks", default=",".join(DEFAULT_TASKS),
                    help="comma-separated object-level toy tasks (Local, Texture, Style, Add, Remove)")
    ap.add_argument("--seed", type=int, default=0, help="ASSD seed (t and eps of every step), all variants")
    ap.add_argument("--grid-clips", type=int, default=3, help="clips shown in the grid PNG")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override an ASSDConfig field for every variant (e.g. lr=0.2, tau=0.5)")
    ablation.add_result_args(ap, BENCH)
    args = ap.parse_args(argv)
    if args.rescore:
        return args
    if args.clips < 1 or args.iters < 1 or args.threads < 1 or args.grid_clips < 0:
        raise SystemExit("--clips, --iters and --threads must be >= 1, --grid-clips >= 0")
    from fdd.toy.world import TASKS

    tasks = tuple(t.strip() for t in args.tasks.split(",") if t.strip())
    bad = [t for t in tasks if t not in TASKS]
    if bad or not tasks:
        raise SystemExit(f"--tasks: unknown {bad or 'none given'}; expected toy tasks from {TASKS}")
    whole = [t for t in tasks if t in ("Background", "Global")]
    if whole:
        raise SystemExit(f"--tasks: {whole} change every pixel, so contamination (pixels changed outside "
                         "the edited object) is undefined; use object-level tasks")
    args.tasks = tasks
    args.overrides = _config_overrides(args.set)
    return args


def model_paths(run: str) -> dict:
    """The toy model files (``fdd.toy.ship.toy_paths``: the shipped tree, a run or an export folder)."""
    from fdd.toy.ship import toy_paths

    try:
        return toy_paths(run)
    except FileNotFoundError as exc:
        raise SystemExit(f"--run: {exc}") from exc


def load_models(paths: dict):
    """(ASSDModels with the joint-guidance image model, latent-space difference of the two VAEs)."""
    from fdd.assd import ImagePrior, check_latent_spaces_agree, load_t2v_folder_parts, t2v_models
    from fdd.models.sd1 import load_sd1
    from fdd.models.t2v import load_t2v_unet

    t2v = paths["t2v"]
    unet3d = load_t2v_unet(t2v).requires_grad_(False)
    video = t2v_models(unet3d, load_t2v_folder_parts(t2v), source=t2v)
    image = ImagePrior.from_backbone(load_sd1(paths["backbone"], tokenizer=paths["tokenizer"]))
    rel = check_latent_spaces_agree(video, image)
    return video.with_image_model(image), rel


# --------------------------------------------------------------------------------------------
# running


@torch.no_grad()
def edit_clip(models, z_src: torch.Tensor, size: tuple[int, int], source: str, target: str,
              cfg) -> tuple[np.ndarray, dict]:
    """What :func:`fdd.assd.assd_edit` does after encoding (optimise, decode, back to 0..1 frames
    of ``size``), with the optimiser kept at hand to record its per-step diagnostics. The source
    latent is encoded once per clip and shared by the variants."""
    from fdd.assd import ASSDOptimizer

    opt = ASSDOptimizer(models, z_src, source, target, cfg)
    masks, grads = [], []

    def record(step, total, z):
        masks.append(opt.last.get("mask_fraction"))
        grads.append(opt.last.get("grad_abs_mean"))

    z = opt.run(callback=record)
    m = [x for x in masks if x is not None]
    return to_frames(models, z, size), {
        "mask_fraction_mean": float(np.mean(m)) if m else None,
        "grad_abs_mean_first": grads[0], "grad_abs_mean_last": grads[-1],
        "latent_change_abs_mean": float((z - z_src).abs().mean())}


@torch.no_grad()
def to_frames(models, z: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    """Latent ``(1, C, F, h, w)`` -> frames ``[F, H, W, 3]`` in 0..1 at ``size`` (as assd_edit)."""
    from fdd.assd import decode_latent
    from fdd.video import pixels_to_frames, resize_pixels

    return pixels_to_frames(resize_pixels(decode_latent(models, z), tuple(size))).numpy()


# --------------------------------------------------------------------------------------------
# statistics and output


def check_claim(per_clip: dict, claim: dict) -> dict:
    """One claim: ``claim["variant"]`` against ``claim["vs"]`` on its metric, the claimed way being
    ``claim["direction"]`` (+1 up, -1 down), by :func:`ablation.compare`. Returns the ``diff``
    entry (paired mean change and its SE over ``n`` clips, clips moved the claimed way / the other
    way / unchanged, sign test p, minimum effect) and the verdict."""
    r = ablation.compare(per_clip, claim["metric"], claim["variant"], claim["vs"], claim["direction"] > 0)
    diff = {"mean": r["delta"], "se": r["se"], "n": r["n"], "clip_wins": r["clip_wins"],
            "clip_losses": r["clip_losses"], "clip_ties": r["clip_ties"], "sign_test_p": r["sign_test_p"],
            "min_effect": r["min_effect"]}
    return {"diff": diff, "verdict": r["verdict"]}


def score_claims(variants: dict) -> list[dict]:
    """Every claim of :data:`CLAIMS` with the two variants' aggregates and :func:`check_claim`."""
    per_clip = {k: v["per_clip"] for k, v in variants.items()}
    return [{**c, "before": variants[c["vs"]]["aggregate"][c["metric"]],
             "after": variants[c["variant"]]["aggregate"][c["metric"]], **check_claim(per_clip, c)} for c in CLAIMS]


def _fmt(v, digits=3) -> str:
    return "n/a" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{v:.{digits}f}"


def _metrics_cell(agg: dict) -> str:
    return " · ".join(f"{label} {_fmt(agg.get(key), 2 if key == 'path_residual_px_median' else 3)}"
                      for key, label, _ in METRICS[:5])


def _arrow(d: int) -> str:
    return "↓" if d < 0 else "↑"


def markdown(doc: dict) -> str:
    s = doc["settings"]
    lines = ["# ASSD ablation on the toy world (paper Fig. 4)", "",
             (f"{s['clips']} held-out edits ({', '.join(s['tasks'])}; {s['frames']} frames at {s['size']} px), "
             f"{s['iters']} ASSD steps each, seed {s['seed']}, {doc['machine']['threads']} thread(s); "
             f"run `{s['export']}` ({s['run_kind']}). Variants are cumulative; each claim compares the variant "
             "on its row with the variant named in it. Metrics: edit accuracy, preservation, contamination "
             "(fraction of pixels outside the edited object whose colour moved > 0.3), attributes "
             "constant over frames, median centroid-path residual (px)."), "",
             common.VERDICT_RULE + " Below: m ± SE (clips moved the claimed way / the other way).", "",
             "| variant | metrics | paper's claimed direction | ours (reproduced / not) |",
             "|---|---|---|---|"]
    by_variant = {}
    for c in doc["claims"]:
        by_variant.setdefault(c["variant"], []).append(c)
    for key, label in VARIANTS:
        agg = doc["variants"][key]["aggregate"]
        claims = by_variant.get(key, [])
        if not claims:
            claimed, ours = "baseline (Fig. 4 row 1: contamination near the edited objects)", "—"
        else:
            claimed = "<br>".join(f"{c['metric']} {_arrow(c['direction'])} vs {c['vs']} ({c['kind']})"
                                  for c in claims)
            nd = lambda c: 4 if c["metric"] == "contamination" else 3  # noqa: E731
            ours = "<br>".join(f"{c['metric']} {_fmt(c['diff']['mean'], nd(c))} ± {_fmt(c['diff']['se'], nd(c))} "
                               f"({c['diff'].get('clip_wins', 0)}/{c['diff'].get('clip_losses', 0)}): "
                               f"**{c['verdict']}**" for c in claims)
        lines.append(f"| {label} | {_metrics_cell(agg)} | {claimed} | {ours} |")
    lines += ["", "References (not variants):", "",
              "| reference | metrics |", "|---|---|"]
    for name, ref in doc["reference"].items():
        lines.append(f"| {name} | {_metrics_cell(ref['aggregate'])} |")
    lines += ["", "Per task (edit / preservation / contamination):", "",
              "| variant | " + " | ".join(s["tasks"]) + " |", "|---|" + "---|" * len(s["tasks"])]
    for key, label in VARIANTS:
        per = doc["variants"][key]["aggregate"]["per_task"]
        cells = [f"{_fmt(per[t]['edit_accuracy'], 2)} / {_fmt(per[t]['preservation'], 2)} / "
                 f"{_fmt(per[t]['contamination'], 3)}" if t in per else "—" for t in s["tasks"]]
        lines.append(f"| {key} | " + " | ".join(cells) + " |")
    lines += ["", ("Diagnostics per variant (means over clips): fraction of latent elements the adaptive "
              "mask smooths; mean |latent change|; mean |output − DDS output| (pixels, 0..1); seconds "
              "per clip (median)."), "",
              "| variant | mask fraction | latent change | pixel diff vs DDS | s / clip |", "|---|---|---|---|---|"]
    for key, _ in VARIANTS:
        v = doc["variants"][key]
        lines.append(f"| {key} | {_fmt(v['diagnostics']['mask_fraction_mean'])} | "
                     f"{_fmt(v['diagnostics']['latent_change_abs_mean'], 4)} | "
                     f"{_fmt(v['output_diff_vs_dds']['mean_abs'], 4)} | {_fmt(v['seconds_per_clip']['median'], 2)} |")
    lines += ["", "Where the paper says it:", ""]
    for c in doc["claims"]:
        lines.append(f"- {c['variant']} vs {c['vs']}, {c['metric']} {_arrow(c['direction'])}: {c['source']}")
    lines += ["", f"Grid (`{os.path.basename(doc['grid'])}`): per clip, rows = input, ground truth, "
              + ", ".join(k for k, _ in VARIANTS) + "; frames left to right. Clips: "
              + "; ".join(doc["grid_clips"]) + ".", "",
              f"![grid]({os.path.basename(doc['grid'])})", "",
              f"Total wall time {doc['wall_s']:.0f} s. Command: `{doc['command']}`", ""]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------


def main(argv=None) -> str:
    """Run the ablation; returns the JSON path. Torch's thread count is restored on return."""
    args = parse_args(argv)
    if args.rescore:
        ablation.rescore(args.out, BENCH, lambda doc: score_claims(doc["variants"]), markdown,
                         {"verdict_rule": common.VERDICT_RULE})
        return args.out
    prev = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        return run(args, argv)
    finally:
        torch.set_num_threads(prev)


def run(args, argv=None) -> str:
    from fdd.assd import ABLATIONS, ASSDConfig, AttentionFusion, encode_source
    from fdd.toy.heldout import HELDOUT_SEED, heldout_edits, score_set

    t_start = time.perf_counter()
    paths = model_paths(args.run)
    export = os.path.dirname(paths["t2v"])
    models, vae_rel = load_models(paths)
    configs = {k: ASSDConfig.ablation(k, steps=args.iters, seed=args.seed, **args.overrides) for k, _ in VARIANTS}
    for k, cfg in configs.items():  # the rows are the optimiser's own, cumulative, as in Fig. 4
        assert {s: getattr(cfg, s) for s in SWITCHES} == ABLATIONS[k], k
    fused = AttentionFusion(models.video.unet, configs["full"].fusion_layers).layer_names
    edits = heldout_edits(args.clips, tasks=args.tasks, frames=FRAMES)

    inputs, truths = [], []
    outputs = {k: [] for k, _ in VARIANTS}
    diags = {k: [] for k, _ in VARIANTS}
    seconds = {k: [] for k, _ in VARIANTS}
    roundtrip, encode_s = [], []
    for i, e in enumerate(edits):
        inp, gt = e.render(FRAMES)
        inputs.append(inp)
        truths.append(gt)
        frames = torch.from_numpy(np.ascontiguousarray(inp, np.float32))
        t0 = time.perf_counter()
        with torch.no_grad():
            z_src, _ = encode_source(models, frames)
        encode_s.append(time.perf_counter() - t0)
        size = tuple(inp.shape[1:3])
        roundtrip.append(to_frames(models, z_src, size))
        for k, _ in VARIANTS:  # variants interleaved per clip: a slow phase hits all alike
            t0 = time.perf_counter()
            out, diag = edit_clip(models, z_src, size, e.source_caption, e.target_caption, configs[k])
            seconds[k].append(time.perf_counter() - t0)
            outputs[k].append(out)
            diags[k].append(diag)
        print(f"clip {i + 1}/{len(edits)} {e.task}: {e.instruction!r} "
              + " ".join(f"{k} {seconds[k][-1]:.1f}s" for k, _ in VARIANTS), flush=True)

    def score(outs):
        agg = score_set(outs, edits, inputs, with_contamination=True)
        clips = [score_set([o], [e], [x], with_contamination=True) for o, e, x in zip(outs, edits, inputs)]
        per_clip = [{m: c[m] for m, _, _ in METRICS} for c in clips]
        return agg, per_clip

    variants, per_clip = {}, {}
    for k, label in VARIANTS:
        agg, per_clip[k] = score(outputs[k])
        dd = np.array([np.abs(a - b).mean() for a, b in zip(outputs[k], outputs["dds"])])
        dm = np.array([np.abs(a - b).max() for a, b in zip(outputs[k], outputs["dds"])])
        ts = seconds[k]
        variants[k] = {
            "label": label, "switches": ABLATIONS[k], "config": dataclasses.asdict(configs[k]),
            "aggregate": agg, "per_clip": per_clip[k],
            "diagnostics": {key: (float(np.mean([d[key] for d in diags[k]])) if diags[k][0][key] is not None
                                  else None) for key in diags[k][0]},
            "output_diff_vs_dds": {"mean_abs": float(dd.mean()), "max_abs": float(dm.max())},
            "seconds_per_clip": {"min": min(ts), "median": float(np.median(ts)), "max": max(ts),
                                 "total": float(sum(ts)), "per_step_median": float(np.median(ts)) / args.iters},
        }
    reference = {"vae_roundtrip (input encoded + decoded, no optimisation)": {"aggregate": score(roundtrip)[0]},
                 "ground truth (target render)": {"aggregate": score(truths)[0]}}

    claims = score_claims(variants)

    grid_path, _ = ablation.result_paths(args.out)
    shown = list(range(min(args.grid_clips, len(edits))))
    rows = ablation.grid_rows(inputs, truths, outputs, [k for k, _ in VARIANTS], args.grid_clips)

    machine = common.machine_info("cpu")
    comparisons = []
    base = seconds["dds"]
    for k, _ in VARIANTS[1:]:
        ts = seconds[k]
        comparisons.append(common.comparison(
            f"{k.replace('+', '_')}_vs_dds_edit_time_per_clip", min(ts), min(base), "s", None, len(ts),
            (max(ts) - min(ts)) / min(ts), ours_median=float(np.median(ts)),
            baseline_median=float(np.median(base)), iters=args.iters, frames=FRAMES))
    run_kind = "trained"
    marker = os.path.join(export, ".complete")
    if os.path.isfile(marker):
        with open(marker) as fh:
            if fh.read().strip() == "untrained":  # fdd.testing.toy_run's marker
                run_kind = "untrained"
    f = models.vae_scale_factor
    doc = {
        "bench": BENCH, "machine": machine, "comparisons": comparisons,
        "settings": {"run": os.path.abspath(args.run) if args.run else "shipped", "export": export, "run_kind": run_kind,
                     "clips": args.clips, "iters": args.iters, "threads": args.threads, "seed": args.seed,
                     "tasks": list(args.tasks), "frames": FRAMES, "size": int(inputs[0].shape[1]),
                     "latent": [int(inputs[0].shape[1]) // f, int(inputs[0].shape[2]) // f],
                     "heldout_seed": HELDOUT_SEED, "overrides": args.overrides,
                     "fused_layers": fused, "keyframes_joint_guidance":
                         list(range(configs["full"].keyframe_offset, FRAMES, configs["full"].keyframe_stride)),
                     "image_vs_video_vae_latent_rel_diff": vae_rel,
                     "verdict_rule": common.VERDICT_RULE,
                     "min_effect": {c["metric"]: common.min_effect_of(c["metric"]) for c in CLAIMS},
                     "encode_s_per_clip_median": float(np.median(encode_s))},
        "variants": variants, "reference": reference, "claims": claims,
        "edits": [{"task": e.task, "instruction": e.instruction, "source_caption": e.source_caption,
                   "target_caption": e.target_caption} for e in edits],
        "grid": grid_path, "grid_clips": [f"{edits[i].task}: {edits[i].instruction}" for i in shown],
        "command": "python bench/ablation_assd.py " + " ".join(argv if argv is not None else sys.argv[1:]),
    }
    doc["wall_s"] = time.perf_counter() - t_start
    _, md = ablation.write_outputs(args.out, doc, markdown, rows, grid_path)
    for c in claims:
        print(f"{c['variant']:12s} vs {c['vs']:12s} {c['metric']:24s} {_arrow(c['direction'])} "
              f"{c['diff']['mean']:+.4f} ± {c['diff']['se']:.4f}: {c['verdict']}", flush=True)
    print(args.out, md, grid_path if rows else "(no grid)", f"{doc['wall_s']:.0f}s", flush=True)
    return args.out


if __name__ == "__main__":
    main()
