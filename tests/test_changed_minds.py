"""Reruns after a change of mind: random weights that stay the same, checkpoints from other
settings, a user's config file that replaces the demo's methods."""

import numpy as np
import pytest
import torch

UNTRAINED = {"backbone": "resnet18", "weights": "none", "pooling": "gem", "width": 64, "height": 48,
             "precision": "fp32"}


def encode(settings, images):
    from vprflow.descriptors.cnn import CNNDescriptor

    descriptor = CNNDescriptor(settings)
    return descriptor.encode(np.stack([descriptor.preprocess(image) for image in images]))


def test_random_weights_follow_the_seed():
    # Before: every extraction job drew fresh random weights, so shards (and runs) were encoded by
    # different networks: vectors differed by up to 0.16.
    images = np.random.default_rng(0).integers(0, 255, (3, 48, 64, 3), dtype=np.uint8)
    torch.manual_seed(123)  # whatever the caller's random state, the model's seed decides
    first = encode(UNTRAINED, images)
    torch.manual_seed(456)
    second = encode(UNTRAINED, images)
    np.testing.assert_array_equal(first, second)
    other_seed = encode({**UNTRAINED, "seed": 1}, images)
    assert np.abs(first - other_seed).max() > 1e-3


def test_building_a_seeded_network_leaves_the_callers_random_state_alone():
    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    encode(UNTRAINED, np.zeros((1, 48, 64, 3), np.uint8))
    np.testing.assert_array_equal(torch.rand(3), expected)


# --------------------------------------------------------------------------- checkpoints from other settings

CNN = {"descriptor": "cnn", "backbone": "mobilenet_v3_small", "weights": "none", "width": 64, "height": 48,
       "precision": "fp32", "negatives": 3, "pooling": "netvlad", "clusters": 4, "train": "triplet", "epochs": 1}


def train(tiny_tables, settings, out, caplog):
    import logging

    from vprflow import stages

    root, folder, _ = tiny_tables
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="vprflow"):
        stages.train(manifest=folder / "manifest.parquet", clean=folder / "clean.parquet",
                     split=folder / "split.parquet", settings=settings, root=root, workers=0, threads=1,
                     **stages.train_outputs(out))
    return caplog.text


def test_a_whitening_size_that_failed_then_fits_resumes_the_finished_training(tiny_tables, tmp_path, caplog):
    # Before: dim 4096 failed after the epochs (more PCA directions than training images), then
    # dim 8 loaded the old last.pt and died: "size mismatch for whitening.projection".
    import json

    from vprflow.errors import InputError

    with pytest.raises(InputError, match=r"models\.m\.dim: 4096 is more than"):
        train(tiny_tables, {**CNN, "dim": 4096}, tmp_path / "m", caplog)
    assert (tmp_path / "m" / "work" / "last.pt").is_file()
    text = train(tiny_tables, {**CNN, "dim": 8}, tmp_path / "m", caplog)
    assert "resumed from" in text and "after epoch 1" in text  # the epochs already run are not lost
    record = json.loads((tmp_path / "m" / "trained.json").read_text())
    assert record["out_dim"] == 8 and record["epochs_run"] == 1


def test_a_checkpoint_from_other_settings_is_set_aside_and_training_starts_afresh(tiny_tables, tmp_path, caplog):
    from vprflow.networks.network import load_checkpoint

    out = tmp_path / "m"
    train(tiny_tables, CNN, out, caplog)
    text = train(tiny_tables, {**CNN, "margin": 0.2}, out, caplog)  # the loss changes: epochs done do not carry over
    assert "made with other settings (margin: 0.1 -> 0.2)" in text and "training afresh" in text
    assert "resumed from" not in text
    aside = out / "work" / "last.set-aside.pt"
    assert load_checkpoint(aside)["settings"]["margin"] == 0.1  # kept, not overwritten
    assert load_checkpoint(out / "work" / "last.pt")["settings"]["margin"] == 0.2


def test_an_unreadable_checkpoint_is_set_aside(tiny_tables, tmp_path, caplog):
    out = tmp_path / "m"
    (out / "work").mkdir(parents=True)
    (out / "work" / "last.pt").write_bytes(b"cut off by a full disk")
    text = train(tiny_tables, CNN, out, caplog)
    assert "cannot be resumed" in text and "set aside as" in text and "training afresh" in text
    assert (out / "work" / "last.set-aside.pt").read_bytes() == b"cut off by a full disk"
    assert (out / "trained.json").is_file()


def test_a_checkpoint_whose_network_does_not_fit_is_set_aside(tiny_tables, tmp_path, caplog):
    """Same fingerprint, other tensor shapes (a checkpoint written by an older version): set aside."""
    import torch

    from vprflow.networks.network import load_checkpoint

    out = tmp_path / "m"
    train(tiny_tables, CNN, out, caplog)
    last = out / "work" / "last.pt"
    checkpoint = load_checkpoint(last)
    checkpoint["network"]["pooling.centroids"] = torch.zeros(7, 3)
    torch.save(checkpoint, last)
    text = train(tiny_tables, CNN, out, caplog)
    assert "cannot be resumed" in text and "pooling.centroids" in text and "training afresh" in text


