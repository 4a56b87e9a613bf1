"""Three training steps of the published MVCGAN code, reproduced by `Trainer.train_step` (docs/METHOD.md §7).

`tests/fixtures/published_step/` (its README says exactly what was run) holds steps 5000-5002 of
the published training loop, started from the published-format weights in
`tests/fixtures/published_mvcgan/`, with every random draw recorded: the latents, the camera poses,
the depth jitter and the mixup ratios. Here those weights go through `import_checkpoint.py`, the
draws are replayed through `MVCGANLoss.draws` (the generator's `ForwardDraws` seam), and the
project's own `Trainer.train_step` runs the three steps; the losses per phase and chunk, the top-k
counts, the images, depths, cameras, gradient norms and the gradient and weight signatures of G, D
and both EMAs must match, with the tolerances the fixture's README derives (its section 7):

* float64, all three steps: every tensor within 1e-9 of its largest magnitude; gradient signatures
  within 1e-9 ||g||; weight signatures within 1e-8 lr sqrt(n). The published float64 runs on 1 and
  2 threads differ by up to ~1e-11 of these scales, so this is tight but honest.
* float32, step 5000: as the README's float32 list (losses 2e-4 relative, logits 1e-3, images 1e-4,
  gradient norms 1e-3, ...). Later float32 steps are not compared: there the published float32 and
  float64 runs themselves drift apart by up to 40 % (Adam's first update is ~lr * sign(g)).

A failure names the quantity, the step and the chunk: the README lists the published order of
operations and behaviours (section 5) to look for the difference.
"""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

import import_checkpoint
from generators.generators import ForwardDraws, ViewDraws
from curriculums import extract_metadata
from train import TrainConfig, Trainer
from utils.published import DISCRIMINATOR_NAME_RULES, GENERATOR_NAME_RULES, _rename

FIXTURES = Path(__file__).resolve().parent / "fixtures"
STEP_FIXTURE = FIXTURES / "published_step"
FIRST_STEP = 5000
GEN_LR, DISC_LR = 6e-5, 2e-4


def fixture_overrides(config: dict) -> dict:
    """The fixture's changes to the published CelebAHQ curriculum (README section 1), as --set values."""
    stage = {key: int(config[key]) for key in ("img_size", "output_size", "num_steps", "batch_size", "batch_split")}
    return {**{f"0.{key}": value for key, value in stage.items()},
            "fade_steps": int(config["fade_steps"]), "topk_interval": int(config["topk_interval"])}


@pytest.fixture(scope="module")
def inputs():
    return torch.load(STEP_FIXTURE / "inputs.pt", weights_only=True)


@pytest.fixture(scope="module")
def imported_checkpoint(tmp_path_factory) -> Path:
    output = tmp_path_factory.mktemp("published") / "celebahq_fixture.pth"
    assert import_checkpoint.main(["--path", str(FIXTURES / "published_mvcgan"), "--curriculum", "CelebAHQ",
                                   "--output", str(output)]) == 0
    return output


# ---------------------------------------------------------------------------------- signatures
_PROBES = {}


def probe(index: int, shape) -> torch.Tensor:
    """u_i of README section 6 (cached: the same u_i serves every signature of tensor i)."""
    key = (index, tuple(shape))
    if key not in _PROBES:
        _PROBES[key] = torch.randn(shape, generator=torch.Generator().manual_seed(index), dtype=torch.float64)
    return _PROBES[key]


def parameter_rows(tensors: list) -> torch.Tensor:
    """README section 6: [(t * u_i).sum(), t.sum()] per tensor; NaN where the published tensor has
    no counterpart here (the decoder's never-used noise modules)."""
    rows = torch.full((len(tensors), 2), float("nan"), dtype=torch.float64)
    for i, t in enumerate(tensors):
        if t is not None:
            t = t.detach().double()
            rows[i] = torch.stack([(t * probe(i, t.shape)).sum(), t.sum()])
    return rows


def gradient_rows(parameters: list) -> torch.Tensor:
    """[(g * u_i).sum(), g.sum(), g.norm()] per parameter; NaN where the gradient is None."""
    rows = torch.full((len(parameters), 3), float("nan"), dtype=torch.float64)
    for i, p in enumerate(parameters):
        if p is not None and p.grad is not None:
            g = p.grad.detach().double()
            rows[i] = torch.stack([(g * probe(i, g.shape)).sum(), g.sum(), g.norm()])
    return rows


