"""CLIP zero-shot classification against configurable prompts, on open_clip.

Each image gets a probability per prompt (a softmax over all prompts); the decision
step drops it when a ``drop`` class passes the threshold. The weights come from an
open_clip tag (downloaded once into the Hugging Face cache) or a local file, by the
rules of ``vprflow.networks.clip``.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from ..networks.clip import ClipUnavailable, load_clip, resolve_device, tokenizer

__all__ = ["ClipClassifier", "ClipUnavailable", "resolve_device"]


class ClipClassifier:
    def __init__(self, clip: dict[str, Any], device: str):
        import torch

        model, preprocess = load_clip(clip["model"], clip["pretrained"], clip["checkpoint"], device, "clean.clip")
        self.model, self.preprocess, self.device = model, preprocess, device
        self.labels = list(clip["prompts"])
        tokens = tokenizer(clip["model"])([clip["prompts"][label] for label in self.labels])
        with torch.inference_mode():
            text = model.encode_text(tokens.to(device))
            self.text_features = torch.nn.functional.normalize(text.float(), dim=-1)
            self.logit_scale = model.logit_scale.exp().float()

    def probabilities(self, images: Sequence) -> np.ndarray:
        """(n, n_prompts) class probabilities for preprocessed image tensors."""
        import torch

        with torch.inference_mode():
            batch = torch.stack(list(images)).to(self.device, non_blocking=True)
            features = torch.nn.functional.normalize(self.model.encode_image(batch).float(), dim=-1)
            logits = self.logit_scale * features @ self.text_features.T
            return logits.softmax(dim=-1).cpu().numpy()
