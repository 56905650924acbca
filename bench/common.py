"""Shared helpers for the benches: timing, peak-memory growth, machine info, result JSON.

Every bench writes ``bench/results/<bench>.json`` (DESIGN.md §7)::

    {"bench": NAME, "machine": {...},
     "comparisons": [{"name": ..., "ours": x, "baseline": y, "unit": "s" | "bytes",
                      "ratio": ours / baseline, "target": T | None, "meets": bool | None,
                      "repeats": n, "spread": (max - min) / min of ours, ...extra keys}]}

Times are the minimum over repeats (the least disturbed run on a shared machine); ``spread``
says how noisy ``ours`` was. Memory is the growth of the process's peak resident set (CPU, one
fresh subprocess per measurement) or of ``torch.cuda.max_memory_allocated`` (CUDA) across one
call, models already loaded.
"""

from __future__ import annotations

import gc
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Callable, Optional

import torch

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(BENCH_DIR)
RESULTS_DIR = os.path.join(BENCH_DIR, "results")

if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


def setup_threads(default: int = 2) -> int:
    """``torch.set_num_threads`` from ``$BENCH_THREADS`` (default 2); returns the count."""
    n = int(os.environ.get("BENCH_THREADS", default))
    torch.set_num_threads(n)
    return n


def models_root() -> str:
    """Where the tiny models tree is written (outside the repo; ``$FDD_BENCH_MODELS`` overrides)."""
    return os.environ.get("FDD_BENCH_MODELS", os.path.join(tempfile.gettempdir(), "fdd_bench_models"))


def sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


# --------------------------------------------------------------------------------------------
# timing


def time_callable(fn: Callable[[], object], repeats: int = 5, warmup: int = 1, device="cpu") -> dict:
    """Run ``fn`` ``warmup`` times untimed, then ``repeats`` times timed (perf_counter, device
    synchronised). Returns ``{"min", "median", "max", "spread", "times", "repeats"}`` in seconds."""
    for _ in range(warmup):
        fn()
        sync(device)
    times = []
    for _ in range(repeats):
        gc.collect()
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return summarize(times)


def summarize(times: list[float]) -> dict:
    lo, hi = min(times), max(times)
    return {"min": lo, "median": statistics.median(times), "max": hi,
            "spread": (hi - lo) / lo if lo > 0 else 0.0, "times": list(times), "repeats": len(times)}