def in_published_order(module: torch.nn.Module, published_names: list, rules) -> list:
    """Our parameters in the order of the published `named_parameters()` (None where we have none)."""
    ours = dict(module.named_parameters())
    order = []
    for name in published_names:
        matched, our_name = _rename(name, rules)
        assert matched, name
        order.append(None if our_name is None else ours[our_name])
    return order


def gradient_norm(parameters: list) -> float:
    return math.sqrt(sum(float(p.grad.double().norm()) ** 2 for p in parameters if p is not None and p.grad is not None))


# ---------------------------------------------------------------------------------- replay
class ReplayDraws:
    """`MVCGANLoss.draws` serving the fixture's draws in the published order: per step the D-phase
    latents, its two generator calls, the G-phase latents, its two generator calls."""

    def __init__(self, inputs: dict, expected: dict, dtype: torch.dtype):
        self.latents_queue, self.calls_queue = [], []
        for step_inputs, step_expected in zip(inputs["steps"], expected["steps"]):
            for phase, recorded in (("d", step_expected["d"]["calls"]), ("g", step_expected["g"]["chunks"])):
                self.latents_queue.append(step_inputs[f"{phase}_z"].to(dtype))
                for draws, poses in zip(step_inputs[f"{phase}_calls"], recorded):
                    view = lambda prefix: ViewDraws(poses[f"{prefix}_yaw"][:, 0], poses[f"{prefix}_pitch"][:, 0],
                                                    draws[f"{prefix}_jitter_u"][..., 0].to(dtype), None)
                    self.calls_queue.append(ForwardDraws(view("primary"), view("aux"), draws["mixup_u"].flatten().to(dtype)))

    def latents(self, n, latent_dim, z_dist, device):
        z = self.latents_queue.pop(0)
        assert z.shape == (n, latent_dim)
        return z

    def generator_call(self, generator, n, render_options, device):
        draws = self.calls_queue.pop(0)
        assert draws.primary.yaw.shape == (n,)
        return draws


class Recorder:
    """`MVCGANLoss.observe`: each phase's terms, with the gradient signatures at that moment."""

    def __init__(self, trainer: Trainer, g_order: list, d_order: list):
        self.trainer, self.g_order, self.d_order = trainer, g_order, d_order
        self.d_phase, self.g_chunks = None, []

    def __call__(self, event: str, values: dict) -> None:
        values = dict(values)
        if event == "d_phase":
            values["grad_sig"] = gradient_rows(self.d_order)
            self.d_phase = values
        else:
            values["grad_sig_accumulated"] = gradient_rows(self.g_order)
            values["grad_norm_accumulated"] = gradient_norm(self.g_order)
            self.g_chunks.append(values)


def run_published_steps(imported_checkpoint: Path, inputs: dict, expected: dict, dtype: torch.dtype,
                        num_steps: int, tmp_path: Path) -> list:
    """Run `num_steps` steps from 5000 through Trainer.train_step with the fixture's draws.

    Returns (results, sizes): results[0] the initial signatures, then per step the step's stats,
    the D-phase record, the G-chunk records and the signatures of G, D and both EMAs after the
    step; sizes the element count of each G and D parameter in the published order.
    """
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # networks, cameras and rays in the run's dtype, as the float64 fixture
    try:
        config = TrainConfig(curriculum="CelebAHQ", output_dir=str(tmp_path), load_dir=str(imported_checkpoint),
                             progress=False, device="cpu", curriculum_overrides=fixture_overrides(inputs["config"]))
        trainer = Trainer(0, 1, config, torch.device("cpu"))
        trainer.load(config.load_dir)
        trainer.step = FIRST_STEP  # as the published `--set_step 5000`
        g_order = in_published_order(trainer.generator, expected["G_names"], GENERATOR_NAME_RULES)
        d_order = in_published_order(trainer.discriminator, expected["D_names"], DISCRIMINATOR_NAME_RULES)
        ema_orders = [in_published_order(ema.module, expected["G_names"], GENERATOR_NAME_RULES) for ema in trainer.emas]

        def signatures() -> dict:
            return {"G": parameter_rows(g_order), "D": parameter_rows(d_order),
                    "ema": parameter_rows(ema_orders[0]), "ema2": parameter_rows(ema_orders[1]),
                    "ema_num_updates": trainer.emas[0].num_updates, "ema2_num_updates": trainer.emas[1].num_updates}

        trainer.loss.draws = ReplayDraws(inputs, expected, dtype)
        results = [signatures()]
        real = inputs["real_imgs"].to(dtype)
        for _ in range(num_steps):
            recorder = Recorder(trainer, g_order, d_order)
            trainer.loss.observe = recorder
            stats = trainer.train_step(real, extract_metadata(trainer.curriculum, trainer.step))
            trainer.step += 1
            results.append({"stats": stats, "d": recorder.d_phase, "g": recorder.g_chunks, "after": signatures()})
        if num_steps == len(inputs["steps"]):  # every recorded draw consumed, none left over
            assert not trainer.loss.draws.calls_queue and not trainer.loss.draws.latents_queue
        sizes = {"G": [None if p is None else p.numel() for p in g_order],
                 "D": [None if p is None else p.numel() for p in d_order]}
        return results, sizes
    finally:
        torch.set_default_dtype(previous)


