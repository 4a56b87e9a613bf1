"""Inversion: a photo -> latent codes and camera of a trained generator (docs/METHOD.md §11.1).

`fitting` holds the optimisation (codes + camera from several starting poses, then optional
pivotal tuning of the generator); `photo` turns a user's file into the image the checkpoint
was trained on (checks, conversions, crops, face alignment); `codes_file` writes and reads the
fitted result that `render_multiview_image.py` and `extract_shapes.py` accept with `--codes`.
The command line is `invert.py` at the top level.
"""
