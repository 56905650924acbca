"""FDD: Factorized Diffusion Distillation (EVE, Singer et al. 2024, §3.2-3.3) and EVE sampling.

- :mod:`.config` ``FDDConfig`` / ``load_config`` (JSON or TOML run configs);
- :mod:`.dataset` the unsupervised dataset y = (c_out, c_instruct, c_vid) with validation;
- :mod:`.losses` K-bin timesteps, SDS, hinge losses, the combined objectives;
- :mod:`.discriminators` DINOv2 loading, D_e / D_v heads, DiffAugment;
- :mod:`.models` student and teachers on one backbone (peft LoRA θ_align);
- :mod:`.trainer` the training loop, checkpoints, LoRA export, ``train(config)``;
- :mod:`.distributed` data parallelism under torchrun;
- :mod:`.eve` EVE video editing with the aligned LoRA (first-frame anchor, windows).

Nothing here imports ComfyUI.
"""

from .config import DEFAULT_LORA_TARGETS, TASKS, FDDConfig, load_config
from .dataset import DatasetError, FDDDataset, FDDRecord
from .losses import (
                     discriminator_hinge_loss,
                     fdd_discriminator_loss,
                     fdd_generator_loss,
                     generator_hinge_loss,
                     kbin_timesteps,
                     sds_loss,
                     sds_weight,
                     uniform_timesteps,
)

__all__ = [
                     "DEFAULT_LORA_TARGETS",
                     "TASKS",
                     "DatasetError",
                     "FDDConfig",
                     "FDDDataset",
                     "FDDRecord",
                     "discriminator_hinge_loss",
                     "fdd_discriminator_loss",
                     "fdd_generator_loss",
                     "generator_hinge_loss",
                     "kbin_timesteps",
                     "load_config",
                     "sds_loss",
                     "sds_weight",
                     "uniform_timesteps",
]