# ---------------------------------------------------------------------------------- comparisons
class Comparison:
    """Collects every deviation (relative to the README's scale for that quantity) and fails with
    the worst ones, so one run shows the whole picture."""

    def __init__(self):
        self.failures, self.worst = [], {}

    def check(self, label: str, group: str, ours, published, tolerance: float, scale=None) -> None:
        ours = torch.as_tensor(ours, dtype=torch.float64) if isinstance(ours, (int, float)) else ours.detach().double()
        published = torch.as_tensor(published).double()
        assert ours.shape == published.shape or ours.numel() == published.numel(), (label, ours.shape, published.shape)
        ours = ours.reshape(published.shape)
        if scale is None:
            scale = published.abs().max().clamp_min(1e-300)
        deviation = float(((ours - published).abs() / scale).max())
        self.worst[group] = max(self.worst.get(group, 0.0), deviation)
        if not deviation <= tolerance:
            self.failures.append(f"{label}: {deviation:.3g} > {tolerance:.1g} (of its scale)")

    def check_exact(self, label: str, ours, published) -> None:
        if not torch.equal(torch.as_tensor(ours).reshape(torch.as_tensor(published).shape), torch.as_tensor(published)):
            self.failures.append(f"{label}: {ours} != {published}")

    def signatures(self, label: str, ours: torch.Tensor, published: torch.Tensor, tolerance: float,
                   scale_of_row, columns=(0, 1), missing: tuple = ()) -> None:
        """Gradient rows: NaN (no gradient) here exactly where NaN there. Rows in `missing` are the
        published tensors this project does not have (the decoder's never-used noise modules)."""
        for i in range(published.shape[0]):
            mine, theirs = ours[i], published[i]
            if i in missing:
                continue
            if torch.isnan(mine).all() or torch.isnan(theirs).all():
                if torch.isnan(mine).all() != torch.isnan(theirs).all():
                    self.failures.append(f"{label}[{i}]: gradient presence differs ({mine.tolist()} vs {theirs.tolist()})")
                continue
            for column in columns:
                scale = scale_of_row(i, theirs, column)
                self.check(f"{label}[{i}, {column}]", label.split("/")[-1], mine[column], theirs[column], tolerance, scale)

    def finish(self) -> None:
        assert not self.failures, f"{len(self.failures)} deviations, e.g.:\n  " + "\n  ".join(self.failures[:25])


PER_CALL = {"primary_depth": ("depths", lambda out: out.primary.depth),
            "aux_depth": ("depths", lambda out: out.aux.depth),
            "aux_rgb": ("nerf_rgb", lambda out: out.aux.rgb),
            "mixup_ratio": ("mixup", lambda out: out.mixup_ratio)}


