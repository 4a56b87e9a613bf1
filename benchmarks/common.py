"""What the timing scripts share: the flags that pick a stage-0 size and the CPU threads."""
from __future__ import annotations

import argparse

import torch


def add_size_arguments(parser: argparse.ArgumentParser, batch_help: str) -> None:
    """--curriculum, --batch_size, --img_size, --num_steps, --output_size, --threads, --device."""
    parser.add_argument("--curriculum", default="FFHQ", help="curriculum whose stage-0 metadata and widths are used")
    parser.add_argument("--batch_size", type=int, default=2, help=batch_help)
    parser.add_argument("--img_size", type=int, default=64, help="NeRF resolution S")
    parser.add_argument("--num_steps", type=int, default=16, help="samples per ray")
    parser.add_argument("--output_size", type=int, default=64, help="decoder output size")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")


def apply_threads(args: argparse.Namespace) -> None:
    if args.threads:
        torch.set_num_threads(args.threads)
