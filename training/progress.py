"""What a run reports as it goes: `Progress` (the loop's progress_fn: bars on a terminal, log lines
otherwise) and `MetricsLog` (metrics.jsonl, one JSON record a line)."""
from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Optional

from tqdm import tqdm

import curriculums

logger = logging.getLogger("mvcgan.train")


def jsonable(value):
    """`value` with non-finite floats as strings (JSON has no NaN) and every dict key a string."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


class MetricsLog:
    """The run directory's metrics.jsonl (rank 0): a record a line, appended."""

    def __init__(self, output_dir: Path):
        self.path = Path(output_dir) / "metrics.jsonl"

    def append(self, record: dict) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(jsonable(record)) + "\n")


class Progress:
    """Rank 0's view of the run: a total and a per-stage tqdm bar on a terminal, else (no terminal, or
    --no_progress) one log line every log_interval steps, so a log file holds progress without
    megabytes of bar redraws. Other ranks get a disabled one.

    Called as the loop's progress_fn: `progress(step, None)` as step `step` starts, `progress(step, stats)`
    once it is counted (`step` is then the number of steps trained)."""

    def __init__(self, curriculum: dict, step: int, final_step: int, log_interval: int, bars: bool):
        self.curriculum, self.final_step, self.log_interval = curriculum, final_step, log_interval
        self.total = tqdm(total=final_step, initial=min(step, final_step), desc="total", disable=not bars,
                          dynamic_ncols=True)
        self.stage_bar, self.stage = None, None
        self.mark = None  # (time, step) of the last progress line

    def __call__(self, step: int, stats: Optional[dict]) -> None:
        if stats is None:
            self.start_step(step)
        else:
            self.end_step(step, stats)

    def start_step(self, step: int) -> None:
        """A new bar when `step` begins a stage. The first step of the run starts the clock of the
        progress lines (a resumed run's first line measures its own steps, not the loading)."""
        if self.mark is None:
            self.mark = (time.time(), step)
        stage = curriculums.stage_start(self.curriculum, step)
        if self.total.disable or stage == self.stage:
            return
        self.stage = stage
        stage_end = min(curriculums.next_stage_step(self.curriculum, step), self.final_step)
        if self.stage_bar is not None:
            self.stage_bar.close()
        self.stage_bar = tqdm(total=stage_end - stage, initial=step - stage, desc=f"stage@{stage}", leave=False,
                              dynamic_ncols=True)

    def end_step(self, step: int, stats: dict) -> None:
        if self.total.disable:
            self.log_line(step, stats)
        self.total.update(1)
        if self.stage_bar is not None:
            self.stage_bar.update(1)
            self.stage_bar.set_postfix(d=f"{stats['d_loss']:.3f}", g=f"{stats['g_loss']:.3f}",
                                       photo=f"{stats['photometric']:.3f}", a=f"{stats['alpha']:.2f}")

    def log_line(self, step: int, stats: dict) -> None:
        now = time.time()
        if self.mark is None:  # end_step without start_step (tests)
            self.mark = (now, step - 1)
        if step % self.log_interval and step != self.final_step:
            return
        mark_time, mark_step = self.mark
        sec_per_step = (now - mark_time) / max(step - mark_step, 1)
        self.mark = (now, step)
        eta = int(sec_per_step * max(self.final_step - step, 0))
        logger.info("step %d/%d  d %.4f  g %.4f  photo %.4f  %.2f s/step  ETA %d:%02d:%02d", step, self.final_step,
                    stats["d_loss"], stats["g_loss"], stats["photometric"], sec_per_step,
                    eta // 3600, eta // 60 % 60, eta % 60)

    def close(self) -> None:
        self.total.close()
        if self.stage_bar is not None:
            self.stage_bar.close()
