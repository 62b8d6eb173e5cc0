"""The artifact writer: the compiler's last stage. ``tide.compiler.driver`` hands ``write_artifact``
the plan (``format.Plan``, as lowering built it), the kernel library, the DEVICE_CODE section its
target built and the weights; the C runtime (runtime/src/artifact.c) loads the file.
"""

from __future__ import annotations

import json
import os
import struct
import tempfile
import zlib

import numpy as np

from .encoding import Out
from .format import (ARG_KINDS, BUFFER_KINDS, FORMAT_VERSION, HEADER_BYTES, MAGIC, OP_CALL, ROLES, SECTION_ALIGN,
                     SECTION_KINDS, TABLE_ENTRY_BYTES, TARGET_KINDS, WEIGHT_ALIGN, WEIGHTS_SECTION_ALIGN, ArtifactError,
                     Plan, Section, TargetInfo, align, desc, device_format, validate_plan, validate_target)

_WRITE_CHUNK = 64 << 20  # bytes per write/CRC step when streaming weights


def _encode_target(t: TargetInfo) -> bytes:
    out = Out()
    out.u32(TARGET_KINDS[t.kind])
    out.string(t.host_arch)
    out.u64(t.host_features)
    out.string(t.device_arch)
    return out.bytes()


def _encode_plan(plan: Plan, layout: list) -> bytes:
    """``layout``: (offset, nbytes) per weight."""
    out = Out()
    out.u32(len(plan.kernels))
    for k in plan.kernels:
        out.string(k)
    out.u32(len(plan.weights))
    for w, (offset, nbytes) in zip(plan.weights, layout):
        out.string(w.name)
        out.desc(w.dtype, w.shape)
        out.u64(offset)
        out.u64(nbytes)
    out.u32(len(plan.states))
    for s in plan.states:
        out.string(s.name)
        out.desc(s.dtype, s.shape)
    out.u32(len(plan.entries))
    kernel_index = {k: i for i, k in enumerate(plan.kernels)}
    for e in plan.entries:
        out.string(e.name)
        out.u64(e.arena_bytes)
        out.u32(len(e.buffers))
        for b in e.buffers:
            out.u8(BUFFER_KINDS[b.kind])
            out.u32(b.index)
            out.u64(b.offset)
            out.desc(b.dtype, b.shape)
        for ios in (e.inputs, e.outputs):
            out.u32(len(ios))
            for io in ios:
                out.string(io.name)
                out.u32(io.buffer)
                out.u32(ROLES[io.role])
        out.u32(len(e.calls))
        for call in e.calls:
            out.u8(OP_CALL)
            out.u32(kernel_index[call.kernel])
            out.u32(len(call.args))
            for kind, value in call.args:
                out.u8(ARG_KINDS[kind])
                out.i64(int(value))
    return out.bytes()


def check_elf(image, where: str) -> None:
    """An ELF64 little-endian shared object (the C loader also checks its machine against the host)."""
    head = bytes(image[:20])
    if len(head) < 20 or head[:4] != b"\x7fELF":
        raise ArtifactError(f"{where}: the kernel library is not an ELF file")
    if head[4] != 2 or head[5] != 1:
        raise ArtifactError(f"{where}: the kernel library is not a 64-bit little-endian ELF file")
    etype = struct.unpack_from("<H", head, 16)[0]
    if etype != 3:
        raise ArtifactError(f"{where}: the kernel library has ELF type {etype}, not a shared object (3)")


