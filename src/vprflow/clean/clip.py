"""CLIP zero-shot classification against configurable prompts, on open_clip.

Each image gets a probability per prompt (a softmax over all prompts); the decision
step drops it when a ``drop`` class passes the threshold. The weights come from an
open_clip tag (downloaded once into the Hugging Face cache) or a local file.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from ..errors import InputError


class ClipUnavailable(InputError):
    """The CLIP weights cannot be loaded (no network for a tag, an unusable file)."""


def resolve_device(name: str) -> str:
    """``auto``: the GPU when there is one, else the CPU; chosen when the job runs."""
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


class ClipClassifier:
    def __init__(self, clip: dict[str, Any], device: str):
        import open_clip
        import torch

        if clip["checkpoint"]:
            key, weights = "clean.clip.checkpoint", clip["checkpoint"]
            hint = "is it a state dict of this model?"
        else:
            key, weights = "clean.clip.pretrained", clip["pretrained"]
            hint = ("without network access, fetch the weights where there is one (they are cached under "
                    "~/.cache/huggingface) or download them and set clean.clip.checkpoint to the file")
        try:
            model, _, preprocess = open_clip.create_model_and_transforms(clip["model"], pretrained=weights,
                                                                         device=device)
        except Exception as error:  # open_clip wraps download and load failures in assorted types
            raise ClipUnavailable(f"{key}: cannot load CLIP weights {weights!r} for {clip['model']}: "
                                  f"{error}; {hint}") from None
        model.eval()
        self.model, self.preprocess, self.device = model, preprocess, device
        self.labels = list(clip["prompts"])
        tokenizer = open_clip.get_tokenizer(clip["model"])
        with torch.inference_mode():
            text = model.encode_text(tokenizer([clip["prompts"][label] for label in self.labels]).to(device))
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
