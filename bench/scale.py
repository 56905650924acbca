"""The pack at real SD 1.5 size (issue 25, GPU part): load, plug-and-play vs diffusers, EVE, an
8 GiB cap, ASSD, EI² and FDD on full-size random-weight models in the real file formats.

Fixtures: :func:`fdd.testing.realsize.write_realsize_tree` writes SD 1.5-architecture files
(random weights, real names and formats) into ``--models`` once (full size on the GPU takes
seconds); ``--size small`` writes tiny ones for a CPU check of the same code paths.

Sections, in priority order (each in try/except: a failure, CUDA OOM included, is recorded as
``{"name", "error"}`` and the run goes on; the JSON is rewritten atomically after each, and the
rest is recorded as skipped once ``--budget-s`` is spent):

a. ``load``: the plug-and-play stack (backbone + ControlNet + motion module) with the pack's
   loaders in ``--dtype`` onto the device as the plug-and-play node does (``stack.modules()``):
   seconds, peak / resident device memory, resident vs the three models' parameter bytes
   (issue target <= 1.05).
b. ``plug_and_play``: ``plug_and_play_edit`` (16 frames, 512x512, ``--steps`` DDIM steps after a
   1-step warm-up) at the default guidance (3 branches, text 7.5 / image 1.5) and at equal work
   with diffusers (2 branches: image_cfg 1, instruction = caption, ControlNet on both) against
   ``AnimateDiffControlNetPipeline`` on the same modules (guidance 7.5, DDIM, decode chunks of 8):
   s/step and peak-memory growth, ratios ours / diffusers (target <= 1.0 at equal work).
c. ``eve``: ``fdd.distill.eve.eve_edit`` with the EVE node's defaults (cfg 1 / 1, 8-frame windows
   overlapping 2, first frame edited by the teacher with ``--steps`` steps), no aligned LoRA.
d. ``cap_8gib``: ``torch.cuda.set_per_process_memory_fraction(8 GiB / total)``, plug-and-play
   again (3 branches, 2 steps): completes or OOM (both are results), fraction reset after.
e. ``assd``: ``assd_edit`` on the SD 1.5 + AnimateDiff prior with joint guidance and attention
   fusion (the node's defaults), 2 steps: s/step and the peak of one step, batched branches vs
   ``batch_branches=False``.
f. ``ei2``: ``ei2_tune`` (8 frames, size 512, mixed precision "auto"), 2 steps: s/step and the
   peak of one step, gradient checkpointing on (the node's default) and off.
g. ``fdd``: ``make_trainer`` + ``train_step`` (8 frames 512², k=3, global batch 1): a warm-up
   SDS iteration (not compared: the first CUDA call pays kernel selection), an SDS iteration with
   gradient checkpointing on and off, SDS iterations at each k of ``--fdd-ks`` (checkpointing
   on; ``k_sweep`` holds the peak per k and the largest measured k within 80 GiB),
   then an adversarial one (checkpointing on, ``--fdd-teacher-steps`` teacher steps): seconds
   and peak memory.

Memory on CUDA is ``torch.cuda.max_memory_allocated`` (peak stats reset before; "growth" =
peak minus the bytes allocated before); on the CPU it is the process's peak RSS growth
(``/proc/self/clear_refs`` + ``VmHWM``), which only says that the code ran.

The GPU command (from the repo root; wheels of diffusers / kornia / kornia_rs carried in ``.whl/``;
see ``bench/gpu_scale.sh``, which holds the same line)::

    bash bench/gpu_scale.sh

CPU check (small models, a few frames, about 2 minutes on one thread)::

    .venv/bin/python bench/scale.py --device cpu --size small --models /tmp/fdd_scale_small \\
        --out /tmp/scale_small.json --frames 4 --resolution 128 --steps 2
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import os
import sys
import tempfile
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # puts the repo root on sys.path
import torch

BENCH = "scale_gpu"
CAPTION = "a green ball and a blue square moving"
INSTRUCTION = "turn the red ball green"
SOURCE = "a red ball and a blue square moving"
GIB = 1024 ** 3
SECTIONS = ("load", "plug_and_play", "eve", "cap_8gib", "assd", "ei2", "fdd")


def log(msg: str) -> None:
    print(msg, flush=True)


# --------------------------------------------------------------------------------------------
# measurement


class Meter:
    """Seconds and peak memory of a block. CUDA: ``max_memory_allocated`` (reset at entry);
    ``growth`` = peak - allocated at entry. CPU: peak RSS growth (VmHWM after reset)."""

    def __init__(self, device, clock: StepClock | None = None):
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        self.clock = clock  # a StepClock that resets the peak stats per step: its peaks count too

    def __enter__(self):
        gc.collect()
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.before = torch.cuda.memory_allocated()
        else:
            self.before = common._proc_status_kib("VmRSS") if common.reset_peak_rss() else common.maxrss_bytes()
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        if self.cuda:
            torch.cuda.synchronize()
        self.seconds = time.perf_counter() - self.t0
        if self.cuda:
            self.peak = int(max([torch.cuda.max_memory_allocated()]
                                + (self.clock.step_peaks if self.clock is not None else [])))
            self.after = int(torch.cuda.memory_allocated())
        else:
            hwm = common._proc_status_kib("VmHWM")
            self.peak = int(hwm if hwm is not None else common.maxrss_bytes())
            self.after = int(common._proc_status_kib("VmRSS") or 0)
        self.growth = int(self.peak - self.before)
        return False

    def figures(self, prefix: str = "") -> dict:
        return {f"{prefix}seconds": round(self.seconds, 4), f"{prefix}peak_bytes": self.peak,
                f"{prefix}peak_growth_bytes": self.growth, f"{prefix}bytes_before": int(self.before)}


class StepClock:
    """A progress callback ``(step, total, latents)`` that records when each step ended (device
    synchronised) and, with ``step_peaks`` on CUDA, the peak memory of each step (peak stats reset
    after each step: give the clock to the enclosing :class:`Meter` so its peak stays the call's)."""

    def __init__(self, device, step_peaks: bool = False):
        self.cuda = torch.device(device).type == "cuda"
        self.track_peaks = step_peaks and self.cuda
        self.reset()

    def reset(self):
        if self.cuda:
            torch.cuda.synchronize()
        self.t0 = time.perf_counter()
        self.ends: list[float] = []
        self.step_peaks: list[int] = []

    def __call__(self, step, total=None, latents=None):
        if self.cuda:
            torch.cuda.synchronize()
        if self.track_peaks:
            self.step_peaks.append(int(torch.cuda.max_memory_allocated()))
            torch.cuda.reset_peak_memory_stats()
        self.ends.append(time.perf_counter())

    def diffusers_callback(self, pipe, i, t, kwargs):
        self(i + 1)
        return {}

    def step_times(self) -> list[float]:
        starts = [self.t0] + self.ends[:-1]
        return [e - s for s, e in zip(starts, self.ends)]

    def per_step(self) -> float:
        """Median of the steps after the first (the first includes prompt encoding etc.)."""
        import statistics

        ts = self.step_times()
        return statistics.median(ts[1:]) if len(ts) > 1 else (ts[0] if ts else float("nan"))

    def steady_peak(self) -> int | None:
        """The peak of the last step alone (CUDA), the most a step needs once warm."""
        return self.step_peaks[-1] if self.step_peaks else None


def is_oom(exc: BaseException) -> bool:
    return isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in str(exc).lower()


def free() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def param_bytes(*modules) -> int:
    seen, n = set(), 0
    for m in modules:
        for p in m.parameters():
            if id(p) not in seen:
                seen.add(id(p))
                n += p.numel() * p.element_size()
    return n


# --------------------------------------------------------------------------------------------
# the run


class Run:
    def __init__(self, args):
        self.args = args
        self.t_start = time.perf_counter()
        self.device = torch.device(args.device)
        self.dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[args.dtype]
        self.machine = common.machine_info(args.device)
        if self.device.type == "cuda":
            props = torch.cuda.get_device_properties(self.device)
            self.machine["device_total_memory_bytes"] = int(props.total_memory)
        self.machine["transformers"] = __import__("transformers").__version__
        self.doc = {"bench": BENCH, "machine": self.machine,
                    "settings": {"size": args.size, "dtype": args.dtype, "frames": args.frames,
                                 "resolution": args.resolution, "steps": args.steps,
                                 "budget_s": args.budget_s, "models": os.path.abspath(args.models)},
                    "comparisons": [], "sections": []}
        self.state: dict = {}

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.t_start

    def meta(self, **kw) -> dict:
        m = {"device": self.machine["device"], "dtype": self.args.dtype, "frames": self.args.frames,
             "size": self.args.resolution, "steps": self.args.steps}
        m.update(kw)
        return m

    def write(self) -> None:
        import json

        self.doc["elapsed_s"] = round(self.elapsed, 1)
        common.write_text_atomic(self.args.out, json.dumps(common.json_safe(self.doc), indent=1) + "\n")

    def section(self, name: str, fn) -> None:
        if self.elapsed > self.args.budget_s:
            self.doc["sections"].append({"name": name, "skipped": f"time budget of {self.args.budget_s}s spent "
                                                                   f"({self.elapsed:.0f}s elapsed)"})
            log(f"[{name}] skipped: budget spent ({self.elapsed:.0f}s)")
            self.write()
            return
        log(f"[{name}] start at {self.elapsed:.0f}s")
        t0 = time.perf_counter()
        try:
            figures = fn() or {}
            entry = {"name": name, "seconds": round(time.perf_counter() - t0, 2), "figures": figures}
            log(f"[{name}] done in {entry['seconds']:.1f}s")
        except Exception as exc:  # noqa: BLE001  (every failure is a recorded result)
            msg = f"{type(exc).__name__}: {exc}"
            entry = {"name": name, "seconds": round(time.perf_counter() - t0, 2), "error": msg[:3000],
                     "oom": is_oom(exc)}
            log(f"[{name}] ERROR {msg[:500]}")
            traceback.print_exc()
        free()
        self.doc["sections"].append(entry)
        self.write()

    def add(self, comp: dict) -> None:
        self.doc["comparisons"].append(comp)
        log(f"  {comp['name']}: ours {comp['ours']:.4g} baseline {comp['baseline']:.4g} {comp['unit']} "
            f"ratio {comp['ratio']} target {comp['target']} meets {comp['meets']}")

    # ---------------------------------------------------------------------------------- inputs
    def frames(self, n=None):
        from fdd.testing.clip import moving_shapes_clip

        r = self.args.resolution
        return moving_shapes_clip(n or self.args.frames, r, r)

    def paths(self):
        return self.state["paths"]

    def stack(self):
        if "stack" not in self.state:
            raise RuntimeError("the load section did not produce a stack")
        return self.state["stack"]

    def unet2d_on_device(self, on: bool) -> None:
        """Put the backbone's 2-D UNet on the device (EVE's first frame, ASSD's image prior,
        the EI² copy) or back on the CPU (plug-and-play needs only the motion UNet)."""
        bb = self.stack().backbone
        bb.unet.to(self.device if on else "cpu")
        free()

    # ----------------------------------------------------------------------------- sections
    def fixtures(self):
        from fdd.testing.realsize import write_realsize_tree

        t0 = time.perf_counter()
        dev = self.args.fixtures_device or self.args.device
        paths = write_realsize_tree(self.args.models, self.args.size, dev, log=log)
        self.state["paths"] = paths
        import json

        with open(paths["info"]) as fh:
            info = json.load(fh)
        self.doc["fixtures"] = {"seconds_this_run": round(time.perf_counter() - t0, 2), **info}
        free()
        self.write()

    def s_load(self):
        from fdd.models.controlnet import load_controlnet
        from fdd.models.motion import load_motion_adapter
        from fdd.models.sd1 import load_sd1
        from fdd.pipelines import VideoEditStack

        p = self.paths()
        dt = self.dtype
        with Meter(self.device) as m:
            t0 = time.perf_counter()
            bb = load_sd1(p["checkpoint"], tokenizer=p["tokenizer"], dtype=dt)
            t_bb = time.perf_counter() - t0
            cn = load_controlnet(p["controlnet"], dtype=dt)
            t_cn = time.perf_counter() - t0 - t_bb
            ad = load_motion_adapter(p["motion"], dtype=dt)
            t_mm = time.perf_counter() - t0 - t_bb - t_cn
            stack = VideoEditStack(bb, controlnet=cn, motion_adapter=ad, controlnet_source=p["controlnet"],
                                   motion_source=p["motion"])
            t1 = time.perf_counter()
            _ = stack.motion_unet  # built on the CPU by diffusers' from_unet2d (a copy of the 2-D UNet)
            t_build = time.perf_counter() - t1
            t1 = time.perf_counter()
            stack.to(device=self.device)  # what the plug-and-play node puts on the device
            if self.device.type == "cuda":
                torch.cuda.synchronize()
            t_move = time.perf_counter() - t1
        self.state["stack"] = stack
        models_bytes = param_bytes(bb.unet, bb.vae, bb.text_encoder) + param_bytes(cn) + param_bytes(ad)
        on_device = param_bytes(*stack.modules())
        resident = m.after if self.device.type == "cuda" else on_device
        unet_bytes = param_bytes(bb.unet)
        fig = {"seconds_total": round(m.seconds, 2), "seconds_backbone_file": round(t_bb, 2),
               "seconds_controlnet_file": round(t_cn, 2), "seconds_motion_file": round(t_mm, 2),
               "seconds_build_motion_unet": round(t_build, 2), "seconds_to_device": round(t_move, 2),
               "device_peak_bytes": m.peak if self.device.type == "cuda" else None,
               "device_resident_bytes": resident, "stack_param_bytes_on_device": on_device,
               "device_reserved_bytes": (int(torch.cuda.memory_reserved()) if self.device.type == "cuda" else None),
               "three_models_param_bytes": models_bytes, "unet2d_param_bytes": unet_bytes,
               "motion_unet_param_bytes": param_bytes(stack.motion_unet),
               "resident_if_unet2d_also_on_device": resident + unet_bytes,
               "host_duplicate_unet2d_bytes": unet_bytes}
        log(f"[load] {m.seconds:.1f}s (backbone {t_bb:.1f}, controlnet {t_cn:.1f}, motion {t_mm:.1f}, "
            f"motion UNet {t_build:.1f}, to device {t_move:.1f}); resident {resident / GIB:.2f} GiB vs "
            f"parameters {models_bytes / GIB:.2f} GiB; peak {m.peak / GIB:.2f} GiB")
        note = ("resident = the stack's modules on the device as the plug-and-play node moves them (text "
                "encoder, VAE, motion UNet, ControlNet); the motion UNet holds its own copy of the 2-D UNet "
                "(diffusers UNetMotionModel.from_unet2d copies), so the backbone's 2-D UNet stays a second "
                "copy in host memory; nodes that also run the 2-D UNet (EVE first frame, ASSD joint guidance) "
                "hold both on the device: see resident_if_unet2d_also_on_device")
        self.add(common.comparison("load_resident_vs_parameter_bytes", resident, models_bytes, "bytes", 1.05, 1,
                                   0.0, note=note, **self.meta()))
        self.add(common.comparison("load_resident_with_unet2d_vs_parameter_bytes", resident + unet_bytes,
                                   models_bytes, "bytes", 1.05, 1, 0.0,
                                   note="EVE / ASSD nodes: motion UNet and 2-D UNet both on the device",
                                   **self.meta()))
        return fig

    def _pnp(self, steps, image_cfg, instruction, clock=None, branch_split="batched"):
        from fdd.pipelines import PlugAndPlayConfig, plug_and_play_edit

        cfg = PlugAndPlayConfig(steps=steps, text_cfg=7.5, image_cfg=image_cfg, seed=0,
                                context_frames=16, context_overlap=4, branch_split=branch_split)
        frames = self.frames()
        with torch.inference_mode():
            return plug_and_play_edit(self.stack(), frames, instruction, CAPTION, cfg, callback=clock)

    def _diffusers_pipe(self):
        return common.animatediff_controlnet_pipeline(self.stack())

    def _diffusers(self, pipe, steps, clock=None):
        r = self.args.resolution
        frames = self.frames()
        cond = list(frames.permute(0, 3, 1, 2))
        with torch.inference_mode():
            gen = torch.Generator(device="cpu").manual_seed(0)
            return pipe(prompt=CAPTION, negative_prompt="", num_frames=self.args.frames, height=r, width=r,
                        num_inference_steps=steps, guidance_scale=7.5, conditioning_frames=cond, generator=gen,
                        output_type="pt", return_dict=False, decode_chunk_size=8,
                        callback_on_step_end=clock.diffusers_callback if clock else None)[0]

    def _timed(self, fn, steps):
        """Warm up with 1 step, then ``steps`` steps under a Meter and a StepClock."""
        fn(1, None)
        clock = StepClock(self.device)
        with Meter(self.device) as m:
            clock.reset()
            fn(steps, clock)
        return m, clock

    def s_plug_and_play(self):
        self.unet2d_on_device(False)
        S = self.args.steps
        res = {}
        variants = {
            "ours_3branch": lambda s, c: self._pnp(s, 1.5, INSTRUCTION, c),
            "ours_2branch": lambda s, c: self._pnp(s, 1.0, CAPTION, c),
        }
        pipe = self._diffusers_pipe()
        variants["diffusers"] = lambda s, c: self._diffusers(pipe, s, c)
        for name, fn in variants.items():
            m, clock = self._timed(fn, S)
            res[name] = {**m.figures(), "s_per_step": round(clock.per_step(), 4),
                         "step_times": [round(x, 4) for x in clock.step_times()]}
            log(f"[plug_and_play] {name}: {m.seconds:.2f}s for {S} steps, {clock.per_step():.3f} s/step, "
                f"peak growth {m.growth / GIB:.2f} GiB (peak {m.peak / GIB:.2f} GiB)")
            free()
        variants.clear()  # drops the pipeline
        free()
        self.state["pnp"] = res
        o2, o3, d = res["ours_2branch"], res["ours_3branch"], res["diffusers"]
        eq = dict(note="equal work: ours with image_cfg 1 and instruction = caption (2 branches: full + "
                       "image, ControlNet on both) vs AnimateDiffControlNetPipeline (2-branch CFG 7.5, "
                       "ControlNet on both); both DDIM, decode in chunks of 8; s/step = median of the steps "
                       "after the first", guidance=7.5, branches=2, **self.meta())
        self.add(common.comparison("pnp_vs_diffusers_2branch_time_per_step", o2["s_per_step"], d["s_per_step"],
                                   "s", 1.0, 1, 0.0, **eq))
        self.add(common.comparison("pnp_vs_diffusers_2branch_total_time", o2["seconds"], d["seconds"], "s", 1.0,
                                   1, 0.0, **eq))
        self.add(common.comparison("pnp_vs_diffusers_2branch_peak_memory_growth", o2["peak_growth_bytes"],
                                   d["peak_growth_bytes"], "bytes", 1.0, 1, 0.0, **eq))
        three = dict(note="ours at the default InstructPix2Pix guidance (3 branches: full, image, uncond; "
                          "ControlNet on 2; text 7.5 / image 1.5) vs diffusers' 2-branch CFG: diffusers cannot "
                          "run the three-branch rule, so ours does 1.5x the UNet batch here (no target)",
                     text_cfg=7.5, image_cfg=1.5, branches=3, **self.meta())
        self.add(common.comparison("pnp_default_3branch_vs_diffusers_2branch_time_per_step", o3["s_per_step"],
                                   d["s_per_step"], "s", None, 1, 0.0, **three))
        self.add(common.comparison("pnp_default_3branch_vs_diffusers_2branch_peak_memory_growth",
                                   o3["peak_growth_bytes"], d["peak_growth_bytes"], "bytes", None, 1, 0.0, **three))
        return res

    def s_eve(self):
        from fdd.distill.eve import EVEConfig, eve_edit

        self.unet2d_on_device(True)
        S = self.args.steps
        frames = self.frames()

        def run(steps, clock):
            cfg = EVEConfig(steps=steps, text_cfg=1.0, image_cfg=1.0, seed=0, context_frames=8, context_overlap=2,
                            first_frame="edit", first_frame_steps=steps)
            with torch.inference_mode():
                return eve_edit(self.stack(), frames, INSTRUCTION, CAPTION, cfg, callback=clock)

        m, clock = self._timed(run, S)
        fig = {**m.figures(), "s_per_step": round(clock.per_step(), 4),
               "step_times": [round(x, 4) for x in clock.step_times()],
               "settings": "EVE node defaults: cfg 1, image_cfg 1, windows 8 / overlap 2, first_frame edit "
                           f"(first_frame_steps {S}, 7.5 / 1.5), no aligned LoRA"}
        log(f"[eve] {m.seconds:.2f}s, {clock.per_step():.3f} s/step (video steps), peak growth {m.growth / GIB:.2f} GiB")
        pnp = self.state.get("pnp", {}).get("ours_3branch")
        if pnp:
            meta = self.meta(note="EVE (1 branch, 8-frame windows, plus a first-frame edit before the video steps) "
                                  "vs plug-and-play at its defaults (3 branches, one 16-frame window)")
            self.add(common.comparison("eve_vs_pnp_default_time_per_step", fig["s_per_step"], pnp["s_per_step"],
                                       "s", None, 1, 0.0, **meta))
            self.add(common.comparison("eve_vs_pnp_default_total_time", m.seconds, pnp["seconds"], "s", None, 1,
                                       0.0, **meta))
            self.add(common.comparison("eve_vs_pnp_default_peak_memory_growth", m.growth,
                                       pnp["peak_growth_bytes"], "bytes", None, 1, 0.0, **meta))
        return fig

    def device_index(self) -> int:
        return self.device.index if self.device.index is not None else torch.cuda.current_device()

    def s_cap(self):
        """Plug-and-play (3 branches, default ``branch_split`` "auto") under an 8 GiB cap: it
        completes (branches one at a time after the first out-of-memory error, VAE batch halved)
        or not; its s/step against the uncapped batched run of the plug_and_play section."""
        self.unet2d_on_device(False)
        cap = 8 * GIB
        steps = self.args.steps
        fig = {"cap_bytes": cap, "steps": steps, "branches": 3, "branch_split": "auto"}
        run = lambda s, c: self._pnp(s, 1.5, INSTRUCTION, c, branch_split="auto")  # noqa: E731
        capped = self.device.type == "cuda"
        if capped:
            total = torch.cuda.get_device_properties(self.device).total_memory
            free()
            fig["resident_before_bytes"] = int(torch.cuda.memory_allocated())
            torch.cuda.set_per_process_memory_fraction(cap / total, self.device_index())
        try:
            m, clock = self._timed(run, steps)
            fig.update(result="ok" if capped else "ok (no cap on the CPU: ran uncapped)", **m.figures(),
                       s_per_step=round(clock.per_step(), 4))
            log(f"[cap_8gib] completed: peak {m.peak / GIB:.2f} GiB, {clock.per_step():.3f} s/step")
        except Exception as exc:
            if not is_oom(exc):
                raise
            fig.update(result="OOM", message=f"{type(exc).__name__}: {str(exc)[:600]}")
            log(f"[cap_8gib] OOM under 8 GiB: {str(exc)[:200]}")
        finally:
            if capped:
                torch.cuda.set_per_process_memory_fraction(1.0, self.device_index())
            free()
        pnp = self.state.get("pnp", {}).get("ours_3branch")
        if fig.get("s_per_step") and pnp:
            meta = self.meta(note="plug-and-play, 3 branches: under the 8 GiB cap (branch_split auto) vs "
                                  "uncapped batched (plug_and_play section)")
            self.add(common.comparison("cap_8gib_vs_uncapped_time_per_step", fig["s_per_step"],
                                       pnp["s_per_step"], "s", None, 1, 0.0, **meta))
            self.add(common.comparison("cap_8gib_vs_uncapped_peak_memory", fig["peak_bytes"],
                                       pnp["peak_bytes"], "bytes", None, 1, 0.0, **meta))
        return fig

    def s_assd(self):
        from fdd.assd import ASSDConfig, ImagePrior, assd_edit, motion_models

        self.unet2d_on_device(True)
        stack = self.stack()
        bb = stack.backbone
        frames = self.frames()
        out = {}
        for batched in (True, False):
            models = motion_models(bb, stack.motion_unet, source=self.paths()["motion"])
            models = models.with_image_model(ImagePrior.from_backbone(bb))
            cfg = ASSDConfig(steps=2, seed=0, batch_branches=batched)  # node defaults otherwise
            clock = StepClock(self.device, step_peaks=True)
            with Meter(self.device, clock) as m:
                clock.reset()
                with torch.inference_mode():
                    assd_edit(models, frames, SOURCE, CAPTION, cfg, callback=clock)
            key = "batched" if batched else "unbatched"
            out[key] = {**m.figures(), "s_per_step": round(clock.per_step(), 4),
                        "step_times": [round(x, 4) for x in clock.step_times()],
                        "step_peak_bytes": clock.steady_peak(),
                        "step_peak_growth_bytes": (clock.steady_peak() - m.before) if clock.steady_peak() else None}
            log(f"[assd] {key}: {m.seconds:.2f}s for 2 steps, {clock.per_step():.3f} s/step, step peak "
                f"{(clock.steady_peak() or 0) / GIB:.2f} GiB, call peak growth {m.growth / GIB:.2f} GiB")
            free()
        meta = self.meta(steps=2, note="assd_edit with the node's defaults (joint guidance, attention fusion, "
                                       "4 branches at cfg 7.5); s/step = the second step; step peak = peak "
                                       "allocated during the second step (CUDA)")
        self.add(common.comparison("assd_batched_vs_unbatched_time_per_step", out["batched"]["s_per_step"],
                                   out["unbatched"]["s_per_step"], "s", None, 1, 0.0, **meta))
        if out["batched"]["step_peak_bytes"]:
            self.add(common.comparison("assd_batched_vs_unbatched_step_peak_memory", out["batched"]["step_peak_bytes"],
                                       out["unbatched"]["step_peak_bytes"], "bytes", None, 1, 0.0, **meta))
        return out

    def s_ei2(self):
        from fdd.ei2 import InflationConfig, TuneConfig, ei2_tune

        self.unet2d_on_device(True)
        bb = self.stack().backbone
        frames = self.frames(max(self.args.frames, self.args.ei2_frames))
        out = {}
        for ckpt in (True, False):
            key = "checkpointing" if ckpt else "no_checkpointing"
            clock = StepClock(self.device, step_peaks=True)
            tc = TuneConfig(steps=2, seed=0, gradient_checkpointing=ckpt, mixed_precision="auto")
            try:
                with Meter(self.device, clock) as m:
                    clock.reset()
                    model, result, used = ei2_tune(bb, InflationConfig(), frames, CAPTION, tc,
                                                   num_frames=self.args.ei2_frames, size=self.args.resolution,
                                                   device=self.device, callback=clock)
                out[key] = {**m.figures(), "s_per_step": round(clock.per_step(), 4),
                            "step_times": [round(x, 4) for x in clock.step_times()],
                            "step_peak_bytes": clock.steady_peak(),
                            "step_peak_growth_bytes": (clock.steady_peak() - m.before) if clock.steady_peak() else None,
                            "loss": result.history,
                            "model_dtype": str(model.dtype), "frames_used": list(used.shape)}
                log(f"[ei2] {key}: {clock.per_step():.3f} s/step, step peak {(clock.steady_peak() or 0) / GIB:.2f} "
                    f"GiB, call peak growth {m.growth / GIB:.2f} GiB")
                del model, result, used
            except Exception as exc:
                if not is_oom(exc):
                    raise
                out[key] = {"result": "OOM", "message": str(exc)[:600]}
                log(f"[ei2] {key}: OOM")
            free()
        meta = self.meta(frames=self.args.ei2_frames, steps=2,
                         note="ei2_tune: fp32 inflated copy, mixed precision 'auto' (bf16 autocast where "
                              "supported), FFAM + STAM defaults; s/step = the second step")
        a, b = out.get("checkpointing", {}), out.get("no_checkpointing", {})
        if a.get("step_peak_bytes") and b.get("step_peak_bytes"):
            self.add(common.comparison("ei2_checkpointing_vs_not_step_peak_memory", a["step_peak_bytes"],
                                       b["step_peak_bytes"], "bytes", None, 1, 0.0, **meta))
        if a.get("s_per_step") and b.get("s_per_step"):
            self.add(common.comparison("ei2_checkpointing_vs_not_time_per_step", a["s_per_step"], b["s_per_step"],
                                       "s", None, 1, 0.0, **meta))
        return out

    def s_fdd(self):
        from fdd.distill.config import FDDConfig
        from fdd.distill.discriminators import load_dinov2
        from fdd.distill.trainer import make_trainer

        self.unet2d_on_device(True)
        p = self.paths()
        stack = self.stack()
        bb = stack.backbone
        out: dict = {}
        tmp = tempfile.mkdtemp(prefix="fdd_scale_run_")
        cfg = FDDConfig(backbone=p["checkpoint"], tokenizer=p["tokenizer"], controlnet=p["controlnet"],
                        motion_module=p["motion"], dino=p["dino"], dataset=p["dataset"],
                        num_frames=self.args.fdd_frames, height=self.args.resolution, width=self.args.resolution,
                        iterations_sds=100, iterations_adv=1, global_batch=1, micro_batch=1, k_steps=3,
                        teacher_sample_steps=self.args.fdd_teacher_steps, dino_resolution=self.args.dino_resolution,
                        gradient_checkpointing=True, checkpoint_every=0, resume=False, output_dir=tmp,
                        device=str(self.device), seed=0).validate()
        dino = load_dinov2(p["dino"])
        loaded = (bb, stack.controlnet, stack.motion_adapter, dino, None)
        with torch.inference_mode(False), torch.enable_grad():
            holder = {}
            with Meter(self.device) as m:
                holder["trainer"] = trainer = make_trainer(cfg, loaded, device=self.device)
            out["make_trainer"] = {**m.figures(), "autocast": str(trainer.amp),
                                   "weights_dtype": str(next(trainer.models.student_unet.parameters()).dtype),
                                   "lora_params": sum(q.numel() for q in trainer.lora_params)}
            log(f"[fdd] make_trainer {m.seconds:.1f}s, +{m.growth / GIB:.2f} GiB (autocast {trainer.amp})")

            def one(key, ckpt):
                trainer = holder["trainer"]
                trainer.cfg.gradient_checkpointing = ckpt  # read at every generate() call
                step_before = trainer.step
                try:
                    with Meter(self.device) as mm:
                        entry = trainer.train_step()
                    out[key] = {**mm.figures(), "gradient_checkpointing": ckpt, "phase": entry["phase"],
                                "loss_g": entry.get("loss_g"), "timesteps": entry.get("timesteps")}
                    log(f"[fdd] {key}: {mm.seconds:.2f}s, peak growth {mm.growth / GIB:.2f} GiB "
                        f"(peak {mm.peak / GIB:.2f} GiB)")
                except Exception as exc:
                    if not is_oom(exc):
                        raise
                    out[key] = {"result": "OOM", "gradient_checkpointing": ckpt, "message": str(exc)[:600]}
                    log(f"[fdd] {key}: OOM")
                    trainer.step = step_before
                free()

            one("sds_warmup", True)  # first CUDA call pays kernel selection; not compared
            one("sds_checkpointing", True)
            one("sds_no_checkpointing", False)
            for k in self.args.fdd_ks:
                holder["trainer"].cfg.k_steps = k  # read at every step
                one(f"sds_k{k}_checkpointing", True)
            holder["trainer"].cfg.k_steps = 3
            holder["trainer"].step = cfg.iterations_sds  # the next iteration is the adversarial one
            one("adversarial_checkpointing", True)
            holder.clear()
            trainer = None
        free()
        meta = self.meta(frames=self.args.fdd_frames, k_steps=3, global_batch=1,
                         teacher_sample_steps=self.args.fdd_teacher_steps,
                         note="FDD train_step on make_trainer's private copies of the loaded modules "
                              "(dtype as loaded, autocast as the config's mixed_precision 'auto')")
        out["k_sweep"] = k_sweep_summary(out, self.args.fdd_ks)
        log(f"[fdd] k sweep: {out['k_sweep']}")
        a, b = out.get("sds_checkpointing", {}), out.get("sds_no_checkpointing", {})
        if a.get("peak_growth_bytes") and b.get("peak_growth_bytes"):
            self.add(common.comparison("fdd_sds_iteration_checkpointing_vs_not_peak_memory", a["peak_growth_bytes"],
                                       b["peak_growth_bytes"], "bytes", None, 1, 0.0, **meta))
            self.add(common.comparison("fdd_sds_iteration_checkpointing_vs_not_time", a["seconds"], b["seconds"],
                                       "s", None, 1, 0.0, **meta))
        return out


def k_sweep_summary(out: dict, ks, limit_bytes: int = 80 * GIB) -> dict:
    """The FDD k sweep read off the measured SDS iterations (``sds_k{k}_checkpointing``): peak per
    k and the largest measured k within ``limit_bytes``. No extrapolation: with checkpointing the
    peak need not grow with k (it did not from k = 2 to 8 on the H200 run)."""
    peaks = {k: out.get(f"sds_k{k}_checkpointing", {}).get("peak_bytes") for k in ks}
    fits = [k for k, p in peaks.items() if p is not None and p <= limit_bytes]
    return {"peak_bytes_by_k": {str(k): p for k, p in peaks.items()}, "limit_bytes": limit_bytes,
            "largest_measured_k_within_limit": max(fits) if fits else None}


def main(argv=None) -> str:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--size", default="full", choices=["full", "small"])
    ap.add_argument("--models", default=os.path.join(tempfile.gettempdir(), "fdd_scale_models"),
                    help="fixture folder (outside the repository); written when missing")
    ap.add_argument("--out", default=os.path.join(common.RESULTS_DIR, f"{BENCH}.json"))
    ap.add_argument("--fdd-ks", type=lambda v: [int(x) for x in v.split(",")], default=[1, 2, 4, 6, 8],
                    help="k values of the FDD peak-memory sweep (SDS iterations, checkpointing on)")
    ap.add_argument("--budget-s", type=float, default=400.0, help="skip the remaining sections after this")
    ap.add_argument("--dtype", default=None, choices=["fp16", "bf16", "fp32"],
                    help="load dtype (default fp16 on cuda, fp32 on cpu)")
    ap.add_argument("--frames", type=int, default=16)
    ap.add_argument("--resolution", type=int, default=512)
    ap.add_argument("--steps", type=int, default=4, help="timed DDIM steps (after a 1-step warm-up)")
    ap.add_argument("--ei2-frames", type=int, default=8)
    ap.add_argument("--fdd-frames", type=int, default=8)
    ap.add_argument("--fdd-teacher-steps", type=int, default=4)
    ap.add_argument("--dino-resolution", type=int, default=224)
    ap.add_argument("--fixtures-device", default=None, help="device that builds the fixtures (default --device)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's; 1 on a busy CPU)")
    ap.add_argument("--only", default=None, help="comma-separated sections to run (load always runs)")
    args = ap.parse_args(argv)
    if args.dtype is None:
        args.dtype = "fp16" if args.device == "cuda" else "fp32"
    if args.threads:
        torch.set_num_threads(args.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device")
    run = Run(args)
    log(f"[scale] {run.machine}")
    try:
        run.fixtures()
    except Exception as exc:  # noqa: BLE001
        run.doc["sections"].append({"name": "fixtures", "error": f"{type(exc).__name__}: {exc}"[:3000]})
        traceback.print_exc()
        run.write()
        return args.out
    only = set(args.only.split(",")) | {"load"} if args.only else set(SECTIONS)
    for name in SECTIONS:
        if name not in only:
            continue
        fn = {"load": run.s_load, "plug_and_play": run.s_plug_and_play, "eve": run.s_eve, "cap_8gib": run.s_cap,
              "assd": run.s_assd, "ei2": run.s_ei2, "fdd": run.s_fdd}[name]
        run.section(name, fn)
    errors = [s["name"] for s in run.doc["sections"] if "error" in s]
    log(f"[scale] wrote {args.out} in {run.elapsed:.0f}s; section errors: {errors or 'none'}")
    return args.out


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        main()