def compare_step(check: Comparison, s: int, ours: dict, published: dict, tolerances: dict, num_params: dict) -> None:
    """One step's recorded quantities (README section 6) against ours."""
    tol = tolerances
    step = f"step {FIRST_STEP + s}"
    d, pd = ours["d"], published["d"]
    check.check(f"{step} d_loss", "losses", d["loss"], pd["d_loss"], tol["loss"])
    for key, ours_key in (("r1_penalty", "r1"), ("position_penalty", "position"), ("softplus_fake", "softplus_fake"),
                          ("softplus_real", "softplus_real")):
        check.check(f"{step} d/{key}", "losses", d[ours_key], pd[key], tol["loss"])
    check.check_exact(f"{step} d/latent_penalty", float(d["latent"]), float(pd["latent_penalty"]))
    check.check(f"{step} d/r_preds", "logits", d["real_logits"], pd["r_preds"], tol["logits"])
    check.check(f"{step} d/g_preds", "logits", d["fake_logits"], pd["g_preds"], tol["logits"])
    check.check(f"{step} d/g_pred_position", "logits", d["pred_pose"], pd["g_pred_position"], tol["logits"])
    check.check(f"{step} d/gen_imgs", "images", d["fake_images"], pd["gen_imgs"], tol["images"])
    check.check(f"{step} d/gen_positions", "cameras", d["fake_poses"], pd["gen_positions"], 0)
    check.check(f"{step} d/grad_norm", "grad norms", ours["stats"]["d_grad_norm"], pd["grad_norm"], tol["grad_norm"])
    check.signatures(f"{step} d/grad_sig", d["grad_sig"], pd["grad_sig"], tol["grad_sig"],
                     lambda i, row, column: row[2] * (math.sqrt(num_params["D"][i]) if column == 1 else 1))
    for c, (out, calls) in enumerate(zip(d["outputs"], pd["calls"])):
        compare_call(check, f"{step} d/call {c}", out, calls, tol)

    for c, (chunk, pchunk) in enumerate(zip(ours["g"], published["g"]["chunks"])):
        label = f"{step} g/chunk {c}"
        out = chunk["output"]
        check.check(f"{label} g_loss", "losses", chunk["loss"], pchunk["g_loss"], tol["loss"])
        for key, ours_key in (("adversarial", "adversarial"), ("position_penalty", "position"),
                              ("photometric", "photometric"), ("photometric_ssim", "photometric_ssim"),
                              ("photometric_l1", "photometric_l1")):
            check.check(f"{label} {key}", "losses", chunk[ours_key], pchunk[key], tol["loss"])
        check.check_exact(f"{label} latent_penalty", float(chunk["latent"]), float(pchunk["latent_penalty"]))
        check.check_exact(f"{label} topk_num", chunk["topk"], int(pchunk["topk_num"]))
        check.check(f"{label} topk_percentage", "losses", ours["stats"]["topk"], pchunk["topk_percentage"], 1e-15)
        check.check(f"{label} g_preds_all", "logits", chunk["logits"], pchunk["g_preds_all"], tol["logits"])
        check.check(f"{label} g_preds_topk", "logits", chunk["top_logits"], pchunk["g_preds_topk"], tol["logits"])
        check.check(f"{label} g_pred_position", "logits", chunk["pred_pose"], pchunk["g_pred_position"], tol["logits"])
        check.check(f"{label} gen_imgs", "images", out.image, pchunk["gen_imgs"], tol["images"])
        check.check(f"{label} gen_init_imgs", "nerf_rgb", out.primary_rgb, pchunk["gen_init_imgs"], tol["images"])
        check.check(f"{label} gen_warp_imgs", "warp", out.warped_aux_rgb, pchunk["gen_warp_imgs"], tol["images"])
        check.check(f"{label} grad_norm_accumulated", "grad norms", chunk["grad_norm_accumulated"],
                    pchunk["grad_norm_accumulated"], tol["grad_norm"])
        check.signatures(f"{label} grad_sig_accumulated", chunk["grad_sig_accumulated"], pchunk["grad_sig_accumulated"],
                         tol["grad_sig"], lambda i, row, column: row[2] * (math.sqrt(num_params["G"][i]) if column == 1 else 1))
        compare_call(check, label, out, pchunk, tol)
    check.check(f"{step} g/grad_norm", "grad norms", ours["stats"]["g_grad_norm"], published["g"]["grad_norm"],
                tol["grad_norm"])


def compare_call(check: Comparison, label: str, out, published: dict, tol: dict) -> None:
    check.check(f"{label} gen_positions", "cameras", out.pose, torch.cat([published["primary_pitch"],
                                                                         published["primary_yaw"]], dim=-1), 0)
    check.check(f"{label} primary_cam2world", "cameras", out.primary.cam2world, published["primary_cam2world"],
                tol["cameras"])
    check.check(f"{label} aux_cam2world", "cameras", out.aux.cam2world, published["aux_cam2world"], tol["cameras"])
    for key, (group, get) in PER_CALL.items():
        check.check(f"{label} {key}", group, get(out), published[key], tol["images"])


