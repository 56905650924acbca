"""ComfyUI entry point of the video-editing node pack (EVE/FDD, ASSD, EI²).

Importing this module is cheap; ComfyUI calls :func:`comfy_entrypoint` to get the nodes.
The engine lives in ``fdd/`` (importable without ComfyUI), the node adapters in ``nodes/``.
"""


async def comfy_entrypoint():
    from .nodes import FDDExtension

    return FDDExtension()
