"""The ASSD optimiser node: zero-shot video editing by adaptive sliding score distillation."""

from __future__ import annotations

import numpy as np
import torch
from comfy_api.v0_0_2 import io

from ..fdd.assd import (MASK_CHANNEL_MODES, SMOOTH_BOUNDARIES, ASSDConfig, ImagePrior, assd_edit,
                        applied_backbone_loras, load_t2v_folder_parts, motion_models, preview_strip, t2v_models)
from ..fdd.video import check_clip
from . import _runtime as rt
from ._inputs import PackNode
from .types import AdapterHandle, Backbone, BackboneHandle, T2VUNet, VideoAdapter

CATEGORY = "video edit (fdd)/assd"
PREVIEW_MAX_SIZE = 512


def _models(t2v_unet: AdapterHandle | None, backbone: BackboneHandle | None, video_adapter: AdapterHandle | None):
    """The video prior (UNet3D, or backbone + motion modules) and the motion UNet if any."""
    if t2v_unet is not None and video_adapter is not None:
        raise ValueError("t2v_unet / video_adapter: connect one video prior, either a text-to-video UNet3D or "
                         "a video adapter (AnimateDiff, stacked on the backbone), not both")
    bb = backbone.backbone if backbone is not None else None
    if t2v_unet is not None:
        parts = rt.CACHE.get("t2v_parts", t2v_unet.path, lambda: load_t2v_folder_parts(t2v_unet.path))
        return t2v_models(t2v_unet.module, parts, fallback=bb, source=t2v_unet.path), None
    if video_adapter is not None:
        if bb is None:
            raise ValueError("video_adapter: the AnimateDiff prior needs a backbone (SD 1.x) to stack on; "
                             "connect 'backbone'")
        stack = rt.get_stack(backbone, None, video_adapter)
        return motion_models(bb, stack.motion_unet, source=video_adapter.path), stack.motion_unet
    raise ValueError("t2v_unet: no video prior; connect a text-to-video UNet3D ('FDD Load Text-to-Video "
                     "UNet3D'), or a backbone plus a video adapter (SD 1.x + AnimateDiff)")


def _to_pil(image: torch.Tensor):
    from PIL import Image

    return Image.fromarray((image.clamp(0, 1).numpy() * 255).round().astype(np.uint8))


def _progress(total: int, models, preview_every: int, previews: list):
    """Progress every step (its hook is ComfyUI's interrupt check); every ``preview_every``
    steps a decoded strip of frames goes to the UI through the progress bar and to ``previews``."""
    import comfy.model_management as mm
    import comfy.utils

    bar = comfy.utils.ProgressBar(total)

    def cb(step: int, total_: int, latents=None) -> None:
        mm.throw_exception_if_processing_interrupted()
        preview = None
        if preview_every > 0 and latents is not None and (step % preview_every == 0 or step == total_):
            strip = preview_strip(models, latents)
            previews.append(strip)
            preview = ("JPEG", _to_pil(strip[0]), PREVIEW_MAX_SIZE)
        bar.update_absolute(step, total_, preview)

    return cb


