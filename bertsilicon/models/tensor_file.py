"""The tensor file of a saved artifact: safetensors written by the ``safetensors`` package, read here.

Reading is zero-copy: the file is memory-mapped (copy-on-write, private) and every tensor is a view of the
mapping, so a page is read from disk, and counts as resident, only when something touches it (an embedding table
reads only the rows of the tokens it looks up). Every check happens before any tensor is made, and each failure is
a :class:`ArtifactError` naming the file and what is wrong with it:

* the 8-byte header length, the JSON header, each tensor's dtype, shape and byte range against the file's size
  (a truncated file), the ranges tiling the data without gaps or overlaps;
* the SHA-256 of the whole file against the one the manifest recorded (a corrupted byte anywhere), read with
  plain file reads so that the check itself makes nothing resident.
"""
from __future__ import annotations

import ctypes
import hashlib
import json
import math
import mmap
import os
import struct
from pathlib import Path

import torch

# safetensors dtype names -> torch dtypes (the ones an artifact holds)
DTYPES = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16, "F64": torch.float64,
          "I8": torch.int8, "U8": torch.uint8, "I32": torch.int32, "I64": torch.int64, "BOOL": torch.bool}
_HEADER_LIMIT = 100 * 2 ** 20
_MAPPED: list = []  # (first byte address, end address) of every mapping read() made; never unmapped
_MADV_DONTNEED = 4


class ArtifactError(ValueError):
    """A saved artifact that cannot be loaded: names the file and the problem."""


def write(tensors: dict, path: Path) -> str:
    """Write ``{name: CPU tensor}`` as safetensors at ``path``; returns the file's SHA-256 (hex)."""
    from safetensors.torch import save_file

    save_file({name: t.detach().to("cpu").contiguous() for name, t in tensors.items()}, str(path))
    return sha256(path)


def sha256(path: Path) -> str:
    """SHA-256 of a file, read into one reused 4 MiB buffer (no mapping: nothing of the file stays resident)."""
    digest, buffer = hashlib.sha256(), bytearray(4 << 20)
    view = memoryview(buffer)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buffer):
            digest.update(view[:n])
    return digest.hexdigest()


def read(path: Path, expected_sha256: str) -> dict:
    """``{name: tensor}`` from the safetensors file at ``path``, views of a private memory map, after every check
    of the module docstring. ArtifactError naming ``path`` on any failure."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise ArtifactError(f"{path}: {size} bytes, too short for a safetensors file (truncated)")
            (header_len,) = struct.unpack("<Q", head)
            if header_len > min(_HEADER_LIMIT, size - 8):
                raise ArtifactError(f"{path}: its header claims {header_len} bytes, the file holds {size - 8} after the "
                                    "length field (truncated or not a safetensors file)")
            raw = f.read(header_len)
    except OSError as exc:
        raise ArtifactError(f"{path}: cannot be read ({exc})") from exc
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"{path}: the safetensors header is not valid JSON ({exc}); the file is corrupted") from exc
    header.pop("__metadata__", None)
    data_start, data_len = 8 + header_len, size - 8 - header_len
    entries = _checked_entries(path, header, data_len)
    digest = sha256(path)
    if digest != expected_sha256:
        raise ArtifactError(f"{path}: SHA-256 {digest[:16]}... differs from the {expected_sha256[:16]}... recorded in "
                            "bertsilicon.json when it was saved: the file is corrupted or was replaced; save the "
                            "artifact again")
    if not entries:
        return {}
    with open(path, "rb") as f:
        # Drop the file's clean page cache (the checksum just read it through read-ahead, in large folios) and map it
        # for random access: a page the model touches is then read and mapped alone. Otherwise a fault maps the whole
        # large folio around it, and a few embedding rows of a 45 MiB table cost megabytes of resident memory.
        os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
        mapping = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
    mapping.madvise(mmap.MADV_RANDOM)
    base = ctypes.addressof(ctypes.c_char.from_buffer(mapping))
    _MAPPED.append((base, base + size))
    out = {}
    for name, (dtype, shape, begin, end) in entries.items():
        count = math.prod(shape)
        if count == 0:
            out[name] = torch.empty(shape, dtype=dtype)
            continue
        out[name] = torch.frombuffer(mapping, dtype=dtype, count=count, offset=data_start + begin).view(shape)
    return out


def _checked_entries(path: Path, header: dict, data_len: int) -> dict:
    """``{name: (dtype, shape, begin, end)}`` of the header, every field checked against the data's length."""
    if not isinstance(header, dict):
        raise ArtifactError(f"{path}: the safetensors header is not a JSON object; the file is corrupted")
    entries, ranges = {}, []
    for name, info in header.items():
        try:
            dtype = DTYPES[info["dtype"]]
            shape = [int(n) for n in info["shape"]]
            begin, end = (int(o) for o in info["data_offsets"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ArtifactError(f"{path}: the header entry of tensor {name!r} is malformed ({exc!r}); the file is "
                                "corrupted") from exc
        nbytes = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
        if end - begin != nbytes or begin < 0:
            raise ArtifactError(f"{path}: tensor {name!r} ({info['dtype']} {shape}) needs {nbytes} bytes, its header "
                                f"entry gives bytes {begin}..{end}; the file is corrupted")
        if end > data_len:
            raise ArtifactError(f"{path}: tensor {name!r} ends at byte {end} of the data, which holds {data_len} "
                                "bytes: the file is truncated")
        entries[name] = (dtype, shape, begin, end)
        ranges.append((begin, end))
    ranges.sort()
    if ranges and (ranges[0][0] != 0 or ranges[-1][1] != data_len
                   or any(a[1] != b[0] for a, b in zip(ranges, ranges[1:]))):
        raise ArtifactError(f"{path}: the tensors' byte ranges do not tile the {data_len} data bytes; the file is "
                            "corrupted")
    return entries


def release_pages(tensors) -> int:
    """Drop the resident pages of ``tensors`` that lie wholly inside a mapping :func:`read` made (others are left
    alone): the pages are clean copies of the file, read again from it if touched again. For prepared weights once
    their packs are made (a pack is a copy). Returns the bytes released."""
    page = mmap.PAGESIZE
    libc = ctypes.CDLL(None, use_errno=True)
    released = 0
    for t in tensors:
        if t is None or t.device.type != "cpu" or t.numel() == 0:
            continue
        begin, end = t.data_ptr(), t.data_ptr() + t.numel() * t.element_size()
        if not any(lo <= begin and end <= hi for lo, hi in _MAPPED):
            continue
        first, last = -(-begin // page) * page, end // page * page  # whole pages inside the tensor only
        if last > first and libc.madvise(ctypes.c_void_p(first), ctypes.c_size_t(last - first), _MADV_DONTNEED) == 0:
            released += last - first
    return released
