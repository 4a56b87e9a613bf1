"""What the browser viewer (`viewer.py`) renders and reads, without the web library.

`frames`: one frame of a generated object from a camera (image, NeRF RGB, depth or
geometry), the camera of an orbit around the object, the letterboxed picture a browser
shows. `codes`: the codes file format (an inverted photo's `LatentCodes` and camera).
Nothing here imports viser, so the tests and the latency benchmark run without it.
"""
