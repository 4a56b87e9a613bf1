"""Shapes of a trained generator: meshes of its density (`shapes.mesh`) and PLY files (`shapes.ply`).

`extract_shapes.py` is the command line; invert.py and the viewer write their meshes with the same
functions.
"""
