"""`StepOptions`: what the training loop reads of a step's stage, as one typed, frozen object (nerfstudio's
config dataclasses are the model), built from the stage's metadata (`curriculums.extract_metadata`), so that
the loop reads fields instead of `metadata["..."]`. The curriculum format is unchanged. The values keep the
types the loop gave them before (an `int` weight decay stays an int in the optimiser's state). The step
builds its other two typed options from the same metadata: the renderer's generators.RenderOptions and the
loss's losses.PhaseConfig (latent codes and loss weights).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Optional, Tuple, Union


@dataclass(frozen=True)
class StepOptions:
    # the stage's data: real images (batch_size, 3, output_size, output_size), the NeRF at img_size
    # pixels with num_steps samples a ray, each phase's batch in batch_split chunks ("auto": as many as
    # this device's memory needs, utils/memory_model.py)
    batch_size: int
    img_size: int
    num_steps: int
    output_size: int
    batch_split: Union[int, str]
    # the optimisers (Adam) and the gradient clip
    gen_lr: float
    disc_lr: float
    betas: Tuple[float, float]
    weight_decay: float
    grad_clip: float
    # the schedules: density noise decays over nerf_noise_steps; top-k keeps max(0.99^(step/topk_interval), topk_v)
    nerf_noise_steps: float
    topk_interval: Optional[float]
    topk_v: Optional[float]
    # > 0: D also regresses the known poses of real images (procedural data): the loop then passes them
    real_pose_lambda: float

    @classmethod
    def from_metadata(cls, metadata: Mapping) -> "StepOptions":
        """The options of a stage that trains (the final, empty stage has none)."""
        return cls(
            batch_size=int(metadata["batch_size"]), img_size=int(metadata["img_size"]),
            num_steps=int(metadata["num_steps"]), output_size=int(metadata["output_size"]),
            batch_split=metadata["batch_split"],
            gen_lr=metadata["gen_lr"], disc_lr=metadata["disc_lr"], betas=tuple(float(b) for b in metadata["betas"]),
            weight_decay=metadata["weight_decay"], grad_clip=metadata["grad_clip"],
            nerf_noise_steps=float(metadata["nerf_noise_steps"]),
            topk_interval=metadata["topk_interval"], topk_v=metadata["topk_v"],
            real_pose_lambda=float(metadata["real_pose_lambda"]))

