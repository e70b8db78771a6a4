"""Image decoding and batched loading shared by every stage that reads pixels.

Decoding runs in DataLoader worker processes so the model (or detector) never waits
on JPEG decoding. A file that fails to decode yields ``None`` for its slot and the
caller decides (quarantine, skip) instead of the whole job dying.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import BinaryIO, Callable, Iterator, Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError

Transform = Callable[[np.ndarray], np.ndarray]


class DecodeError(Exception):
    """An image file that cannot be decoded; the message is the reason."""


class NotAnImage(DecodeError):
    """Bytes no image format recognises."""


class TooManyPixels(DecodeError):
    """An image whose header promises more pixels than allowed (a decompression bomb)."""


def read_rgb(path: str | Path, at_least: tuple[int, int] | None = None) -> np.ndarray:
    """Decode a whole image to an HxWx3 uint8 RGB array; raise DecodeError with a reason.

    ``at_least`` (width, height): a JPEG is decoded at the largest of its DCT reductions
    (1/2, 1/4, 1/8) that still holds at least that many pixels across and down, several
    times faster than a full decode when the caller shrinks the image anyway; other
    formats are decoded whole.
    """
    path = Path(path)
    try:
        if path.stat().st_size == 0:
            raise DecodeError("empty file (0 bytes)")
    except FileNotFoundError:
        raise DecodeError("file not found") from None
    return decode_rgb(path, at_least=at_least)


def decode_rgb(source: str | Path | BinaryIO, max_pixels: int | None = None,
               at_least: tuple[int, int] | None = None) -> np.ndarray:
    """Decode an image file or file object to HxWx3 uint8 RGB, refusing more than ``max_pixels``
    (read from the header, before any pixel is decoded; None: Pillow's own bomb limit);
    ``at_least`` as for :func:`read_rgb`."""
    try:
        with Image.open(source) as image:
            if max_pixels is not None and image.width * image.height > max_pixels:
                raise TooManyPixels(f"{image.width} x {image.height} = {image.width * image.height} pixels, "
                                    f"over the limit of {max_pixels}")
            if at_least is not None:
                image.draft("RGB", at_least)
            image.load()  # full decode: catches truncated files that open() alone accepts
            return np.asarray(image.convert("RGB"))
    except DecodeError:
        raise
    except FileNotFoundError:
        raise DecodeError("file not found") from None
    except UnidentifiedImageError:
        raise NotAnImage("not an image (unrecognised format)") from None
    except Image.DecompressionBombError as error:
        raise TooManyPixels(str(error)) from None
    except (OSError, ValueError, SyntaxError) as error:
        raise DecodeError(f"corrupt image: {error}") from None


def default_workers() -> int:
    """Loader workers: leave a core for the model, never more than 8."""
    return max(0, min(8, (os.cpu_count() or 1) - 1))


Box = tuple[float, float, float, float]


def crop(rgb: np.ndarray, box: Box) -> np.ndarray:
    """The pixels inside ``(x1, y1, x2, y2)``, clipped to the image (Revisited query boxes)."""
    h, w = rgb.shape[:2]
    x1, y1 = int(np.clip(np.floor(box[0]), 0, w - 1)), int(np.clip(np.floor(box[1]), 0, h - 1))
    x2, y2 = int(np.clip(np.ceil(box[2]), x1 + 1, w)), int(np.clip(np.ceil(box[3]), y1 + 1, h))
    return rgb[y1:y2, x1:x2]


class _ImageDataset:
    def __init__(self, paths: Sequence[str | Path], transform: Transform | None,
                 boxes: Sequence[Box | None] | None = None, at_least: tuple[int, int] | None = None):
        self.paths = list(paths)
        self.transform = transform
        self.boxes = list(boxes) if boxes is not None else None
        self.at_least = at_least

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        try:
            box = self.boxes[index] if self.boxes is not None else None
            image = read_rgb(self.paths[index], at_least=self.at_least if box is None else None)  # boxes: full size
            if box is not None:
                image = crop(image, box)
            if self.transform is not None:
                image = self.transform(image)
            return index, image, ""
        except DecodeError as error:
            return index, None, str(error)


def _collate(items):
    return items


def iter_batches(
    paths: Sequence[str | Path],
    transform: Transform | None = None,
    batch_size: int = 32,
    workers: int | None = None,
    boxes: Sequence[Box | None] | None = None,
    at_least: tuple[int, int] | None = None,
) -> Iterator[tuple[list[int], list[np.ndarray | None], list[str]]]:
    """Yield ``(indices, images, errors)`` batches in input order.

    ``images[i]`` is ``transform(rgb)`` or ``None`` when decoding failed, in which case
    ``errors[i]`` holds the reason. ``boxes``: an optional crop per path (in full-size
    pixels, so those images are decoded whole). ``at_least``: the size ``transform``
    needs, for reduced JPEG decoding (see :func:`read_rgb`). Workers are DataLoader
    processes.
    """
    import torch.utils.data

    workers = default_workers() if workers is None else workers
    loader = torch.utils.data.DataLoader(
        _ImageDataset(paths, transform, boxes, at_least),
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
        collate_fn=_collate,
        persistent_workers=False,
        prefetch_factor=4 if workers > 0 else None,
    )
    for batch in loader:
        indices, images, errors = zip(*batch)
        yield list(indices), list(images), list(errors)
