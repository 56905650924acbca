"""Bench "assd_step": the cost of one ASSD optimisation step (:class:`fdd.assd.ASSDOptimizer`).

On the tiny models in their real formats (``fdd.testing.models_tree``: the ``tiny-zeroscope``
UNet3D as the video prior, borrowing the SD 1.x checkpoint's text encoder and VAE, and that
checkpoint as the joint-guidance image model), ``--frames`` frames of ``moving_shapes_clip`` at
64x64 (16x16 latents), it compares, variants timed round-robin:

a. one step with the four branches (ref / edit x cond / uncond) in ONE batched video-UNet call
   against the same step making four separate UNet calls (``batch_branches=False``; with fusion
   the reference calls record their attention inputs for the editing calls), for the DDS-only
   step and for the full ASSD step. Target: ratio <= 0.6 (issue 4). Also the bare UNet calls
   alone: one batch-4 forward vs four batch-1 forwards.
b. the full ASSD step (smoothing + mask + fusion + joint guidance) against the DDS-only step.
   Target: ratio <= 1.6 (issue 4). And each component alone against DDS-only (no target):
   smoothing (Eq. 6, mask off = smooth everywhere), smoothing + mask (ASSD, Eq. 6-8), attention
   fusion (Eq. 11-13), joint guidance (Eq. 9-10).

Before timing, each variant's video / image UNet forward calls per step are counted and
stored, and batched vs separate steps are checked to give the same latent.
Paper anchor: 200 steps take 3-4 minutes on one V100 for 8-16 frames (ModelScope / Zeroscope);
the projected 200-step time here is stored with the full-step comparison (tiny models, CPU: not
comparable in absolute terms).

    python bench/bench_assd.py [--frames 8] [--repeats 7] [--device cpu]
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402  (puts the repo root on sys.path)
import torch  # noqa: E402

BENCH = "assd_step"
SIZE = 64
SOURCE, TARGET = "a red ball and a blue square", "a green ball and a blue square"
PAPER_ANCHOR = "200 steps in 3-4 minutes on one V100 for 8-16 frames (ModelScope / Zeroscope prior)"


def load(device="cpu", frames=8):
    from fdd.assd import ImagePrior, load_t2v_folder_parts, t2v_models
    from fdd.models.sd1 import load_sd1
    from fdd.models.t2v import load_t2v_unet
    from fdd.testing.clip import moving_shapes_clip
    from fdd.testing.models_tree import write_models_tree

    paths = write_models_tree(common.models_root())
    bb = load_sd1(paths["checkpoint"], tokenizer=paths["tokenizer"])
    unet3d = load_t2v_unet(paths["t2v"]).requires_grad_(False)
    models = t2v_models(unet3d, load_t2v_folder_parts(paths["t2v"]), fallback=bb, source=paths["t2v"])
    for m in models.modules() + [bb.unet]:
        m.to(device)
    models = models.with_image_model(ImagePrior.from_backbone(bb))
    return models, moving_shapes_clip(frames, SIZE, SIZE)


VARIANTS = {
    "dds": dict(smoothing=False, mask=False, attention_fusion=False, joint_guidance=False),
    "dds_separate_calls": dict(smoothing=False, mask=False, attention_fusion=False, joint_guidance=False,
                               batch_branches=False),
    "smoothing": dict(smoothing=True, mask=False, attention_fusion=False, joint_guidance=False),
    "assd": dict(smoothing=True, mask=True, attention_fusion=False, joint_guidance=False),
    "fusion": dict(smoothing=False, mask=False, attention_fusion=True, joint_guidance=False),
    "joint": dict(smoothing=False, mask=False, attention_fusion=False, joint_guidance=True),
    "full": dict(smoothing=True, mask=True, attention_fusion=True, joint_guidance=True),
    "full_separate_calls": dict(smoothing=True, mask=True, attention_fusion=True, joint_guidance=True,
                                batch_branches=False),
}


def make_optimizers(models, z_src, seed=0):
    from fdd.assd import ASSDConfig, ASSDOptimizer

    return {name: ASSDOptimizer(models, z_src, SOURCE, TARGET, ASSDConfig(seed=seed, **kw))
            for name, kw in VARIANTS.items()}


def step_fn(opt):
    def run():
        with torch.inference_mode(), opt:
            opt.step()
    return run


def count_calls(models, opt) -> dict:
    counter = common.CallCounter(video=models.video.unet, image=models.image.unet)
    with counter:
        step_fn(opt)()
    return dict(counter.counts)


def same_result(models, z_src, a: str, b: str, seed=1) -> float:
    """Max |difference| of the latent after one step of variants a and b (same seed)."""
    opts = make_optimizers(models, z_src, seed)
    step_fn(opts[a])()
    step_fn(opts[b])()
    return float((opts[a].z - opts[b].z).abs().max())


def main(argv=None) -> str:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args(argv)

    from fdd.assd import encode_source

    common.setup_threads()
    models, frames = load(args.device, args.frames)
    with torch.inference_mode():
        z_src, _ = encode_source(models, frames)
    opts = make_optimizers(models, z_src)
    calls = {name: count_calls(models, opt) for name, opt in opts.items()}
    print("UNet calls per step:", calls, flush=True)
    assert calls["dds"] == {"video": 1, "image": 0} and calls["dds_separate_calls"] == {"video": 4, "image": 0}
    assert calls["full"] == {"video": 1, "image": 1}
    diffs = {"dds": same_result(models, z_src, "dds", "dds_separate_calls"),
             "full": same_result(models, z_src, "full", "full_separate_calls")}
    print("batched vs separate max |latent diff|:", diffs, flush=True)
    assert max(diffs.values()) < 1e-3, diffs

    # the bare UNet calls: one batch of 4 vs 4 batches of 1
    v = models.video
    with torch.inference_mode():
        emb = v.encode_text([SOURCE, TARGET, "", ""])
    x4 = torch.randn((4,) + tuple(z_src.shape[1:]), device=z_src.device)

    def unet_batched():
        with torch.inference_mode():
            v.predict(x4, 500, emb)

    def unet_separate():
        with torch.inference_mode():
            for i in range(4):
                v.predict(x4[i:i + 1], 500, emb[i:i + 1])

    fns = {name: step_fn(opt) for name, opt in opts.items()}
    fns["unet_batched"], fns["unet_separate"] = unet_batched, unet_separate
    t = common.time_interleaved(fns, repeats=args.repeats, warmup=args.warmup, device=args.device)
    for name, r in t.items():
        print(f"  {name:22s} min {r['min']:.4f}s  median {r['median']:.4f}s  spread {r['spread']:.2f}", flush=True)

    h, w = z_src.shape[-2:]
    meta = dict(frames=args.frames, size=SIZE, latent=[int(h), int(w)], prior="UNet3D (tiny-zeroscope)",
                image_model="SD 1.x (tiny)", fusion_layers=3, keyframe_stride=4)

    def comp(name, ours, base, target, **extra):
        return common.comparison(name, t[ours]["min"], t[base]["min"], "s", target, t[ours]["repeats"],
                                 t[ours]["spread"], ours_median=t[ours]["median"],
                                 baseline_median=t[base]["median"], baseline_spread=round(t[base]["spread"], 4),
                                 variant_ours=ours, variant_baseline=base, **extra, **meta)

    comps = [
        comp("dds_step_batched_vs_four_separate_unet_calls_time", "dds", "dds_separate_calls", 0.6,
             calls_ours=calls["dds"], calls_baseline=calls["dds_separate_calls"],
             max_abs_latent_diff=diffs["dds"]),
        comp("full_assd_step_batched_vs_separate_calls_time", "full", "full_separate_calls", 0.6,
             calls_ours=calls["full"], calls_baseline=calls["full_separate_calls"],
             max_abs_latent_diff=diffs["full"]),
        comp("video_unet_one_batch4_call_vs_four_batch1_calls_time", "unet_batched", "unet_separate", None),
        comp("full_assd_step_vs_dds_step_time", "full", "dds", 1.6, calls_ours=calls["full"],
             calls_baseline=calls["dds"], projected_200_steps_s=round(200 * t["full"]["min"], 2),
             paper_anchor=PAPER_ANCHOR),
        comp("smoothing_step_vs_dds_step_time", "smoothing", "dds", None),
        comp("assd_smoothing_mask_step_vs_dds_step_time", "assd", "dds", None),
        comp("attention_fusion_step_vs_dds_step_time", "fusion", "dds", None),
        comp("joint_guidance_step_vs_dds_step_time", "joint", "dds", None, calls_ours=calls["joint"]),
    ]
    machine = common.machine_info(args.device)
    path = common.write_results(BENCH, machine, comps)
    for c in comps:
        print(f"{c['name']}: ratio {c['ratio']}  target {c['target']}  meets {c['meets']}", flush=True)
    print(path)
    return path


if __name__ == "__main__":
    main()
