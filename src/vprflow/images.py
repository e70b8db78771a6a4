"""Image decoding and batched loading shared by every stage that reads pixels.

Decoding runs in DataLoader worker processes, ahead of the model (or detector), or, for a
model that already keeps every core busy, in threads of the calling process between its
batches, or in streams that each decode a batch and then run the model on it
(:func:`map_batches`). A file that fails to decode yields ``None`` for its slot and the
caller decides (quarantine, skip) instead of the whole job dying.
"""

from __future__ import annotations

import contextlib
import os
import queue
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import BinaryIO, Callable, Iterator, Sequence

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

Transform = Callable[[np.ndarray], np.ndarray]


class DecodeError(Exception):
    """An image file that cannot be decoded; the message is the reason."""


class NotAnImage(DecodeError):
    """Bytes no image format recognises."""


class TooManyPixels(DecodeError):
    """An image whose header promises more pixels than allowed (a decompression bomb)."""


SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")
"""Pillow's modes of one-channel 16-bit files (PNG, TIFF); ``convert("RGB")`` would clip them at 255."""

ORIENTATION_TAG = 0x0112
TURNED_ORIENTATIONS = (5, 6, 7, 8)
"""EXIF orientations whose displayed image is the stored one turned a quarter: width and height swap."""


@contextlib.contextmanager
def opened(source: str | Path | BinaryIO) -> Iterator[Image.Image]:
    """``source`` (a path or a file object) opened by Pillow; every way decoding it can fail
    becomes a DecodeError with a reason."""
    try:
        if isinstance(source, (str, Path)) and Path(source).stat().st_size == 0:
            raise DecodeError("empty file (0 bytes)")
        with Image.open(source) as image:
            yield image
    except DecodeError:
        raise
    except FileNotFoundError:
        raise DecodeError("file not found") from None
    except Image.DecompressionBombError as error:
        size = str(error).split(", could")[0]  # "Image size (N pixels) exceeds limit of M pixels"
        raise TooManyPixels(f"too large to decode safely ({size}: Pillow's decompression-bomb guard); "
                            f"shrink the photo or remove it from the dataset") from None
    except UnidentifiedImageError:
        raise NotAnImage("not an image (unrecognised format)") from None
    except (OSError, ValueError, SyntaxError) as error:
        raise DecodeError(f"corrupt image: {error}") from None


def read_rgb(path: str | Path, at_least: tuple[int, int] | None = None) -> np.ndarray:
    """Decode a whole image file to an HxWx3 uint8 RGB array as it is displayed (EXIF
    orientation applied; 16-bit grey scaled to 8 bits); raise DecodeError with a reason.

    ``at_least`` (width, height, as displayed): a JPEG is decoded at the largest of its DCT
    reductions (1/2, 1/4, 1/8) that still holds at least that many pixels across and down,
    several times faster than a full decode when the caller shrinks the image anyway; other
    formats are decoded whole.
    """
    return decode_rgb(Path(path), at_least=at_least)


def decode_rgb(source: str | Path | BinaryIO, max_pixels: int | None = None,
               at_least: tuple[int, int] | None = None) -> np.ndarray:
    """Decode an image file or file object as :func:`read_rgb` does, refusing more than
    ``max_pixels`` (read from the header, before any pixel is decoded; None: Pillow's own
    bomb limit)."""
    return decode_rgb_sized(source, max_pixels, at_least)[1]


