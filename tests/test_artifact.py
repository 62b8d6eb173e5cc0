"""tide.compiler.artifact: the writer, the reader and their validation (docs/artifact-format.md)."""

from __future__ import annotations

import copy
import json
import os
import struct
import zlib

import ml_dtypes
import numpy as np
import pytest

from tide.compiler import artifact as A
from tide_test_models import W0, W1, compile_test_kernels, cpu_target, standard_plan, write_standard


@pytest.fixture(scope="module")
def kernels_so(tmp_path_factory):
    return compile_test_kernels(str(tmp_path_factory.mktemp("kernels")))


@pytest.fixture
def standard(tmp_path, kernels_so):
    return write_standard(str(tmp_path / "standard.tide"), kernels_so)


def test_roundtrip(standard, kernels_so):
    art = A.read_artifact(standard)
    plan = standard_plan()
    assert art.target == cpu_target()
    assert art.metadata == {"name": "standard"}
    assert art.plan.kernels == plan.kernels and art.plan.states == plan.states
    assert [(w.name, w.dtype, w.shape) for w in art.plan.weights] == [("w0", "float32", (4,)), ("w1", "float32", (2, 2))]
    assert [w.offset for w in art.plan.weights] == [0, 64] and [w.nbytes for w in art.plan.weights] == [16, 16]
    for got, want in zip(art.plan.entries, plan.entries):
        assert got == want
    np.testing.assert_array_equal(art.weight(0), W0)
    np.testing.assert_array_equal(art.weight(1), W1)
    with open(kernels_so, "rb") as f:
        assert art.section_bytes("KERNELS_HOST") == f.read()
    assert art.section_bytes("DEVICE_CODE") == b"opaque device code"
    assert list(art.sections) == ["TARGET", "PLAN", "METADATA", "KERNELS_HOST", "DEVICE_CODE", "WEIGHTS"]
    with open(standard, "rb") as f:
        data = f.read()
    assert art.file_size == len(data) == os.path.getsize(standard)
    for s in art.section_info.values():
        assert s.offset % s.alignment == 0 and s.crc32 == zlib.crc32(data[s.offset:s.offset + s.size])
    assert art.section_info["WEIGHTS"].alignment == 4096 and art.sections["WEIGHTS"][0] % 4096 == 0
    magic, version, hsize, n, flags, table, size, crc = struct.unpack_from("<8sIIIIQQI", data)
    assert (magic, version, hsize, n, flags, table, size) == (b"TIDEART\0", 1, 64, 6, 0, 64, len(data))
    head = bytearray(data[:64])
    head[40:44] = bytes(4)
    assert crc == zlib.crc32(data[64:64 + 6 * 48], zlib.crc32(bytes(head)))
    assert oct(os.stat(standard).st_mode & 0o777) == "0o644"


def test_streams_weights_of_every_layout(tmp_path, monkeypatch):
    """Chunked streaming (tiny chunks here) of contiguous, transposed, sliced, bfloat16, bool,
    zero-size and 0-d weights; no kernels, so no kernel library."""
    monkeypatch.setattr(A.writer, "_WRITE_CHUNK", 24)
    rng = np.random.default_rng(0)
    arrays = [
        rng.standard_normal((7, 5)).astype(np.float32),
        rng.standard_normal((6, 9)).astype(np.float64).T,
        np.arange(40, dtype=np.int16).reshape(8, 5)[::2, 1:4],
        rng.standard_normal((3, 33)).astype(ml_dtypes.bfloat16),
        rng.integers(0, 2, (13,)).astype(bool),
        np.zeros((0, 4), dtype=np.uint8),
        np.array(7, dtype=np.int64),
    ]
    specs = [A.WeightSpec(f"w{i}", str(a.dtype), a.shape) for i, a in enumerate(arrays)]
    entry = A.Entry("main", [A.Buffer("weight", 0, "float32", (7, 5))], [], [A.IOBinding("w0", 0, "data")], [])
    path = str(tmp_path / "w.tide")
    A.write_artifact(path, cpu_target(), A.Plan([], specs, [], [entry]), b"", arrays, {})
    art = A.read_artifact(path)
    assert "KERNELS_HOST" not in art.sections
    for i, a in enumerate(arrays):
        assert art.plan.weights[i].offset % 64 == 0
        got = art.weight(i)
        assert got.dtype == a.dtype and got.shape == a.shape
        np.testing.assert_array_equal(got, a)
    assert specs[1].offset == art.plan.weights[1].offset  # the writer fills in the layout


