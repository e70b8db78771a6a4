"""The cleaning methods by name (``clean.method``), each an object of :class:`CleaningMethod`.

* ``none``: keep everything, read no pixels;
* ``fast``: weight-free detectors (chroma spread, collage seams) and perceptual-hash
  near-duplicates;
* ``clip``: CLIP zero-shot on the prompts instead of the two detectors; fails without weights;
* ``auto``: ``clip`` when its weights load, else ``fast`` (decided once, logged).

The ``clean`` section's defaults are in the config schema (and ``settings.DEFAULT_SETTINGS``);
a method checks the part it reads.
"""

from __future__ import annotations

from typing import Any


class CleaningMethod:
    def __init__(self, name: str, reads_pixels: bool, uses_clip: bool, falls_back: bool = False):
        self.name = name
        self.reads_pixels = reads_pixels  # scores every image (else: keeps all, no decoding)
        self.uses_clip = uses_clip  # loads the CLIP classifier (and may want a GPU)
        self.falls_back = falls_back  # CLIP unavailable: the fast detectors instead of an error

    def check(self, settings: dict[str, Any]) -> None:
        """Model name, weights and prompts of the CLIP detector (imports open_clip, reads no weights)."""
        if self.uses_clip:
            from .settings import check_clip_settings

            check_clip_settings(settings["clip"])

    def scoring_settings(self, settings: dict[str, Any]) -> dict[str, Any]:
        """The settings the per-shard scores depend on (thresholds only change the decision)."""
        if not self.uses_clip:
            return {"method": self.name}
        return {"method": self.name, "clip": {k: v for k, v in settings["clip"].items() if k != "threshold"}}


NONE = CleaningMethod("none", reads_pixels=False, uses_clip=False)
FAST = CleaningMethod("fast", reads_pixels=True, uses_clip=False)
CLIP = CleaningMethod("clip", reads_pixels=True, uses_clip=True)
AUTO = CleaningMethod("auto", reads_pixels=True, uses_clip=True, falls_back=True)