def decode_rgb_sized(source: str | Path | BinaryIO, max_pixels: int | None = None,
                     at_least: tuple[int, int] | None = None) -> tuple[tuple[int, int], np.ndarray]:
    """:func:`decode_rgb`, with the image's full ``(width, height)`` as displayed (the array
    is smaller when ``at_least`` let a JPEG decode at reduced scale)."""
    with opened(source) as image:
        if max_pixels is not None and image.width * image.height > max_pixels:
            raise TooManyPixels(f"{image.width} x {image.height} = {image.width * image.height} pixels, "
                                f"over the limit of {max_pixels}")
        turned = image.getexif().get(ORIENTATION_TAG, 1) in TURNED_ORIENTATIONS
        size = (image.height, image.width) if turned else (image.width, image.height)
        if at_least is not None:
            if turned:
                at_least = (at_least[1], at_least[0])  # asked as displayed, stored turned
            image.draft("RGB", at_least)
        image.load()  # full decode: catches truncated files that open() alone accepts
        ImageOps.exif_transpose(image, in_place=True)
        if image.mode in SIXTEEN_BIT_MODES:
            grey = np.rint(np.clip(np.asarray(image, dtype=np.float32), 0, 65535) / 257).astype(np.uint8)
            return size, np.repeat(grey[:, :, None], 3, axis=2)
        return size, np.asarray(image if image.mode == "RGB" else image.convert("RGB"))  # convert copies even RGB


