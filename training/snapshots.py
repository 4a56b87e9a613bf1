"""What rank 0 writes for a person to look at: options.json (the run specification and a module summary),
the sample grids of `{step}_*.png`, real.png, and the evaluations (`Evaluation`)."""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Callable, Optional

import torch

from generators.generators import RenderOptions
from metrics import inception, metric_main
from run_spec import RunSpec
from training.progress import jsonable
from utils.images import make_grid, save_image, to_uint8

logger = logging.getLogger("mvcgan.train")

NUM_GRID_IMAGES = 20
GRID_ROW = 5


def module_summary(**modules) -> dict:
    summary = {}
    for name, module in modules.items():
        summary[name] = {"parameters": sum(p.numel() for p in module.parameters()),
                         "children": {child: sum(p.numel() for p in sub.parameters())
                                      for child, sub in module.named_children()}}
    return summary


def write_options(output_dir: Path, spec: RunSpec, world_size: int, device: torch.device,
                  generator: torch.nn.Module, discriminator: torch.nn.Module) -> None:
    """options.json: the run specification, the processes, their threads and a module summary."""
    modules = module_summary(generator=generator, discriminator=discriminator)
    options = {**spec.record(), "world_size": world_size, "device": str(device),
               "threads": torch.get_num_threads(), "modules": modules}
    with open(output_dir / "options.json", "w") as f:
        json.dump(jsonable(options), f, indent=2)
    logger.info("generator %d parameters, discriminator %d", modules["generator"]["parameters"],
                modules["discriminator"]["parameters"])


def grid_latents(z_dim: int, device: torch.device) -> torch.Tensor:
    """The fixed z of the sample grids (NUM_GRID_IMAGES, z_dim), the same in every run: drawn from a
    generator of their own, not the global RNG."""
    return torch.randn(NUM_GRID_IMAGES, z_dim, generator=torch.Generator().manual_seed(1234)).to(device)


def save_grid(images: torch.Tensor, path: Path) -> None:
    save_image(make_grid(list(to_uint8(images)), GRID_ROW), path)


@torch.no_grad()
def write_sample_grids(output_dir: Path, step: int, generator: torch.nn.Module, ema: torch.nn.Module,
                       fixed_z: torch.Tensor, metadata: dict, alpha: float, autocast: Callable,
                       device: torch.device) -> None:
    """Grids of the fixed z (frontal and tilted, raw and EMA, psi 0.5) and random z (EMA, psi 0.7).
    `ema` is always in eval mode; `generator` is put in eval mode for them and back in train mode."""
    options = RenderOptions.from_metadata(metadata, evaluation=True)
    generator.eval()
    with autocast():
        for label, module in (("", generator), ("_ema", ema)):
            for name, yaw_offset in (("fixed", 0.0), ("tilted", 0.5)):
                fixed_pose = options.replace(pose=options.pose.fixed(yaw_offset))
                save_grid(module.staged_forward(fixed_z, fixed_pose, psi=0.5, alpha=alpha).image,
                          output_dir / f"{step}_{name}{label}.png")
        seeded = torch.Generator(device=device).manual_seed(step)
        z = torch.randn(NUM_GRID_IMAGES, ema.z_dim, generator=seeded, device=device)
        save_grid(ema.staged_forward(z, options, psi=0.7, alpha=alpha, generator=seeded).image,
                  output_dir / f"{step}_random.png")
    generator.train()


def write_real_grid(output_dir: Path, dataset) -> None:
    """Once per run directory: `real.png`, a grid of training images, so the target is visible next to the
    sample grids."""
    path = output_dir / "real.png"
    if path.exists():
        return
    images = torch.stack([dataset[i][0] for i in range(min(NUM_GRID_IMAGES, len(dataset)))])
    save_grid(images, path)


class Evaluation:
    """The metrics `metrics` (metric_main's names) of a generator, against the real images of `real_dir`;
    the Inception network is loaded on the first evaluation that needs it."""

    def __init__(self, metrics: str, real_dir: Optional[str], device: torch.device):
        self.metrics, self.real_dir, self.device = metrics, real_dir, device
        self._inception = None

    def __call__(self, generator: torch.nn.Module, metadata: dict, alpha: float) -> Optional[dict]:
        """The results, or None when the evaluation cannot run (a missing Inception file, too few real
        images): logged, and the run goes on without it."""
        try:
            metrics = metric_main.parse_metrics(self.metrics)
            if self._inception is None and metric_main.uses_inception(metrics):
                self._inception = inception.load_inception(device=self.device)
            return metric_main.evaluate(generator, metadata, metrics=metrics, real_dir=self.real_dir,
                                        device=self.device, inception=self._inception, alpha=alpha)
        except (inception.InceptionWeightsMissing, ValueError) as error:  # e.g. too few real images
            logger.error("evaluation disabled for this run: %s", error)
            return None
