"""Bench "ei2_attention": EI²'s FFAM and one-shot tuning step against the baselines of the paper.

On the tiny SD UNet of the models tree (real file format), n = 8 frames of a 16x16 latent
(64x64 pixels, the demo clip's size; ``--latent`` changes it), CPU unless ``--device``:

a. **Attention layers**: every self-attention layer (attn1) of the inflated UNet, called on the
   hidden states it sees in a forward pass, forward + backward (tuning trains W_Q and the inputs
   carry gradients), for FFAM r = 2 and r = 4 (Eq. 10), Tune-A-Video's sparse-causal attention
   and full spatio-temporal attention. Time (min over round-robin repeats) and peak memory
   growth (fresh subprocess per measurement, ``bench/common.peak_growth_here``) under two
   SDPA back-ends: ``math`` materialises the attention matrices (as the paper's measurements
   did: 32 GiB for full attention on 8 frames), ``fused`` is PyTorch's default (flash attention
   on CPU / CUDA: memory linear in the keys). Plus the analytic size of the attention matrices
   (``fdd.ei2.ffam.attention_matrix_elements``, fp32, all layers and heads).
b. **Tuning step**: one :meth:`fdd.ei2.OneShotTuner.step` (spectral-norm refresh, noise, forward,
   Eq. 2 loss, backward, clipping, AdamW on the §5 parameters) for EI² (FFAM r = 2 / r = 4 +
   STAM), STAM with sparse-causal attention, STAM with full attention, and the Tune-A-Video-style
   model (LayerNorm temporal attention + sparse-causal, W_Q + temporal module tuned). Time and
   peak memory growth of one step after a warm-up step (optimizer state allocated), both
   back-ends.

Targets (issue 3): FFAM r = 2 attention peak memory <= 0.35 x full; FFAM attention time <= 1.25 x
sparse-causal; EI² tuning step <= 1.15 x the Tune-A-Video-style step in time and memory. Paper
anchors (V100, 512 px): full attention 32 GiB / ~45 min, EI² 11 GiB / 12.5 min, TAV 9.6 GiB / 11 min.

    python bench/bench_ei2.py [--frames 8] [--latent 16] [--repeats 5] [--mem-repeats 3] [--device cpu]

Memory children run with ``MALLOC_MMAP_THRESHOLD_=65536`` so glibc returns freed blocks and the
peak RSS follows the live tensors.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common
import torch

BENCH = "ei2_attention"
ATTN_VARIANTS = {"ffam_r2": dict(attention="ffam", ffam_ratio=2), "ffam_r4": dict(attention="ffam", ffam_ratio=4),
                 "sparse_causal": dict(attention="sparse_causal"), "full": dict(attention="full")}
STEP_VARIANTS = ("ei2_r2", "ei2_r4", "stam_sparse_causal", "stam_full", "tav")
BACKENDS = ("fused", "math")


def step_config(name: str):
    from fdd.ei2 import InflationConfig

    return {"ei2_r2": InflationConfig(), "ei2_r4": InflationConfig(ffam_ratio=4),
            "stam_sparse_causal": InflationConfig(attention="sparse_causal"),
            "stam_full": InflationConfig(attention="full"),
            "tav": InflationConfig.tune_a_video()}[name]


def sdpa_backend(name: str):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    if name == "math":
        return sdpa_kernel(SDPBackend.MATH)
    if name == "fused":
        return contextlib.nullcontext()
    raise ValueError(name)


def load_unet(device):
    from fdd.models.sd1 import load_sd1
    from fdd.testing.models_tree import write_models_tree

    paths = write_models_tree(common.models_root())
    bb = load_sd1(paths["checkpoint"], tokenizer=paths["tokenizer"])
    return bb.unet.to(device)


def inputs(frames: int, latent: int, device, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    lat = torch.randn(1, 4, frames, latent, latent, generator=g).to(device)
    emb = torch.randn(1, 77, 64, generator=g).to(device)
    return lat, emb


# --------------------------------------------------------------------------------------------
# (a) attention layers


def attention_layers_fn(unet, variant: str, frames: int, latent: int, device):
    """A closure running every attn1 layer forward + backward on its captured input."""
    from fdd.ei2 import InflationConfig, inflate_unet

    model = inflate_unet(unet, InflationConfig(temporal_module=False, **ATTN_VARIANTS[variant]))
    model.to(device)
    lat, emb = inputs(frames, latent, device)
    captured = []
    hooks = []
    for name, m in model.unet.named_modules():
        if name.endswith("attn1"):
            hooks.append(m.register_forward_pre_hook(lambda mod, args, _c=captured: _c.append((mod, args[0].detach()))))
    with torch.no_grad():
        model(lat, 500, emb)
    for h in hooks:
        h.remove()
    for mod, _ in captured:
        mod.to_q.weight.requires_grad_(True)  # W_Q is tuned (§5)

    def run():
        with torch.enable_grad():
            for mod, x in captured:
                xi = x.clone().requires_grad_(True)
                out = mod(xi)
                out.backward(torch.ones_like(out))
                mod.to_q.weight.grad = None
    layers = [(x.shape[1], mod.heads) for mod, x in captured]
    return run, layers


def analytic_attention_bytes(variant: str, layers, frames: int) -> int:
    from fdd.ei2 import attention_matrix_elements

    spec = ATTN_VARIANTS[variant]
    return sum(attention_matrix_elements(spec["attention"], l, frames, spec.get("ffam_ratio", 2), heads) * 4
               for l, heads in layers)


# --------------------------------------------------------------------------------------------
# (b) one tuning step


def tuning_step_fn(unet, variant: str, frames: int, latent: int, device):
    from fdd.ei2 import OneShotTuner, TuneConfig, inflate_unet

    model = inflate_unet(unet, step_config(variant)).to(device)
    lat, emb = inputs(frames, latent, device)
    with torch.inference_mode(False), torch.enable_grad():
        tuner = OneShotTuner(model, lat, emb, TuneConfig(learning_rate=3e-5, mixed_precision="no"))

    def run():
        with torch.inference_mode(False), torch.enable_grad():
            tuner.step()
    return run


# --------------------------------------------------------------------------------------------
# memory child


def mem_child(kind: str, variant: str, backend: str, frames: int, latent: int, device: str) -> None:
    common.setup_threads(1)
    unet = load_unet(device)
    if kind == "attn":
        fn, _ = attention_layers_fn(unet, variant, frames, latent, device)
    else:
        fn = tuning_step_fn(unet, variant, frames, latent, device)
    with sdpa_backend(backend):
        if kind == "step":
            fn()  # warm-up: AdamW state allocated, as in every step after the first
        grow, method = common.peak_growth_here(fn, device)
    print(f"MEM_GROWTH {grow}")
    print(f"MEM_METHOD {method}")


def measure_mem(kind, variant, backend, args, latent=None) -> dict:
    os.environ["MALLOC_MMAP_THRESHOLD_"] = "65536"
    return common.peak_growth_subprocess(os.path.abspath(__file__),
                                         ["--mem-child", kind, variant, backend, "--frames", str(args.frames),
                                          "--latent", str(latent or args.latent), "--device", args.device],
                                         repeats=args.mem_repeats)


# --------------------------------------------------------------------------------------------


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--latent", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--mem-repeats", type=int, default=3)
    ap.add_argument("--extra-latents", default="32",
                    help="comma-separated latent sizes at which the attention-layer memory ratio FFAM r=2 / "
                         "full is measured again (math back-end): larger layers approach the analytic ratio")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--mem-child", nargs=3, metavar=("KIND", "VARIANT", "BACKEND"))
    args = ap.parse_args(argv)
    if args.mem_child:
        mem_child(*args.mem_child, args.frames, args.latent, args.device)
        return 0
    common.setup_threads()
    device = args.device
    unet = load_unet(device)
    n = args.frames
    settings = {"frames": n, "latent": [args.latent, args.latent], "pixels": args.latent * 4,
                "unet": "tiny SD UNet (32, 64) from the models tree"}
    comps = []

    # (a) attention layers -----------------------------------------------------------------
    attn_fns, layers = {}, None
    for v in ATTN_VARIANTS:
        attn_fns[v], layers = attention_layers_fn(unet, v, n, args.latent, device)
    attn_time = {}
    for backend in BACKENDS:
        with sdpa_backend(backend):
            attn_time[backend] = common.time_interleaved(attn_fns, repeats=args.repeats, device=device)
    attn_mem = {(v, b): measure_mem("attn", v, b, args) for v in ATTN_VARIANTS for b in BACKENDS}
    analytic = {v: analytic_attention_bytes(v, layers, n) for v in ATTN_VARIANTS}
    layer_info = {"attention_layers": [{"tokens": l, "heads": h} for l, h in layers], **settings}

    def mem_cmp(name, ours, base, backend, target):
        a, b = attn_mem[(ours, backend)], attn_mem[(base, backend)]
        return common.comparison(name, a["min"], b["min"], "bytes", target, a["repeats"], a["spread"],
                                 sdpa_backend=backend, baseline_spread=b["spread"], method=a["extra"].get("method"),
                                 medians=[a["median"], b["median"]], **layer_info)

    def time_cmp(name, ours, base, backend, target, table):
        a, b = table[backend][ours], table[backend][base]
        return common.comparison(name, a["min"], b["min"], "s", target, a["repeats"], a["spread"],
                                 sdpa_backend=backend, baseline_spread=b["spread"], medians=[a["median"], b["median"]],
                                 **settings)

    for backend in BACKENDS:
        comps.append(mem_cmp(f"attn_ffam_r2_vs_full_peak_memory_{backend}", "ffam_r2", "full", backend, 0.35))
    comps.append(common.comparison("attn_ffam_r2_vs_full_attention_matrix_bytes_analytic", analytic["ffam_r2"],
                                   analytic["full"], "bytes", 0.35, 1, 0.0,
                                   formula="n*l*(l+(n-1)*l/r^2) vs (n*l)^2 per head, fp32", **layer_info))
    for backend in BACKENDS:
        comps.append(mem_cmp(f"attn_ffam_r4_vs_full_peak_memory_{backend}", "ffam_r4", "full", backend, None))
        comps.append(mem_cmp(f"attn_sparse_causal_vs_full_peak_memory_{backend}", "sparse_causal", "full",
                             backend, None))
    for backend in BACKENDS:
        comps.append(time_cmp(f"attn_ffam_r2_vs_sparse_causal_time_{backend}", "ffam_r2", "sparse_causal",
                              backend, 1.25, attn_time))
        comps.append(time_cmp(f"attn_ffam_r4_vs_sparse_causal_time_{backend}", "ffam_r4", "sparse_causal",
                              backend, 1.25, attn_time))
        comps.append(time_cmp(f"attn_ffam_r2_vs_full_time_{backend}", "ffam_r2", "full", backend, None, attn_time))
    for lat in [int(x) for x in args.extra_latents.split(",") if x.strip()]:
        a, b = (measure_mem("attn", v, "math", args, lat) for v in ("ffam_r2", "full"))
        comps.append(common.comparison(f"attn_ffam_r2_vs_full_peak_memory_math_latent{lat}", a["min"], b["min"],
                                       "bytes", 0.35, a["repeats"], a["spread"], sdpa_backend="math",
                                       baseline_spread=b["spread"], method=a["extra"].get("method"),
                                       medians=[a["median"], b["median"]], frames=n, latent=[lat, lat],
                                       pixels=lat * 4))
    comps.append(common.comparison("attn_ffam_r2_vs_sparse_causal_attention_matrix_bytes_analytic",
                                   analytic["ffam_r2"], analytic["sparse_causal"], "bytes", None, 1, 0.0,
                                   formula="(l+(n-1)*l/r^2) vs 2*l keys per query", **layer_info))

    # (b) one tuning step --------------------------------------------------------------------
    step_fns = {v: tuning_step_fn(unet, v, n, args.latent, device) for v in STEP_VARIANTS}
    step_time = {}
    for backend in BACKENDS:
        with sdpa_backend(backend):
            step_time[backend] = common.time_interleaved(step_fns, repeats=args.repeats, device=device)
    step_mem = {(v, b): measure_mem("step", v, b, args) for v in STEP_VARIANTS for b in BACKENDS}

    def step_cmp(name, ours, base, backend, target, unit):
        if unit == "s":
            a, b = step_time[backend][ours], step_time[backend][base]
            extra = {"medians": [a["median"], b["median"]]}
        else:
            a, b = step_mem[(ours, backend)], step_mem[(base, backend)]
            extra = {"medians": [a["median"], b["median"]], "method": a["extra"].get("method")}
        return common.comparison(name, a["min"], b["min"], unit, target, a["repeats"], a["spread"],
                                 sdpa_backend=backend, baseline_spread=b["spread"], **extra, **settings)

    for backend in BACKENDS:
        for ours in ("ei2_r2", "ei2_r4"):
            comps.append(step_cmp(f"step_{ours}_vs_tav_time_{backend}", ours, "tav", backend, 1.15, "s"))
            comps.append(step_cmp(f"step_{ours}_vs_tav_peak_memory_{backend}", ours, "tav", backend, 1.15, "bytes"))
        comps.append(step_cmp(f"step_stam_sparse_causal_vs_tav_time_{backend}", "stam_sparse_causal", "tav",
                              backend, None, "s"))
        comps.append(step_cmp(f"step_ei2_r2_vs_stam_full_time_{backend}", "ei2_r2", "stam_full", backend, None, "s"))
        comps.append(step_cmp(f"step_ei2_r2_vs_stam_full_peak_memory_{backend}", "ei2_r2", "stam_full", backend,
                              None, "bytes"))
    path = common.write_results(BENCH, common.machine_info(device), comps)
    print(path)
    for c in comps:
        print(f"{c['name']:62s} ratio {c['ratio']:.3f}  target {c['target']}  meets {c['meets']}  "
              f"spread {c['spread']:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
