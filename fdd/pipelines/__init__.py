"""Video-edit pipelines assembled from loaded models (no ComfyUI here)."""

from .stack import VideoEditStack
from .plug_and_play import PlugAndPlayConfig, denoise_steps, edit_video, plug_and_play_edit

__all__ = ["VideoEditStack", "PlugAndPlayConfig", "denoise_steps", "edit_video", "plug_and_play_edit"]
