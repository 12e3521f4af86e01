"""Encoding of one image (uint8, (C, H, W)) as the bytes of a webdataset member.

Formats and the member extension each one writes (webdataset picks decoders by
extension, so any webdataset reader can open these shards):

* ``jpeg`` -> ``.jpg`` (lossy, ``quality`` 1..100; the smallest shards),
* ``png``  -> ``.png`` (lossless),
* ``raw``  -> ``.npy`` (lossless, no decoding cost beyond a memory copy).

Grayscale images are stored as 1-channel (PIL mode ``L``), colour as RGB.
Labels are stored as ``.cls`` members holding the class number in ASCII, the
webdataset convention. `read_at` reads one member's bytes at its offset in a tar
(both shard readers address samples that way).
"""

from __future__ import annotations

import io
import os

import numpy as np

__all__ = ["FORMATS", "EXTENSIONS", "encode_image", "decode_image", "LOSSLESS", "read_at"]

FORMATS = ("jpeg", "png", "raw")
EXTENSIONS = {"jpeg": "jpg", "png": "png", "raw": "npy"}
LOSSLESS = {"jpeg": False, "png": True, "raw": True}


def encode_image(image: np.ndarray, fmt: str, quality: int = 90) -> bytes:
    """uint8 (C, H, W) with C in (1, 3) -> bytes in `fmt`."""
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[0] not in (1, 3):
        raise ValueError(f"encode_image expects uint8 (C, H, W) with 1 or 3 channels, got {image.dtype} {image.shape}")
    if fmt == "raw":
        buf = io.BytesIO()
        np.save(buf, np.ascontiguousarray(image), allow_pickle=False)
        return buf.getvalue()
    from PIL import Image

    pil = Image.fromarray(image[0] if image.shape[0] == 1 else image.transpose(1, 2, 0))
    buf = io.BytesIO()
    if fmt == "jpeg":
        pil.save(buf, format="JPEG", quality=int(quality))
    elif fmt == "png":
        pil.save(buf, format="PNG", compress_level=6)
    else:
        raise ValueError(f"image format {fmt!r} is not one of {', '.join(FORMATS)}")
    return buf.getvalue()


_NPY_MAGIC_V1 = b"\x93NUMPY\x01\x00"  # format 1.0: a 2-byte header length follows
# Parsed .npy headers by their bytes. Every sample of one shard set has the same header,
# and np.load parses it with ast.literal_eval (tens of microseconds, more than copying a
# small image), which made raw shards slower to stream than JPEG ones.
_npy_headers: dict[bytes, tuple[tuple[int, ...], bool, np.dtype]] = {}


def _decode_npy(data: bytes) -> np.ndarray:
    """An array from the bytes of a `.npy` file (a read-only view of `data`)."""
    if not data.startswith(_NPY_MAGIC_V1) or len(data) < 10:
        return np.load(io.BytesIO(data), allow_pickle=False)  # other versions: numpy's reader
    end = 10 + int.from_bytes(data[8:10], "little")
    header = data[10:end]
    parsed = _npy_headers.get(header)
    if parsed is None:
        stream = io.BytesIO(data)
        np.lib.format.read_magic(stream)
        parsed = np.lib.format.read_array_header_1_0(stream)
        if len(_npy_headers) < 256:
            _npy_headers[header] = parsed
    shape, fortran_order, dtype = parsed
    if fortran_order or dtype.hasobject:
        return np.load(io.BytesIO(data), allow_pickle=False)
    count = int(np.prod(shape, dtype=np.int64))
    if len(data) - end < count * dtype.itemsize:
        raise ValueError(f"npy member is truncated: {len(data) - end} bytes of data for shape {shape} {dtype}")
    return np.frombuffer(data, dtype=dtype, count=count, offset=end).reshape(shape)


def decode_image(data: bytes, ext: str, channels: int) -> np.ndarray:
    """Bytes of a `.jpg`/`.png`/`.npy` member -> uint8 (C, H, W) with `channels` channels."""
    if ext == "npy":
        image = _decode_npy(data)
        if image.dtype != np.uint8 or image.ndim != 3:
            raise ValueError(f"npy member holds {image.dtype} {image.shape}, expected uint8 (C, H, W)")
        return image
    from PIL import Image

    mode = "L" if channels == 1 else "RGB"
    # Only our own two formats: skips PIL's probing of every other plugin (a hot path
    # of the stream loader, where decoding a small image costs less than PIL's overhead).
    with Image.open(io.BytesIO(data), formats=("JPEG", "PNG")) as pil:
        if pil.mode != mode:
            pil = pil.convert(mode)
        array = np.asarray(pil, dtype=np.uint8)
    return array[None] if channels == 1 else array.transpose(2, 0, 1)


def read_at(fd: int, size: int, offset: int) -> bytes:
    """`size` bytes at `offset`: one `pread` where the OS has it; Windows has none, and
    seek + read is safe there because each process reads through its own descriptor."""
    if hasattr(os, "pread"):
        return os.pread(fd, size, offset)
    os.lseek(fd, offset, os.SEEK_SET)
    return os.read(fd, size)
