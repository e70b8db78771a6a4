"""Training of descriptors: the workflow's train stage (``stage.train_model``), the CNN
training loop (fine-tuning objectives, hard-negative mining, checkpoints and resume) and
the record every training writes last."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def write_record(out_dir: Path, record: dict[str, Any]) -> None:
    """``trained.json``: written last, it tells the workflow the model folder is complete."""
    (Path(out_dir) / "trained.json").write_text(json.dumps(record, indent=1, default=str) + "\n")