class ASSDOptimize(PackNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="FDD_ASSDOptimize",
            display_name="FDD ASSD Video Edit (Optimize)",
            category=CATEGORY,
            description="Zero-shot video editing by optimising the video latent with adaptive sliding "
                        "score distillation (ASSD): video delta denoising score with sliding-window "
                        "smoothing and an adaptive mask, SD 1.x joint guidance on keyframes and weighted "
                        "attention fusion. No training; unedited content is preserved better than with "
                        "noise-based editing. Every component can be switched off (the paper's ablation).",
            inputs=[
                io.Image.Input("frames", tooltip="The input video as an IMAGE batch [frames, H, W, 3], e.g. "
                                                 "from LoadVideo -> GetVideoComponents. The paper uses 8 or 16 "
                                                 "evenly spaced frames."),
                io.String.Input("source_prompt", default="", multiline=True,
                                tooltip="Describes the input video (y, the reference branch's prompt)."),
                io.String.Input("target_prompt", default="", multiline=True,
                                tooltip="Describes the wanted result (y*, the editing branch's prompt). Equal "
                                        "to the source prompt with fusion off, nothing changes."),
                T2VUNet.Input("t2v_unet", optional=True,
                              tooltip="Video prior: a ModelScope / Zeroscope UNet3D from 'FDD Load Text-to-Video "
                                      "UNet3D'. Its folder's text_encoder/, tokenizer/ and vae/ are used; a "
                                      "folder without them borrows the backbone's when they fit."),
                Backbone.Input("backbone", optional=True,
                               tooltip="SD 1.x model (optionally with LoRAs): the image model of the joint "
                                       "guidance; with a video adapter also the base of the SD 1.x + AnimateDiff "
                                       "prior. Its latent space must match the video prior's."),
                VideoAdapter.Input("video_adapter", optional=True,
                                   tooltip="Video prior without a T2V model: AnimateDiff motion modules stacked "
                                           "on the backbone. Connect either this or t2v_unet."),
                io.String.Input("negative_prompt", default="", multiline=True,
                                tooltip="Text of the unconditional branches of classifier-free guidance."),
                io.Int.Input("steps", default=200, min=1, max=10000,
                             tooltip="SGD steps on the latent (paper: 200). Each step is one batched video "
                                     "UNet call (and one image UNet call with joint guidance)."),
                io.Float.Input("lr", default=0.1, min=0.0, max=100.0, step=0.001,
                               tooltip="SGD learning rate (paper: 0.1). The gradient is scaled as in DDS: "
                                       "loss_scale / (latent height x width)."),
                io.Float.Input("cfg", default=7.5, min=0.0, max=30.0, step=0.1,
                               tooltip="Classifier-free guidance w of the video prior, on both branches. 1 "
                                       "skips the unconditional branches."),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=True,
                             tooltip="Seed of the timesteps and noises of all steps; the same seed gives the "
                                     "same result."),
                io.Boolean.Input("smoothing", default=True,
                                 tooltip="ASSD sliding-window smoothing of the reference prediction along "
                                         "frames (Eq. 6). Off together with 'mask': plain Video DDS (Eq. 5)."),
                io.Float.Input("center_weight", default=0.67, min=0.0, max=1.0, step=0.01,
                               tooltip="gamma_i of Eq. 6, the current frame's weight (paper: 0.67); the two "
                                       "neighbours share the rest equally."),
                io.Combo.Input("smooth_boundary", options=list(SMOOTH_BOUNDARIES), default="renormalize",
                               tooltip="First / last frame, which miss a neighbour: 'renormalize' rescales the "
                                       "two remaining weights to sum 1, 'replicate' repeats the frame, "
                                       "'reflect' uses the other neighbour twice."),
                io.Boolean.Input("mask", default=True,
                                 tooltip="Adaptive mask (Eq. 7): smooth only where |eps_edit - eps_ref| is below "
                                         "its maximum over frames minus tau; elsewhere plain DDS (Eq. 8). Off "
                                         "with smoothing on: smooth everywhere."),
                io.Float.Input("tau", default=0.2, min=0.0, max=100.0, step=0.01,
                               tooltip="tau of Eq. 7 (not given in the paper). Larger: fewer positions "
                                       "smoothed."),
                io.Combo.Input("mask_channels", options=list(MASK_CHANNEL_MODES), default="elementwise",
                               tooltip="'elementwise': Eq. 7 per latent element; 'mean': one mask per pixel "
                                       "from the channel-averaged difference."),
                io.Boolean.Input("mask_invert", default=False,
                                 tooltip="Swap the mask's 0 and 1 (smooth where the difference is near its "
                                         "temporal peak). Off follows Eq. 7 as written."),
                io.Boolean.Input("attention_fusion", default=True,
                                 tooltip="Weighted attention fusion (Eq. 11-13) in the editing branch's last "
                                         "spatial self-attention layers; temporal attention untouched."),
                io.Float.Input("fusion_lambda", default=0.8, min=0.0, max=1.0, step=0.01,
                               tooltip="lambda of Eq. 13 (paper: 0.8): 0 plain self-attention, 1 all reference "
                                       "attention. Larger keeps more of the source, edits less."),
                io.Int.Input("fusion_layers", default=3, min=1, max=64,
                             tooltip="How many of the last spatial self-attention layers fuse (3 = the last up "
                                     "block of ModelScope / Zeroscope / SD 1.x)."),
                io.Boolean.Input("joint_guidance", default=True,
                                 tooltip="Image-based joint guidance (Eq. 9-10): the backbone (SD 1.x) adds DDS "
                                         "gradients on keyframes. Needs 'backbone'."),
                io.Float.Input("image_cfg", default=7.5, min=0.0, max=30.0, step=0.1,
                               tooltip="Classifier-free guidance of the image model in the joint guidance."),
                io.Int.Input("keyframe_stride", default=4, min=1, max=1024,
                             tooltip="Joint guidance on every n-th frame (0, n, 2n, ...)."),
                io.Float.Input("image_weight", default=1.0, min=0.0, max=10.0, step=0.05,
                               tooltip="Weight of the image gradient in the sum of Eq. 10 (paper: 1)."),
                io.Int.Input("t_min", default=50, min=0, max=999,
                             tooltip="Smallest timestep drawn each step (DDS: 50)."),
                io.Int.Input("t_max", default=950, min=1, max=1000,
                             tooltip="Timesteps are drawn below this (DDS: 950)."),
                io.Float.Input("loss_scale", default=2000.0, min=0.0, max=1e6, step=1.0,
                               tooltip="DDS loss scale: the update is lr x loss_scale / (h x w) x gradient, "
                                       "h x w the latent frame size (DDS reference code: 2000)."),
                io.Int.Input("preview_every", default=20, min=0, max=10000,
                             tooltip="Decode a preview strip every n steps (shown on the node and collected in "
                                     "the 'previews' output); 0 = only the final one."),
            ],
            outputs=[io.Image.Output(display_name="frames"),
                     io.Image.Output(display_name="previews")],
        )

    @classmethod
    def execute(cls, frames, source_prompt, target_prompt, t2v_unet=None, backbone=None, video_adapter=None,
                negative_prompt="", steps=200, lr=0.1, cfg=7.5, seed=0, smoothing=True, center_weight=0.67,
                smooth_boundary="renormalize", mask=True, tau=0.2, mask_channels="elementwise",
                mask_invert=False, attention_fusion=True, fusion_lambda=0.8, fusion_layers=3,
                joint_guidance=True, image_cfg=7.5, keyframe_stride=4, image_weight=1.0, t_min=50, t_max=950,
                loss_scale=2000.0, preview_every=20) -> io.NodeOutput:
        config = ASSDConfig(steps=steps, lr=lr, guidance_scale=cfg, image_guidance_scale=image_cfg,
                            t_min=t_min, t_max=t_max, loss_scale=loss_scale, seed=seed,
                            negative_prompt=negative_prompt, smoothing=smoothing, center_weight=center_weight,
                            smooth_boundary=smooth_boundary, mask=mask, tau=tau, mask_channels=mask_channels,
                            mask_invert=mask_invert, joint_guidance=joint_guidance,
                            keyframe_stride=keyframe_stride, image_weight=image_weight,
                            attention_fusion=attention_fusion, fusion_lambda=fusion_lambda,
                            fusion_layers=fusion_layers)
        check_clip(frames)
        config.validate(int(frames.shape[0]))
        if joint_guidance and backbone is None:
            raise ValueError("joint_guidance: needs 'backbone' (an SD 1.x model) as the image model; connect one "
                             "or turn joint_guidance off")
        models, motion_unet = _models(t2v_unet, backbone, video_adapter)
        image = ImagePrior.from_backbone(backbone.backbone) if joint_guidance else None
        mods = models.modules() + (image.modules() if image else [])
        previews: list[torch.Tensor] = []
        loras = backbone.lora_stack if backbone is not None else None
        bb = backbone.backbone if backbone is not None else None
        with rt.on_compute_device(mods), applied_backbone_loras(loras, bb, models, image, motion_unet):
            models = models.with_image_model(image)
            out, z = assd_edit(models, frames, source_prompt, target_prompt, config,
                               callback=_progress(steps, models, preview_every, previews), return_latent=True)
            if not previews:
                previews.append(preview_strip(models, z))
        return io.NodeOutput(out, torch.cat(previews))
