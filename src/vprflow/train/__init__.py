"""Training of descriptors: the CNN training (``cnn``: fitting, fine-tuning objectives,
hard-negative mining, checkpoints and resume) and what every training leaves behind.

A trained model's folder (``results/models/<model>/``) holds ``model.pt`` (what
extraction loads), ``curves.csv``/``curves.png``, ``precision.tsv`` and ``trained.json``
(written last by the train stage), all declared outputs of the train rule; and ``work/``,
the resumable state (checkpoints, the frozen-layer cache), which is deliberately not an
output: Snakemake deletes a job's outputs before running it again, and a rerun after a
kill resumes from there.
"""

MODEL_FILE = "model.pt"
WORK_DIR = "work"
