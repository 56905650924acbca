"""The toy model factories: VAE, UNet, ControlNet, motion adapter and UNet3D in the toy sizes.
"""

from __future__ import annotations

import torch

from .config import CROSS, SCALING


def make_vae(seed: int):
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(32, 64),
                         down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                         layers_per_block=1, norm_num_groups=32, sample_size=32, scaling_factor=SCALING)


def unet_config() -> dict:
    return {"sample_size": 16, "in_channels": 4, "out_channels": 4, "block_out_channels": (32, 64),
            "down_block_types": ("CrossAttnDownBlock2D", "DownBlock2D"),
            "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D"), "layers_per_block": 1,
            "cross_attention_dim": CROSS, "attention_head_dim": 8, "norm_num_groups": 32}


def make_unet(seed: int):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    return UNet2DConditionModel(**unet_config())


def make_controlnet(unet):
    from diffusers import ControlNetModel

    return ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(16, 32))


def make_motion_adapter(seed: int):
    from diffusers import MotionAdapter

    torch.manual_seed(seed)
    return MotionAdapter(block_out_channels=(32, 64), motion_layers_per_block=1,
                         motion_mid_block_layers_per_block=1, motion_num_attention_heads=8,
                         motion_norm_num_groups=32, motion_max_seq_length=32, use_motion_mid_block=False)


def make_unet3d(seed: int):
    from diffusers import UNet3DConditionModel

    torch.manual_seed(seed)
    return UNet3DConditionModel(sample_size=16, in_channels=4, out_channels=4,
                                down_block_types=("CrossAttnDownBlock3D", "DownBlock3D"),
                                up_block_types=("UpBlock3D", "CrossAttnUpBlock3D"), block_out_channels=(32, 64),
                                layers_per_block=1, norm_num_groups=32, cross_attention_dim=CROSS,
                                attention_head_dim=8)
