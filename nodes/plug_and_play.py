"""The plug-and-play video edit sampler node (EVE §3.1.3)."""

from __future__ import annotations

from comfy_api.v0_0_2 import io

from ..fdd.pipelines import PlugAndPlayConfig, denoise_steps, plug_and_play_edit
from . import _runtime as rt
from ._inputs import PackNode
from .types import Backbone, EditAdapter, VideoAdapter

CATEGORY = "video edit (fdd)/sampling"

class PlugAndPlayVideoEdit(PackNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="FDD_PlugAndPlayVideoEdit",
            display_name="FDD Plug-and-Play Video Edit",
            category=CATEGORY,
            description="Edits a video with an instruction by stacking the edit adapter (per frame) and "
                        "the video adapter on one backbone, sampled with DDIM and InstructPix2Pix-style "
                        "guidance (EVE §3.1.3, before FDD alignment; add an aligned LoRA to the backbone "
                        "for EVE). Long clips are processed in overlapping windows.",
            inputs=[
                Backbone.Input("backbone", tooltip="From 'FDD Load SD1.x Backbone' (optionally with LoRAs)."),
                EditAdapter.Input("edit_adapter", tooltip="From 'FDD Load Edit Adapter (ControlNet)'."),
                io.Image.Input("frames", tooltip="The input video as an IMAGE batch [frames, H, W, 3], "
                                                 "e.g. from LoadVideo -> GetVideoComponents."),
                io.String.Input("instruction", default="make it snowy", multiline=True,
                                tooltip="The edit instruction given to the edit adapter (c_instruct)."),
                io.String.Input("output_caption", default="", multiline=True,
                                tooltip="Caption of the desired output video, given to the backbone "
                                        "(c_out). Empty: the instruction is used."),
                VideoAdapter.Input("video_adapter", optional=True,
                                   tooltip="From 'FDD Load Video Adapter'. Without it each frame is "
                                           "edited independently (the edit adapter alone)."),
                io.String.Input("negative_prompt", default="", multiline=True,
                                tooltip="Text for the unconditional branches of guidance."),
                io.Int.Input("steps", default=20, min=1, max=1000, tooltip="DDIM steps."),
                io.Float.Input("cfg", default=7.5, min=0.0, max=30.0, step=0.1,
                               tooltip="Text guidance scale s_T (InstructPix2Pix Eq. 3)."),
                io.Float.Input("image_cfg", default=1.5, min=0.0, max=30.0, step=0.05,
                               tooltip="Image guidance scale s_I: how strongly the output follows the "
                                       "input frames through the edit adapter. 1 skips that branch."),
                io.Float.Input("control_strength", default=1.0, min=0.0, max=5.0, step=0.01,
                               tooltip="Multiplier of the edit adapter's residuals."),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=True,
                             tooltip="Seed of the initial noise; the same seed gives the same video."),
                io.Int.Input("context_frames", default=16, min=1, max=128,
                             tooltip="Frames per window given to the video adapter at once "
                                     "(16 for AnimateDiff v2/v3, 24 for v1's maximum)."),
                io.Int.Input("context_overlap", default=4, min=0, max=127,
                             tooltip="Frames shared by consecutive windows; their predictions are "
                                     "blended with linear ramps."),
                io.Float.Input("denoise", default=1.0, min=0.01, max=1.0, step=0.01,
                               tooltip="1 starts from pure noise (EVE); lower values start from the "
                                       "input video noised part-way (SDEdit)."),
            ],
            outputs=[io.Image.Output(display_name="frames")],
        )

    @classmethod
    def execute(cls, backbone, edit_adapter, frames, instruction, output_caption, video_adapter=None,
                negative_prompt="", steps=20, cfg=7.5, image_cfg=1.5, control_strength=1.0, seed=0,
                context_frames=16, context_overlap=4, denoise=1.0) -> io.NodeOutput:
        if context_overlap >= context_frames:
            raise ValueError(f"context_overlap: must be smaller than context_frames ({context_frames}), "
                             f"got {context_overlap}")
        config = PlugAndPlayConfig(steps=steps, text_cfg=cfg, image_cfg=image_cfg,
                                   control_strength=control_strength, seed=seed,
                                   context_frames=context_frames, context_overlap=context_overlap,
                                   denoise=denoise, negative_prompt=negative_prompt)
        stack = rt.get_stack(backbone, edit_adapter, video_adapter)
        caption = output_caption.strip() or instruction
        total = denoise_steps(steps, denoise)
        with rt.on_compute_device(stack.modules()):
            out = plug_and_play_edit(stack, frames, instruction, caption, config,
                                     callback=rt.progress_callback(total))
        return io.NodeOutput(out)
