"""Plug-and-play video editing (EVE §3.1.3): the edit adapter and the video adapter attached
to the same frozen backbone at once, before any alignment, sampled with DDIM.

The backbone is conditioned on the output caption c_out; the edit adapter (ControlNet) on the
input frame and the instruction c_instruct, frames stacked as a batch (§3.1.3 footnote 1);
the video adapter couples the frames. Guidance follows InstructPix2Pix's two-condition rule
(see :func:`fdd.sampling.instruct_pix2pix_guidance`), the "image" condition being the edit
adapter with its frame. Clips longer than ``context_frames`` go through overlapping windows
(EVE §4.0.4) blended at every step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch

from ..sampling import (DDIMSchedule, add_noise, ddim_sample, instruct_pix2pix_guidance,
                        classifier_free_guidance, windowed_predict)
from ..sampling.control import CancelCheck, ProgressCallback
from ..video import as_video, decode_video, pixels_to_frames, prepare_frames, resize_pixels, vae_encode
from ..memory import is_out_of_memory, release_cached_memory
from .common import encode_prompts, same_length
from ..params import param
from .stack import VideoEditStack


BRANCH_SPLITS = ("auto", "batched", "sequential")


@dataclass
class PlugAndPlayConfig:
    """Sampling settings (defaults: 20 DDIM steps; text / image guidance 7.5 / 1.5, the
    InstructPix2Pix defaults; 16-frame windows overlapping by 4, AnimateDiff's context). Each
    user-facing field is declared with :func:`fdd.params.param` (the node's widget is built from it)."""

    negative_prompt: str = param("", "Text for the unconditional branches of guidance.", multiline=True)
    steps: int = param(20, "DDIM steps.", min=1, max=1000)
    text_cfg: float = param(7.5, "Text guidance scale s_T (InstructPix2Pix Eq. 3).", min=0.0, max=30.0, step=0.1,
                            input_name="cfg")
    image_cfg: float = param(1.5, "Image guidance scale s_I: how strongly the output follows the input frames "
                                  "through the edit adapter. 1 skips that branch.", min=0.0, max=30.0, step=0.05)
    control_strength: float = param(1.0, "Multiplier of the edit adapter's residuals.", min=0.0, max=5.0, step=0.01)
    seed: int = param(0, "Seed of the initial noise; the same seed gives the same video.", min=0,
                      max=0xFFFFFFFFFFFFFFFF, seed=True)
    context_frames: int = param(16, "Frames per window given to the video adapter at once (16 for AnimateDiff "
                                    "v2/v3, 24 for v1's maximum).", min=1, max=128)
    context_overlap: int = param(4, "Frames shared by consecutive windows; their predictions are blended with "
                                    "linear ramps.", min=0, max=127)
    denoise: float = param(1.0, "1 starts from pure noise (EVE); lower values start from the input video noised "
                                "part-way (SDEdit).", min=0.01, max=1.0, step=0.01)
    #: how the guidance branches run: "batched" (one UNet call per window, fastest), "sequential"
    #: (one call per branch: about 1/n of the activation memory, same result), or "auto"
    #: (batched; on an out-of-memory error, sequential from then on)
    branch_split: str = "auto"

    def validate(self) -> None:
        if self.steps < 1:
            raise ValueError(f"steps: expected >= 1, got {self.steps}")
        if not 0.0 < self.denoise <= 1.0:
            raise ValueError(f"denoise: expected 0 < denoise <= 1, got {self.denoise}")
        if self.text_cfg < 0 or self.image_cfg < 0:
            raise ValueError("cfg / image_cfg: expected non-negative guidance scales")
        if self.branch_split not in BRANCH_SPLITS:
            raise ValueError(f"branch_split: expected one of {BRANCH_SPLITS}, got {self.branch_split!r}")
        if self.context_frames < 1 or not 0 <= self.context_overlap < self.context_frames:
            raise ValueError(f"context_overlap: expected 0 <= overlap < context_frames "
                             f"({self.context_frames}), got {self.context_overlap}")


def _branch_plan(has_control: bool, text_cfg: float, image_cfg: float) -> list[str]:
    """Which predictions the guidance rule needs; unneeded branches are never evaluated."""
    if not has_control:
        return ["full"] if text_cfg == 1.0 else ["full", "uncond"]
    if image_cfg == 1.0:
        return ["full"] if text_cfg == 1.0 else ["full", "image"]
    return ["full", "image", "uncond"]


def make_edit_eps_fn(stack: VideoEditStack, control_pixels: Optional[torch.Tensor], caption_emb,
                     instruction_emb, empty_emb, cfg: PlugAndPlayConfig):
    """Build ``eps_fn(latents (1, C, F, h, w), t)`` applying guidance and frame windows. The
    needed branches run through the UNet (and ControlNet) in one batched call per window, or one
    call per branch (``cfg.branch_split``; "auto" switches to that on the first out-of-memory
    error and stays there for the run): the predictions are the same either way."""
    has_control = stack.controlnet is not None and control_pixels is not None
    plan = _branch_plan(has_control, cfg.text_cfg, cfg.image_cfg)
    text = {"full": caption_emb, "image": empty_emb, "uncond": empty_emb}
    ctrl_text = {"full": instruction_emb, "image": empty_emb, "uncond": empty_emb}
    ctrl_on = {"full": True, "image": True, "uncond": False}
    text_b = torch.cat([text[b] for b in plan])
    ctrl_b = torch.cat([ctrl_text[b] for b in plan])
    on_b = [ctrl_on[b] and has_control for b in plan]
    state = {"split": cfg.branch_split == "sequential" and len(plan) > 1}

    def predict(x_win, t, img, lo, hi):
        n = hi - lo
        xb = x_win.expand(n, *x_win.shape[1:])
        return stack.predict_noise(xb, t, text_b[lo:hi], ctrl_b[lo:hi], img, on_b[lo:hi], cfg.control_strength)

    def window_eps(x_win: torch.Tensor, s: int, e: int, t: int) -> torch.Tensor:
        n = len(plan)
        img = control_pixels[s:e] if has_control else None
        eps = None
        if not state["split"]:
            try:
                eps = predict(x_win, t, img, 0, n)
            except Exception as exc:  # noqa: BLE001 (only OOM is handled)
                if cfg.branch_split != "auto" or n == 1 or not is_out_of_memory(exc):
                    raise
                release_cached_memory()
                state["split"] = True
        if eps is None:
            eps = torch.cat([predict(x_win, t, img, i, i + 1) for i in range(n)])
        parts = dict(zip(plan, eps.split(1)))
        if plan == ["full"]:
            return parts["full"]
        if not has_control:
            return classifier_free_guidance(parts["uncond"], parts["full"], cfg.text_cfg)
        if "uncond" not in parts:  # image_cfg == 1: the uncond terms cancel exactly
            return classifier_free_guidance(parts["image"], parts["full"], cfg.text_cfg)
        return instruct_pix2pix_guidance(parts["uncond"], parts["image"], parts["full"],
                                         cfg.text_cfg, cfg.image_cfg)

    def eps_fn(x: torch.Tensor, t: int) -> torch.Tensor:
        return windowed_predict(lambda xw, s, e: window_eps(xw, s, e, t), x,
                                cfg.context_frames, cfg.context_overlap, frame_dim=2)

    eps_fn.plan = plan  # exposed for benches and tests
    eps_fn.state = state  # state["split"]: whether the branches now run one at a time
    return eps_fn


def denoise_steps(steps: int, denoise: float) -> int:
    """How many of ``steps`` DDIM steps a partial edit with ``denoise`` runs (at least one)."""
    return max(1, round(steps * denoise))


def start_latents(bb, pixels: torch.Tensor, size: tuple[int, int], steps: int, denoise: float, seed: int,
                  schedule: DDIMSchedule) -> tuple[torch.Tensor, int]:
    """The latents a ``steps``-step DDIM edit starts from, and the step index it starts at.

    ``denoise`` 1: pure noise from ``seed`` (index 0). ``denoise`` < 1 (SDEdit): the input
    video's latent (``pixels`` ``[F, 3, H, W]`` in -1..1, already at ``size``) noised with that
    same noise to the timestep of index ``steps - round(steps * denoise)``, so the last
    ``round(steps * denoise)`` steps run (at least one). Shape ``(1, C, F, h, w)``."""
    F_ = pixels.shape[0]
    C = bb.unet.config.in_channels
    lat_shape = (1, C, F_, size[0] // bb.vae_scale_factor, size[1] // bb.vae_scale_factor)
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    noise = torch.randn(lat_shape, generator=gen, dtype=torch.float32).to(pixels.device)
    start = steps - denoise_steps(steps, denoise)
    if start == 0:
        return noise, 0
    src = vae_encode(bb.vae, pixels, bb.scaling_factor).float()
    src = as_video(src.view(F_, C, *lat_shape[-2:]))
    t0 = schedule.timesteps(steps)[start]
    return add_noise(src, noise, schedule.alpha_bar(t0)), start


#: ``hook(pixels [F, 3, h, w] on the device, schedule)`` -> a wrapper of the noise function (or None),
#: computed before the stack's LoRAs are applied (EVE's first-frame anchor is one)
EpsHook = Callable[[torch.Tensor, DDIMSchedule], Optional[Callable]]


@torch.no_grad()
def edit_video(stack: VideoEditStack, frames: torch.Tensor, instruction: str, caption: str,
               cfg: PlugAndPlayConfig, *, eps_hook: EpsHook | None = None,
               callback: ProgressCallback | None = None, should_cancel: CancelCheck | None = None,
               return_latents: bool = False):
    """The one sampler of the EVE stack: frames at the size the UNet accepts, prompts encoded with
    the stack's LoRAs applied, guidance and windows (:func:`make_edit_eps_fn`), optionally wrapped
    by ``eps_hook`` (EVE's first-frame anchor), DDIM from noise or the noised input
    (:func:`start_latents`), decoded and resized back. Returns IMAGE frames of the input's shape
    (and the final latents ``(1, C, F, h, w)`` with ``return_latents``)."""
    cfg.validate()
    stack.check_compatible()
    bb = stack.backbone
    device, dtype = stack.device, stack.dtype
    pixels, (_, H, W), (h, w) = prepare_frames(bb, frames, device)
    schedule = DDIMSchedule()
    wrap = eps_hook(pixels, schedule) if eps_hook is not None else None
    with stack.applied_loras():
        te = bb.text_encoder
        caption_emb, instruction_emb, empty_emb = same_length(  # long prompts: one length to batch
            encode_prompts(bb.tokenizer, te, [caption], device),
            encode_prompts(bb.tokenizer, te, [instruction], device),
            encode_prompts(bb.tokenizer, te, [cfg.negative_prompt], device))
        control = ((pixels + 1) / 2) if stack.controlnet is not None else None
        eps_fn = make_edit_eps_fn(stack, control, caption_emb, instruction_emb, empty_emb, cfg)
        if wrap is not None:
            eps_fn = wrap(eps_fn)
        latents, start = start_latents(bb, pixels, (h, w), cfg.steps, cfg.denoise, cfg.seed, schedule)
        latents = ddim_sample(eps_fn, latents, schedule, cfg.steps, start_step=start,
                              callback=callback, should_cancel=should_cancel)
        out = decode_video(bb.vae, latents.to(dtype), bb.scaling_factor)
    out = pixels_to_frames(resize_pixels(out.float(), (H, W)))
    return (out, latents) if return_latents else out


def plug_and_play_edit(stack: VideoEditStack, frames: torch.Tensor, instruction: str, caption: str,
                       config: PlugAndPlayConfig | None = None, *,
                       callback: ProgressCallback | None = None,
                       should_cancel: CancelCheck | None = None, return_latents: bool = False):
    """Edit ``frames`` (ComfyUI IMAGE ``[F, H, W, 3]``, 0..1) with ``instruction``, the result
    described by ``caption``. Returns edited frames of the same shape.

    Frames are resized to the nearest smaller size the UNet accepts and the result resized
    back. With ``denoise`` < 1 sampling starts from the input video's latent noised to the
    matching timestep (SDEdit) instead of pure noise. With ``return_latents`` also the final
    latents ``(1, C, F, h, w)``.
    """
    return edit_video(stack, frames, instruction, caption, config or PlugAndPlayConfig(),
                      callback=callback, should_cancel=should_cancel, return_latents=return_latents)
