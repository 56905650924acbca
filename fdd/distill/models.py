"""The student and the teachers of FDD on ONE backbone (EVE §3.1.4, §3.2).

- student φ = [θ, θ_edit, θ_video, θ_align]: the motion UNet (backbone 2-D layers + frozen
  AnimateDiff motion modules) with a trainable peft LoRA θ_align injected into the backbone's
  2-D layers only (regex targets: never ``motion_modules``, never the ControlNet), plus the
  frozen ControlNet fed each input frame and the instruction (frames as a batch, §3.1.3);
- edit teacher ψ = [θ, θ_edit]: the plain 2-D UNet + ControlNet per frame (one frame through
  motion modules is not the identity, so the teacher never goes through them);
- video teacher ρ = [θ, θ_video]: the same motion UNet as the student with the LoRA adapters
  disabled (peft ``enable_adapters(False)``), conditioned on the output caption.

For the §4.4 combination ``edit+lora`` the "video" UNet is a 2-D UNet with the subject/style
LoRA merged into its weights: the LoRA teacher is that UNet with θ_align disabled, the student
that UNet with θ_align on + the ControlNet.

Every module is a private copy made outside inference mode (ComfyUI loads models under
``torch.inference_mode()``; inference tensors cannot be saved for backward, and shared cached
modules must not be mutated): :func:`training_copy`.
"""

from __future__ import annotations

import contextlib
import copy
import re
from dataclasses import dataclass, field

import torch
from torch import nn
from einops import rearrange

from ..sampling import classifier_free_guidance, instruct_pix2pix_guidance
from ..video import frame_batch, unframe_batch
from .config import FDDConfig


def training_copy(module: nn.Module) -> nn.Module:
    """A deep copy with ordinary (non-inference) tensors, frozen, in eval mode."""
    with torch.inference_mode(False):
        m = copy.deepcopy(module)
        for p in list(m.parameters()) + list(m.buffers()):
            if p.is_inference():
                p.data = p.data.clone()
    return m.eval().requires_grad_(False)


def lora_target_regex(targets) -> str:
    """peft ``target_modules`` regex (full match on module names): the given suffixes inside any
    2-D transformer block (``...attentions.N.transformer_blocks.M.<suffix>``), never inside
    ``motion_modules``."""
    alts = "|".join(re.escape(t) for t in targets)
    return rf"^(?!.*motion_modules).*attentions\.\d+\.transformer_blocks\.\d+\.(?:{alts})$"


