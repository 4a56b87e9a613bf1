"""Evaluation metrics of a trained generator (docs/METHOD.md §10), modelled on StyleGAN3/EG3D's.

* `metric_main`: the registry (`@register_metric`) and `evaluate(generator, metadata, metrics)`.
* `metric_utils`: seeded latents and poses, generated images, cached real images and statistics.
* `inception`: the FID Inception network, loaded offline-safely in one place.
* one module per metric: `fid_kid` (FID, KID), `mvc` (multi-view consistency),
  `synthetic` (ground truth for the embedded Synthetic heads).

`fid_evaluation.py` is the command line.
"""
