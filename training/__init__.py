"""The training loop and its plumbing (StyleGAN3's training/ package); train.py runs one process of it.

* loop.py: `Trainer`, whose `training_loop` and `train_step` read top to bottom.
* step_options.py: `StepOptions`, what the loop reads of a step's stage, typed and frozen.
* faults.py: stop signals, loader workers that die, streaks of non-finite steps, drift.
* progress.py: the progress bars and lines (the loop's progress_fn), metrics.jsonl.
* checkpointing.py: saving and resuming (the file format is utils/checkpoint.py's).
* snapshots.py: options.json, sample grids, real.png, evaluations.
* data.py: the loader and its resumable sampler.  distributed.py: what the processes share.
"""
