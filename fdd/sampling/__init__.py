"""Sampling: DDIM schedules, steps and inversion, guidance, overlapping frame windows."""

from .ddim import (DDIMSchedule, ddim_invert, ddim_sample, ddim_step, ddim_inversion_step,
                   predict_x0, add_noise)
from .guidance import classifier_free_guidance, instruct_pix2pix_guidance
from .windows import frame_windows, window_blend_weights, windowed_predict
from .control import Cancelled, ProgressCallback

__all__ = [
    "DDIMSchedule", "ddim_invert", "ddim_sample", "ddim_step", "ddim_inversion_step", "predict_x0",
    "add_noise", "classifier_free_guidance", "instruct_pix2pix_guidance", "frame_windows",
    "window_blend_weights", "windowed_predict", "Cancelled", "ProgressCallback",
]
