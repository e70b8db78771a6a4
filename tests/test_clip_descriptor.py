"""The ``clip`` descriptor on a tiny, randomly initialised open_clip model: its settings check
(light: no open_clip or torch import), its preprocessing and both towers against open_clip
called directly, and the weight-loading errors it shares with CLIP cleaning."""

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from vprflow.descriptors import load, settings_of
from vprflow.errors import InputError
from vprflow.networks.clip import ClipUnavailable, eval_transform, shipped_models

TINY_MODEL = "vprflow-test-descriptor-clip"


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    import open_clip
    import torch

    folder = tmp_path_factory.mktemp("clip_descriptor")
    config = {"embed_dim": 16,
              "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 16},
              "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}
    model_config = folder / f"{TINY_MODEL}.json"
    model_config.write_text(json.dumps(config))
    open_clip.add_model_config(model_config)
    torch.manual_seed(0)
    checkpoint = folder / "weights.pt"
    torch.save(open_clip.create_model(TINY_MODEL).state_dict(), checkpoint)
    settings = {"descriptor": "clip", "model": TINY_MODEL, "model_config": str(model_config),
                "checkpoint": str(checkpoint), "pretrained": None, "precision": "fp32"}
    return settings, checkpoint


def test_the_settings_check_imports_neither_open_clip_nor_torch(tiny_clip):
    settings, _ = tiny_clip
    script = ("import sys, json; from vprflow.descriptors import settings_of; "
              f"settings_of('c', json.loads({json.dumps(json.dumps(settings))})); "
              "settings_of('d', {'descriptor': 'clip', 'model': 'ViT-B-32', 'pretrained': 'openai'}); "
              "print(sorted(m for m in ('open_clip', 'torch') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


@pytest.mark.parametrize("change, message", [
    ({"model": "ViT-B-32-typo", "model_config": None}, r"^models\.c\.model: unknown open_clip model 'ViT-B-32-typo'; did you mean"),
    ({"checkpoint": "/nowhere/weights.pt"}, r"^models\.c\.checkpoint: file not found: /nowhere/weights\.pt"),
    ({"checkpoint": None, "pretrained": None}, r"^models\.c\.pretrained: set pretrained .* or checkpoint"),
    ({"model_config": "/nowhere/arch.json"}, r"^models\.c\.model_config: file not found"),
    ({"precision": "fp8"}, r"^models\.c\.precision: unknown 'fp8'"),
    ({"model": ""}, r"^models\.c\.model: must be a non-empty string"),
])
def test_bad_settings_name_the_key(tiny_clip, change, message):
    settings, _ = tiny_clip
    with pytest.raises(InputError, match=message):
        settings_of("c", {**settings, **change})


def test_shipped_models_are_what_open_clip_lists():
    import open_clip

    listed = set(open_clip.list_models())
    assert "ViT-B-32" in shipped_models() and set(shipped_models()) <= listed
    assert all(name.startswith("vprflow-test-") for name in listed - set(shipped_models()))  # added by tests


def test_the_transform_is_open_clips_own(tiny_clip):
    import open_clip

    _, checkpoint = tiny_clip
    rgb = np.random.default_rng(0).integers(0, 256, (90, 140, 3), dtype=np.uint8)
    _, _, preprocess = open_clip.create_model_and_transforms(TINY_MODEL, pretrained=str(checkpoint))
    expected = preprocess(Image.fromarray(rgb)).numpy()
    np.testing.assert_allclose(eval_transform(TINY_MODEL, None)(Image.fromarray(rgb)).numpy(), expected)
    # a weights tag brings its normalisation (OpenAI's for ViT-B-32/openai), without downloading anything
    normalise = eval_transform("ViT-B-32", "openai").transforms[-1]
    assert tuple(normalise.mean) == open_clip.get_pretrained_cfg("ViT-B-32", "openai")["mean"]
    assert tuple(eval_transform("ViT-B-16-SigLIP", "webli").transforms[-1].mean) == (0.5, 0.5, 0.5)


def test_both_towers_are_open_clips_normalised(tiny_clip, tiny_world):
    import open_clip
    import torch

    settings, checkpoint = tiny_clip
    root, listing = tiny_world
    rgbs = [np.asarray(Image.open(root / path).convert("RGB")) for path in listing["path"][:3]]
    descriptor = load(settings_of("c", settings))
    vectors = descriptor.encode(np.stack([descriptor.preprocess(rgb) for rgb in rgbs]))
    texts = descriptor.encode_text(["a street", "a red house"])

    model, _, preprocess = open_clip.create_model_and_transforms(TINY_MODEL, pretrained=str(checkpoint))
    with torch.no_grad():
        images = model.encode_image(torch.stack([preprocess(Image.fromarray(rgb)) for rgb in rgbs]))
        words = model.encode_text(open_clip.get_tokenizer(TINY_MODEL)(["a street", "a red house"]))
    np.testing.assert_allclose(vectors, torch.nn.functional.normalize(images, dim=-1).numpy(), atol=1e-5)
    np.testing.assert_allclose(texts, torch.nn.functional.normalize(words, dim=-1).numpy(), atol=1e-5)
    assert vectors.shape == (3, 16) and vectors.dtype == np.float32


def test_offline_weights_are_named(monkeypatch, tiny_world):
    import open_clip.factory

    def fail(*args, **kwargs):
        raise RuntimeError("Name or service not known")

    monkeypatch.setattr(open_clip.factory, "download_pretrained", fail)
    root, listing = tiny_world
    descriptor = load(settings_of("c", {"descriptor": "clip", "model": "RN50", "pretrained": "openai"}))
    rgb = np.asarray(Image.open(root / listing["path"][0]).convert("RGB"))
    with pytest.raises(ClipUnavailable, match=r"^clip\.pretrained: cannot load CLIP weights 'openai' for RN50.*"
                                              r"set clip\.checkpoint"):
        descriptor.encode(descriptor.preprocess(rgb)[None])
    with pytest.raises(InputError, match=r"^clip\.pretrained: 'nonsense' is not a pretrained tag of RN50"):
        load(settings_of("c", {"descriptor": "clip", "model": "RN50", "pretrained": "nonsense"})).encode_text(["x"])
