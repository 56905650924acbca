"""Editing with a tuned EI² model (§4.1 Fig. 2b, §5): DDIM inversion of the input video with the
tuned model, then DDIM sampling from the inverted noise with the edit prompt and classifier-free
guidance (7.5 by default). Also the frame preparation shared by tuning and editing.

Tune-A-Video (which EI² follows) inverts with the empty prompt and no guidance; here the
inversion prompt is a parameter (default empty).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..params import param
from ..video import fit_size, frames_to_pixels, resize_pixels
from ..sampling import DDIMSchedule, classifier_free_guidance, ddim_invert, ddim_sample
from ..sampling.control import CancelCheck, ProgressCallback
from .inflate import InflatedUNet

INIT_MODES = ("inversion", "noise")


def select_frames(frames: torch.Tensor, num_frames: int = 8, stride: int = 1, start: int = 0) -> torch.Tensor:
    """Frames ``start, start + stride, …`` of an IMAGE batch ``[F, H, W, C]``; ``num_frames`` 0
    takes every frame the stride reaches. The paper tunes on 8 frames (§5)."""
    if frames.dim() != 4 or frames.shape[-1] not in (3, 4) or frames.shape[0] < 1:
        raise ValueError(f"frames: expected an IMAGE batch [frames, height, width, 3], got shape "
                         f"{tuple(frames.shape)}")
    if stride < 1:
        raise ValueError(f"frame_stride: expected >= 1, got {stride}")
    if num_frames < 0:
        raise ValueError(f"num_frames: expected >= 0 (0 = all), got {num_frames}")
    total = frames.shape[0]
    if start < 0 or start >= total:
        raise ValueError(f"frame_start: the clip has {total} frames, got start {start}")
    idx = list(range(start, total, stride))
    if num_frames:
        if len(idx) < num_frames:
            raise ValueError(f"num_frames: the clip has {total} frames; {num_frames} frames with stride {stride} "
                             f"from frame {start} need {start + (num_frames - 1) * stride + 1}")
        idx = idx[:num_frames]
    return frames[idx]


def prepare_pixels(frames: torch.Tensor, multiple: int, size: int = 0) -> torch.Tensor:
    """IMAGE frames -> pixels ``[n, 3, h, w]`` in −1..1, the longer side scaled to ``size``
    (0: keep) and both sides cut down to multiples of ``multiple``."""
    _, H, W, _ = frames.shape
    if size:
        s = size / max(H, W)
        H, W = max(1, round(H * s)), max(1, round(W * s))
    h, w = fit_size(H, W, multiple)
    return resize_pixels(frames_to_pixels(frames.float()), (h, w))


@dataclass
class EditConfig:
    """Editing settings: 50 DDIM steps as Tune-A-Video; CFG 7.5 (EI² §5); ``init`` "inversion"
    (DDIM inversion of the input, §4.1) or "noise" (seeded Gaussian noise, no inversion)."""

    steps: int = param(50, "DDIM steps, used for the inversion and again for sampling (Tune-A-Video: 50). "
                           "Progress counts both.", min=1, max=1000)
    cfg: float = param(7.5, "Classifier-free guidance scale (paper: 7.5).", min=0.0, max=30.0, step=0.1)
    init: str = param("inversion", "Start from the DDIM-inverted input (EI²) or from seeded noise.",
                      options=INIT_MODES)
    seed: int = param(0, "Seed of the noise when init is 'noise' (unused with inversion).", min=0,
                      max=0xFFFFFFFFFFFFFFFF, seed=True)

    def validate(self) -> EditConfig:
        if self.steps < 1:
            raise ValueError(f"steps: expected >= 1, got {self.steps}")
        if self.cfg < 0:
            raise ValueError(f"cfg: expected >= 0, got {self.cfg}")
        if self.init not in INIT_MODES:
            raise ValueError(f"init: expected one of {INIT_MODES}, got {self.init!r}")
        return self


def _eps_fn_conditional(model: InflatedUNet, emb: torch.Tensor):
    def eps(x: torch.Tensor, t: int) -> torch.Tensor:
        return model(x.to(model.dtype), t, emb.to(model.dtype)).float()
    return eps


def _eps_fn_guided(model: InflatedUNet, cond: torch.Tensor, uncond: torch.Tensor, scale: float):
    if scale == 1.0:
        return _eps_fn_conditional(model, cond)
    emb = torch.cat([uncond, cond]).to(model.dtype)

    def eps(x: torch.Tensor, t: int) -> torch.Tensor:
        out = model(torch.cat([x, x]).to(model.dtype), t, emb).float()
        e_u, e_c = out.chunk(2)
        return classifier_free_guidance(e_u, e_c, scale)
    return eps


@torch.no_grad()
def ei2_invert(model: InflatedUNet, latents: torch.Tensor, inversion_emb: torch.Tensor, steps: int,
               schedule: DDIMSchedule | None = None, *, callback: ProgressCallback | None = None,
               should_cancel: CancelCheck | None = None) -> torch.Tensor:
    """DDIM inversion of the video latents with the tuned model conditioned on the inversion
    prompt, no guidance (as Tune-A-Video): x_0 -> x_T (:func:`fdd.sampling.ddim_invert`)."""
    schedule = schedule or DDIMSchedule()
    return ddim_invert(_eps_fn_conditional(model, inversion_emb), latents.float(), schedule, steps,
                       callback=callback, should_cancel=should_cancel)


@torch.no_grad()
def ei2_sample(model: InflatedUNet, x_T: torch.Tensor, edit_emb: torch.Tensor, uncond_emb: torch.Tensor,
               steps: int, cfg: float = 7.5, schedule: DDIMSchedule | None = None, *,
               callback: ProgressCallback | None = None, should_cancel: CancelCheck | None = None) -> torch.Tensor:
    """DDIM sampling (eta = 0) from ``x_T`` with the edit prompt and classifier-free guidance
    (:func:`fdd.sampling.classifier_free_guidance`, scale ``cfg``)."""
    schedule = schedule or DDIMSchedule()
    return ddim_sample(_eps_fn_guided(model, edit_emb, uncond_emb, cfg), x_T.float(), schedule, steps,
                       callback=callback, should_cancel=should_cancel)


@torch.no_grad()
def ei2_edit_latents(model: InflatedUNet, latents: torch.Tensor, edit_emb: torch.Tensor, uncond_emb: torch.Tensor,
                     inversion_emb: torch.Tensor, config: EditConfig | None = None, *,
                     callback: ProgressCallback | None = None,
                     should_cancel: CancelCheck | None = None) -> torch.Tensor:
    """Edit video latents ``(1, C, n, h, w)``: invert (or draw seeded noise), then sample.

    The callback sees one running count over both phases: ``steps`` inversion steps (when
    inverting) then ``steps`` sampling steps."""
    cfg = (config or EditConfig()).validate()
    schedule = DDIMSchedule()
    total = cfg.steps * (2 if cfg.init == "inversion" else 1)
    offset = 0

    def cb(step, _total, x):
        if callback is not None:
            callback(offset + step, total, x)

    if cfg.init == "inversion":
        x_T = ei2_invert(model, latents, inversion_emb, cfg.steps, schedule, callback=cb,
                         should_cancel=should_cancel)
        offset = cfg.steps
    else:
        gen = torch.Generator(device="cpu").manual_seed(int(cfg.seed))
        x_T = torch.randn(latents.shape, generator=gen, dtype=torch.float32).to(latents.device)
    return ei2_sample(model, x_T, edit_emb, uncond_emb, cfg.steps, cfg.cfg, schedule, callback=cb,
                      should_cancel=should_cancel)


def resize_back(pixels: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(pixels.shape[-2:]) == tuple(size):
        return pixels
    return F.interpolate(pixels, size=size, mode="bilinear", align_corners=False, antialias=True)