def compare_weights(check: Comparison, label: str, ours: dict, published: dict, tol: float, sizes: dict) -> None:
    """Weight signatures: |Δ col 0| <= tol lr sqrt(n), |Δ col 1| <= tol lr n (README section 7; the EMAs
    with the generator's lr), and the EMAs' update counts exactly."""
    for key, lr, group in (("G", GEN_LR, "G"), ("D", DISC_LR, "D"), ("ema", GEN_LR, "G"), ("ema2", GEN_LR, "G")):
        counts = sizes[group]
        missing = tuple(i for i, n in enumerate(counts) if n is None)
        check.signatures(f"{label}/{key}", ours[key], published[key], tol,
                         lambda i, row, column: lr * (math.sqrt(counts[i]) if column == 0 else counts[i]),
                         missing=missing)
        if key.startswith("ema"):
            check.check_exact(f"{label} {key}_num_updates", ours[f"{key}_num_updates"],
                              int(published[f"{key}_num_updates"]))


@pytest.fixture(scope="module")
def expected_float64():
    return torch.load(STEP_FIXTURE / "expected_float64.pt", weights_only=True)


@pytest.fixture(scope="module")
def expected_float32():
    return torch.load(STEP_FIXTURE / "expected_float32.pt", weights_only=True)


FLOAT64 = {"loss": 1e-9, "logits": 1e-9, "images": 1e-9, "cameras": 1e-12, "grad_norm": 1e-9, "grad_sig": 1e-9}
# README section 7, "float32, step 5000 only"
FLOAT32 = {"loss": 2e-4, "logits": 1e-3, "images": 1e-4, "cameras": 1e-6, "grad_norm": 1e-3, "grad_sig": 0.15}


@pytest.mark.slow
def test_the_probes_are_the_published_ones(expected_float64, imported_checkpoint):
    """The signature probes u_i are regenerated identically (README section 6)."""
    trainer_free = [probe(i, ()).sum() for i in range(3)]  # cheap smoke check of the generator itself
    assert all(torch.isfinite(t) for t in trainer_free)
    from utils.checkpoint import load_checkpoint

    state = load_checkpoint(imported_checkpoint)
    for group, names, rules, key in (("G", expected_float64["G_names"], GENERATOR_NAME_RULES, "generator"),
                                     ("D", expected_float64["D_names"], DISCRIMINATOR_NAME_RULES, "discriminator")):
        sums = expected_float64[f"probe_u_sum_{group}"]
        for i, name in enumerate(names):
            our_name = _rename(name, rules)[1]
            if our_name is not None:
                assert float(probe(i, state[key][our_name].shape).sum()) == pytest.approx(float(sums[i]), rel=1e-12)


@pytest.mark.slow
def test_three_published_steps_in_float64(imported_checkpoint, inputs, expected_float64, tmp_path):
    results, sizes = run_published_steps(imported_checkpoint, inputs, expected_float64, torch.float64, 3, tmp_path)
    check = Comparison()
    # the import reproduces the published weights (up to the order of the signatures' sums)
    compare_weights(check, "initial", results[0], expected_float64["initial"], 1e-8, sizes)
    for s, (ours, published) in enumerate(zip(results[1:], expected_float64["steps"])):
        compare_step(check, s, ours, published, FLOAT64, sizes)
        compare_weights(check, f"step {FIRST_STEP + s} after", ours["after"], published["after"], 1e-8, sizes)
    print("float64, largest deviation per group (relative to its scale):",
          {k: f"{v:.2g}" for k, v in sorted(check.worst.items())})
    check.finish()


@pytest.mark.slow
def test_the_first_published_step_in_float32(imported_checkpoint, inputs, expected_float32, tmp_path):
    results, sizes = run_published_steps(imported_checkpoint, inputs, expected_float32, torch.float32, 1, tmp_path)
    check = Comparison()
    compare_step(check, 0, results[1], expected_float32["steps"][0], FLOAT32, sizes)
    # Adam's first update is ~lr * sign(g): elements whose float32 gradient is within its error of
    # zero may move the other way, so the README allows ~1.5 lr sqrt(n) on column 0
    compare_weights(check, "step 5000 after", results[1]["after"], expected_float32["steps"][0]["after"], 1.5, sizes)
    print("float32 step 5000, largest deviation per group (relative to its scale):",
          {k: f"{v:.2g}" for k, v in sorted(check.worst.items())})
    check.finish()
