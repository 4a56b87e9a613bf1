"""Import the authors' published MVCGAN checkpoints into this project's checkpoint format.

    python import_checkpoint.py --path ffhq_official/ --curriculum FFHQ --output ffhq_official.pth

`--path` is the folder with the published `generator.pth` (and `ema.pth`, `ema2.pth`,
`discriminator.pth` beside it), or the `generator.pth` itself; `--generator`, `--ema`,
`--ema2` and `--discriminator` name files explicitly. Nothing in those pickles is run
(`utils/published.py` reads them as data). The output is one checkpoint of state dicts
that `render_multiview_image.py`, `extract_shapes.py`, `fid_evaluation.py` and
`main.py --load_dir` take like one of our own; fine-tuning continues the curriculum from
the published step with fresh optimiser state. An existing `--output` is replaced only with
`--force`, and never when it is one of the files being imported. Entry point: `main(argv)`.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Optional, Sequence

import curriculums
from utils.checkpoint import first_nonfinite, save_checkpoint
from utils.cli import CLIError, HelpFormatter, run_cli
from utils.published import PUBLISHED_FILE_NAMES, find_published_files, import_published
from utils.run_dir import check_output_path

logger = logging.getLogger("mvcgan.import")


class WriteFailed(RuntimeError):
    """The import worked but the output could not be written (exit code 1)."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--path", default=None,
                   help="folder holding the published generator.pth (ema.pth, ema2.pth and discriminator.pth "
                        "beside it are used too), or the generator.pth file itself")
    p.add_argument("--generator", default=None, help="the published generator.pth (overrides --path)")
    p.add_argument("--ema", default=None,
                   help="the published ema.pth (decay 0.999); without one, the EMA starts from the raw weights")
    p.add_argument("--ema2", default=None,
                   help="the published ema2.pth (decay 0.9999); without one, it starts from the raw weights")
    p.add_argument("--discriminator", default=None,
                   help="the published discriminator.pth (fine-tuning without it starts from a fresh discriminator; rendering does without)")
    p.add_argument("--curriculum", required=True, choices=sorted(curriculums.CURRICULA),
                   help="the curriculum the weights were trained with (CelebAHQ, FFHQ or Cat for the official "
                        "ones); its camera and stages are used, the widths come from the weights")
    p.add_argument("--output", required=True,
                   help="checkpoint file to write (e.g. ffhq_official.pth); an existing file is refused unless "
                        "--force, and one of the published files (or their names in their folder) always")
    p.add_argument("--force", action="store_true", help="replace an existing --output file")
    return p


def check_output(output, files, force: bool) -> None:
    """CLIError before anything is read or written: --output names a folder, a file that cannot be written,
    one of the files being imported (or a published file's name in their folder, which a later import
    would read as that file), or an existing file without --force."""
    try:
        check_output_path(output, "--output", is_file=True)
    except ValueError as error:
        raise CLIError(str(error)) from None
    target = Path(output).resolve()
    inputs = {Path(path).resolve() for path in vars(files).values() if path is not None}
    folders = {path.parent for path in inputs}
    if target in inputs or (target.parent in folders and target.name in PUBLISHED_FILE_NAMES.values()):
        what = "one of the published files being imported" if target in inputs else "a published file's name beside them"
        raise CLIError(f"--output {output} is {what}; write the checkpoint elsewhere (e.g. "
                       f"{target.parent.parent / 'imported.pth'})")
    if target.exists() and not force:
        raise CLIError(f"--output {output} exists; pass --force to replace it, or choose another --output")


def run(args) -> None:
    files = find_published_files(args.path, generator=args.generator, ema=args.ema, ema2=args.ema2,
                                 discriminator=args.discriminator)
    for role, path in vars(files).items():
        logger.info("%-13s %s", role, path if path is not None else "(none)")
    check_output(args.output, files, args.force)
    state = import_published(files, args.curriculum)
    sources = {"generator": files.generator, "generator_ema": files.ema, "generator_ema2": files.ema2,
               "discriminator": files.discriminator}
    for key, source in sources.items():
        bad = first_nonfinite(state.get(key) or {})
        if bad is not None:
            raise CLIError(f"{source or files.generator}: its weights hold NaN or infinite values (first in {bad}); "
                           f"nothing was written")
    try:
        save_checkpoint(args.output, state)
    except OSError as error:
        raise WriteFailed(f"could not write {args.output}: {error}") from error
    architecture = {k: state["curriculum"][k] for k in ("hidden_dim", "decoder_channels")}
    logger.info("wrote %s: step %d, curriculum %s, %s, EMA updates %s%s", args.output, state["step"],
                args.curriculum, architecture, state["ema_num_updates"],
                "" if "discriminator" in state else ", no discriminator (render/evaluate only)")


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.path is None and args.generator is None:
        parser.error("give --path (a folder or generator.pth) or --generator")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        return run_cli(lambda: run(args))
    except WriteFailed as error:
        print(f"error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
