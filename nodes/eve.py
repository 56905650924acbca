"""The EVE video-edit sampler node: the adapter stack with the FDD-aligned LoRA (EVE §3.1.4)."""

from __future__ import annotations

from comfy_api.v0_0_2 import io

from ..fdd.distill.eve import EVEConfig, eve_edit
from ..fdd.pipelines import denoise_steps
from . import _runtime as rt
from ._inputs import PackNode
from .types import Backbone, BackboneHandle, EditAdapter, VideoAdapter

CATEGORY = "video edit (fdd)/sampling"


def _interrupt_check() -> bool:
    import comfy.model_management as mm

    mm.throw_exception_if_processing_interrupted()
    return False


class EVEVideoEdit(PackNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="FDD_EVEVideoEdit",
            display_name="FDD EVE Video Edit (aligned)",
            category=CATEGORY,
            description="EVE: edits a video with the edit adapter and the video adapter stacked on a backbone "
                        "that carries the FDD-aligned LoRA (from 'FDD Align Adapters' or 'FDD Apply LoRA to "
                        "Backbone'). The first frame can be edited by the edit adapter alone and pinned, the "
                        "motion modules carrying it to the other frames; long clips go through overlapping "
                        "8-frame windows.",
            inputs=[
                Backbone.Input("backbone", tooltip="The backbone with the aligned LoRA stacked on it."),
                EditAdapter.Input("edit_adapter", tooltip="The image-edit adapter (ip2p ControlNet) used in alignment."),
                VideoAdapter.Input("video_adapter", tooltip="The video adapter (AnimateDiff) used in alignment."),
                io.Image.Input("frames", tooltip="The input video as an IMAGE batch [frames, H, W, 3]."),
                io.String.Input("instruction", default="make it snowy", multiline=True,
                                tooltip="The edit instruction (c_instruct), given to the edit adapter."),
                io.String.Input("output_caption", default="", multiline=True,
                                tooltip="Caption of the wanted output (c_out), given to the backbone. Empty: the "
                                        "instruction is used."),
                io.String.Input("negative_prompt", default="", multiline=True,
                                tooltip="Text of the unconditional guidance branches."),
                io.Int.Input("steps", default=20, min=1, max=1000,
                             tooltip="DDIM steps (K-bin training keeps the student usable at more steps than k)."),
                io.Float.Input("cfg", default=1.0, min=0.0, max=30.0, step=0.1,
                               tooltip="Text guidance. 1 (default): the aligned student was distilled from "
                                       "guided teachers and is sampled unguided, as trained."),
                io.Float.Input("image_cfg", default=1.0, min=0.0, max=30.0, step=0.05,
                               tooltip="Image guidance through the edit adapter (1 skips that branch)."),
                io.Float.Input("control_strength", default=1.0, min=0.0, max=5.0, step=0.01,
                               tooltip="Multiplier of the edit adapter's residuals."),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=True,
                             tooltip="Seed of the initial noise."),
                io.Int.Input("context_frames", default=8, min=1, max=128,
                             tooltip="Frames per window (8: the clip length FDD trains on)."),
                io.Int.Input("context_overlap", default=2, min=0, max=127,
                             tooltip="Frames shared by consecutive windows (blended with linear ramps)."),
                io.Combo.Input("first_frame", options=["edit", "none"], default="edit",
                               tooltip="edit: the first frame is edited by the edit adapter alone (no LoRA, no "
                                       "motion modules) and pinned during sampling, the analogue of EVE's "
                                       "first-frame conditioning for AnimateDiff; none: all frames sampled jointly."),
                io.Int.Input("first_frame_steps", default=20, min=1, max=1000,
                             tooltip="DDIM steps of the first-frame edit."),
                io.Float.Input("first_frame_cfg", default=7.5, min=0.0, max=30.0, step=0.1,
                               tooltip="Text guidance of the first-frame edit (the edit teacher is guided)."),
                io.Float.Input("first_frame_image_cfg", default=1.5, min=0.0, max=30.0, step=0.05,
                               tooltip="Image guidance of the first-frame edit."),
                io.Float.Input("denoise", default=1.0, min=0.01, max=1.0, step=0.01,
                               tooltip="1 starts from pure noise (the paper); lower values start the "
                                       "first-frame edit and the video from the input noised part-way "
                                       "(SDEdit), which keeps the layout of weak adapters."),
            ],
            outputs=[io.Image.Output(display_name="frames")],
        )

    @classmethod
    def execute(cls, backbone: BackboneHandle, edit_adapter, video_adapter, frames, instruction, output_caption,
                negative_prompt="", steps=20, cfg=1.0, image_cfg=1.0, control_strength=1.0, seed=0,
                context_frames=8, context_overlap=2, first_frame="edit", first_frame_steps=20,
                first_frame_cfg=7.5, first_frame_image_cfg=1.5, denoise=1.0) -> io.NodeOutput:
        if context_overlap >= context_frames:
            raise ValueError(f"context_overlap: must be smaller than context_frames ({context_frames}), "
                             f"got {context_overlap}")
        config = EVEConfig(steps=steps, text_cfg=cfg, image_cfg=image_cfg, control_strength=control_strength,
                           seed=seed, context_frames=context_frames, context_overlap=context_overlap,
                           negative_prompt=negative_prompt, first_frame=first_frame,
                           first_frame_steps=first_frame_steps, first_frame_cfg=first_frame_cfg,
                           first_frame_image_cfg=first_frame_image_cfg, denoise=denoise)
        stack = rt.get_stack(backbone, edit_adapter, video_adapter)
        caption = output_caption.strip() or instruction
        modules = stack.modules() + [stack.backbone.unet]  # the first-frame edit runs the plain 2-D UNet
        with rt.on_compute_device(modules):
            out = eve_edit(stack, frames, instruction, caption, config,
                           callback=rt.progress_callback(denoise_steps(steps, denoise)),
                           should_cancel=_interrupt_check)
        return io.NodeOutput(out)
