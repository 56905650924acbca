"""Bench "plug_and_play_sampler": the overhead of :func:`fdd.pipelines.plug_and_play_edit`.

On the tiny models (16 frames, 64x64 -> 16x16 latents, one 16-frame window) it compares

a. ``plug_and_play_edit`` (everything: prompt encoding, guidance, windows, DDIM, VAE decode)
   against a BARE loop doing exactly the same UNetMotionModel + ControlNet calls (branches
   batched in one call, same layout), prompts pre-encoded, the DDIM update inline and the same
   VAE decode; for image_cfg 1.0 (2 branches) and 1.5 (3 branches). Target: time ratio <= 1.05.
b. ``plug_and_play_edit`` (image_cfg 1.0, instruction == caption: 2 branches, ControlNet on
   both) against diffusers' ``AnimateDiffControlNetPipeline`` built from the same modules
   (guidance 7.5, DDIM with SD 1.x settings, output decoded). Target: time ratio <= 1.0, and
   peak-memory growth ratio <= 1.0 (same work should not need more memory than diffusers).

Before timing, every variant's UNet / ControlNet forward calls are counted and asserted equal,
and the outputs are compared (the bare loop and diffusers compute the same thing as ours).

    python bench/bench_plug_and_play.py [--steps 10] [--repeats 5] [--mem-repeats 3] [--device cpu]
"""

from __future__ import annotations

import argparse
import os
import time
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402  (puts the repo root on sys.path)
import torch  # noqa: E402

BENCH = "plug_and_play_sampler"
FRAMES, SIZE = 16, 64
CAPTION = "a green ball rolling on a table"
INSTRUCTION = "make the ball green"


# --------------------------------------------------------------------------------------------
# models and inputs


def load(device="cpu"):
    from fdd.models.controlnet import load_controlnet
    from fdd.models.motion import load_motion_adapter
    from fdd.models.sd1 import load_sd1
    from fdd.pipelines import VideoEditStack
    from fdd.testing.clip import moving_shapes_clip
    from fdd.testing.models_tree import write_models_tree

    paths = write_models_tree(common.models_root())
    bb = load_sd1(paths["checkpoint"], tokenizer=paths["tokenizer"])
    cn = load_controlnet(paths["controlnet"])
    ad = load_motion_adapter(paths["motion"])
    stack = VideoEditStack(bb, controlnet=cn, motion_adapter=ad)
    stack.motion_unet  # build the motion UNet now (model loading, not sampling)
    stack.to(device=device)
    frames = moving_shapes_clip(FRAMES, SIZE, SIZE)
    return stack, frames


def our_config(steps: int, image_cfg: float):
    from fdd.pipelines import PlugAndPlayConfig

    return PlugAndPlayConfig(steps=steps, text_cfg=7.5, image_cfg=image_cfg, seed=0,
                             context_frames=16, context_overlap=4)


# --------------------------------------------------------------------------------------------
# variants


def make_ours(stack, frames, steps, image_cfg, instruction=INSTRUCTION, caption=CAPTION):
    from fdd.pipelines import plug_and_play_edit

    cfg = our_config(steps, image_cfg)

    def run():
        with torch.inference_mode():
            return plug_and_play_edit(stack, frames, instruction, caption, cfg)
    return run