def time_interleaved(fns: dict[str, Callable[[], object]], repeats: int = 5, warmup: int = 1,
                     device="cpu") -> dict[str, dict]:
    """Time several variants round-robin (A B C A B C ...) so slow phases of a noisy machine
    hit all of them alike. Returns :func:`summarize` per name."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
            sync(device)
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            gc.collect()
            sync(device)
            t0 = time.perf_counter()
            fn()
            sync(device)
            times[name].append(time.perf_counter() - t0)
    return {k: summarize(v) for k, v in times.items()}


# --------------------------------------------------------------------------------------------
# memory


def maxrss_bytes() -> int:
    """Peak resident set size of this process so far (Linux reports KiB, macOS bytes)."""
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(r) if sys.platform == "darwin" else int(r) * 1024


def _proc_status_kib(key: str) -> Optional[int]:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (``VmHWM``) to the current RSS: Linux >= 4.0,
    ``echo 5 > /proc/self/clear_refs``. False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        return False
    return _proc_status_kib("VmHWM") is not None


def peak_growth_here(fn: Callable[[], object], device="cpu") -> tuple[int, str]:
    """Peak-memory growth of one call of ``fn`` in *this* process, in bytes, and the method.

    CUDA: ``max_memory_allocated`` after the call minus the allocated bytes before it (peak
    stats reset first). CPU: peak RSS during the call minus RSS before it. Model loading
    peaks above what a small run needs (state dicts, conversions), so on Linux the peak mark
    is reset first (``/proc/self/clear_refs``, then ``VmHWM``); elsewhere ``ru_maxrss`` after
    minus before, which reads 0 when loading peaked higher. Run it in a fresh process whose
    models are loaded but which has not run anything heavy yet (:func:`peak_growth_subprocess`)."""
    gc.collect()
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return int(torch.cuda.max_memory_allocated() - before), "cuda.max_memory_allocated"
    if reset_peak_rss():
        before = _proc_status_kib("VmRSS")
        fn()
        return int(_proc_status_kib("VmHWM") - before), "VmHWM (reset via clear_refs) - VmRSS"
    before = maxrss_bytes()
    fn()
    return int(maxrss_bytes() - before), "ru_maxrss after - before"


def peak_growth_subprocess(script: str, args: list[str], repeats: int = 3, timeout: float = 600) -> dict:
    """Run ``python script *args`` ``repeats`` times, each a fresh process that loads its models,
    measures one call with :func:`peak_growth_here` and prints ``MEM_GROWTH <bytes>`` (plus any
    ``MEM_<KEY> <int>`` lines, returned as extras from the last run). Returns
    ``{"min", "median", "max", "spread", "values", "repeats", "extra"}``."""
    vals, extra = [], {}
    for _ in range(repeats):
        proc = subprocess.run([sys.executable, script, *args], capture_output=True, text=True,
                              timeout=timeout, cwd=ROOT)
        if proc.returncode != 0:
            raise RuntimeError(f"memory subprocess {script} {args} failed:\n{proc.stderr[-4000:]}")
        got = None
        for line in proc.stdout.splitlines():
            if line.startswith("MEM_GROWTH "):
                got = int(line.split()[1])
            elif line.startswith("MEM_METHOD "):
                extra["method"] = line.split(None, 1)[1].strip()
            elif line.startswith("MEM_"):
                k, v = line.split()[:2]
                extra[k[4:].lower()] = int(v)
        if got is None:
            raise RuntimeError(f"memory subprocess {script} {args} printed no MEM_GROWTH line:\n{proc.stdout[-2000:]}")
        vals.append(got)
    lo, hi = min(vals), max(vals)
    return {"min": lo, "median": statistics.median(vals), "max": hi,
            "spread": (hi - lo) / lo if lo > 0 else 0.0, "values": vals, "repeats": len(vals),
            "extra": extra}


# --------------------------------------------------------------------------------------------
# machine and results


def machine_info(device="cpu") -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    dev = torch.device(device)
    info = {"cpu": f"{cpu} ({os.cpu_count()} logical cores)", "threads": torch.get_num_threads(),
            "torch": torch.__version__, "device": dev.type}
    if dev.type == "cuda":
        info["device"] = torch.cuda.get_device_name(dev)
    try:
        import diffusers

        info["diffusers"] = diffusers.__version__
    except ImportError:
        pass
    info["python"] = platform.python_version()
    return info


def comparison(name: str, ours: float, baseline: float, unit: str, target: Optional[float],
               repeats: int, spread: float, **extra) -> dict:
    """One comparison entry; ``ratio`` = ours / baseline, ``meets`` = ratio <= target."""
    if unit not in ("s", "bytes"):
        raise ValueError(f"unit: expected 's' or 'bytes', got {unit!r}")
    ratio = float(ours) / float(baseline) if baseline else float("inf")
    entry = {"name": name, "ours": float(ours) if unit == "s" else int(ours),
             "baseline": float(baseline) if unit == "s" else int(baseline), "unit": unit,
             "ratio": round(ratio, 4), "target": target,
             "meets": None if target is None else bool(ratio <= target),
             "repeats": int(repeats), "spread": round(float(spread), 4)}
    entry.update(extra)
    return entry


def write_results(bench: str, machine: dict, comparisons: list[dict], results_dir: str = RESULTS_DIR) -> str:
    """Write ``<results_dir>/<bench>.json`` atomically (:func:`write_text_atomic`)."""
    doc = {"bench": bench, "machine": machine, "comparisons": comparisons}
    return write_text_atomic(os.path.join(results_dir, f"{bench}.json"), json.dumps(doc, indent=1) + "\n")


class CallCounter:
    """Counts calls of methods (and the seconds spent in them) by wrapping them with an instance
    attribute, removed on exit.

    ``CallCounter(unet=model, decode=(vae, "decode"))``: a module alone means its ``forward``.
    Nested calls are not expected (the targets should not call each other)."""

    def __init__(self, **targets):
        self.targets = {k: (v if isinstance(v, tuple) else (v, "forward")) for k, v in targets.items()}
        self.counts = {k: 0 for k in targets}
        self.seconds = {k: 0.0 for k in targets}

    def __enter__(self):
        for name, (obj, attr) in self.targets.items():
            orig = getattr(obj, attr)

            def wrapped(*a, _orig=orig, _name=name, **kw):
                self.counts[_name] += 1
                t0 = time.perf_counter()
                try:
                    return _orig(*a, **kw)
                finally:
                    self.seconds[_name] += time.perf_counter() - t0

            object.__setattr__(obj, attr, wrapped)
        return self

    def __exit__(self, *exc):
        for obj, attr in self.targets.values():
            object.__delattr__(obj, attr)  # the class method shows through again
        return False


def write_text_atomic(path: str, text: str) -> str:
    """Write ``text`` to ``path`` through a temp file in the same folder and a rename."""
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".bench.", suffix=".tmp", dir=d)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def json_safe(obj):
    """Strict-JSON-safe, recursively: NaN / inf -> None, numpy scalars -> Python numbers / bools,
    tuples -> lists, dict keys -> str."""
    import math

    import numpy as np

    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def sign_test_p(wins: int, losses: int) -> float:
    """Two-sided exact sign test over the non-tied pairs of a paired comparison (1.0 when
    there are none): P(a split at least this uneven | no effect)."""
    import math

    n = wins + losses
    if n == 0:
        return 1.0
    k = min(wins, losses)
    return float(min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n))


def paired_clips(first: list[dict], second: list[dict], metric: str, higher_is_better: bool) -> Optional[dict]:
    """Paired comparison of two variants' per-clip rows on ``metric`` (clips where either value is
    NaN / None are skipped): ``n``, both means, ``delta`` = mean(first) - mean(second), ``se`` = the
    standard error of the per-clip differences first - second (sd with ddof 1 over sqrt n; NaN when
    n < 2), clip wins / losses / ties of ``first`` (better = higher or lower as said) and the sign
    test's ``p``; None when no clip has both values."""
    import math

    import numpy as np

    a = np.array([r[metric] for r in first], float)
    b = np.array([r[metric] for r in second], float)
    ok = np.isfinite(a) & np.isfinite(b)
    a, b = a[ok], b[ok]
    if len(a) == 0:
        return None
    d = a - b
    wins = int(((a > b) if higher_is_better else (a < b)).sum())
    losses = int(((a < b) if higher_is_better else (a > b)).sum())
    return {"n": int(len(a)), "mean_first": float(a.mean()), "mean_second": float(b.mean()),
            "delta": float(d.mean()), "se": float(d.std(ddof=1) / math.sqrt(len(d))) if len(d) > 1 else float("nan"),
            "wins": wins, "losses": losses, "ties": int(len(a) - wins - losses), "p": sign_test_p(wins, losses)}