# --------------------------------------------------------------------------- a user's config file

def test_the_users_named_sections_replace_the_workflows():
    from vprflow.config import with_user_sections

    workflow = {"models": {"tiny": {"descriptor": "tiny_image"}, "netvlad": {"descriptor": "cnn"}},
                "searches": {"exact": {"backend": "exact"}}, "split": {"seed": 0}}
    # What Snakemake makes of --configfile: the user's file merged into config.yaml key by key.
    merged = {**workflow, "models": {**workflow["models"], "mine": {"descriptor": "tiny_image", "width": 8}},
              "split": {"seed": 3}}
    user = {"models": {"mine": {"descriptor": "tiny_image", "width": 8}}, "split": {"seed": 3}}
    config = with_user_sections(merged, user)
    assert config["models"] == {"mine": {"descriptor": "tiny_image", "width": 8}}  # only the user's
    assert config["searches"] == workflow["searches"]  # not named by the user: the workflow's
    assert config["split"] == {"seed": 3}  # other sections stay merged as Snakemake does
    assert with_user_sections(workflow, {}) == workflow
    # The workflow's re-ranking steps that name its models go with them; a step naming none stays.
    steps = {"sv": {"method": "local", "features": "sift"}, "fuse": {"method": "fusion", "models": {"tiny": 1}},
             "label": {"method": "label"}}
    config = with_user_sections({**merged, "reranks": steps}, user)
    assert config["reranks"] == {"label": {"method": "label"}}
    assert with_user_sections({**merged, "reranks": steps}, {**user, "reranks": {}})["reranks"] == {}


def jobs_planned_in(clone, *args):
    import re
    import subprocess

    from conftest import SNAKEMAKE

    result = subprocess.run(SNAKEMAKE + ["-n", "--quiet", "rules", *args], cwd=clone, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return {rule: int(n) for rule, n in re.findall(r"^(\w+)\s+(\d+)$", result.stdout + result.stderr, re.MULTILINE)
            if rule != "total"}


@pytest.mark.e2e
def test_configfile_from_the_repository_root_runs_only_the_users_methods(tmp_path):
    # Before: one model named in my.yaml planned 4 extractions, 2 trainings and 8 searches: the
    # demo's three models beside it.
    import yaml

    from conftest import repository_copy

    clone = repository_copy(tmp_path)
    (clone / "my.yaml").write_text(yaml.safe_dump({
        "models": {"mine": {"descriptor": "tiny_image", "width": 16, "height": 12}},
        "searches": {"flat": {"backend": "exact", "metric": "l2", "k": 5}}}))
    mine = jobs_planned_in(clone, "--configfile", "my.yaml")
    assert (mine["extract"], mine["build_index"], mine["evaluate"]) == (1, 1, 1) and "train" not in mine
    # Without --configfile: the demo: three global models (tiny; netvlad and rootsift_vlad trained),
    # two local ones (sift; delf trained) that are not searched, two searches, each re-ranked by
    # the two local steps: 3 x 2 indexes, 3 x 2 x 3 rankings evaluated.
    demo = jobs_planned_in(clone)
    assert (demo["extract"], demo["train"], demo["build_index"], demo["evaluate"]) == (3, 3, 6, 18)
    assert demo["extract_local"] == 2  # sift and delf, on the demo's one shard


@pytest.mark.e2e
def test_a_step_with_apply_to_re_ranks_only_the_rankings_of_its_models(tmp_path):
    """Two verification steps over two models, one of them for ``tiny`` only: 3 re-rankings
    (tiny and rootsift_vlad by ``sv``, tiny by ``sv_weak``), 5 rankings evaluated (2 searches'
    + 3), 3 match pictures; not 4, 6 and 4 as without ``apply_to``."""
    import yaml

    from conftest import repository_copy

    clone = repository_copy(tmp_path)
    (clone / "my.yaml").write_text(yaml.safe_dump({
        "models": {"tiny": {"descriptor": "tiny_image", "width": 16, "height": 12},
                   "rootsift_vlad": {"descriptor": "rootsift_vlad"}, "sift": {"descriptor": "sift"}},
        "searches": {"flat": {"backend": "exact", "k": 5}},
        "reranks": {"sv": {"method": "local", "features": "sift"},
                    "sv_weak": {"method": "local", "features": "sift", "inlier_weight": 3, "min_inliers": 10,
                                "apply_to": ["tiny"]}}}))
    planned = jobs_planned_in(clone, "--configfile", "my.yaml")
    assert (planned["rerank"], planned["evaluate"], planned["match_pictures"]) == (3, 5, 3)
