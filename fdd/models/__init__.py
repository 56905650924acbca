"""Loaders for real weight files: configs are inferred from the weights, never from a hub.

- :mod:`fdd.models.sd1`: SD 1.x backbone (LDM single file or diffusers folder)
- :mod:`fdd.models.controlnet`: the edit adapter (ControlNet, e.g. ip2p)
- :mod:`fdd.models.motion`: the video adapter (AnimateDiff motion modules v1/v2/v3)
- :mod:`fdd.models.lora`: LoRA read (kohya, peft/diffusers), apply, write (kohya)
- :mod:`fdd.models.t2v`: text-to-video UNet3D (ModelScope / Zeroscope folders)
"""

from .errors import ModelLoadError

__all__ = ["ModelLoadError"]