BAD_PLANS = {
    "kernel": (lambda p: setattr(p.entries[0].calls[0], "kernel", "mul"), "kernel 'mul' is not in the plan's 9 kernels"),
    "argument buffer": (lambda p: p.entries[0].calls[0].args.__setitem__(0, ("buf", 9)), "argument 0: buffer 9 out of range"),
    "argument kind": (lambda p: p.entries[0].calls[0].args.__setitem__(0, ("tensor", 0)), "argument 0"),
    "too many args": (lambda p: p.entries[0].calls[0].args.extend([("imm", 0)] * 62), "65 arguments exceed"),
    "arena overflow": (lambda p: setattr(p.entries[0].buffers[8], "offset", 248), "exceed the 256-byte arena"),
    "arena alignment": (lambda p: setattr(p.entries[0], "arena_bytes", 260), "not a multiple of 64"),
    "arena index": (lambda p: setattr(p.entries[0].buffers[2], "index", 1), "arena buffer has index 1"),
    "weight index": (lambda p: setattr(p.entries[0].buffers[1], "index", 2), "weight index 2 out of range"),
    "weight view": (lambda p: setattr(p.entries[0].buffers[5], "offset", 4), "exceeds weight 'w1'"),
    "state index": (lambda p: setattr(p.entries[1].buffers[1], "index", 1), "state index 1 out of range"),
    "input view": (lambda p: setattr(p.entries[0].buffers[4], "offset", 8), "exceeds input 'x'"),
    "data input binding": (lambda p: setattr(p.entries[0].inputs[0], "buffer", 2), "must be bound to an input buffer"),
    "state input binding": (lambda p: setattr(p.entries[1].inputs[1], "buffer", 2), "whole state buffer"),
    "state output binding": (lambda p: setattr(p.entries[1].outputs[0], "buffer", 0), "whole state buffer"),
    "state shape": (lambda p: setattr(p.entries[1].buffers[1], "shape", (2,)), "state 'acc' is float32[4]"),
    "input of a state": (lambda p: p.entries[1].buffers.append(A.Buffer("input", 1, "float32", (4,))),
                         "refers to state input 'acc'"),
    "input index": (lambda p: setattr(p.entries[0].buffers[4], "index", 3), "input index 3 out of range"),
    "unknown role": (lambda p: setattr(p.entries[0].outputs[0], "role", "scratch"), "unknown role"),
    "output buffer": (lambda p: setattr(p.entries[0].outputs[0], "buffer", 40), "buffer index 40 out of range"),
    "duplicate entry": (lambda p: setattr(p.entries[1], "name", "main"), "duplicate entry name 'main'"),
    "duplicate output": (lambda p: setattr(p.entries[0].outputs[1], "name", "y"), "duplicate entry 'main' output"),
    "duplicate kernel": (lambda p: p.kernels.__setitem__(1, "add"), "duplicate kernel name 'add'"),
    "duplicate weight": (lambda p: setattr(p.weights[1], "name", "w0"), "duplicate weight name 'w0'"),
    "dtype": (lambda p: setattr(p.entries[0].buffers[2], "dtype", "float8"), "unsupported dtype 'float8'"),
    "rank": (lambda p: setattr(p.states[0], "shape", (1,) * 9), "at most 8 non-negative"),
    "negative dim": (lambda p: setattr(p.entries[0].buffers[3], "shape", (-4,)), "non-negative"),
    "name": (lambda p: setattr(p.entries[0].inputs[0], "name", "x\n"), "printable ASCII"),
    "empty name": (lambda p: setattr(p.states[0], "name", ""), "non-empty"),
    "no entries": (lambda p: p.entries.clear(), "no entries"),
}


