"""faiss on the GPU where its build has GPU support and sees one, else on the CPU, decided at
run time and logged. No GPU here: the GPU path is checked by standing in for the calls of a
GPU build of faiss (its resources, its GPU count, the copy to the GPU), the CPU path as it is."""

from __future__ import annotations

import logging

import faiss
import numpy as np
import pytest

from vprflow import faiss_gpu, vectors
from vprflow.search import exact


@pytest.fixture(autouse=True)
def fresh_decision():
    faiss_gpu.faiss_gpus.cache_clear()
    faiss_gpu._resources.cache_clear()
    yield
    faiss_gpu.faiss_gpus.cache_clear()
    faiss_gpu._resources.cache_clear()


@pytest.fixture
def gpu_build(monkeypatch):
    """faiss as a GPU build with one visible GPU: copies to the GPU are recorded (and stay CPU indexes)."""
    copies = []

    def index_cpu_to_gpu(resources, device, index):
        if isinstance(index, faiss.IndexHNSW):
            raise RuntimeError("Error in virtual faiss::Index* ... \nRuntimeError: HNSW has no GPU version")
        copies.append((resources, device, index))
        return index

    monkeypatch.setattr(faiss, "StandardGpuResources", object, raising=False)
    monkeypatch.setattr(faiss, "get_num_gpus", lambda: 1)
    monkeypatch.setattr(faiss, "index_cpu_to_gpu", index_cpu_to_gpu, raising=False)
    return copies


def test_a_cpu_build_searches_on_the_cpu_and_says_why(caplog):
    if hasattr(faiss, "StandardGpuResources"):
        pytest.skip("this faiss build has GPU support")
    caplog.set_level(logging.INFO, logger="vprflow")
    index = faiss.IndexFlatL2(4)
    assert faiss_gpu.to_gpu(index) is index
    assert faiss_gpu.faiss_gpus() == 0
    assert "computes on the CPU: this build has no GPU support" in caplog.text


def test_a_gpu_build_with_a_gpu_searches_there(gpu_build, caplog):
    caplog.set_level(logging.INFO, logger="vprflow")
    database = np.random.default_rng(0).random((50, 8), dtype=np.float32)
    searcher = exact.load({"metric": "l2"}, None, database)
    assert [(device, type(index)) for _, device, index in gpu_build] == [(0, faiss.IndexFlat)]
    assert searcher.search(database[:3], 1)[1][:, 0].tolist() == [0, 1, 2]
    assert "computes on the GPU: 1 visible" in caplog.text


def test_an_index_without_a_gpu_version_stays_on_the_cpu(gpu_build, caplog):
    caplog.set_level(logging.INFO, logger="vprflow")
    hnsw = faiss.IndexHNSWFlat(8, 4)
    assert faiss_gpu.to_gpu(hnsw) is hnsw and not gpu_build
    assert "IndexHNSWFlat has no GPU version (RuntimeError: HNSW has no GPU version)" in caplog.text


def test_a_gpu_build_without_a_visible_gpu_stays_on_the_cpu(gpu_build, monkeypatch, caplog):
    monkeypatch.setattr(faiss, "get_num_gpus", lambda: 0)
    caplog.set_level(logging.INFO, logger="vprflow")
    index = faiss.IndexFlatL2(4)
    assert faiss_gpu.to_gpu(index) is index and not gpu_build
    assert "built with GPU support, but no GPU is visible" in caplog.text


def test_kmeans_asks_for_the_gpus_faiss_has(monkeypatch):
    asked = []

    def index_cpu_to_all_gpus(index, ngpu):
        asked.append(ngpu)
        return index  # stand-in: the clustering itself runs on the CPU index

    monkeypatch.setattr(faiss, "index_cpu_to_all_gpus", index_cpu_to_all_gpus, raising=False)
    samples = np.random.default_rng(0).random((500, 4), dtype=np.float32)
    monkeypatch.setattr(vectors, "faiss_gpus", lambda: 2)
    assert vectors.kmeans_centroids(samples, 8, iterations=2, seed=0).shape == (8, 4)
    monkeypatch.setattr(vectors, "faiss_gpus", lambda: 0)
    vectors.kmeans_centroids(samples, 8, iterations=2, seed=0)
    assert asked == [2]
