"""Training curves: a CSV (rewritten whole each epoch, so a resumed run has no duplicate
rows), TensorBoard scalars when tensorboard is installed, and a PNG at the end."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from ..logs import log
from . import WORK_DIR


class Curves:
    def __init__(self, model_dir: Path):
        self.csv = model_dir / "curves.csv"
        self.png = model_dir / "curves.png"
        self.tensorboard = None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            log.info("tensorboard is not installed: curves go to %s and %s only", self.csv, self.png)
        else:
            self.tensorboard = SummaryWriter(str(model_dir / WORK_DIR / "tensorboard"))

    def write(self, history: list[dict]) -> None:
        pd.DataFrame(history).to_csv(self.csv, index=False, float_format="%.6g")
        if self.tensorboard is not None:
            last = history[-1]
            for key, value in last.items():
                if key != "epoch" and isinstance(value, float) and math.isfinite(value):
                    self.tensorboard.add_scalar(key, value, last["epoch"])
            self.tensorboard.flush()

    def plot(self, history: list[dict]) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        table = pd.DataFrame(history)
        figure, (loss_axis, val_axis) = plt.subplots(1, 2, figsize=(9, 3.5))
        loss_axis.plot(table["epoch"], table["train_loss"], marker="o")
        loss_axis.set(xlabel="epoch", ylabel="train loss", title="training")
        for column in [c for c in table.columns if c.startswith("val_")]:
            val_axis.plot(table["epoch"], table[column], marker="o", label=column[4:])
        val_axis.set(xlabel="epoch", ylabel="mAP, recall", title="validation (near-duplicates left out)",
                     ylim=(0, 1.02))
        val_axis.legend(loc="lower right")
        figure.tight_layout()
        figure.savefig(self.png, dpi=100)
        plt.close(figure)
