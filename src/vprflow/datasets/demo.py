"""The generated demo world: a procedurally drawn street, photographed twice.

A winding street is lined with facades, each with its own colour, window grid, shop
sign and height, chosen from the palette of its district (the ``category``). A simple
ray caster renders real perspective views from metric poses, so images taken a few
metres apart look alike and images far apart do not. The *database* traverse drives
the street once; the *query* traverse drives it again with lateral offsets, other
headings, other light and clutter (people, cars). A known few black-and-white
pictures, 2x2 collages and corrupt files are planted and flagged in truth columns so
the cleaning and manifest stages can be scored.

Everything is seeded: the same size and seed give the same bytes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from ..errors import InputError
from ..logs import log, progress
from . import Dataset, empty_ground_truth, normalise_listing
from .folder import read_folder


@dataclass(frozen=True)
class DemoSize:
    route_m: float
    spacing_m: float
    width: int
    height: int
    n_bw: int
    n_collage: int
    n_corrupt: int


SIZES = {
    "tiny": DemoSize(route_m=240, spacing_m=6, width=128, height=96, n_bw=3, n_collage=3, n_corrupt=2),
    "small": DemoSize(route_m=800, spacing_m=4, width=160, height=120, n_bw=6, n_collage=6, n_corrupt=2),
    "default": DemoSize(route_m=1600, spacing_m=4, width=192, height=144, n_bw=10, n_collage=10, n_corrupt=3),
}

STREET_HALF_WIDTH_M = 9.0
CAMERA_HEIGHT_M = 1.6
FIELD_OF_VIEW_DEG = 70.0
VIEW_DISTANCE_M = 90.0
PLACE_SPACING_M = 20.0
DISTRICT_LENGTH_M = 160.0

# Each district draws facade colours around its own palette (RGB 0..1), so category is
# visible in the pictures, as it is for real landmark categories.
DISTRICTS = {
    "residential": dict(base=[(0.85, 0.78, 0.62), (0.75, 0.55, 0.45), (0.9, 0.9, 0.85)], floors=(2, 4)),
    "commercial": dict(base=[(0.55, 0.6, 0.7), (0.8, 0.8, 0.82), (0.35, 0.4, 0.5)], floors=(4, 9)),
    "industrial": dict(base=[(0.55, 0.3, 0.22), (0.5, 0.5, 0.48), (0.4, 0.42, 0.35)], floors=(1, 3)),
    "historic": dict(base=[(0.9, 0.75, 0.45), (0.7, 0.62, 0.5), (0.95, 0.85, 0.7)], floors=(3, 5)),
}
STREET_NAMES = ["Elm", "Harbour", "Mill", "Castle", "Linden", "Quarry", "Bridge", "Market", "Tower", "Garden"]


def count_images(size: str) -> int:
    """Number of listing rows the demo of this size writes (known before generating)."""
    spec = _size(size)
    per_traverse = int(spec.route_m // spec.spacing_m)
    return 2 * per_traverse + spec.n_bw + spec.n_collage + spec.n_corrupt


def _size(size: str) -> DemoSize:
    if size not in SIZES:
        raise InputError(f"dataset.demo.size: unknown size {size!r}; choose one of {sorted(SIZES)}")
    return SIZES[size]


class Street:
    """The world: a centreline polyline and facade segments along both sides."""

    def __init__(self, route_m: float, rng: np.random.Generator):
        self.route_m = route_m
        step = 2.0
        n = int(route_m / step) + 40
        turn = np.convolve(rng.normal(0, 0.06, n), np.ones(15) / 15, mode="same")
        heading = np.cumsum(turn)
        xy = np.cumsum(np.stack([np.cos(heading), np.sin(heading)], 1) * step, axis=0)
        self.centre = np.vstack([[0.0, 0.0], xy])
        self.arc = np.concatenate([[0.0], np.cumsum(np.full(n, step))])
        self.segments, self.styles = self._facades(rng)

    def pose_at(self, s: float) -> tuple[np.ndarray, float]:
        """Centreline point and heading (radians) at arc length s."""
        i = int(np.clip(np.searchsorted(self.arc, s) - 1, 0, len(self.arc) - 2))
        a, b = self.centre[i], self.centre[i + 1]
        t = (s - self.arc[i]) / (self.arc[i + 1] - self.arc[i])
        d = b - a
        return a + t * d, math.atan2(d[1], d[0])

    def district_at(self, s: float) -> str:
        names = list(DISTRICTS)
        return names[int(s // DISTRICT_LENGTH_M) % len(names)]

    def _facades(self, rng):
        segments, styles = [], []
        for side in (+1, -1):
            s = -20.0
            while s < self.route_m + 60:
                length = rng.uniform(8, 26)
                p0, h0 = self.pose_at(max(s, 0))
                p1, h1 = self.pose_at(max(s + length, 0.1))
                setback = STREET_HALF_WIDTH_M + rng.uniform(0, 2.5)
                n0 = np.array([-math.sin(h0), math.cos(h0)]) * side * setback
                n1 = np.array([-math.sin(h1), math.cos(h1)]) * side * setback
                segments.append(np.concatenate([p0 + n0, p1 + n1]))
                styles.append(_facade_style(self.district_at(max(s, 0)), rng))
                s += length + (rng.uniform(3, 8) if rng.random() < 0.15 else 0.0)
        return np.array(segments), styles


def _facade_style(district: str, rng) -> np.ndarray:
    palette = DISTRICTS[district]
    base = np.array(palette["base"][rng.integers(len(palette["base"]))])
    base = np.clip(base + rng.normal(0, 0.12, 3), 0.05, 1.0)
    floors = rng.integers(palette["floors"][0], palette["floors"][1] + 1)
    window = np.clip(rng.choice([0.15, 0.3, 0.6]) + rng.normal(0, 0.05, 3), 0, 1)
    sign = rng.uniform(0.1, 1.0, 3)
    return np.concatenate([
        base,                       # 0..2 wall colour
        window,                     # 3..5 window colour
        sign,                       # 6..8 shop sign colour
        [floors * 3.2,              # 9 height (m)
         rng.uniform(1.8, 4.0),     # 10 window spacing (m)
         rng.uniform(0.35, 0.7),    # 11 window width fraction
         rng.uniform(0.0, 1.0),     # 12 sign offset fraction
         rng.uniform(3.0, 10.0),    # 13 sign length (m)
         rng.integers(0, 3)],       # 14 ornament: 0 plain, 1 stripes, 2 band
    ])


@dataclass(frozen=True)
class Light:
    gain: float = 1.0
    tint: tuple[float, float, float] = (1.0, 1.0, 1.0)
    sky: tuple[float, float, float] = (0.62, 0.75, 0.92)


def render(street: Street, position: np.ndarray, yaw: float, width: int, height: int,
           light: Light = Light()) -> np.ndarray:
    """Ray-cast one view; returns an HxWx3 float image in 0..1."""
    focal = (width / 2) / math.tan(math.radians(FIELD_OF_VIEW_DEG) / 2)
    columns = np.arange(width) - (width - 1) / 2
    offsets = np.arctan2(columns, focal)
    angles = yaw - offsets  # image x grows to the right = clockwise from the heading
    ray = np.stack([np.cos(angles), np.sin(angles)], 1)

    seg = street.segments
    near = np.linalg.norm((seg[:, :2] + seg[:, 2:]) / 2 - position, axis=1) < VIEW_DISTANCE_M + 30
    seg, styles = seg[near], [s for s, k in zip(street.styles, near) if k]
    a, d = seg[:, :2] - position, seg[:, 2:] - seg[:, :2]
    # Solve position + t*ray = a + u*d for every (column, segment) pair.
    denom = ray[:, None, 0] * d[None, :, 1] - ray[:, None, 1] * d[None, :, 0]
    with np.errstate(divide="ignore", invalid="ignore"):
        t = (a[None, :, 0] * d[None, :, 1] - a[None, :, 1] * d[None, :, 0]) / denom
        u = (a[None, :, 0] * ray[:, None, 1] - a[None, :, 1] * ray[:, None, 0]) / denom
    valid = (np.abs(denom) > 1e-9) & (t > 0.5) & (u >= 0) & (u <= 1)
    t = np.where(valid, t, np.inf)
    hit = np.argmin(t, axis=1) if len(seg) else np.zeros(width, int)
    dist = t[np.arange(width), hit] if len(seg) else np.full(width, np.inf)
    along = (u[np.arange(width), hit] * np.linalg.norm(d[hit], axis=1)) if len(seg) else np.zeros(width)
    depth = dist * np.cos(offsets)

    style = np.array(styles)[hit] if len(seg) else np.zeros((width, 15))
    rows = (height - 1) / 2 - np.arange(height)
    with np.errstate(invalid="ignore"):
        v = CAMERA_HEIGHT_M + rows[:, None] * depth[None, :] / focal  # world height per pixel
    is_wall = np.isfinite(depth)[None, :] & (v >= 0) & (v <= style[None, :, 9])

    image = np.empty((height, width, 3))
    sky_fade = np.clip(rows / (height / 2), 0, 1)[:, None, None]
    image[:] = np.array(light.sky) * (0.8 + 0.2 * sky_fade)
    ground_depth = CAMERA_HEIGHT_M * focal / np.maximum(-rows, 1e-3)
    ground = np.where((rows < 0)[:, None], 1.0, 0.0)[..., None]
    lane = (np.abs(np.sin(ground_depth / 1.5)) > 0.97)[:, None, None] * np.array([0.25, 0.25, 0.2])
    road = np.array([0.33, 0.33, 0.35]) + lane
    image = image * (1 - ground) + road * ground

    wall = style[None, :, 0:3] * np.ones((height, 1, 1))
    spacing, frac = style[None, :, 10], style[None, :, 11]
    v = np.nan_to_num(v, nan=-1.0, posinf=-1.0, neginf=-1.0)  # columns that hit nothing
    phase_u = (along[None, :] % spacing) / spacing
    phase_v = (v % 3.2) / 3.2
    window = (phase_u < frac) & (phase_v > 0.35) & (phase_v < 0.8) & (v > 3.2)
    wall = np.where(window[..., None], style[None, :, 3:6], wall)
    sign_start = style[None, :, 12] * 10
    sign = (along[None, :] > sign_start) & (along[None, :] < sign_start + style[None, :, 13]) & (v > 2.2) & (v < 3.0)
    wall = np.where(sign[..., None], style[None, :, 6:9], wall)
    stripes = (style[None, :, 14] == 1) & ((along[None, :] % 1.0) < 0.15)
    band = (style[None, :, 14] == 2) & (np.abs(v - style[None, :, 9] + 0.6) < 0.3)
    wall = np.where((stripes | band)[..., None], wall * 0.55, wall)
    fog = np.clip(depth / VIEW_DISTANCE_M, 0, 1)[None, :, None] ** 1.5
    wall = wall * (1 - fog) + np.array(light.sky) * fog
    image = np.where(is_wall[..., None], wall, image)
    return np.clip(image * light.gain * np.array(light.tint), 0, 1)


def _add_clutter(image: np.ndarray, rng) -> np.ndarray:
    """People and cars in the lower half: occluders that change between traverses."""
    h, w = image.shape[:2]
    canvas = image.copy()
    for _ in range(rng.integers(1, 5)):
        colour = tuple(float(c) for c in rng.uniform(0, 1, 3))
        cx, base = int(rng.integers(0, w)), int(rng.integers(h // 2, h))
        if rng.random() < 0.5:  # a person
            pw, ph = max(2, w // 40), max(6, h // 6)
            cv2.rectangle(canvas, (cx - pw, base - ph), (cx + pw, base), colour, -1)
            cv2.circle(canvas, (cx, base - ph - pw), pw, colour, -1)
        else:  # a car
            cw, ch = max(8, w // 6), max(4, h // 12)
            cv2.rectangle(canvas, (cx - cw, base - ch), (cx + cw, base), colour, -1)
    return canvas


def _to_uint8(image: np.ndarray, rng, noise: float) -> np.ndarray:
    image = image + rng.normal(0, noise, image.shape)
    return (np.clip(image, 0, 1) * 255).astype(np.uint8)


def _write_jpeg(path: Path, rgb: np.ndarray, quality: int = 90) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    ok, data = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise RuntimeError(f"could not encode {path}")
    path.write_bytes(data.tobytes())


def generate(root: str | Path, size: str = "default", seed: int = 0) -> pd.DataFrame:
    """Write the demo world's JPEGs under ``root`` and return its listing.

    Also writes ``root/manifest.csv`` in the custom-dataset format, so the generated
    world can be read back like any user folder.
    """
    spec = _size(size)
    root = Path(root)
    rng = np.random.default_rng(seed)
    street = Street(spec.route_m, rng)
    rows = []

    def view(s, lateral, look, light, clutter):
        centre, heading = street.pose_at(s)
        normal = np.array([-math.sin(heading), math.cos(heading)])
        position = centre + normal * lateral
        yaw = heading + look
        image = render(street, position, yaw, spec.width, spec.height, light)
        if clutter:
            image = _add_clutter(image, rng)
        return position, yaw, image

    def labels(s):
        place = int(s // PLACE_SPACING_M)
        street_name = STREET_NAMES[int(s // DISTRICT_LENGTH_M) % len(STREET_NAMES)]
        return dict(place=f"p{place:04d}", name=f"{street_name} Street {place * 2 + 1}",
                    category=street.district_at(s))

    n_per = int(spec.route_m // spec.spacing_m)
    tasks = [("database", i) for i in range(n_per)] + [("query", i) for i in range(n_per)]
    for role, i in progress(tasks, desc="render demo world"):
        if role == "database":
            s = (i + 0.5) * spec.spacing_m
            look = math.radians(35) * (1 if i % 2 == 0 else -1)
            position, yaw, image = view(s, rng.uniform(-0.5, 0.5), look, Light(), clutter=False)
        else:
            s = (i + rng.uniform(0.2, 0.8)) * spec.spacing_m
            look = math.radians(35) * (1 if rng.random() < 0.5 else -1) + math.radians(rng.normal(0, 8))
            light = Light(gain=rng.uniform(0.6, 1.25), tint=tuple(rng.uniform(0.85, 1.15, 3)),
                          sky=tuple(np.clip(np.array([0.62, 0.75, 0.92]) + rng.normal(0, 0.1, 3), 0, 1)))
            position, yaw, image = view(s, rng.uniform(-3, 3), look, light, clutter=True)
        path = f"{role}/{role[0]}{i:05d}.jpg"
        _write_jpeg(root / path, _to_uint8(image, rng, 0.01 if role == "database" else 0.03))
        rows.append(dict(path=path, role=role, x=position[0], y=position[1],
                         yaw=math.degrees(yaw) % 360, **labels(s)))

    rows += _plant_faults(root, spec, street, rng, view, labels)
    listing = pd.DataFrame(rows)
    for flag in ("truth_bw", "truth_collage", "truth_corrupt"):
        listing[flag] = listing.get(flag, pd.Series(False, index=listing.index)).fillna(False).astype(bool)
    listing = normalise_listing(listing)
    listing.drop(columns=["lat", "lon"]).to_csv(root / "manifest.csv", index=False)
    log.info("demo world %s (seed %d): %d images under %s", size, seed, len(listing), root)
    return listing


def _plant_faults(root, spec, street, rng, view, labels):
    """Black-and-white pictures, 2x2 collages and corrupt files, flagged for scoring."""
    rows = []
    for i in range(spec.n_bw):
        s = rng.uniform(0, spec.route_m)
        position, yaw, image = view(s, 0.0, math.radians(35), Light(), clutter=False)
        gray = cv2.cvtColor(_to_uint8(image, rng, 0.01), cv2.COLOR_RGB2GRAY)
        path = f"extra/bw{i:03d}.jpg"
        _write_jpeg(root / path, np.repeat(gray[..., None], 3, axis=2))
        rows.append(dict(path=path, role="database", x=position[0], y=position[1],
                         yaw=math.degrees(yaw) % 360, truth_bw=True, **labels(s)))
    for i in range(spec.n_collage):
        tiles, first = [], None
        for _ in range(4):
            s = rng.uniform(0, spec.route_m)
            position, yaw, image = view(s, 0.0, math.radians(35), Light(), clutter=False)
            first = first or (s, position, yaw)
            tiles.append(cv2.resize(image, (spec.width // 2, spec.height // 2), interpolation=cv2.INTER_AREA))
        collage = np.vstack([np.hstack(tiles[:2]), np.hstack(tiles[2:])])
        path = f"extra/collage{i:03d}.jpg"
        _write_jpeg(root / path, _to_uint8(collage, rng, 0.01))
        s, position, yaw = first
        rows.append(dict(path=path, role="database", x=position[0], y=position[1],
                         yaw=math.degrees(yaw) % 360, truth_collage=True, **labels(s)))
    for i in range(spec.n_corrupt):
        path = f"extra/corrupt{i:03d}.jpg"
        target = root / path
        if i % 2 == 0:  # a JPEG cut short, as an interrupted copy leaves it
            _write_jpeg(target, _to_uint8(render(street, *street.pose_at(10.0), spec.width, spec.height), rng, 0.01))
            target.write_bytes(target.read_bytes()[: target.stat().st_size // 3])
        else:
            target.write_bytes(b"")
        rows.append(dict(path=path, role="database", truth_corrupt=True, **labels(10.0)))
    return rows


class DemoDataset(Dataset):
    """The generated street world (``dataset.demo``: ``size``, ``seed``), made by the demo_world rule."""

    section = "demo"
    generated = True

    def root(self, settings):
        return Path("resources") / "demo" / f"{settings['size']}-seed{settings['seed']}"

    def estimate_rows(self, settings, root):
        return count_images(settings["size"])

    def read(self, settings, root):
        return read_folder(root, "manifest.csv"), empty_ground_truth()

    def listing_source(self, settings, root):
        return str(root / "manifest.csv")


DEMO = DemoDataset("demo")
