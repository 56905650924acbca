"""The plug-and-play video edit sampler node (EVE §3.1.3)."""

from __future__ import annotations

from comfy_api.v0_0_2 import io

from ..fdd.pipelines import PlugAndPlayConfig, denoise_steps, plug_and_play_edit
from . import _runtime as rt
from ._inputs import ConfigInputs, PackNode
from .types import Backbone, EditAdapter, VideoAdapter

CATEGORY = "video edit (fdd)/sampling"
PARAMS = ConfigInputs(PlugAndPlayConfig, ["negative_prompt", "steps", "text_cfg", "image_cfg", "control_strength",
                                          "seed", "context_frames", "context_overlap", "denoise"])


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
                *PARAMS.inputs(),
            ],
            outputs=[io.Image.Output(display_name="frames"),
                     io.Latent.Output(display_name="latent", tooltip=rt.LATENT_TOOLTIP)],
        )

    @classmethod
    def execute(cls, backbone, edit_adapter, frames, instruction, output_caption, video_adapter=None,
                **params) -> io.NodeOutput:
        config = PARAMS.config(params)
        config.validate()
        stack = rt.get_stack(backbone, edit_adapter, video_adapter)
        caption = output_caption.strip() or instruction
        total = denoise_steps(config.steps, config.denoise)
        with rt.on_compute_device(stack.modules()):
            out, latents = plug_and_play_edit(stack, frames, instruction, caption, config,
                                              callback=rt.progress_callback(total), return_latents=True)
        return io.NodeOutput(out, rt.core_latent(latents, stack.backbone.scaling_factor))
