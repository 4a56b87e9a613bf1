"""PLY files of meshes: `write_ply` (binary little-endian or ASCII, optional vertex colours)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np


PLY_TYPES = {"float": "<f4", "float32": "<f4", "uchar": "u1", "uint8": "u1", "int": "<i4", "int32": "<i4"}


def _vertex_dtype(colours: bool) -> np.dtype:
    fields = [("x", "<f4"), ("y", "<f4"), ("z", "<f4")]
    return np.dtype(fields + ([("red", "u1"), ("green", "u1"), ("blue", "u1")] if colours else []))


def write_ply(path, vertices: np.ndarray, faces: np.ndarray, binary: bool = True,
              colours: Optional[np.ndarray] = None) -> Path:
    """A PLY file with float x, y, z vertices (and uchar red, green, blue when `colours` (V, 3)
    uint8 are given) and triangle faces (`vertex_indices`, uchar count, int indices)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    vertices = np.asarray(vertices, dtype="<f4").reshape(-1, 3)
    faces = np.asarray(faces, dtype="<i4").reshape(-1, 3)
    records = np.empty(len(vertices), dtype=_vertex_dtype(colours is not None))  # packed: 12 or 15 bytes
    records["x"], records["y"], records["z"] = vertices.T
    colour_properties = []
    if colours is not None:
        colours = np.asarray(colours, dtype=np.uint8).reshape(-1, 3)
        if len(colours) != len(vertices):
            raise ValueError(f"{len(colours)} colours for {len(vertices)} vertices")
        records["red"], records["green"], records["blue"] = colours.T
        colour_properties = ["property uchar red", "property uchar green", "property uchar blue"]
    header = "\n".join([
        "ply",
        f"format {'binary_little_endian' if binary else 'ascii'} 1.0",
        "comment MVCGAN extract_shapes.py",
        f"element vertex {len(vertices)}",
        "property float x", "property float y", "property float z", *colour_properties,
        f"element face {len(faces)}",
        "property list uchar int vertex_indices",
        "end_header",
    ]) + "\n"
    with open(path, "wb") as f:
        f.write(header.encode("ascii"))
        if binary:
            f.write(records.tobytes())
            face_records = np.empty(len(faces), dtype=[("count", "u1"), ("indices", "<i4", (3,))])  # 13 bytes
            face_records["count"], face_records["indices"] = 3, faces
            f.write(face_records.tobytes())
        else:
            columns = [vertices] + ([colours] if colours is not None else [])
            formats = ["%.7g"] * 3 + (["%d"] * 3 if colours is not None else [])
            np.savetxt(f, np.concatenate([c.astype(np.float64) for c in columns], axis=1), fmt=formats)
            np.savetxt(f, np.concatenate([np.full((len(faces), 1), 3, np.int32), faces], axis=1), fmt="%d")
    return path
