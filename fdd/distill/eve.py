"""EVE video editing (EVE §3.1.4, §4.0.4): the plug-and-play stack with the FDD-aligned LoRA
θ_align on the backbone, sampled with DDIM over overlapping windows, plus first-frame handling.

The aligned LoRA is applied through :class:`~fdd.pipelines.VideoEditStack` ``loras`` (exactly
what ``FDD Apply LoRA to Backbone`` does), and the noise prediction is the plug-and-play
sampler's (:func:`~fdd.pipelines.plug_and_play.make_edit_eps_fn`): the ControlNet gets each
input frame and the instruction, the backbone the output caption, the motion modules couple the
frames, InstructPix2Pix guidance, windows of ``context_frames`` blended at every step.

First frame. The paper conditions its video adapter (Emu Video, image-to-video) on a first
frame edited by the edit adapter. AnimateDiff motion modules take no image condition, so EVE
here does the closest thing the stack supports (``first_frame="edit"``):

1. the first input frame is edited alone by the edit teacher (backbone + ControlNet, no LoRA,
   no motion modules: the plain 2-D path) with its own guidance, and VAE-encoded to z_1;
2. during video sampling frame 1 is pinned to that edit: at every DDIM step its noise
   prediction is replaced by the noise implied by x_t and z_1,
   ε_1 = (x_t,1 − sqrt(ᾱ_t) z_1) / sqrt(1 − ᾱ_t), so its x̂_0 is z_1 exactly and its latent
   follows the DDIM trajectory towards z_1 while the motion modules propagate it to the
   other frames (the anchor reaches later windows through their overlaps).

``first_frame="none"`` samples all frames jointly (the stack as trained by FDD).

``denoise`` < 1 starts both the first-frame edit and the video from the input's latent noised
part-way (SDEdit, as the plug-and-play sampler does). Not in the paper; on the toy world it is
what keeps the layout (the main job's preservation 0.75 at 0.7 against 0 at 1.0).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..params import param
from ..pipelines.plug_and_play import PlugAndPlayConfig, edit_video, plug_and_play_edit
from ..pipelines.stack import VideoEditStack
from ..sampling import DDIMSchedule
from ..sampling.control import CancelCheck, ProgressCallback
from ..video import frames_to_pixels, pixels_to_frames, vae_encode


@dataclass
class EVEConfig(PlugAndPlayConfig):
    """Sampling settings of EVE: :class:`PlugAndPlayConfig`'s plus the first-frame handling.

    Defaults: 8-frame windows overlapping by 2 (FDD trains on 8-frame clips, §4.0.4); the
    first frame edited by the edit teacher with ``first_frame_steps`` DDIM steps and the
    InstructPix2Pix guidance ``first_frame_cfg`` / ``first_frame_image_cfg``."""

    steps: int = param(20, "DDIM steps (K-bin training keeps the student usable at more steps than k).",
                       min=1, max=1000)
    text_cfg: float = param(7.5, "Text guidance. 1 (the node's default): the aligned student was distilled from "
                                 "guided teachers and is sampled unguided, as trained.", min=0.0, max=30.0,
                            step=0.1, input_name="cfg")
    image_cfg: float = param(1.5, "Image guidance through the edit adapter (1 skips that branch).", min=0.0,
                             max=30.0, step=0.05)
    context_frames: int = param(8, "Frames per window (8: the clip length FDD trains on).", min=1, max=128)
    context_overlap: int = param(2, "Frames shared by consecutive windows (blended with linear ramps).",
                                 min=0, max=127)
    denoise: float = param(1.0, "1 starts from pure noise (the paper); lower values start the first-frame edit "
                                "and the video from the input noised part-way (SDEdit), which keeps the layout "
                                "of weak adapters.", min=0.01, max=1.0, step=0.01)
    first_frame: str = param("edit", "edit: the first frame is edited by the edit adapter alone (no LoRA, no "
                                     "motion modules) and pinned during sampling, the analogue of EVE's "
                                     "first-frame conditioning for AnimateDiff; none: all frames sampled jointly.",
                             options=("edit", "none"))
    first_frame_steps: int = param(20, "DDIM steps of the first-frame edit.", min=1, max=1000)
    first_frame_cfg: float = param(7.5, "Text guidance of the first-frame edit (the edit teacher is guided).",
                                   min=0.0, max=30.0, step=0.1)
    first_frame_image_cfg: float = param(1.5, "Image guidance of the first-frame edit.", min=0.0, max=30.0,
                                         step=0.05)

    def validate(self) -> None:
        super().validate()
        if self.first_frame not in ("edit", "none"):
            raise ValueError(f"first_frame: expected 'edit' or 'none', got {self.first_frame!r}")
        if self.first_frame_steps < 1:
            raise ValueError(f"first_frame_steps: expected >= 1, got {self.first_frame_steps}")


def anchor_first_frame(eps_fn, anchor: torch.Tensor, schedule: DDIMSchedule):
    """Wrap ``eps_fn(x (1, C, F, h, w), t)`` so frame 0 follows the DDIM path to ``anchor``
    ``(C, h, w)``: its prediction becomes (x_t,0 − sqrt(ᾱ_t) anchor) / sqrt(1 − ᾱ_t)."""

    def wrapped(x: torch.Tensor, t: int) -> torch.Tensor:
        eps = eps_fn(x, t).clone()
        a = schedule.alpha_bar(t)
        eps[:, :, 0] = (x[:, :, 0].float() - a ** 0.5 * anchor.float()) / (1.0 - a) ** 0.5
        return eps

    wrapped.plan = getattr(eps_fn, "plan", None)
    return wrapped


@torch.no_grad()
def edit_first_frame(stack: VideoEditStack, frames: torch.Tensor, instruction: str, caption: str,
                     cfg: EVEConfig, should_cancel: CancelCheck | None = None) -> torch.Tensor:
    """The first frame edited by the edit teacher (backbone + ControlNet, no LoRA, 2-D path)."""
    teacher = VideoEditStack(stack.backbone, controlnet=stack.controlnet, motion_adapter=None, loras=[])
    pcfg = PlugAndPlayConfig(steps=cfg.first_frame_steps, text_cfg=cfg.first_frame_cfg,
                             image_cfg=cfg.first_frame_image_cfg, control_strength=cfg.control_strength,
                             seed=cfg.seed, negative_prompt=cfg.negative_prompt, denoise=cfg.denoise)
    return plug_and_play_edit(teacher, frames[:1], instruction, caption, pcfg, should_cancel=should_cancel)


def eve_edit(stack: VideoEditStack, frames: torch.Tensor, instruction: str, caption: str,
             config: EVEConfig | None = None, *, callback: ProgressCallback | None = None,
             should_cancel: CancelCheck | None = None, return_latents: bool = False):
    """Edit ``frames`` (IMAGE ``[F, H, W, 3]`` 0..1) with the aligned stack (``stack.loras``
    holding θ_align): the plug-and-play sampler (:func:`fdd.pipelines.plug_and_play.edit_video`)
    with the first frame anchored to the edit teacher's image edit when ``first_frame`` is
    "edit". Returns edited frames of the same shape (and the final latents ``(1, C, F, h, w)``
    with ``return_latents``)."""
    cfg = config or EVEConfig()
    cfg.validate()

    def first_frame_anchor(pixels, schedule):
        if cfg.first_frame != "edit" or stack.controlnet is None:
            return None
        bb = stack.backbone
        first = edit_first_frame(stack, pixels_to_frames(pixels[:1]), instruction, caption, cfg, should_cancel)
        anchor = vae_encode(bb.vae, frames_to_pixels(first).to(pixels.device), bb.scaling_factor)[0].float()
        return lambda eps_fn: anchor_first_frame(eps_fn, anchor, schedule)

    return edit_video(stack, frames, instruction, caption, cfg, eps_hook=first_frame_anchor, callback=callback,
                      should_cancel=should_cancel, return_latents=return_latents)
