"""fdd: text-guided video editing with diffusion models (EVE/FDD, ASSD, EI²).

A plain PyTorch + diffusers library; it never imports ComfyUI. The ComfyUI nodes in
``nodes/`` adapt it. Sub-packages:

- ``fdd.models``: loaders for real weight files (SD 1.x, ControlNet, AnimateDiff, LoRA, UNet3D)
- ``fdd.sampling``: DDIM sampling / inversion, guidance, frame windows
- ``fdd.pipelines``: the video-edit stacks built from loaded models
- ``fdd.distill``: FDD alignment trainer (K-bin student, SDS, DINOv2 discriminators) and EVE sampling
- ``fdd.metrics``: the papers' metrics and the TGVE-style benchmark runner
- ``fdd.ei2``: EI² (STAM/FFAM inflation, one-shot tuning, editing by DDIM inversion)
- ``fdd.assd``: ASSD zero-shot editing (video DDS, smoothing, mask, joint guidance, fusion)
- ``fdd.toy``: the toy world (generator, captions, edits, pixel evaluator)
- ``fdd.testing``: tiny random models written in the real on-disk formats
"""

__version__ = "0.1.0"
