"""The EVE video-edit sampler node: the adapter stack with the FDD-aligned LoRA (EVE §3.1.4)."""

from __future__ import annotations

from comfy_api.v0_0_2 import io

from ..fdd.distill.eve import EVEConfig, eve_edit
from ..fdd.pipelines import denoise_steps
from . import _runtime as rt
from ._inputs import ConfigInputs, PackNode
from .types import Backbone, BackboneHandle, EditAdapter, VideoAdapter

CATEGORY = "video edit (fdd)/sampling"
# text_cfg / image_cfg: the node samples the aligned student as trained (1 / 1); EVEConfig keeps
# plug-and-play's 7.5 / 1.5 until issue 26 settles EVE's inference
PARAMS = ConfigInputs(EVEConfig, ["negative_prompt", "steps", "text_cfg", "image_cfg", "control_strength", "seed",
                                  "context_frames", "context_overlap", "first_frame", "first_frame_steps",
                                  "first_frame_cfg", "first_frame_image_cfg", "denoise"],
                      text_cfg=1.0, image_cfg=1.0)


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
                *PARAMS.inputs(),
            ],
            outputs=[io.Image.Output(display_name="frames"),
                     io.Latent.Output(display_name="latent", tooltip=rt.LATENT_TOOLTIP)],
        )

    @classmethod
    def execute(cls, backbone: BackboneHandle, edit_adapter, video_adapter, frames, instruction, output_caption,
                **params) -> io.NodeOutput:
        config = PARAMS.config(params)
        config.validate()
        stack = rt.get_stack(backbone, edit_adapter, video_adapter)
        caption = output_caption.strip() or instruction
        modules = stack.modules() + [stack.backbone.unet]  # the first-frame edit runs the plain 2-D UNet
        with rt.on_compute_device(modules):
            out, latents = eve_edit(stack, frames, instruction, caption, config,
                                    callback=rt.progress_callback(denoise_steps(config.steps, config.denoise)),
                                    should_cancel=_interrupt_check, return_latents=True)
        return io.NodeOutput(out, rt.core_latent(latents, stack.backbone.scaling_factor))
