"""Feature extraction: streamed shard by shard to Parquet (memory does not grow with the
dataset), stacked into one matrix per model; or, for evaluation-sized sets, in memory."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .errors import InputError
from .images import map_batches
from .logs import log, progress


class Descriptor(Protocol):
    """What extraction needs of a descriptor (``vprflow.descriptors.Descriptor`` has it)."""

    def preprocess(self, rgb: np.ndarray) -> np.ndarray: ...

    def encode(self, batch: np.ndarray) -> np.ndarray: ...

    def decode_size(self) -> tuple[int, int] | None: ...

    def decoding_threads(self) -> int: ...


def _vector_table(ids: Sequence[str], vectors: np.ndarray) -> pa.Table:
    flat = pa.array(vectors.reshape(-1))
    return pa.table({"image_id": pa.array(list(ids), pa.string()),
                     "vector": pa.FixedSizeListArray.from_arrays(flat, vectors.shape[1])})


def extract_features(descriptor: Descriptor, paths: Sequence[str | Path], ids: Sequence[str],
                     out: str | Path, batch_size: int = 32, workers: int | None = None,
                     dtype: str = "float32", boxes=None) -> int:
    """Encode ``paths`` and write ``image_id`` + ``vector`` rows to the Parquet file ``out``.

    Batches are written as they come (constant memory). ``boxes``: optional crop per
    image (Revisited queries are their box). Returns the vector size.
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    writer, dim = None, 0
    n_batches = -(-len(paths) // batch_size)
    try:
        batches = map_batches(paths, descriptor.preprocess, _encoder(descriptor), batch_size, workers, boxes,
                              at_least=descriptor.decode_size(), threads=descriptor.decoding_threads())
        for indices, images, errors, vectors in progress(batches, desc="extract", total=n_batches, unit="batch"):
            good = [k for k, image in enumerate(images) if image is not None]
            for k in set(range(len(images))) - set(good):
                log.warning("skipped %s: %s", paths[indices[k]], errors[k])
            if not good:
                continue
            vectors = vectors.astype(dtype)
            table = _vector_table([ids[indices[k]] for k in good], vectors)
            if writer is None:
                dim = vectors.shape[1]
                writer = pq.ParquetWriter(out, table.schema)
            writer.write_table(table)
    finally:
        if writer is not None:
            writer.close()
    if writer is None:  # an empty shard still gets a valid, empty file
        pq.write_table(_vector_table([], np.zeros((0, 1), dtype)), out)
    return dim


def extract_groups(groups: Sequence[tuple[Descriptor, Sequence[int]]], paths: Sequence[str | Path],
                   ids: Sequence[str], out: str | Path, batch_size: int = 32, workers: int | None = None,
                   boxes=None) -> int:
    """:func:`extract_features` into one file, each group of rows (indices into ``paths``)
    encoded by its own descriptor: query images with query-side augmentation, say."""
    out = Path(out)
    parts, dim = [], 0
    for number, (descriptor, rows) in enumerate(groups):
        if not len(rows):
            continue
        part = out.with_name(f"{out.name}.part{number}")
        dim = extract_features(descriptor, [paths[i] for i in rows], [ids[i] for i in rows], part, batch_size,
                               workers, boxes=None if boxes is None else [boxes[i] for i in rows]) or dim
        parts.append(part)
    if not parts:
        return extract_features(groups[0][0], [], [], out)
    tables = [pq.read_table(part) for part in parts]
    pq.write_table(pa.concat_tables([t for t in tables if t.num_rows] or tables[:1]), out)
    for part in parts:
        part.unlink()
    return dim


def stack_features(shards: Sequence[str | Path], vectors_out: str | Path, ids_out: str | Path) -> tuple[int, int]:
    """Stack shard files into one ``.npy`` matrix plus an ids file (one id per line, same order).

    Writes through a memory map, one shard at a time.
    """
    files = [pq.ParquetFile(s) for s in shards]
    total = sum(f.metadata.num_rows for f in files)
    dim, dtype = 0, np.float32
    for f in files:
        if f.metadata.num_rows:
            field = f.schema_arrow.field("vector").type
            dim, dtype = field.list_size, field.value_type.to_pandas_dtype()
            break
    matrix = np.lib.format.open_memmap(vectors_out, mode="w+", dtype=dtype, shape=(total, dim))
    start = 0
    with open(ids_out, "w") as ids:
        for f in files:
            for batch in f.iter_batches(batch_size=65536):
                n = batch.num_rows
                if not n:
                    continue
                values = batch.column("vector").flatten().to_numpy(zero_copy_only=False)
                matrix[start:start + n] = values.reshape(n, dim)
                ids.writelines(f"{i}\n" for i in batch.column("image_id").to_pylist())
                start += n
    matrix.flush()
    log.info("stacked %d vectors of %d dims (%s)", total, dim, np.dtype(dtype).name)
    return total, dim


def encode_images(
    descriptor: Descriptor, paths: Sequence[str | Path], batch_size: int = 32, workers: int | None = None
) -> np.ndarray:
    """``descriptor``'s vectors of ``paths`` in memory, in order; an undecodable image is an error."""
    parts = []
    batches = map_batches(paths, descriptor.preprocess, _encoder(descriptor), batch_size, workers,
                          at_least=descriptor.decode_size(), threads=descriptor.decoding_threads())
    for indices, images, errors, vectors in progress(batches, desc="encode", total=-(-len(paths) // batch_size),
                                                     unit="batch"):
        for i, image, error in zip(indices, images, errors):
            if image is None:
                raise InputError(f"{paths[i]} cannot be decoded: {error}")
        parts.append(vectors)
    return np.concatenate(parts) if parts else np.zeros((0, 0), np.float32)


def _encoder(descriptor: Descriptor):
    """The step :func:`images.map_batches` runs on each batch's decoded images."""
    return lambda images: descriptor.encode(np.stack(images))
