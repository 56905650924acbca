"""An UNTRAINED toy run (random weights, the real toy architectures, tokenizer and exports) for
tests and for developing code that later runs on the trained set: the same files as
``python -m fdd.toy train all --out DIR`` leaves, in seconds."""

from __future__ import annotations

import os

import torch

from fdd.toy import train as T


def write_untrained_toy_run(out: str | os.PathLike, seed: int = 0) -> str:
    """Write ``out/{text,vae,unet,controlnet,motion,t2v}/final.pt`` (random, seeded) and every
    export under ``out/export/``; returns the export folder. Idempotent."""
    out = os.fspath(out)
    export = os.path.join(out, "export")
    if os.path.isfile(os.path.join(export, ".complete")):
        return export
    T.train_text(out, T.TrainConfig(seed=seed))
    unet = T.make_unet(seed + 3)
    modules = {"vae": T.make_vae(seed + 1), "unet": unet, "controlnet": T.make_controlnet(unet),
               "motion": T.make_motion_adapter(seed + 4), "t2v": T.make_unet3d(seed + 6)}
    for name, m in modules.items():
        os.makedirs(os.path.join(out, name), exist_ok=True)
        T._atomic_save(m.state_dict(), os.path.join(out, name, "final.pt"))
    T.export_backbone(out)
    T.export_backbone_diffusers(out)
    T.export_controlnet(out)
    T.export_motion(out)
    T.export_t2v(out)
    with open(os.path.join(export, ".complete"), "w") as fh:
        fh.write("untrained\n")
    torch.manual_seed(seed)
    return export
