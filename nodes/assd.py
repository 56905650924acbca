"""The ASSD optimiser node: zero-shot video editing by adaptive sliding score distillation."""

from __future__ import annotations

import numpy as np
import torch
from comfy_api.v0_0_2 import io

from ..fdd.assd import (ASSDConfig, ImagePrior, assd_edit,
                        applied_backbone_loras, load_t2v_folder_parts, motion_models, preview_strip, t2v_models)
from ..fdd.video import check_clip
from . import _runtime as rt
from ._inputs import ConfigInputs, PackNode
from .types import AdapterHandle, Backbone, BackboneHandle, T2VUNet, VideoAdapter

CATEGORY = "video edit (fdd)/assd"
PREVIEW_MAX_SIZE = 512
PARAMS = ConfigInputs(ASSDConfig, ["negative_prompt", "steps", "lr", "guidance_scale", "seed", "smoothing",
                                   "center_weight", "smooth_boundary", "mask", "tau", "mask_channels", "mask_invert",
                                   "attention_fusion", "fusion_lambda", "fusion_layers", "joint_guidance",
                                   "image_guidance_scale", "keyframe_stride", "image_weight", "t_min", "t_max",
                                   "loss_scale"])


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
                *PARAMS.inputs(),
                io.Int.Input("preview_every", default=20, min=0, max=10000,
                             tooltip="Decode a preview strip every n steps (shown on the node and collected in "
                                     "the 'previews' output); 0 = only the final one."),
            ],
            outputs=[io.Image.Output(display_name="frames"),
                     io.Image.Output(display_name="previews"),
                     io.Latent.Output(display_name="latent", tooltip=rt.LATENT_TOOLTIP + " With a text-to-video "
                                      "prior: the prior's VAE latents.")],
        )

    @classmethod
    def execute(cls, frames, source_prompt, target_prompt, t2v_unet=None, backbone=None, video_adapter=None,
                preview_every=20, **params) -> io.NodeOutput:
        config = PARAMS.config(params)
        joint_guidance = config.joint_guidance
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
                               callback=_progress(config.steps, models, preview_every, previews), return_latent=True)
            if not previews:
                previews.append(preview_strip(models, z))
        return io.NodeOutput(out, torch.cat(previews), rt.core_latent(z, models.scaling_factor))
