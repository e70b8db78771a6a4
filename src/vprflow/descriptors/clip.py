"""CLIP's image tower as a global descriptor (open_clip), and its text tower for the service.

``model`` is an open_clip architecture; the weights are a ``pretrained`` tag or a local
``checkpoint`` (a state dict), loaded by the rules CLIP cleaning uses
(``vprflow.networks.clip``). ``model_config`` registers an architecture open_clip does
not ship from its JSON file. Image and text embeddings are L2-normalised, so inner
product search is cosine similarity, and a text embedding scores against the same
database vectors the pipeline extracted.

The settings check at config validation is light (no open_clip or torch import): the
weights tag is checked, and the weights loaded, when an extraction job first encodes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image

from ..errors import SettingError
from ..networks.clip import shipped_models, unknown_model_message
from ..registry import one_of
from . import Descriptor

PRECISIONS = ("auto", "fp32", "bf16")
"""Those of ``vprflow.networks.compute``, named here so the check imports no torch."""

ERROR_KEY = "clip"
"""How job-time errors name this descriptor's settings (``clip.pretrained: ...``)."""


class ClipDescriptor(Descriptor):
    name = "clip"
    DEFAULTS = {"model": "ViT-B-32", "pretrained": "openai", "checkpoint": None, "model_config": None,
                "precision": "auto"}

    @staticmethod
    def check(settings: dict[str, Any]) -> None:
        for key in ("model", "pretrained", "checkpoint", "model_config"):
            value = settings[key]
            if not (value is None and key != "model") and not (isinstance(value, str) and value):
                raise SettingError(key, f"must be a non-empty string{'' if key == 'model' else ' or null'}, "
                                        f"got {value!r}")
        if not settings["pretrained"] and not settings["checkpoint"]:
            raise SettingError("pretrained", "set pretrained (an open_clip weights tag) or checkpoint (a local file)")
        for key in ("checkpoint", "model_config"):
            if settings[key] and not Path(settings[key]).is_file():
                raise SettingError(key, f"file not found: {settings[key]}")
        if not settings["model_config"]:
            known = shipped_models()
            if known and settings["model"] not in known:
                raise SettingError("model", unknown_model_message(settings["model"], known))
        one_of(settings, "precision", PRECISIONS)

    def __init__(self, settings: dict[str, Any], model_dir: Path | None = None):
        super().__init__(settings, model_dir)
        self.check(self.settings)
        self._transform = None
        self._network = None  # loaded on first encode, so DataLoader workers never carry it

    def _register(self) -> None:
        from ..networks.clip import register_model_config

        register_model_config(self.settings["model_config"], ERROR_KEY)

    def transform(self):
        if self._transform is None:
            from ..networks.clip import eval_transform

            self._register()
            self._transform = eval_transform(self.settings["model"], self.settings["pretrained"])
        return self._transform

    def network(self):
        """(model, device, bf16), loaded once; ClipUnavailable when the weights cannot be had."""
        if self._network is None:
            from ..logs import log
            from ..networks.clip import check_clip_weights, load_clip
            from ..networks.compute import pick_device, use_bf16

            self._register()
            s = self.settings
            checkpoint = s["checkpoint"]
            check_clip_weights(s["model"], s["pretrained"], checkpoint, ERROR_KEY)
            device = pick_device()
            model, _ = load_clip(s["model"], None if checkpoint else s["pretrained"], checkpoint, str(device),
                                 ERROR_KEY)
            bf16 = use_bf16(s["precision"], device)
            self._network = (model, device, bf16)
            log.info("clip %s (%s) on %s, %s", s["model"], checkpoint or s["pretrained"], device,
                     "bfloat16" if bf16 else "float32")
        return self._network

    def preprocess(self, rgb: np.ndarray) -> np.ndarray:
        return self.transform()(Image.fromarray(rgb)).numpy()

    def encode(self, batch: np.ndarray) -> np.ndarray:
        import torch

        from ..networks.compute import autocast

        model, device, bf16 = self.network()
        with torch.inference_mode(), autocast(device, bf16):
            features = model.encode_image(torch.as_tensor(batch).to(device))
        return torch.nn.functional.normalize(features.float(), dim=-1).cpu().numpy()

    def encode_text(self, texts: Sequence[str]) -> np.ndarray:
        """L2-normalised text embeddings, comparable with :meth:`encode`'s by inner product."""
        import torch

        from ..networks.clip import tokenizer
        from ..networks.compute import autocast

        model, device, bf16 = self.network()
        tokens = tokenizer(self.settings["model"])(list(texts)).to(device)
        with torch.inference_mode(), autocast(device, bf16):
            features = model.encode_text(tokens)
        return torch.nn.functional.normalize(features.float(), dim=-1).cpu().numpy()
