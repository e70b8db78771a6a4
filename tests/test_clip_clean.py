"""The CLIP path end to end with a tiny, randomly initialised open_clip model.

The weights are random, so the probabilities mean nothing: these tests check the
plumbing (loading a checkpoint, prompts, batching, columns, threshold, errors).
"""

import json
import logging

import numpy as np
import pandas as pd
import pytest
from conftest import clean_decide as decide
from conftest import clean_score_shard as score_shard
from PIL import Image

from vprflow import images, stages
from vprflow.clean.clip import ClipClassifier, ClipUnavailable
from vprflow.clean.settings import check_clean_settings
from vprflow.errors import InputError
from vprflow.manifest import build_manifest_shard

TINY_MODEL = "vprflow-test-tiny-clip"
PROMPTS = {"bw": "a black and white photo", "grid": "a collage of several photos", "street": "a photo of a street"}


def resolve_method(settings, record):
    return stages.clean_method(settings=settings, method=record)


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    """A tiny architecture registered with open_clip, its random weights saved as a state dict."""
    import open_clip
    import torch

    folder = tmp_path_factory.mktemp("tiny_clip")
    config = {"embed_dim": 16,
              "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 16},
              "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}
    (folder / f"{TINY_MODEL}.json").write_text(json.dumps(config))
    open_clip.add_model_config(folder / f"{TINY_MODEL}.json")
    torch.manual_seed(0)
    checkpoint = folder / "tiny.pt"
    torch.save(open_clip.create_model(TINY_MODEL).state_dict(), checkpoint)
    return checkpoint


@pytest.fixture(scope="module")
def tiny_manifest(tiny_world, tmp_path_factory):
    root, listing = tiny_world
    manifest, _ = build_manifest_shard(root, listing, range(len(listing)), workers=0)
    manifest.insert(1, "shard", 0)  # one shard, as the workflow's manifest names it
    path = tmp_path_factory.mktemp("clip_manifest") / "manifest.parquet"
    manifest.to_parquet(path)
    return root, path, manifest


def clip_settings(checkpoint, **clip) -> dict:
    return {"method": "clip", "duplicates": {"max_distance": None},
            "clip": {"model": TINY_MODEL, "checkpoint": str(checkpoint), "pretrained": None, "prompts": PROMPTS,
                     "drop": ["bw", "grid"], "device": "auto", **clip}}


def test_clip_scores_and_decisions_end_to_end(tiny_checkpoint, tiny_manifest, tmp_path):
    root, manifest_path, manifest = tiny_manifest
    settings = clip_settings(tiny_checkpoint)
    record = tmp_path / "method.json"
    assert resolve_method(settings, record) == "clip"
    scores_path = tmp_path / "scores.parquet"
    score_shard(manifest_path, root, 0, settings, scores_path, batch_size=16, workers=1, method_record=record)
    scores = pd.read_parquet(scores_path)
    probabilities = scores[["clip_bw", "clip_grid", "clip_street"]].to_numpy()
    assert len(scores) == len(manifest) and (scores["error"] == "").all()
    assert ((probabilities >= 0) & (probabilities <= 1)).all()
    assert np.allclose(probabilities.sum(axis=1), 1, atol=1e-5)

    # With random weights, a threshold at the median drop probability drops about half.
    best_drop = scores[["clip_bw", "clip_grid"]].max(axis=1)
    threshold = float(best_drop.median())
    table = decide(manifest_path, [scores_path], root, clip_settings(tiny_checkpoint, threshold=threshold),
                   tmp_path / "clean.parquet", tmp_path / "sheet.png", tmp_path / "clean.tsv")
    assert list(table.columns) == ["image_id", "chroma", "seam", "clip_bw", "clip_grid", "clip_street", "keep",
                                   "reason"]
    merged = table.merge(scores[["image_id"]].assign(best=best_drop), on="image_id")
    assert (merged["keep"] == (merged["best"] < threshold)).all()
    expected = np.where(merged["clip_bw"] >= merged["clip_grid"], "clip:" + PROMPTS["bw"], "clip:" + PROMPTS["grid"])
    assert (merged.loc[~merged["keep"], "reason"] == expected[~merged["keep"]]).all()
    # no truth column is mapped to the labels bw/grid, so nothing to score
    assert len(pd.read_csv(tmp_path / "clean.tsv", sep="\t")) == 0


def test_prompts_reach_the_text_encoder(tiny_checkpoint, tiny_world):
    root, _ = tiny_world
    rgb = images.read_rgb(root / "database" / "d00000.jpg")
    settings = check_clean_settings(clip_settings(tiny_checkpoint))["clip"]
    first = ClipClassifier(settings, "cpu")
    second = ClipClassifier({**settings, "prompts": {**PROMPTS, "bw": "a dog"}}, "cpu")
    batch = [first.preprocess(Image.fromarray(rgb))]
    assert first.labels == ["bw", "grid", "street"]
    assert not np.allclose(first.probabilities(batch), second.probabilities(batch))


@pytest.fixture
def no_image_reads(monkeypatch):
    opened = []
    monkeypatch.setattr(images, "read_rgb", lambda path: opened.append(path))
    return opened


def manifest_of_missing_files(tmp_path):
    path = tmp_path / "manifest.parquet"
    pd.DataFrame({"image_id": ["a", "b"], "shard": 0, "path": ["nowhere/a.jpg", "nowhere/b.jpg"]}).to_parquet(path)
    return path


@pytest.mark.parametrize("method", ["clip", "auto"])
def test_a_wrong_model_name_stops_before_any_image_is_read(tmp_path, no_image_reads, method):
    settings = {"method": method, "clip": {"model": "ViT-B-32-typo", "pretrained": "openai"}}
    with pytest.raises(InputError, match=r"clean\.clip\.model: unknown open_clip model 'ViT-B-32-typo'; did you mean"):
        score_shard(manifest_of_missing_files(tmp_path), tmp_path, 0, settings, tmp_path / "scores.parquet",
                    workers=0)
    assert no_image_reads == [] and not (tmp_path / "scores.parquet").exists()


@pytest.mark.parametrize("method", ["clip", "auto"])
def test_a_missing_checkpoint_stops_before_any_image_is_read(tmp_path, no_image_reads, method):
    settings = {"method": method, "clip": {"model": "ViT-B-32", "checkpoint": str(tmp_path / "gone.pt")}}
    with pytest.raises(InputError, match=r"clean\.clip\.checkpoint: file not found: .*gone\.pt"):
        score_shard(manifest_of_missing_files(tmp_path), tmp_path, 0, settings, tmp_path / "scores.parquet",
                    workers=0)
    assert no_image_reads == []


def test_a_wrong_pretrained_tag_is_named():
    with pytest.raises(InputError, match=r"clean\.clip\.pretrained: 'nonsense' is not a pretrained tag of RN50"):
        check_clean_settings({"method": "clip", "clip": {"model": "RN50", "pretrained": "nonsense"}})


@pytest.fixture
def offline(monkeypatch):
    """Weights behind a tag cannot be fetched, as on a machine without network."""
    import open_clip.factory

    def fail(*args, **kwargs):
        raise RuntimeError("Name or service not known")

    monkeypatch.setattr(open_clip.factory, "download_pretrained", fail)


def test_offline_clip_names_the_weights_key(offline, tmp_path):
    settings = {"method": "clip", "clip": {"model": "RN50", "pretrained": "openai"}}
    with pytest.raises(ClipUnavailable, match=r"clean\.clip\.pretrained: cannot load CLIP weights 'openai'.*"
                                              r"clean\.clip\.checkpoint"):
        resolve_method(settings, tmp_path / "method.json")


def test_offline_auto_falls_back_to_the_fast_detectors_and_says_so(offline, tiny_manifest, tmp_path, caplog):
    root, manifest_path, manifest = tiny_manifest
    settings = {"method": "auto", "clip": {"model": "RN50", "pretrained": "openai"}}
    with caplog.at_level(logging.WARNING, logger="vprflow"):
        assert resolve_method(settings, tmp_path / "method.json") == "fast"
    assert any("falling back to the fast detectors" in r.message for r in caplog.records)
    score_shard(manifest_path, root, 0, settings, tmp_path / "scores.parquet", workers=0,
                method_record=tmp_path / "method.json")
    table = decide(manifest_path, [tmp_path / "scores.parquet"], root, settings, tmp_path / "clean.parquet",
                   tmp_path / "sheet.png", tmp_path / "clean.tsv")
    assert set(table.loc[~table["keep"], "reason"]) == {"grayscale", "collage"}
    report = pd.read_csv(tmp_path / "clean.tsv", sep="\t")
    assert list(report["detector"]) == ["grayscale", "collage"]


def test_clip_decisions_need_clip_scores(tiny_checkpoint, tiny_manifest, tmp_path):
    root, manifest_path, _ = tiny_manifest
    score_shard(manifest_path, root, 0, {"method": "fast"}, tmp_path / "scores.parquet", workers=0)
    with pytest.raises(ClipUnavailable, match=r"scores lack CLIP probabilities .*rerun the clean scoring"):
        decide(manifest_path, [tmp_path / "scores.parquet"], root, clip_settings(tiny_checkpoint),
               tmp_path / "clean.parquet", tmp_path / "sheet.png", tmp_path / "clean.tsv")