# --------------------------------------------------------------------------------------------
# the toy-world ablations' verdict on a paper's claim (one rule for every ablation bench)

#: smallest mean per-clip change that counts as a change, per metric (below it: "no clear change"
#: however small the standard error): fractions of clips / frames 0.01 (one point), contamination
#: (fraction of the pixels outside the edited object) 0.001, the frame-difference error (mean
#: absolute pixel difference, 0..1) 0.001, the centroid-path residual 0.05 px
MIN_EFFECT = {
    "edit_accuracy": 0.01, "attribute_accuracy": 0.01, "preservation": 0.01, "attributes_constant": 0.01,
    "fully_right": 0.01, "contamination": 0.001, "frame_diff_error": 0.001,
    "path_residual_px": 0.05, "path_residual_px_median": 0.05,
}

#: the verdicts of :func:`paired_verdict`
VERDICTS = ("reproduced", "opposite", "no clear change", "not measurable")

VERDICT_RULE = (
    "Each claim is checked per metric, paired over clips (clips where either value is undefined "
    "are skipped): per clip, d = the value of the variant the claim is about minus that of the "
    "variant it is compared with; m = mean(d) over the n paired clips, SE = sd(d) / sqrt(n). "
    "**reproduced** when m goes the claimed way (up or down), |m| > 2 SE and |m| is at least the "
    f"metric's minimum effect ({MIN_EFFECT['edit_accuracy']:g} for fractions of clips / frames, "
    f"{MIN_EFFECT['contamination']:g} for contamination and {MIN_EFFECT['frame_diff_error']:g} for "
    f"the frame-difference error, {MIN_EFFECT['path_residual_px']:g} px for the path residual); "
    "**opposite** when m clears both bars the other way; **no clear change** otherwise; **not "
    "measurable** with fewer than 2 paired clips. Clip wins / losses / ties and the two-sided sign "
    "test's p are reported beside it as information only.")

