"""The adapter stack of EVE §3.1: one frozen SD 1.x backbone, an optional image-edit adapter
(ControlNet, run per frame with frames stacked as a batch, §3.1.3 footnote 1), an optional video
adapter (AnimateDiff motion modules) and LoRAs on the backbone's 2-D layers."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Optional, Sequence

import torch

from ..memory import Placed
from ..models.sd1 import SD1Backbone
from ..video import frame_batch, unframe_batch


@dataclass
class VideoEditStack(Placed):
    placed_on = "denoiser"

    """Models that predict noise for a video latent ``(B, C, F, h, w)``.

    ``motion_adapter`` is the diffusers ``MotionAdapter``; the motion UNet
    (``UNetMotionModel``) that stacks it on the backbone is built on first use and cached, and
    runs its motion modules at ``motion_scale``.
    ``loras`` is a :class:`~fdd.models.lora.LoraStack` (or ``(LoraWeights, strength)`` pairs)
    applied to the denoiser's 2-D layers (never the motion modules or the ControlNet) and, when
    present, the text encoder, only for the duration of :meth:`applied_loras`.
    """

    backbone: SD1Backbone
    controlnet: Optional[torch.nn.Module] = None
    motion_adapter: Optional[torch.nn.Module] = None
    loras: Sequence = ()
    controlnet_source: str = ""
    motion_source: str = ""
    #: the video adapter's strength (:func:`fdd.models.motion.blend_motion`): 1 as trained, 0 frames
    #: independent
    motion_scale: float = 1.0
    _motion_unet: Optional[torch.nn.Module] = field(default=None, repr=False)

    def check_compatible(self) -> None:
        """Refuse, naming both files, an edit adapter whose residuals do not fit the backbone
        (channels, block layout, cross-attention width); the motion module is checked when the
        motion UNet is built (:func:`fdd.models.motion.build_motion_unet`)."""
        if self.controlnet is not None:
            from ..models.controlnet import check_controlnet_matches_unet

            check_controlnet_matches_unet(self.controlnet, self.backbone.unet, self.controlnet_source or None,
                                          getattr(self.backbone, "source", None), self.backbone.vae_scale_factor)

    @property
    def motion_unet(self):
        if self.motion_adapter is None:
            return None
        if self._motion_unet is None:
            from ..models.motion import build_motion_unet

            self._motion_unet = build_motion_unet(self.backbone.unet, self.motion_adapter,
                                                  self.motion_source or None,
                                                  getattr(self.backbone, "source", None)).eval()
            self._motion_unet.requires_grad_(False)
        from ..models.motion import motion_scale_of, set_motion_scale

        if motion_scale_of(self._motion_unet) != self.motion_scale:
            set_motion_scale(self._motion_unet, self.motion_scale)
        return self._motion_unet

    @property
    def denoiser(self) -> torch.nn.Module:
        """The UNet that runs: the motion UNet when a video adapter is attached, else the 2-D UNet."""
        return self.motion_unet if self.motion_adapter is not None else self.backbone.unet

    def modules(self) -> list[torch.nn.Module]:
        mods = [self.backbone.text_encoder, self.backbone.vae, self.denoiser]
        if self.controlnet is not None:
            mods.append(self.controlnet)
        return mods

    def to(self, device=None, dtype=None) -> "VideoEditStack":
        for m in self.modules():
            m.to(device=device, dtype=dtype)
        return self

    @contextlib.contextmanager
    def applied_loras(self):
        """Patch the LoRAs into the weights for the duration of the block; restored bit-exactly."""
        from ..models.lora import LoraStack

        with LoraStack.of(self.loras).patch(self.denoiser, text_encoder=self.backbone.text_encoder):
            yield

    def predict_noise(self, x: torch.Tensor, t: int, text_emb: torch.Tensor,
                      control_emb: Optional[torch.Tensor] = None,
                      control_image: Optional[torch.Tensor] = None,
                      control_on: Optional[Sequence[bool]] = None,
                      control_scale: float = 1.0) -> torch.Tensor:
        """Noise prediction for a batch of video latents.

        x: ``(B, C, F, h, w)``; text_emb: ``(B, L, D)`` backbone conditioning (output caption);
        control_emb: ``(B, L, D)`` edit-adapter text (the instruction); control_image:
        ``(F, 3, H, W)`` input frames in 0..1, shared by the batch; control_on: which batch
        elements get the edit adapter (the others get no residuals: the "no image" branch of
        InstructPix2Pix guidance). Returns ``(B, C, F, h, w)`` in float32.
        """
        B, C, Fr, h, w = x.shape
        dtype = self.dtype
        unet = self.denoiser
        x_flat = frame_batch(x).to(dtype)
        emb_flat = text_emb.to(dtype).repeat_interleave(Fr, dim=0)
        tt = torch.full((B * Fr,), t, device=x.device, dtype=torch.long)
        down_res = mid_res = None
        if self.controlnet is not None and control_image is not None:
            on = list(control_on) if control_on is not None else [True] * B
            idx = [b for b in range(B) if on[b]]
            if idx:
                sel = torch.tensor(idx, device=x.device)
                xs = x_flat.view(B, Fr, C, h, w)[sel].reshape(len(idx) * Fr, C, h, w)
                ce = control_emb.to(dtype)[sel].repeat_interleave(Fr, dim=0)
                img = control_image.to(device=x.device, dtype=dtype).repeat(len(idx), 1, 1, 1)
                d, m = self.controlnet(xs, tt[: len(idx) * Fr], encoder_hidden_states=ce,
                                       controlnet_cond=img, conditioning_scale=control_scale,
                                       return_dict=False)
                if len(idx) == B:
                    down_res, mid_res = list(d), m
                else:
                    def scatter(r):
                        full = r.new_zeros((B, Fr) + tuple(r.shape[1:]))
                        full[sel] = r.view((len(idx), Fr) + tuple(r.shape[1:]))
                        return full.view((B * Fr,) + tuple(r.shape[1:]))
                    down_res, mid_res = [scatter(r) for r in d], scatter(m)
        if self.motion_adapter is not None:
            sample = x.to(dtype)
            out = unet(sample, t, encoder_hidden_states=emb_flat,
                       down_block_additional_residuals=down_res,
                       mid_block_additional_residual=mid_res, return_dict=False)[0]
            return out.float()
        out = unet(x_flat, tt, encoder_hidden_states=emb_flat,
                   down_block_additional_residuals=down_res,
                   mid_block_additional_residual=mid_res, return_dict=False)[0]
        return unframe_batch(out, B).float()