def _array_chunks(array: np.ndarray):
    """The array's bytes in C order, in chunks of about _WRITE_CHUNK bytes, without copying a
    C-contiguous array and without ever copying more than a chunk of another."""
    if array.flags.c_contiguous:
        flat = memoryview(array.reshape(-1).view(np.uint8))
        for start in range(0, len(flat), _WRITE_CHUNK):
            yield flat[start:start + _WRITE_CHUNK]
        return
    rows = max(1, _WRITE_CHUNK // max(1, array[0].nbytes)) if array.shape[0] else 1
    for start in range(0, array.shape[0], rows):
        yield memoryview(np.ascontiguousarray(array[start:start + rows]).reshape(-1).view(np.uint8))


def _check_code(target: TargetInfo, plan: Plan, kernel_library: bytes, device_code: bytes | None) -> None:
    """The kernel library and DEVICE_CODE the runtime backend ``target.kind`` expects."""
    fmt = device_format(target.kind)
    if fmt is not None and not fmt.HOST_LIBRARY and kernel_library:
        raise ArtifactError(f"a {target.kind} artifact has no kernel library: its kernels are in DEVICE_CODE")
    if fmt is None or fmt.HOST_LIBRARY:
        if plan.kernels and not kernel_library:
            raise ArtifactError(f"the plan calls {len(plan.kernels)} kernels but no kernel library was given")
        if kernel_library:
            check_elf(kernel_library, "KERNELS_HOST")
    if fmt is None:
        return  # a DEVICE_CODE section of a host-only target is opaque to the format
    if not device_code:
        raise ArtifactError(f"a {target.kind} target needs a DEVICE_CODE section")
    fmt.validate(fmt.decode(bytes(device_code)), plan, target.device_arch)


def write_artifact(path: str, target: TargetInfo, plan: Plan, kernel_library: bytes, weights: list,
                   metadata: dict, device_code: bytes | None = None, *, check: bool = True) -> None:
    """Writes the artifact ``path`` atomically.

    ``weights``: numpy arrays in ``plan.weights`` order, each exactly of its spec's dtype and shape
    (bfloat16 as ml_dtypes.bfloat16); they are streamed to the file (each read once, chunk by chunk,
    CRC computed on the way), so they may be memory-mapped and larger than RAM. The weight layout
    (64-byte aligned, in order) is stored into each spec's ``offset``/``nbytes``.
    ``kernel_library``: the ELF shared object (linked with the runtime's kernel shim); may be empty
    only when the plan has no kernels or the target's kernels are all in ``device_code`` (the
    DEVICE_CODE section in its target's format). ``metadata``: JSON-serializable dict.

    The file is written to a temporary file in the same directory, fsynced and renamed over
    ``path``: a reader never sees a partial file, and on any error ``path`` is untouched and the
    temporary file removed. ``check=False`` skips the validation (for testing a loader's own
    checks); the writer still refuses what it cannot encode.
    """
    if check:
        validate_target(target)
        validate_plan(plan)
    elif target.kind not in TARGET_KINDS:
        raise ArtifactError(f"target: unknown kind '{target.kind}'")
    if len(weights) != len(plan.weights):
        raise ArtifactError(f"{len(weights)} weight arrays for {len(plan.weights)} weight specs")
    layout, offset = [], 0
    for spec, array in zip(plan.weights, weights):
        if not isinstance(array, np.ndarray):
            raise ArtifactError(f"weight '{spec.name}': expected a numpy array, got {type(array).__name__}")
        if str(array.dtype) != spec.dtype or tuple(array.shape) != tuple(spec.shape):
            raise ArtifactError(f"weight '{spec.name}': array is {array.dtype}{list(array.shape)}, its spec "
                                f"{desc(spec.dtype, spec.shape)}")
        offset = align(offset, WEIGHT_ALIGN)
        layout.append((offset, int(array.nbytes)))
        offset += int(array.nbytes)
    weights_size = offset
    kernel_library = bytes(kernel_library or b"")
    if check:
        _check_code(target, plan, kernel_library, device_code)
    try:
        meta = json.dumps(metadata, sort_keys=True, ensure_ascii=False, allow_nan=False).encode("utf-8")
    except (TypeError, ValueError) as err:
        raise ArtifactError(f"metadata is not JSON-serializable: {err}") from None

    try:
        blobs = [("TARGET", _encode_target(target)), ("PLAN", _encode_plan(plan, layout)), ("METADATA", meta)]
    except (struct.error, KeyError, UnicodeEncodeError, TypeError, ValueError) as err:
        raise ArtifactError(f"the plan cannot be encoded: {type(err).__name__}: {err}") from None
    if kernel_library:
        blobs.append(("KERNELS_HOST", kernel_library))
    if device_code:
        blobs.append(("DEVICE_CODE", bytes(device_code)))
    n = len(blobs) + 1
    pos = HEADER_BYTES + n * TABLE_ENTRY_BYTES
    sections = []
    for name, blob in blobs:
        pos = align(pos, SECTION_ALIGN[name])
        sections.append(Section(name, pos, len(blob), zlib.crc32(blob), SECTION_ALIGN[name]))
        pos += len(blob)
    weights_off = align(pos, WEIGHTS_SECTION_ALIGN)
    file_size = weights_off + weights_size

    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".partial", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(b"\0" * (HEADER_BYTES + n * TABLE_ENTRY_BYTES))
            for section, (_, blob) in zip(sections, blobs):
                f.write(b"\0" * (section.offset - f.tell()))
                f.write(blob)
            f.write(b"\0" * (weights_off - f.tell()))
            crc = 0
            for array, (w_off, _) in zip(weights, layout):
                pad = b"\0" * (weights_off + w_off - f.tell())
                f.write(pad)
                crc = zlib.crc32(pad, crc)
                for chunk in _array_chunks(array):
                    f.write(chunk)
                    crc = zlib.crc32(chunk, crc)
            if f.tell() != file_size:
                raise ArtifactError(f"internal error: wrote {f.tell()} bytes, planned {file_size}")
            sections.append(Section("WEIGHTS", weights_off, weights_size, crc, WEIGHTS_SECTION_ALIGN))
            table = b"".join(struct.pack("<IIQQII16s", SECTION_KINDS[s.kind], 0, s.offset, s.size, s.crc32,
                                         s.alignment, s.kind.encode("ascii")) for s in sections)
            head = bytearray(struct.pack("<8sIIIIQQI20s", MAGIC, FORMAT_VERSION, HEADER_BYTES, n, 0,
                                         HEADER_BYTES, file_size, 0, b"\0" * 20))
            struct.pack_into("<I", head, 40, zlib.crc32(table, zlib.crc32(bytes(head))))
            f.seek(0)
            f.write(head)
            f.write(table)
            f.flush()
            os.fchmod(f.fileno(), 0o644)
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    for spec, (w_off, nbytes) in zip(plan.weights, layout):
        spec.offset, spec.nbytes = w_off, nbytes
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # make the rename itself durable
    finally:
        os.close(dir_fd)
