"""Uploads: read into one bounded in-memory buffer, never to disk, then decoded.

``UploadRejected`` carries the HTTP status and the message the client gets: 413 for a
body over the byte limit or an image over the pixel limit (a decompression bomb), 415
for bytes that are no image, 400 for an empty body, a truncated image or a multipart
body without the ``file`` field.
"""

from __future__ import annotations

import io
from typing import AsyncIterator

import numpy as np

from ..images import DecodeError, NotAnImage, TooManyPixels, decode_rgb_sized

FIELD = "file"


class UploadRejected(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


async def read_body(chunks: AsyncIterator[bytes], content_length: str | None, max_bytes: int) -> bytes:
    """The whole body, refused with 413 as soon as it (or its declared length) passes ``max_bytes``."""
    limit = f"the upload limit is {max_bytes / 1e6:g} MB (--max-upload-mb)"
    if content_length is not None and content_length.isdigit() and int(content_length) > max_bytes:
        raise UploadRejected(413, f"body of {int(content_length)} bytes is too large: {limit}")
    buffer = bytearray()
    async for chunk in chunks:
        buffer += chunk
        if len(buffer) > max_bytes:
            raise UploadRejected(413, f"body is over {max_bytes} bytes: {limit}")
    return bytes(buffer)


def multipart_field(body: bytes, content_type: str, field: str = FIELD) -> bytes:
    """The content of form field ``field`` of a multipart/form-data body, parsed in memory."""
    from python_multipart.multipart import MultipartParser, parse_options_header

    _, options = parse_options_header(content_type)
    boundary = options.get(b"boundary")
    if not boundary:
        raise UploadRejected(400, "multipart body without a boundary in its Content-Type")
    parts: list[tuple[str, bytearray]] = []
    header: dict[str, bytearray] = {"field": bytearray(), "value": bytearray()}
    headers: dict[str, str] = {}

    def on_part_begin():
        headers.clear()
        parts.append(("", bytearray()))

    def on_header_field(data, start, end):
        header["field"] += data[start:end]

    def on_header_value(data, start, end):
        header["value"] += data[start:end]

    def on_header_end():
        headers[header["field"].decode("latin-1").lower()] = header["value"].decode("latin-1")
        header["field"], header["value"] = bytearray(), bytearray()

    def on_headers_finished():
        _, disposition = parse_options_header(headers.get("content-disposition", ""))
        parts[-1] = (disposition.get(b"name", b"").decode("utf-8", "replace"), parts[-1][1])

    def on_part_data(data, start, end):
        parts[-1][1].extend(data[start:end])

    parser = MultipartParser(boundary, {"on_part_begin": on_part_begin, "on_header_field": on_header_field,
                                        "on_header_value": on_header_value, "on_header_end": on_header_end,
                                        "on_headers_finished": on_headers_finished, "on_part_data": on_part_data})
    try:
        parser.write(body)
        parser.finalize()
    except Exception as error:  # python-multipart raises its own parse errors
        raise UploadRejected(400, f"malformed multipart body: {error}") from None
    for name, data in parts:
        if name == field:
            return bytes(data)
    names = ", ".join(repr(name) for name, _ in parts) or "none"
    raise UploadRejected(400, f"multipart body has no field {field!r} (fields: {names}); "
                              f"send the photo as -F {field}=@photo.jpg, or as the raw body")


def image_bytes(body: bytes, content_type: str | None) -> bytes:
    """The photo's bytes: the ``file`` field of a multipart form, else the raw body."""
    if content_type and content_type.lower().startswith("multipart/form-data"):
        body = multipart_field(body, content_type)
    if not body:
        raise UploadRejected(400, "empty body: send a photo (JPEG, PNG, ...) as the raw body or as the "
                                  f"multipart field {FIELD!r}")
    return body


def decode_upload(data: bytes, max_pixels: int,
                  at_least: tuple[int, int] | None = None) -> tuple[tuple[int, int], np.ndarray]:
    """The photo's ``(width, height)`` and its HxWx3 uint8 RGB, decoded as the pipeline's
    extraction decodes its files (``images.decode_rgb_sized``; ``at_least``: the
    descriptor's ``decode_size``, so a large JPEG decodes at reduced scale there and here)."""
    try:
        return decode_rgb_sized(io.BytesIO(data), max_pixels, at_least)
    except TooManyPixels as error:
        raise UploadRejected(413, f"image too large: {error} (--max-pixels)") from None
    except NotAnImage:
        raise UploadRejected(415, f"not an image: the {len(data)} bytes sent are in no format Pillow reads "
                                  "(send a JPEG, PNG, WebP, ...)") from None
    except DecodeError as error:
        raise UploadRejected(400, f"the image cannot be decoded, is it truncated? {error}") from None