def decoded_size(path: str | Path) -> tuple[int, int]:
    """``(height, width)`` of the image as displayed, after decoding all of its data; DecodeError
    with a reason when it does not decode. A JPEG is decoded at 1/8 scale (libjpeg still reads
    every block, so a cut or corrupt file fails the same), so a 100-megapixel photo costs a
    few megabytes here instead of hundreds."""
    with opened(path) as image:
        width, height = image.size
        if image.format == "JPEG":
            image.draft(image.mode, (max(1, width // 8), max(1, height // 8)))
        image.load()
        if image.getexif().get(ORIENTATION_TAG, 1) in TURNED_ORIENTATIONS:
            width, height = height, width
        return height, width


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
                 boxes: Sequence[Box | None] | None = None, reader: Callable = read_rgb,
                 at_least: tuple[int, int] | None = None):
        self.paths = list(paths)
        self.transform = transform
        self.boxes = list(boxes) if boxes is not None else None
        self.reader = reader
        self.at_least = at_least

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        try:
            box = self.boxes[index] if self.boxes is not None else None
            if self.at_least is not None and box is None:  # boxes are in full-size pixels
                image = self.reader(self.paths[index], at_least=self.at_least)
            else:
                image = self.reader(self.paths[index])
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
    reader: Callable = read_rgb,
    at_least: tuple[int, int] | None = None,
    threads: int = 0,
) -> Iterator[tuple[list[int], list[np.ndarray | None], list[str]]]:
    """Yield ``(indices, images, errors)`` batches in input order.

    ``images[i]`` is ``transform(reader(path))`` or ``None`` when decoding failed, in which case
    ``errors[i]`` holds the reason. ``boxes``: an optional crop per path (in full-size
    pixels, so those images are decoded whole). ``reader``: what decoding returns
    (``decoded_size`` for checks that need no pixels). ``at_least``: the size ``transform``
    needs, for reduced JPEG decoding (see :func:`read_rgb`). Workers are DataLoader processes
    that decode ahead of the caller. ``threads`` > 0 replaces them: each batch is decoded
    when it is asked for, by that many threads of this process, so no decoding runs while
    the caller computes (for a CPU network whose forward pass uses every core: a decoder
    beside it stalls its OpenMP team, see ``Descriptor.decoding_threads``).
    """
    dataset = _ImageDataset(paths, transform, boxes, reader, at_least)
    if threads > 0:
        yield from _decoded_between_batches(dataset, batch_size, threads)
        return
    import torch.utils.data

    workers = default_workers() if workers is None else workers
    loader = torch.utils.data.DataLoader(
        dataset,
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


def _decoded_between_batches(dataset: _ImageDataset, batch_size: int, threads: int):
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="decode") as pool:
        for start in range(0, len(dataset), batch_size):
            decoded = pool.map(dataset.__getitem__, range(start, min(start + batch_size, len(dataset))))
            indices, images, errors = zip(*decoded)
            yield list(indices), list(images), list(errors)


Step = Callable[[list], Sequence]

MAX_STREAMS = 4
"""Streams of :func:`map_batches` at most: each holds a batch's activations (MobileNetV2 at
320x240, batch 32, float32: about 0.26 GB), so memory grows with them, not with the cores."""


def map_batches(
    paths: Sequence[str | Path],
    transform: Transform | None,
    step: Step,
    batch_size: int = 32,
    workers: int | None = None,
    boxes: Sequence[Box | None] | None = None,
    at_least: tuple[int, int] | None = None,
    threads: int = 0,
) -> Iterator[tuple[list[int], list[np.ndarray | None], list[str], Sequence | None]]:
    """:func:`iter_batches`' batches with ``step`` applied: yield ``(indices, images, errors,
    outputs)`` in input order, ``outputs = step([the batch's decoded images])`` (None when none
    decoded).

    ``threads`` >= 2 (a network on the CPU, ``Descriptor.decoding_threads``): streams, threads
    of this process that each take the next batch, decode it and run ``step`` on it, with
    torch's operators on ``threads`` // streams threads each (restored afterwards): one stream
    per thread, at most ``MAX_STREAMS`` (each holds one batch's activations). A stream's
    decoding fills the core its forward pass leaves, where one many-thread pass leaves every
    core idle while a batch decodes; and two one-thread forward passes side by side mostly
    run faster than one two-thread pass (0.95-1.27x its images/s, MobileNetV2 on 2 cores).
    The first batch runs alone in the calling thread, so what ``step`` builds on first use is
    built once; streams start only for the batches after it.
    Otherwise: ``iter_batches`` with ``workers`` or ``threads``, ``step`` in the calling thread.
    """
    if threads < 2:
        for indices, images, errors in iter_batches(paths, transform, batch_size, workers, boxes,
                                                    at_least=at_least, threads=threads):
            yield indices, images, errors, _stepped(step, images)
        return
    dataset = _ImageDataset(paths, transform, boxes, read_rgb, at_least)
    starts = range(0, len(dataset), batch_size)
    if len(starts):
        yield _decoded_and_stepped(dataset, starts[0], batch_size, step)
    if len(starts) > 1:
        yield from _in_streams(dataset, starts[1:], batch_size, step, min(threads, MAX_STREAMS), threads)


def _stepped(step: Step, images: list) -> Sequence | None:
    decoded = [image for image in images if image is not None]
    return step(decoded) if decoded else None


def _decoded_and_stepped(dataset: _ImageDataset, start: int, batch_size: int, step: Step):
    indices, images, errors = zip(*(dataset[i] for i in range(start, min(start + batch_size, len(dataset)))))
    return list(indices), list(images), list(errors), _stepped(step, list(images))


def _in_streams(dataset: _ImageDataset, starts: range, batch_size: int, step: Step, streams: int, threads: int):
    import torch

    pending = iter(starts)
    take, stop = threading.Lock(), threading.Event()
    finished: queue.Queue = queue.Queue()
    room = threading.Semaphore(2 * streams)  # batches taken but not yet yielded: memory stays bounded

    def stream():
        while True:
            room.acquire()
            with take:
                start = None if stop.is_set() else next(pending, None)
            if start is None:
                return
            try:
                finished.put((start, _decoded_and_stepped(dataset, start, batch_size, step), None))
            except BaseException as error:  # handed to the caller, who raises it
                finished.put((start, None, error))
                return

    operator_threads = torch.get_num_threads()
    torch.set_num_threads(threads // streams)  # read by each new thread when it first runs an operator
    running = [threading.Thread(target=stream, name=f"stream{k}", daemon=True) for k in range(streams)]
    for thread in running:
        thread.start()
    try:
        done = {}
        for start in starts:
            while start not in done:
                at, batch, error = finished.get()
                if error is not None:
                    raise error
                done[at] = batch
            yield done.pop(start)
            room.release()
    finally:
        stop.set()
        for _ in running:
            room.release()
        for thread in running:
            thread.join()
        torch.set_num_threads(operator_threads)
