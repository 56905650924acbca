"""The resumable training loop shared by every toy component (atomic checkpoints, JSON-lines log,
EMA, time and step budgets) and the forward-process helpers the trainers use.
"""

from __future__ import annotations

import copy
import json
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import asdict

import numpy as np
import torch
import torch.nn.functional as F

from .config import TrainConfig


def _atomic_save(obj, path: str) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _log(path: str, rec: dict) -> None:
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(rec) + "\n")


class _EMA:
    def __init__(self, model, decay: float):
        self.decay = decay
        self.shadow = {k: v.detach().clone() for k, v in model.state_dict().items() if v.is_floating_point()}

    @torch.no_grad()
    def update(self, model, step: int):
        """EMA with the usual warm-up: decay min(decay, (1 + step) / (10 + step)), so early
        evaluations are not dominated by the random initialisation."""
        d = min(self.decay, (1 + step) / (10 + step))
        for k, v in model.state_dict().items():
            if k in self.shadow:
                self.shadow[k].mul_(d).add_(v.detach(), alpha=1 - d)

    def copy_to(self, model):
        sd = model.state_dict()
        sd.update(self.shadow)
        model.load_state_dict(sd)


def train_loop(name: str, out: str, cfg: TrainConfig, model: torch.nn.Module, params, step_fn: Callable,
               eval_fn: Callable | None = None, ema: bool = False) -> dict:
    """Run ``step_fn(step, rng, gen) -> loss tensor`` with AdamW on ``params`` until the budget
    is spent; resumes from ``out/name/state.pt``. ``eval_fn(model_for_eval) -> dict``.
    Returns ``{"step", "elapsed_s", "loss", "eval"}``; the model ends holding the EMA weights
    when ``ema`` (the raw ones stay in the state file)."""
    work = os.path.join(out, name)
    os.makedirs(work, exist_ok=True)
    state_path, log_path = os.path.join(work, "state.pt"), os.path.join(work, "log.jsonl")
    params = list(params)
    dev = torch.device(cfg.device)
    model.to(dev)  # in place: ``params`` stay the model's parameters
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    shadow = _EMA(model, cfg.ema) if ema and cfg.ema > 0 else None
    step, elapsed = 0, 0.0
    if os.path.isfile(state_path):
        st = torch.load(state_path, map_location="cpu", weights_only=True)
        model.load_state_dict(st["model"])
        if st.get("opt") is not None:  # a run unpacked from shipped files has no optimizer moments
            opt.load_state_dict(st["opt"])
        for g in opt.param_groups:  # the command's lr applies on resume (a cool-down is a resume at a lower lr)
            g["lr"] = cfg.lr
        if shadow is not None:
            # a run that gains EMA on resume starts its average from the resumed weights
            shadow.shadow = ({k: v.to(dev) for k, v in st["ema"].items()} if st.get("ema") is not None
                             else _EMA(model, cfg.ema).shadow)
        step, elapsed = int(st["step"]), float(st["elapsed_s"])

    def save():
        _atomic_save({"model": model.state_dict(), "opt": opt.state_dict(),
                      "ema": shadow.shadow if shadow is not None else None, "step": step,
                      "elapsed_s": elapsed, "config": asdict(cfg)}, state_path)

    def evaluate():
        if eval_fn is None:
            return None
        if shadow is None:
            model.eval()
            r = eval_fn(model)
        else:
            m = copy.deepcopy(model).eval()
            shadow.copy_to(m)
            r = eval_fn(m)
        model.train()
        return r

    budget = cfg.minutes * 60.0
    last = {"loss": None, "eval": None}
    if elapsed >= budget and (cfg.steps is None or step < cfg.steps):
        # cfg.minutes caps the component's total training time, resumed time included
        print(f"[fdd.toy] {name}: nothing to train: the resumed run has already trained {elapsed / 60:.1f} "
              f"min, which spends the {cfg.minutes:g}-min budget (--minutes caps the total, resumed time "
              f"included); pass a larger --minutes to continue to step {cfg.steps}", file=sys.stderr)
    model.train()
    t0 = time.perf_counter() - elapsed
    while (cfg.steps is None or step < cfg.steps) and elapsed < budget:
        rng = np.random.default_rng([cfg.seed, step])
        gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
        loss = step_fn(step, rng, gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        if shadow is not None:
            shadow.update(model, step)
        step += 1
        elapsed = time.perf_counter() - t0
        lv = float(loss.detach())
        if not math.isfinite(lv):
            raise FloatingPointError(f"{name}: loss became {lv} at step {step}")
        last["loss"] = lv
        rec = {"step": step, "loss": lv, "elapsed_s": round(elapsed, 2)}
        if cfg.eval_every and step % cfg.eval_every == 0:
            last["eval"] = rec["eval"] = evaluate()
            t0 = time.perf_counter() - elapsed  # evaluation time is not training time
        if step % cfg.log_every == 0 or "eval" in rec or step == 1:
            _log(log_path, rec)
        if step % cfg.ckpt_every == 0:
            save()
    save()
    if shadow is not None:
        shadow.copy_to(model)
    if eval_fn is not None and (not cfg.eval_every or step % cfg.eval_every):
        last["eval"] = eval_fn(model.eval())
        _log(log_path, {"step": step, "final": True, "eval": last["eval"]})
    model.eval()
    return {"step": step, "elapsed_s": elapsed, **last}


def _noise_pred_loss(pred, noise):
    return F.mse_loss(pred, noise)


def training_noise(z: torch.Tensor, gen: torch.Generator, offset: float = 0.0) -> torch.Tensor:
    """ε for the denoising loss: standard normal, plus ``offset`` x a normal draw per (sample,
    channel) shared over every frame and pixel ("offset noise", Guttenberg 2023).

    Why: SD's scaled-linear schedule never reaches zero SNR, so at sampling the mean of the
    initial noise leaks through and decides the image's mean latent. In the toy world that is
    the background: measured on the backbone trained without it (3100 steps), the output
    brightness of "... on a white background" correlated 0.93 with the initial noise's mean
    along the white-minus-black latent direction, and background accuracy stayed at 58 %
    whatever the guidance scale. Training with an offset teaches the model to move the mean."""
    noise = torch.randn(z.shape, generator=gen)
    if offset > 0:
        shape = z.shape[:2] + (1,) * (z.dim() - 2)
        noise = noise + offset * torch.randn(shape, generator=gen)
    return noise.to(z.device)


def _timesteps(gen, n, device="cpu"):
    return torch.randint(0, 1000, (n,), generator=gen).to(device)


def _alphas(device="cpu"):
    from fdd.sampling import DDIMSchedule

    return DDIMSchedule().alphas_cumprod.float().to(device)


def _abar(ab: torch.Tensor, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``ab[t]`` shaped to broadcast over a batch like ``like`` (one value per item)."""
    return ab[t].view(-1, *([1] * (like.dim() - 1)))


def _noised(x0, noise, t, ab):
    """Per-item forward process (:func:`fdd.sampling.add_noise`) at timesteps ``t``."""
    from fdd.sampling import add_noise

    return add_noise(x0, noise, _abar(ab, t, x0))
