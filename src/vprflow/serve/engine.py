"""What answers queries: the model, the index and the database loaded once per process.

``ImageSearch.run`` takes a batch of decoded images and does one forward pass and one
search call for all of them (the micro-batcher gives it the requests that arrived
together). Results follow the pipeline's rules: the same descriptor and index, database
images the masks exclude never returned, the pose by top-1 and by consensus
(``vprflow.pose``).
"""

from __future__ import annotations

import ctypes
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from ..descriptors import load as load_descriptor
from ..logs import log
from ..pose import consensus_of
from ..search import BACKENDS
from ..tables import positions_m
from .bundle import GROUP, Bundle
from .text import ClipEngine, Match, NgramEngine, NgramIndex

EARTH_RADIUS_M = 6_371_000.0
HEAD_TOP = 5


def _number(value) -> float | None:
    return None if value is None or pd.isna(value) else float(value)


def _text(value) -> str | None:
    return None if value is None or pd.isna(value) else str(value)


def _malloc_trim():
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None


_TRIM = _malloc_trim()


def resident_mb() -> float:
    """This process's resident memory (Linux /proc; 0 where unavailable)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return 0.0


def release_free_memory() -> None:
    """Give freed heap memory back to the system (glibc's malloc_trim)."""
    if _TRIM is not None:
        _TRIM(0)


class MemoryKeeper:
    """When the service gives freed memory back. Batches of every size allocate activations
    of every size, and without releasing, the server's memory grew by steps; but releasing
    after every batch cost a single query ~10 ms (the demo's forward pass + search 17 -> 28
    ms: the next pass faults its pages back in). So: once per idle spell (``when_idle``,
    which also sets the idle level), and after a batch only when resident memory is more
    than ``slack`` above that level (``after_batch``)."""

    def __init__(self, slack: float = 0.10):
        self.slack = slack
        self.idle_level: float | None = None
        self.releases = {"idle": 0, "after_batch": 0}

    def when_idle(self) -> None:
        release_free_memory()
        self.releases["idle"] += 1
        self.idle_level = resident_mb()

    def after_batch(self) -> None:
        if self.idle_level is None:
            self.idle_level = resident_mb()
        elif resident_mb() > self.idle_level * (1 + self.slack):
            release_free_memory()
            self.releases["after_batch"] += 1


@dataclass
class ImageAnswer:
    """One query image's answer: database rows and scores best first, pose, head labels."""

    rows: list[int]
    scores: list[float]
    pose: dict[str, Any]
    labels: dict[str, list] = field(default_factory=dict)


class ImageSearch:
    def __init__(self, bundle: Bundle):
        record = bundle.record
        self.bundle = bundle
        self.database = bundle.database.reset_index(drop=True)
        self.descriptor = load_descriptor(record["model_settings"], bundle.file("model_dir"))
        matrix = np.load(bundle.file("vectors"), mmap_mode="r")
        vectors = np.asarray(matrix[self.database["vector_row"].to_numpy()], dtype=np.float32)
        settings = record["search_settings"]
        self.searcher = BACKENDS.get(settings["backend"]).load(settings, bundle.file("index_dir"), vectors)
        self.max_k = int(settings["k"])
        self.excluded = set(np.flatnonzero(self.database["excluded"].to_numpy()).tolist())
        self.pose_settings = record["pose"]
        # metres, lat/lon projected around their mean; indexed by database row, as answers name them
        self.positions = np.asarray(positions_m(self.database), dtype=float)
        self.records = [{"id": image.image_id, "place": _text(image.place), "name": _text(image.name),
                         "category": _text(image.category), **{c: _number(getattr(image, c))
                                                               for c in ("x", "y", "lat", "lon", "yaw")},
                         "thumbnail": f"/thumbnails/{image.image_id}"} for image in self.database.itertuples()]
        lat = self.database["lat"].to_numpy(dtype="float64", na_value=np.nan)
        has_xy = self.database[["x", "y"]].notna().all(axis=1).any()
        self.lat0 = float(np.nanmean(lat)) if np.isfinite(lat).any() and not has_xy else None  # None: x/y
        self.lock = threading.Lock()  # one forward pass at a time: the batcher's, or a warm-up
        self.memory = MemoryKeeper()
        self.heads: list[str] = []

    def warm_up(self, rgb: np.ndarray) -> None:
        """One query through the whole path, so the first request does not pay for lazy loading."""
        answer = self.run([self.descriptor.preprocess(rgb)], 1)[0]
        self.heads = sorted(answer.labels)
        log.info("service ready: %s/%s, %d database images, heads: %s", self.bundle.record["model"],
                 self.bundle.record["search"], len(self.database), ", ".join(self.heads) or "none")

    def run(self, inputs: Sequence[np.ndarray], k: int) -> list[ImageAnswer]:
        """At least the top ``k`` for each preprocessed image (trim to each request's own k), with
        one encode and one search call for all; the pose always from the top ``pose.k``."""
        depth = max(k, min(int(self.pose_settings["k"]), self.max_k))
        with self.lock:
            vectors, labels = self.descriptor.encode_with_heads(np.stack(list(inputs)), HEAD_TOP)
            scores, rows = self.searcher.search(np.ascontiguousarray(vectors, dtype=np.float32),
                                                depth + len(self.excluded))
            self.memory.after_batch()
        found = []
        for i in range(len(inputs)):
            kept = [(int(r), float(s)) for r, s in zip(rows[i], scores[i]) if r >= 0 and int(r) not in self.excluded]
            found.append(([r for r, _ in kept[:depth]], [s for _, s in kept[:depth]]))
        return [ImageAnswer(rows_i, scores_i, pose, {head: values[i] for head, values in labels.items()})
                for i, ((rows_i, scores_i), pose) in enumerate(zip(found, self.poses(found)))]

    def poses(self, found: list[tuple[list[int], list[float]]]) -> list[dict[str, Any]]:
        """Per query, the top-1 pose (the best match's) and the consensus of the top ``pose.k``, as
        the pose stage computes them (``pose.consensus_of``, on arrays: the pose stage's table
        wrapper cost 5 ms a batch); one call for the whole batch."""
        k = int(self.pose_settings["k"])
        xy = np.full((len(found), k, 2), np.nan)
        weights = np.zeros((len(found), k))
        for i, (rows, scores) in enumerate(found):
            top = rows[:k]
            xy[i, :len(top)] = self.positions[top]
            weights[i, :len(top)] = np.maximum(np.asarray(scores[:k], dtype=np.float32).astype(float), 0.0)
        estimates, n_agreeing = consensus_of(xy, weights, float(self.pose_settings["radius_m"]))
        poses = []
        for i, (rows, _) in enumerate(found):
            pose: dict[str, Any] = {"method": self.pose_settings["method"], "top1": None, "consensus": None}
            if rows:
                best = self.records[rows[0]]
                pose["top1"] = {"image_id": best["id"], **{c: best[c] for c in ("x", "y", "lat", "lon", "yaw")}}
                pose["consensus"] = self._position(estimates[i], int(n_agreeing[i]))
            poses.append(pose)
        return poses

    def _position(self, estimate: np.ndarray, n_agreeing: int) -> dict[str, Any]:
        position = {"x": None, "y": None, "lat": None, "lon": None, "n_agreeing": n_agreeing}
        x, y = estimate
        if np.isfinite(x):
            if self.lat0 is not None:  # back from the projection to degrees
                position["lat"] = float(np.degrees(y / EARTH_RADIUS_M))
                position["lon"] = float(np.degrees(x / (EARTH_RADIUS_M * np.cos(np.radians(self.lat0)))))
            else:
                position["x"], position["y"] = float(x), float(y)
        return position

    def describe(self, row: int, score: float) -> dict[str, Any]:
        """A database image in an answer: id, score, labels, position, thumbnail URL."""
        record = self.records[row]
        return {"id": record["id"], "score": score, **{k: v for k, v in record.items() if k != "id"}}


class TextSearch:
    """The configured text engine, or the weight-free one when CLIP cannot serve (said in ``reason``)."""

    def __init__(self, bundle: Bundle, engine: str | None = None):
        text = bundle.record["text"]
        self.configured = engine or text["engine"]
        self.rows = np.flatnonzero(~bundle.database["excluded"].to_numpy())  # what the masks leave answerable
        groups = bundle.database[GROUP].astype(str).to_numpy()[self.rows].tolist()
        self.reason = ""
        self.engine: NgramEngine | ClipEngine = NgramEngine(NgramIndex.load(bundle.file("text_index")), groups)
        if self.configured == "ngram":
            self.reason = "configured"
        elif not text.get("clip_model"):
            self.reason = "no clip model in the bundle (service.clip_model)"
        else:
            try:
                self.engine = self._clip_engine(bundle, self.rows, groups)
                self.reason = "configured"
            except Exception as error:  # weights missing offline, or anything else: the weight-free engine serves
                self.reason = f"CLIP unavailable: {error}"
                log.warning("text engine %s: %s; serving the weight-free ngram engine", self.configured,
                            self.reason)

    @staticmethod
    def _clip_engine(bundle: Bundle, rows: np.ndarray, groups: list[str]) -> ClipEngine:
        from ..tables import read_ids, select_rows

        descriptor = load_descriptor(bundle.record["text"]["clip_settings"])
        wanted = bundle.database["image_id"].to_numpy()[rows]
        clip_rows = select_rows(read_ids(bundle.file("clip_ids")), wanted)
        if len(clip_rows) != len(wanted):
            raise ValueError(f"{bundle.file('clip_ids')} lacks {len(wanted) - len(clip_rows)} database images")
        vectors = np.asarray(np.load(bundle.file("clip_vectors"), mmap_mode="r")[clip_rows], dtype=np.float32)
        engine = ClipEngine(descriptor.encode_text, vectors, groups)
        engine.search("a photo", 1)  # loads the text tower now: a failure falls back at start, not per query
        return engine

    @property
    def name(self) -> str:
        return self.engine.name

    def search(self, query: str, k: int) -> list[Match]:
        """The top ``k`` groups; their rows are the database table's."""
        matches = self.engine.search(query, k)
        for match in matches:
            match.rows = [int(self.rows[r]) for r in match.rows]
        return matches