@pytest.mark.parametrize("case", sorted(BAD_PLANS))
def test_writer_rejects_bad_plans(tmp_path, kernels_so, case):
    mutate, message = BAD_PLANS[case]
    plan = standard_plan()
    mutate(plan)
    path = tmp_path / "bad.tide"
    with pytest.raises(A.ArtifactError, match=message.replace("[", r"\[").replace("(", r"\(")):
        write_standard(str(path), kernels_so, plan=plan)
    assert os.listdir(tmp_path) == []  # nothing written, no temporary left


def test_writer_rejects_bad_arguments(tmp_path, kernels_so):
    path = str(tmp_path / "a.tide")
    with open(kernels_so, "rb") as f:
        lib = f.read()
    plan = standard_plan()
    cases = [
        (lambda: A.write_artifact(path, cpu_target(), plan, lib, [W0], {}), "1 weight arrays for 2"),
        (lambda: A.write_artifact(path, cpu_target(), plan, lib, [W0, W1.astype(np.float64)], {}),
         "weight 'w1': array is float64"),
        (lambda: A.write_artifact(path, cpu_target(), plan, lib, [W0, W1.reshape(4)], {}), "weight 'w1'"),
        (lambda: A.write_artifact(path, cpu_target(), plan, lib, [W0, W1], {"x": object()}), "not JSON"),
        (lambda: A.write_artifact(path, cpu_target(), plan, lib, [W0, W1], {"x": float("nan")}), "not JSON"),
        (lambda: A.write_artifact(path, cpu_target(), plan, b"", [W0, W1], {}), "no kernel library"),
        (lambda: A.write_artifact(path, cpu_target(), plan, b"not an elf file at all, sorry", [W0, W1], {}),
         "not an ELF"),
        (lambda: A.write_artifact(path, A.TargetInfo("tpu", "x86_64"), plan, lib, [W0, W1], {}), "unknown kind"),
        (lambda: A.write_artifact(path, A.TargetInfo("cpu", "x86_64", 1 << 12), plan, lib, [W0, W1], {}),
         "unknown CPU feature bits 0x1000"),
        (lambda: A.write_artifact(path, A.TargetInfo("cpu", "x86_64", 0, "sm_90"), plan, lib, [W0, W1], {}),
         "device architecture 'sm_90'"),
    ]
    for fn, message in cases:
        with pytest.raises(A.ArtifactError, match=message):
            fn()
    assert os.listdir(tmp_path) == []
    assert A.feature_mask(["avx2", "fma"]) == 0b1100
    assert A.TargetInfo("cpu", "x86_64", 0b1100).features == ["avx2", "fma"]
    with pytest.raises(A.ArtifactError, match="unknown CPU feature 'avx3'"):
        A.feature_mask(["avx3"])


def test_write_is_atomic(tmp_path, kernels_so, monkeypatch):
    path = str(tmp_path / "model.tide")
    write_standard(path, kernels_so)
    with open(path, "rb") as f:
        before = f.read()
    calls = []

    def failing_chunks(array):
        calls.append(array)
        if len(calls) == 2:
            raise OSError("disk full (simulated)")
        yield memoryview(np.ascontiguousarray(array).reshape(-1).view(np.uint8))

    monkeypatch.setattr(A.writer, "_array_chunks", failing_chunks)
    with pytest.raises(OSError, match="disk full"):
        write_standard(path, kernels_so, metadata={"name": "second"})
    with open(path, "rb") as f:
        assert f.read() == before  # the previous artifact is untouched
    assert os.listdir(tmp_path) == ["model.tide"]  # and the temporary file is gone