CLAIM_RULE = (
    "A claim checked on several metrics (or variant pairs) is **reproduced** when at least one is "
    "reproduced and none is opposite, **opposite** when at least one is opposite and none "
    "reproduced, **mixed** when both, **no clear change** otherwise (**not measurable** when none "
    "could be measured).")


def min_effect_of(metric: str) -> float:
    """:data:`MIN_EFFECT` of ``metric``; a metric missing from the table is refused (no silent default)."""
    try:
        return MIN_EFFECT[metric]
    except KeyError:
        raise KeyError(f"no minimum effect for metric {metric!r}: add it to common.MIN_EFFECT") from None


def paired_verdict(first_rows: list[dict], second_rows: list[dict], metric: str, higher_is_better: bool,
                   min_effect: float | None = None) -> dict:
    """The ablation benches' one rule (:data:`VERDICT_RULE`): is ``first`` better than ``second`` on
    ``metric`` over the paired clips? ``higher_is_better`` gives the claimed way (True: the claim is
    that ``first`` is higher). ``min_effect`` defaults to :data:`MIN_EFFECT` of the metric.

    Returns :func:`paired_clips`' fields (``n``, ``mean_first``, ``mean_second``, ``delta`` = m,
    ``se``, ``wins``, ``losses``, ``ties``, ``p``; NaN / 0 where nothing was paired) plus
    ``higher_is_better``, ``min_effect`` and ``verdict``, one of :data:`VERDICTS`: "not measurable"
    when n < 2; "no clear change" when |m| < min_effect or |m| <= 2 SE (SE 0, every clip changed
    by the same nonzero amount, is a clear change); otherwise "reproduced" when m > 0 for
    ``higher_is_better`` (m < 0 otherwise), else "opposite"."""
    if min_effect is None:
        min_effect = min_effect_of(metric)
    c = paired_clips(first_rows, second_rows, metric, higher_is_better)
    if c is None:
        nan = float("nan")
        c = {"n": 0, "mean_first": nan, "mean_second": nan, "delta": nan, "se": nan, "wins": 0, "losses": 0,
             "ties": 0, "p": 1.0}
    m, se = c["delta"], c["se"]
    if c["n"] < 2:
        verdict = "not measurable"
    elif abs(m) < min_effect or abs(m) <= 2 * se:
        verdict = "no clear change"
    else:
        verdict = "reproduced" if (m > 0) == bool(higher_is_better) else "opposite"
    return {**c, "higher_is_better": bool(higher_is_better), "min_effect": float(min_effect), "verdict": verdict}


def claim_verdict(verdicts: list[str]) -> str:
    """One claim's verdict from its per-metric :func:`paired_verdict` verdicts (:data:`CLAIM_RULE`):
    "reproduced" / "opposite" / "mixed" / "no clear change" / "not measurable"."""
    pro = sum(v == "reproduced" for v in verdicts)
    con = sum(v == "opposite" for v in verdicts)
    if pro and con:
        return "mixed"
    if pro:
        return "reproduced"
    if con:
        return "opposite"
    if verdicts and all(v == "not measurable" for v in verdicts):
        return "not measurable"
    return "no clear change"


def animatediff_controlnet_pipeline(stack):
    """diffusers' ``AnimateDiffControlNetPipeline`` on the modules of a loaded ``VideoEditStack``
    (its motion UNet, ControlNet, VAE, text encoder, tokenizer) with SD 1.x's DDIM settings
    (SD 1.5's ``scheduler_config.json``, written out: nothing is fetched): the diffusers baseline
    of the plug-and-play benches."""
    from diffusers import DDIMScheduler
    from diffusers.pipelines.animatediff import AnimateDiffControlNetPipeline

    bb = stack.backbone
    sched = DDIMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                          beta_schedule="scaled_linear", set_alpha_to_one=False, steps_offset=1,
                          clip_sample=False, timestep_spacing="leading")
    pipe = AnimateDiffControlNetPipeline(vae=bb.vae, text_encoder=bb.text_encoder, tokenizer=bb.tokenizer,
                                         unet=stack.motion_unet, motion_adapter=stack.motion_adapter,
                                         controlnet=stack.controlnet, scheduler=sched)
    pipe.set_progress_bar_config(disable=True)
    return pipe