def make_bare(stack, frames, steps, image_cfg, instruction=INSTRUCTION, caption=CAPTION):
    """The same model evaluations as ours with nothing around them: prompts encoded once up
    front, branches [full, image(, uncond)] batched, ControlNet on the first two only,
    guidance and the DDIM update inline, then the same VAE decode (chunks of 8)."""
    from fdd.pipelines.common import encode_prompts
    from fdd.sampling import DDIMSchedule

    bb = stack.backbone
    unet, cn, vae = stack.motion_unet, stack.controlnet, bb.vae
    device = stack.device
    with torch.inference_mode():
        cap = encode_prompts(bb.tokenizer, bb.text_encoder, [caption], device)
        ins = encode_prompts(bb.tokenizer, bb.text_encoder, [instruction], device)
        emp = encode_prompts(bb.tokenizer, bb.text_encoder, [""], device)
    three = image_cfg != 1.0
    n = 3 if three else 2
    text_b = torch.cat([cap, emp, emp] if three else [cap, emp]).repeat_interleave(FRAMES, 0)
    ctrl_b = torch.cat([ins, emp]).repeat_interleave(FRAMES, 0)  # ControlNet on full + image
    sched = DDIMSchedule()
    ac = sched.alphas_cumprod
    ts = sched.timesteps(steps)
    ratio = sched.num_train_timesteps // steps
    coefs = []
    for t in ts:
        a, ap = float(ac[t]), float(ac[t - ratio]) if t - ratio >= 0 else float(ac[0])
        coefs.append((t, a ** 0.5, (1 - a) ** 0.5, ap ** 0.5, (1 - ap) ** 0.5))
    C = unet.config.in_channels
    sf, vsf = bb.scaling_factor, bb.vae_scale_factor
    h = w = SIZE // vsf
    s_t, s_i = 7.5, image_cfg

    def run():
        with torch.inference_mode():
            img = frames.permute(0, 3, 1, 2).to(device).repeat(2, 1, 1, 1)  # (2F, 3, H, W), 0..1
            gen = torch.Generator(device="cpu").manual_seed(0)
            x = torch.randn((1, C, FRAMES, h, w), generator=gen, dtype=torch.float32).to(device)
            for t, sa, sb, spa, spb in coefs:
                xb = x.expand(n, -1, -1, -1, -1)
                flat = xb.permute(0, 2, 1, 3, 4).reshape(n * FRAMES, C, h, w)
                tt = torch.full((n * FRAMES,), t, device=device, dtype=torch.long)
                d, m = cn(flat[: 2 * FRAMES], tt[: 2 * FRAMES], encoder_hidden_states=ctrl_b,
                          controlnet_cond=img, conditioning_scale=1.0, return_dict=False)
                if three:
                    d = [torch.cat([r, r.new_zeros((FRAMES,) + r.shape[1:])]) for r in d]
                    m = torch.cat([m, m.new_zeros((FRAMES,) + m.shape[1:])])
                eps = unet(xb, t, encoder_hidden_states=text_b, down_block_additional_residuals=d,
                           mid_block_additional_residual=m, return_dict=False)[0]
                if three:
                    e_f, e_i, e_u = eps.chunk(3)
                    eps = e_u + s_i * (e_i - e_u) + s_t * (e_f - e_i)
                else:
                    e_f, e_i = eps.chunk(2)
                    eps = e_i + s_t * (e_f - e_i)
                x0 = (x - sb * eps) / sa
                x = spa * x0 + spb * eps
            lat = x[0].permute(1, 0, 2, 3) / sf
            out = torch.cat([vae.decode(lat[i:i + 8]).sample for i in range(0, FRAMES, 8)])
            return ((out.clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 1).cpu().contiguous()
    return run


def make_diffusers(stack, frames, steps, caption=CAPTION):
    """diffusers' AnimateDiffControlNetPipeline on the same modules (the motion UNet our stack
    built, the same ControlNet / VAE / text encoder / tokenizer), DDIM with SD 1.x settings."""
    pipe = common.animatediff_controlnet_pipeline(stack)
    cond = list(frames.permute(0, 3, 1, 2))  # one video: F tensors (3, H, W) in 0..1

    def run():
        with torch.inference_mode():
            gen = torch.Generator(device="cpu").manual_seed(0)
            out = pipe(prompt=caption, negative_prompt="", num_frames=FRAMES, height=SIZE, width=SIZE,
                       num_inference_steps=steps, guidance_scale=7.5, conditioning_frames=cond,
                       generator=gen, output_type="pt", return_dict=False)[0]
            return out[0].permute(0, 2, 3, 1)  # (F, H, W, 3) in 0..1
    return run


# --------------------------------------------------------------------------------------------
# equal-work checks


def count_calls(stack, fn):
    """Forward-call counts of one run, its output, and the run's seconds outside the models
    (total minus time in the UNet, ControlNet, vae.decode/encode and text encoder). Called
    twice per variant: the first call is also the warm-up, the overhead is the second's."""
    bb = stack.backbone
    with common.CallCounter(unet=stack.motion_unet, controlnet=stack.controlnet,
                            vae_decode=(bb.vae, "decode"), vae_encode=(bb.vae, "encode"),
                            text_encoder=bb.text_encoder) as c:
        t0 = time.perf_counter()
        out = fn()
        total = time.perf_counter() - t0
    counts = {k: v for k, v in c.counts.items() if k != "vae_encode" or v}
    return counts, out, total - sum(c.seconds.values())


def max_diff(a, b) -> float:
    return float((a.float() - b.float()).abs().max())


def counted_pair(stack, ours, other, name: str):
    """:func:`count_calls` of ``ours`` and ``other`` (each run twice: warm-up, then counted), the
    two required to call the UNet and the ControlNet equally often; returns their (counts,
    output, overhead) and the largest output difference."""
    count_calls(stack, ours)
    a = count_calls(stack, ours)
    count_calls(stack, other)
    b = count_calls(stack, other)
    assert a[0]["unet"] == b[0]["unet"] and a[0]["controlnet"] == b[0]["controlnet"], (name, a[0], b[0])
    return a, b, max_diff(a[1], b[1])


# --------------------------------------------------------------------------------------------
# memory subprocess entry point


def mem_child(variant: str, steps: int, device: str) -> None:
    common.setup_threads()
    stack, frames = load(device)
    if variant == "ours":
        fn = make_ours(stack, frames, steps, 1.0, instruction=CAPTION)
    elif variant == "diffusers":
        fn = make_diffusers(stack, frames, steps)
    else:
        raise SystemExit(f"unknown variant {variant}")
    import gc
    gc.collect()
    print("MEM_LOADED_MAXRSS", common.maxrss_bytes(), flush=True)
    growth, method = common.peak_growth_here(fn, device)
    print("MEM_METHOD", method, flush=True)
    print("MEM_GROWTH", growth, flush=True)


# --------------------------------------------------------------------------------------------


def main(argv=None) -> str:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--warmup", type=int, default=0,
                    help="extra untimed runs per variant (each already ran twice for the call counts)")
    ap.add_argument("--mem-repeats", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--mem-child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.mem_child:
        mem_child(args.mem_child, args.steps, args.device)
        return ""

    threads = common.setup_threads()
    stack, frames = load(args.device)
    steps = args.steps
    comps = []
    meta = dict(frames=FRAMES, size=SIZE, latent=SIZE // stack.backbone.vae_scale_factor, steps=steps,
                context_frames=16)

    # a. ours vs the bare loop, 2 and 3 branches
    for image_cfg, n_branches in ((1.0, 2), (1.5, 3)):
        ours = make_ours(stack, frames, steps, image_cfg)
        bare = make_bare(stack, frames, steps, image_cfg)
        (c_ours, _, oh_ours), (c_bare, _, oh_bare), diff = counted_pair(stack, ours, bare, "bare loop")
        assert diff < 1e-3, f"bare loop and ours disagree (max |diff| {diff})"
        t = common.time_interleaved({"ours": ours, "bare": bare}, repeats=args.repeats, warmup=args.warmup,
                                    device=args.device)
        print(f"[{n_branches} branches] ours {t['ours']['min']:.3f}s  bare {t['bare']['min']:.3f}s  "
              f"ratio {t['ours']['min'] / t['bare']['min']:.3f}  calls {c_ours}", flush=True)
        comps.append(common.comparison(
            f"plug_and_play_edit_vs_bare_loop_{n_branches}branch_image_cfg{image_cfg}_time",
            t["ours"]["min"], t["bare"]["min"], "s", 1.05, t["ours"]["repeats"], t["ours"]["spread"],
            ours_median=t["ours"]["median"], baseline_median=t["bare"]["median"],
            baseline_spread=round(t["bare"]["spread"], 4), calls_ours=c_ours, calls_baseline=c_bare,
            outside_models_s_ours=round(oh_ours, 4), outside_models_s_baseline=round(oh_bare, 4),
            max_abs_output_diff=diff, **meta))

    # b. ours vs diffusers AnimateDiffControlNetPipeline (equal work: 2 branches, ControlNet on both)
    ours = make_ours(stack, frames, steps, 1.0, instruction=CAPTION)
    dif = make_diffusers(stack, frames, steps)
    (c_ours, _, oh_ours), (c_dif, _, oh_dif), diff = counted_pair(stack, ours, dif, "diffusers")
    print(f"[vs diffusers] calls ours {c_ours} diffusers {c_dif}; max |output diff| {diff:.2e}", flush=True)
    t = common.time_interleaved({"ours": ours, "diffusers": dif}, repeats=args.repeats, warmup=args.warmup,
                                device=args.device)
    print(f"[vs diffusers] ours {t['ours']['min']:.3f}s  diffusers {t['diffusers']['min']:.3f}s  "
          f"ratio {t['ours']['min'] / t['diffusers']['min']:.3f}", flush=True)
    comps.append(common.comparison(
        "plug_and_play_edit_vs_diffusers_AnimateDiffControlNetPipeline_time",
        t["ours"]["min"], t["diffusers"]["min"], "s", 1.0, t["ours"]["repeats"], t["ours"]["spread"],
        ours_median=t["ours"]["median"], baseline_median=t["diffusers"]["median"],
        baseline_spread=round(t["diffusers"]["spread"], 4), calls_ours=c_ours, calls_baseline=c_dif,
        outside_models_s_ours=round(oh_ours, 4), outside_models_s_baseline=round(oh_dif, 4),
        max_abs_output_diff=diff, guidance_scale=7.5, image_cfg=1.0, **meta))

    if args.mem_repeats > 0:
        me = os.path.abspath(__file__)
        base = ["--steps", str(steps), "--device", args.device]
        m_ours = common.peak_growth_subprocess(me, ["--mem-child", "ours", *base], repeats=args.mem_repeats)
        m_dif = common.peak_growth_subprocess(me, ["--mem-child", "diffusers", *base], repeats=args.mem_repeats)
        print(f"[vs diffusers] peak growth ours {m_ours['values']}  diffusers {m_dif['values']}", flush=True)
        comps.append(common.comparison(
            "plug_and_play_edit_vs_diffusers_AnimateDiffControlNetPipeline_peak_memory_growth_target_1.0",
            m_ours["min"], m_dif["min"], "bytes", 1.0, m_ours["repeats"], m_ours["spread"],
            ours_values=m_ours["values"], baseline_values=m_dif["values"],
            measure=f"peak growth over one call in a fresh process, models loaded: {m_ours['extra'].get('method')}",
            **meta))

    machine = common.machine_info(args.device)
    machine["threads"] = threads
    path = common.write_results(BENCH, machine, comps)
    print(f"wrote {path}")
    return path


if __name__ == "__main__":
    main()
