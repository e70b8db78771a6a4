"""Pose assignment: each query takes the pose of its top-1 database image (the seed's rule)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from .split import positions_m


def assign_top1(neighbours: pd.DataFrame, images: pd.DataFrame) -> pd.DataFrame:
    """Per query: the assigned x/y (lat/lon, yaw when known), its source image, and the error in metres."""
    top = neighbours[neighbours["rank"] == 0][["query_id", "db_id", "score"]]
    pose_columns = ["x", "y", "lat", "lon", "yaw"]
    table = images.set_index("image_id")
    xy = pd.DataFrame(positions_m(images), index=images["image_id"], columns=["mx", "my"])
    db = table.loc[top["db_id"], ["path"] + pose_columns].reset_index(drop=True)
    out = pd.DataFrame({"query_id": top["query_id"].to_numpy(),
                        "query_path": table.loc[top["query_id"], "path"].to_numpy(),
                        "db_id": top["db_id"].to_numpy(), "db_path": db["path"], "score": top["score"].to_numpy()})
    for column in pose_columns:
        out[column] = db[column].to_numpy()
    delta = xy.loc[top["query_id"]].to_numpy() - xy.loc[top["db_id"]].to_numpy()
    out["error_m"] = np.linalg.norm(delta, axis=1)
    return out