def _flip(path: str, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)[0]
        f.seek(offset)
        f.write(bytes([byte ^ 0x20]))


def _refresh_header_crc(path: str) -> None:
    with open(path, "r+b") as f:
        data = bytearray(f.read())
        n, table = struct.unpack_from("<IQ", data, 16)[0], struct.unpack_from("<Q", data, 24)[0]
        data[40:44] = bytes(4)
        crc = zlib.crc32(bytes(data[table:table + 48 * n]), zlib.crc32(bytes(data[:64])))
        struct.pack_into("<I", data, 40, crc)
        f.seek(0)
        f.write(data)


def test_reader_rejects_corruption(standard):
    art = A.read_artifact(standard)
    size = art.file_size
    with open(standard, "rb") as f:
        good = f.read()

    def expect(message, verify=True):
        with pytest.raises(A.ArtifactError, match=message):
            A.read_artifact(standard, verify=verify)
        with open(standard, "wb") as f:
            f.write(good)

    for cut in (0, 10, 64, 200, size // 2, size - 1):
        with open(standard, "wb") as f:
            f.write(good[:cut])
        expect("empty|truncated")
    for offset in (20, 33, 50, 64 + 3, 64 + 48 * 3 + 20):
        _flip(standard, offset)
        expect("header")
    for s in art.section_info.values():
        _flip(standard, s.offset + s.size // 2)
        expect(f"{s.kind} section: checksum mismatch")
    # Bulk checksums may be skipped; parsed sections are always verified.
    _flip(standard, art.sections["WEIGHTS"][0] + 3)
    assert A.read_artifact(standard, verify=False).plan.weights[0].name == "w0"
    _flip(standard, art.sections["PLAN"][0] + 3)
    expect("PLAN section: checksum mismatch", verify=False)
    _flip(standard, 0)
    expect("bad magic")
    with open(standard, "r+b") as f:
        f.seek(8)
        f.write(struct.pack("<I", 2))
    expect("format version 2 is not supported")
    with open(standard, "r+b") as f:
        f.seek(44)
        f.write(b"\1")
    _refresh_header_crc(standard)
    expect("reserved bytes are not zero")


def test_reader_applies_the_plan_rules(tmp_path, kernels_so):
    """A plan written without validation (check=False) is refused by the reader, with the rule."""
    plan = standard_plan()
    plan.entries[0].calls[0].args[0] = ("buf", 99)
    path = str(tmp_path / "unchecked.tide")
    write_standard(path, kernels_so, plan=plan, check=False)
    with pytest.raises(A.ArtifactError, match=r"PLAN section: entry 'main' op 0: argument 0: buffer 99"):
        A.read_artifact(path)


def test_metadata_is_utf8_json(tmp_path, kernels_so):
    path = write_standard(str(tmp_path / "m.tide"), kernels_so, metadata={"name": "café", "n": [1, 2]})
    art = A.read_artifact(path)
    assert art.metadata == {"name": "café", "n": [1, 2]}
    raw = art.section_bytes("METADATA")
    assert json.loads(raw.decode("utf-8")) == art.metadata and "café".encode() in raw


def test_plan_objects_are_not_shared(kernels_so, tmp_path):
    """read_artifact returns fresh objects; writing the read plan again gives the same bytes."""
    first = write_standard(str(tmp_path / "a.tide"), kernels_so)
    art = A.read_artifact(first)
    second = str(tmp_path / "b.tide")
    with open(kernels_so, "rb") as f:
        A.write_artifact(second, art.target, copy.deepcopy(art.plan), f.read(), [W0, W1], art.metadata,
                         art.section_bytes("DEVICE_CODE"))
    with open(first, "rb") as a, open(second, "rb") as b:
        assert a.read() == b.read()