def add_align_lora(unet: nn.Module, rank: int, alpha: float | None, targets, seed: int) -> list[str]:
    """Inject θ_align (peft LoRA, B = 0 so the student starts as the plug-and-play stack) and
    return the names of the trainable parameters; everything else stays frozen."""
    from peft import LoraConfig, inject_adapter_in_model

    unet.requires_grad_(False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        inject_adapter_in_model(LoraConfig(r=int(rank), lora_alpha=float(alpha or rank),
                                           target_modules=lora_target_regex(targets), lora_dropout=0.0,
                                           init_lora_weights=True), unet)
    names = [n for n, p in unet.named_parameters() if "lora_" in n]
    if not names:
        raise ValueError(f"lora_targets: {list(targets)} matched no layer of the backbone UNet")
    for n, p in unet.named_parameters():
        p.requires_grad_("lora_" in n)
    return names


@contextlib.contextmanager
def adapters_disabled(module: nn.Module):
    """Run ``module`` with its peft LoRA layers off (the teachers), restoring them after."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    layers = [m for m in module.modules() if isinstance(m, BaseTunerLayer)]
    for m in layers:
        m.enable_adapters(False)
    try:
        yield
    finally:
        for m in layers:
            m.enable_adapters(True)


@dataclass
class Conditioning:
    """Per-sample conditions of a micro-batch (B samples, F frames).

    ``caption`` / ``instruction`` / ``empty``: ``(B, L, D)`` text hidden states (c_out,
    c_instruct, the empty prompt); ``*_pooled`` ``(B, D)`` for the discriminators;
    ``frames``: ``(B, F, 3, H, W)`` input frames in 0..1 (c_vid)."""

    caption: torch.Tensor
    instruction: torch.Tensor
    empty: torch.Tensor
    caption_pooled: torch.Tensor
    instruction_pooled: torch.Tensor
    frames: torch.Tensor


@dataclass
class FDDModels:
    """Frozen modules + the LoRA-carrying student UNet; see the module docstring."""

    unet2d: nn.Module                 # θ (edit teacher's backbone path, never gets LoRA)
    student_unet: nn.Module           # motion UNet (or LoRA-merged 2-D UNet) with θ_align
    controlnet: nn.Module             # θ_edit
    vae: nn.Module
    text_encoder: nn.Module
    tokenizer: object
    scaling_factor: float
    vae_scale_factor: int
    video: bool                       # student_unet is a UNetMotionModel
    lora_param_names: list = field(default_factory=list)

    def frozen_modules(self) -> list[nn.Module]:
        return [self.unet2d, self.student_unet, self.controlnet, self.vae, self.text_encoder]

    def to(self, device=None, dtype=None) -> FDDModels:
        for m in self.frozen_modules():
            m.to(device=device)
        return self

    def lora_parameters(self) -> list[nn.Parameter]:
        named = dict(self.student_unet.named_parameters())
        return [named[n] for n in self.lora_param_names]

    # -------------------------------------------------------------------------------- text
    @torch.no_grad()
    def encode_text(self, prompts: list[str], device) -> tuple[torch.Tensor, torch.Tensor]:
        """CLIP last hidden states ``(N, 77, D)`` (UNet / ControlNet conditioning) and pooled
        ``(N, D)`` outputs (discriminator text projections)."""
        te = self.text_encoder
        max_len = getattr(te.config, "max_position_embeddings", 77)
        ids = self.tokenizer(list(prompts), padding="max_length", max_length=max_len, truncation=True,
                             return_tensors="pt").input_ids.to(device)
        out = te(ids)
        return out[0].float(), out[1].float()

    # ------------------------------------------------------------------------- predictions
    def _control(self, x_flat, t_flat, ctrl_text, ctrl_pixels, scale):
        d, m = self.controlnet(x_flat, t_flat, encoder_hidden_states=ctrl_text, controlnet_cond=ctrl_pixels,
                               conditioning_scale=scale, return_dict=False)
        return list(d), m

    def _denoise(self, unet, motion: bool, x, t, text, ctrl_text=None, ctrl_pixels=None, scale=1.0):
        """One noise prediction for ``x (B, C, F, h, w)`` at per-sample timesteps ``t (B,)``.

        ``text (B, L, D)`` goes to the UNet, ``ctrl_text`` / ``ctrl_pixels (B, F, 3, H, W)``
        to the ControlNet (None: no edit adapter). ``motion`` routes through a UNetMotionModel
        (which wants the text repeated per frame, ``(B*F, L, D)``); else frames are a batch."""
        B, C, Fr, h, w = x.shape
        x_flat = frame_batch(x)
        t_flat = t.repeat_interleave(Fr)
        emb = text.repeat_interleave(Fr, dim=0)
        down = mid = None
        if ctrl_pixels is not None:
            down, mid = self._control(x_flat, t_flat, ctrl_text.repeat_interleave(Fr, dim=0),
                                      ctrl_pixels.reshape(B * Fr, *ctrl_pixels.shape[2:]), scale)
        if motion:
            return unet(x, t, encoder_hidden_states=emb, down_block_additional_residuals=down,
                        mid_block_additional_residual=mid, return_dict=False)[0]
        out = unet(x_flat, t_flat, encoder_hidden_states=emb, down_block_additional_residuals=down,
                   mid_block_additional_residual=mid, return_dict=False)[0]
        return unframe_batch(out, B)

    def _guided(self, unet, motion, x, t, cond: Conditioning, text_cfg, image_cfg, use_control, scale):
        """Noise prediction with the guidance rule of the plug-and-play sampler: InstructPix2Pix
        two-scale guidance with the edit adapter, plain CFG without; all branches in one call."""
        B = x.shape[0]
        if not use_control:
            if text_cfg == 1.0:
                return self._denoise(unet, motion, x, t, cond.caption)
            e = self._denoise(unet, motion, torch.cat([x, x]), torch.cat([t, t]),
                              torch.cat([cond.caption, cond.empty]))
            return classifier_free_guidance(e[B:], e[:B], text_cfg)
        if text_cfg == 1.0 and image_cfg == 1.0:
            return self._denoise(unet, motion, x, t, cond.caption, cond.instruction, cond.frames, scale)
        # branches: full (caption; control with instruction), image (empty; control with empty),
        # uncond (empty; no control) -- the uncond branch only when image_cfg != 1
        n = 2 if image_cfg == 1.0 else 3
        xs, ts = torch.cat([x] * n), torch.cat([t] * n)
        text = torch.cat([cond.caption, cond.empty] + ([cond.empty] if n == 3 else []))
        ctrl_x = torch.cat([x, x])
        ctrl_t = torch.cat([t, t])
        ctrl_text = torch.cat([cond.instruction, cond.empty])
        ctrl_pix = torch.cat([cond.frames, cond.frames])
        Fr = x.shape[2]
        d, m = self._control(frame_batch(ctrl_x), ctrl_t.repeat_interleave(Fr),
                             ctrl_text.repeat_interleave(Fr, dim=0),
                             ctrl_pix.reshape(-1, *ctrl_pix.shape[2:]), scale)
        if n == 3:
            d = [torch.cat([r, torch.zeros_like(r[: B * Fr])]) for r in d]
            m = torch.cat([m, torch.zeros_like(m[: B * Fr])])
        x_flat = frame_batch(xs)
        emb = text.repeat_interleave(Fr, dim=0)
        if motion:
            e = unet(xs, ts, encoder_hidden_states=emb, down_block_additional_residuals=d,
                     mid_block_additional_residual=m, return_dict=False)[0]
        else:
            e = unet(x_flat, ts.repeat_interleave(Fr), encoder_hidden_states=emb, down_block_additional_residuals=d,
                     mid_block_additional_residual=m, return_dict=False)[0]
            e = unframe_batch(e, n * B)
        parts = e.split(B)
        if n == 2:
            return classifier_free_guidance(parts[1], parts[0], text_cfg)
        return instruct_pix2pix_guidance(parts[2], parts[1], parts[0], text_cfg, image_cfg)

    def student_eps(self, x, t, cond: Conditioning, cfg: FDDConfig):
        """ε̂_φ: backbone + θ_align + edit adapter + video adapter (LoRA on)."""
        return self._guided(self.student_unet, self.video, x, t, cond, cfg.student_cfg, cfg.student_image_cfg,
                            True, cfg.control_strength)

    def edit_teacher_eps(self, x, t, cond: Conditioning, cfg: FDDConfig):
        """ε̂_ψ: backbone + edit adapter, per frame through the plain 2-D UNet."""
        return self._guided(self.unet2d, False, x, t, cond, cfg.edit_teacher_cfg, cfg.edit_teacher_image_cfg,
                            True, cfg.control_strength)

    def video_teacher_eps(self, x, t, cond: Conditioning, cfg: FDDConfig):
        """ε̂_ρ: backbone + video adapter (or the §4.4 LoRA adapter), θ_align disabled."""
        with adapters_disabled(self.student_unet):
            return self._guided(self.student_unet, self.video, x, t, cond, cfg.video_teacher_cfg, 1.0, False, 1.0)

    # ------------------------------------------------------------------------------ pixels
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """``(B, C, F, h, w)`` latents -> ``(B, F, 3, H, W)`` pixels in -1..1 (differentiable)."""
        pix = self.vae.decode(frame_batch(latents) / self.scaling_factor).sample
        return rearrange(pix, "(b f) c h w -> b f c h w", b=latents.shape[0])

    @torch.no_grad()
    def encode(self, pixels01: torch.Tensor) -> torch.Tensor:
        """``(B, F, 3, H, W)`` in 0..1 -> latents ``(B, C, F, h, w)`` (posterior mean)."""
        flat = rearrange(pixels01, "b f c h w -> (b f) c h w") * 2 - 1
        lat = self.vae.encode(flat).latent_dist.mean * self.scaling_factor
        return unframe_batch(lat, pixels01.shape[0])


def build_fdd_models(backbone, controlnet, motion_adapter, cfg: FDDConfig, teacher_lora=None) -> FDDModels:
    """Private training copies of the loaded modules, with θ_align injected.

    ``backbone`` an :class:`~fdd.models.sd1.SD1Backbone`; ``motion_adapter`` a diffusers
    ``MotionAdapter`` (edit+video) or None; ``teacher_lora`` a :class:`~fdd.models.lora.LoraWeights`
    (edit+lora: merged at ``cfg.teacher_lora_strength`` into the copy that becomes the LoRA
    teacher / student UNet) or a list of ``(LoraWeights, strength)`` merged together."""
    from ..models.lora import LoraStack
    from ..models.motion import build_motion_unet, set_motion_scale

    unet2d = training_copy(backbone.unet)
    cn = training_copy(controlnet)
    vae = training_copy(backbone.vae)
    te = training_copy(backbone.text_encoder)
    if cfg.combination == "edit+video":
        if motion_adapter is None:
            raise ValueError("motion_module: the edit+video combination needs a video adapter")
        with torch.inference_mode(False):
            student = build_motion_unet(unet2d, training_copy(motion_adapter)).eval().requires_grad_(False)
        if cfg.motion_scale != 1.0:
            set_motion_scale(student, cfg.motion_scale)
        video = True
    else:
        if teacher_lora is None:
            raise ValueError("teacher_lora: the edit+lora combination needs the LoRA adapter to align")
        student = training_copy(unet2d)
        loras = teacher_lora if isinstance(teacher_lora, (list, tuple, LoraStack)) \
            else [(teacher_lora, cfg.teacher_lora_strength)]
        LoraStack.of(loras).merge_into(student)  # for good: the student is a private copy trained on top
        video = False
    names = add_align_lora(student, cfg.lora_rank, cfg.lora_alpha, cfg.lora_targets, cfg.seed)
    return FDDModels(unet2d=unet2d, student_unet=student, controlnet=cn, vae=vae, text_encoder=te,
                     tokenizer=backbone.tokenizer, scaling_factor=float(backbone.scaling_factor),
                     vae_scale_factor=int(backbone.vae_scale_factor), video=video, lora_param_names=names)
