"""The field fitted directly to a procedural object with its known cameras: what the renderer can reach
without the GAN (docs/EXPERIMENTS.md, "Critters").

    python benchmarks/bench_fit.py --steps 1600                          # one critter, the Critters curriculum
    python benchmarks/bench_fit.py --steps 300 --set density_scale=1.0   # the density head at its published scale
    python benchmarks/bench_fit.py --oracle --set num_steps=48           # the true shape itself as the field

No discriminator: each step renders the generator's NeRF RGB at the true cameras of `--batch_size` training
views (random latents, as in training, so every latent must learn the one object) and takes an Adam step on
the mean squared error to the true images. The generator, its curriculum, the sphere prior and the cameras
are the training run's, so this is also the end-to-end check that the cameras, the volume integration and
the density's gradients are right: a mistake in any of them keeps the fit from the true silhouette and depth.
It is the ceiling of the first rung of `bench_ladder.py`: a GAN that sees the same images without their
correspondence to the cameras should not do better. Scored with the `synthetic` metric every `--eval_every`
steps; writes `<output>/metrics.jsonl` (the training runs' format), `<output>/checkpoint.pth` (the fitted
generator, readable by the rendering tools) and `<output>/truth_vs_fitted.png`, and prints one JSON line per score.

`--oracle` fits nothing: the field is the true object itself (density `--oracle_density` inside its
ellipsoids, none outside), rendered by the generator's own sampling and integration and scored by the same
metric. Its depth error is the renderer's alone (the samples' spacing, the integration): what a hard surface
in the right place scores at those settings, while the trivial baselines are ray-cast exactly (a soft field
can interpolate between samples, so this is a yardstick, not a bound).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import curriculums  # noqa: E402
from generators.cameras import cam2world_from_poses, jitter_draws  # noqa: E402
from generators.generators import RenderOptions, ViewDraws, build_generator, sample_z, sdf_beta_at  # noqa: E402
from metrics.synthetic import procedural_dataset, synthetic_scores  # noqa: E402
from utils.checkpoint import save_checkpoint  # noqa: E402
from utils.cli import CLIError, HelpFormatter, run_cli  # noqa: E402

SCORE_KEYS = ("iou", "depth_l1_fg", "depth_vs_trivial", "iou_best_trivial", "depth_l1_best_trivial", "kid",
              "opaque")


def fit_curriculum(curriculum_name: str = "Critters", objects: int = 1, overrides=()) -> dict:
    """`curriculum_name` with `objects` objects and the `--set` overrides (its first stage is the one fitted)."""
    curriculum = curriculums.get_curriculum(curriculum_name)
    curriculums.apply_overrides(curriculum, dict([("synthetic_objects", objects)] +
                                                 [curriculums.parse_override(text) for text in overrides]))
    curriculums.validate_curriculum(curriculum)
    return curriculum


def oracle_scores(metadata: dict, density: float = 1e4, num_samples: int = 64, seed: int = 0) -> dict:
    """The `synthetic` scores of the true object as the field: raw density `density` inside its ellipsoids and
    -`density` outside (after the curriculum's clamp, none), the colours the generator's; rendered and scored as
    a generator is. One object only (synthetic_objects 1): every latent must be that object."""
    if int(metadata.get("synthetic_objects", 0)) != 1:
        raise ValueError("the oracle needs one object: synthetic_objects=1")
    truth = procedural_dataset(metadata, int(metadata["img_size"]), length=1).shape(0)
    centres, radii = truth.centres, truth.radii                                        # (K, 3) each
    torch.manual_seed(seed)
    generator = build_generator(metadata).eval()
    field = generator._query_field

    def true_field(codes, points, directions, max_batch_size):  # points (n, M, 3)
        rgb, _, feats = field(codes, points, directions, max_batch_size)
        inside = (((points[:, :, None, :] - centres) / radii).square().sum(-1) <= 1).any(-1)  # (n, M)
        return rgb, torch.where(inside, density, -density).to(rgb.dtype), feats

    generator._query_field = true_field
    return synthetic_scores(generator, metadata, num_samples=num_samples, seed=seed)


def fit_field(metadata: dict, steps: int, lr: float = 2e-4, batch_size: int = 8, views: int = 512, seed: int = 0,
              eval_every: int = 200, num_samples: int = 64, opacity_lambda: float = 0.0, log=print):
    """Fit a fresh generator's field to `views` training images of the metadata's procedural set; returns
    (generator in eval mode, [{step, seconds, loss, synthetic scores ...}] every eval_every steps and at the end)."""
    torch.manual_seed(seed)
    generator = build_generator(metadata)
    options = RenderOptions.from_metadata(metadata)
    size, num_steps = int(metadata["img_size"]), int(metadata["num_steps"])
    dataset = procedural_dataset(metadata, size, length=views)
    images, poses = (torch.stack(parts) for parts in zip(*(dataset[i] for i in range(views))))  # (V,3,S,S), (V,2)
    cam2world = cam2world_from_poses(poses[:, 1], poses[:, 0])                                  # (V, 4, 4)
    optimizer = torch.optim.Adam(generator.parameters(), lr=lr, betas=(0.0, 0.9))
    draw = torch.Generator().manual_seed(seed)
    history, started, recent = [], time.time(), []
    for step in range(1, steps + 1):
        generator.sdf_beta = sdf_beta_at(metadata, step)  # as the training loop does (fit step k: training step k)
        index = torch.randint(0, views, (batch_size,), generator=draw)
        z = sample_z(batch_size, generator.z_dim, metadata["z_dist"], generator=draw)
        draws = ViewDraws(poses[index, 1], poses[index, 0], jitter_draws(batch_size, size * size, num_steps,
                                                                         generator=draw), None)
        view = generator.render_view(generator.mapping(z), cam2world[index], options, draws)
        loss = ((view.rgb * 2 - 1 - images[index]) ** 2).mean()
        if opacity_lambda:
            loss = loss + opacity_lambda * (view.opacity * (1 - view.opacity)).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        recent.append(loss.item())
        if step % eval_every == 0 or step == steps:
            generator.eval()
            scores = synthetic_scores(generator, metadata, num_samples=num_samples)
            generator.train()
            row = {"step": step, "seconds": round(time.time() - started, 1),
                   "loss": sum(recent) / len(recent), **scores}
            recent = []
            history.append(row)
            log(json.dumps({k: (round(row[k], 5) if isinstance(row[k], float) else row[k])
                            for k in ("step", "seconds", "loss", *(f"synthetic_{k}" for k in SCORE_KEYS))}))
    return generator.eval(), history


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--curriculum", default="Critters", help="a curriculum with a procedural data set")
    p.add_argument("--objects", type=int, default=1, help="synthetic_objects: how many objects the views show")
    p.add_argument("--steps", type=int, default=1600, help="Adam steps")
    p.add_argument("--lr", type=float, default=2e-4, help="learning rate (the curriculum's gen_lr is 2e-4)")
    p.add_argument("--batch_size", type=int, default=8, help="views per step")
    p.add_argument("--views", type=int, default=512, help="training views (poses) of the object(s)")
    p.add_argument("--eval_every", type=int, default=200, help="steps between scores")
    p.add_argument("--num_samples", type=int, default=64, help="poses per score (the synthetic metric)")
    p.add_argument("--opacity_lambda", type=float, default=0.0,
                   help="weight of mean(o (1 - o)) over the rays' opacities o: pushes each ray to empty or opaque")
    p.add_argument("--seed", type=int, default=0, help="initialisation, latents, views and jitter")
    p.add_argument("--oracle", action="store_true",
                   help="fit nothing: score the true object itself as the field (the renderer's own depth error)")
    p.add_argument("--oracle_density", type=float, default=1e4, help="the --oracle field's density inside the object")
    p.add_argument("--threads", type=int, default=1, help="CPU threads")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a curriculum key (repeatable), as main.py --set")
    p.add_argument("--output", default="runs/fit/critter", help="folder for metrics.jsonl, checkpoint.pth and the figure")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)

    def work():
        if args.steps < 1 or args.eval_every < 1 or args.views < 1 or args.batch_size < 1:
            raise CLIError("--steps, --eval_every, --views and --batch_size must be at least 1")
        try:
            curriculum = fit_curriculum(args.curriculum, args.objects, args.overrides)
        except (KeyError, ValueError) as error:
            raise CLIError(f"--curriculum/--set: {error}") from None
        metadata = curriculums.extract_metadata(curriculum, 0)
        torch.set_num_threads(args.threads)
        if args.oracle:
            try:
                scores = oracle_scores(metadata, args.oracle_density, args.num_samples, args.seed)
            except ValueError as error:
                raise CLIError(f"--oracle: {error}") from None
            print(json.dumps({"oracle_density": args.oracle_density, "num_steps": metadata["num_steps"],
                              "img_size": metadata["img_size"],
                              **{k: scores[f"synthetic_{k}"] for k in SCORE_KEYS}}), flush=True)
            return 0
        output = Path(args.output)
        output.mkdir(parents=True, exist_ok=True)
        generator, history = fit_field(metadata, args.steps, args.lr, args.batch_size, args.views, args.seed,
                                       args.eval_every, args.num_samples, args.opacity_lambda, log=lambda line: print(line, flush=True))
        with open(output / "metrics.jsonl", "w") as f:
            for row in history:
                scores = {k: v for k, v in row.items() if k.startswith("synthetic_") or k == "num_synthetic"}
                f.write(json.dumps({"step": row["step"], "loss": row["loss"], "eval": scores}) + "\n")
        # a checkpoint the project's tools read (render_multiview_image.py, extract_shapes.py, the viewer)
        # step 0 with the fitted field's own signed-distance width as a constant (no anneal left to replay)
        fitted = dict(curriculum, sdf_beta=generator.sdf_beta, sdf_beta_start=0.0, sdf_beta_anneal_steps=0)
        save_checkpoint(output / "checkpoint.pth", {"generator": generator.state_dict(), "curriculum": fitted,
                                                    "step": 0})
        from benchmarks.bench_ladder import comparison_figure
        figure = comparison_figure(output, output / "truth_vs_fitted.png")
        print(f"truth (rows 1-2) against the fitted field (image and depth rows): {figure}")
        return 0
    return run_cli(work)


if __name__ == "__main__":
    sys.exit(main())
