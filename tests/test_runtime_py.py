"""tide.runtime: the Python API over libtide_runtime.so, on artifacts written with
tide.compiler.artifact over hand-written ABI kernels and over a real TVM-built kernel library."""

from __future__ import annotations

import gc
import json
import os
import re
import struct
import subprocess
import sys

import ml_dtypes
import numpy as np
import pytest

import tide.runtime as R
from tide.compiler import artifact as A
from tide.runtime import _ffi, bindings, build
from tide_test_models import (REPO, W0, W1, ToyLM, compile_test_kernels, cpu_target, host_arch, standard_plan,
                              write_decode, write_standard)

HEADER = os.path.join(REPO, "runtime", "include", "tide", "runtime.h")


@pytest.fixture(scope="module")
def kernels_so(tmp_path_factory):
    return compile_test_kernels(str(tmp_path_factory.mktemp("kernels")))


@pytest.fixture(scope="module")
def standard(tmp_path_factory, kernels_so):
    return write_standard(str(tmp_path_factory.mktemp("std") / "standard.tide"), kernels_so)


@pytest.fixture(scope="module")
def decode_model(tmp_path_factory, kernels_so):
    return write_decode(str(tmp_path_factory.mktemp("dec") / "decode.tide"), kernels_so)


def aligned_array(values, dtype, offset_bytes=0) -> np.ndarray:
    """A copy of values at an address that is offset_bytes past a 64-byte boundary."""
    values = np.asarray(values, dtype=dtype)
    raw = np.zeros(values.nbytes + 128, dtype=np.uint8)
    start = -raw.ctypes.data % 64 + offset_bytes
    out = raw[start:start + values.nbytes].view(dtype).reshape(values.shape)
    out[...] = values
    return out


# ---- packaging --------------------------------------------------------------------------------------

def test_import_needs_no_tvm_torch_or_onnx():
    code = ("import sys, tide, tide.runtime; "
            "bad = [m for m in ('tvm', 'tvm_ffi', 'torch', 'onnx', 'onnxruntime') if m in sys.modules]; "
            "assert not bad, bad; assert tide.load.__module__ == 'tide'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_dtypes_import_without_cffi():
    """tide.runtime.dtypes (the dtype and device tables, for the artifact writer too) needs only numpy;
    the package's names import on first use."""
    code = ("import sys; sys.modules['cffi'] = None; from tide.runtime.dtypes import DTYPES, DTYPE_NAMES; "
            "assert DTYPE_NAMES[DTYPES['bfloat16']] == 'bfloat16'")
    subprocess.run([sys.executable, "-c", code], check=True)
    assert set(R.__all__) <= set(dir(R)) and all(hasattr(R, name) for name in R.__all__)
    assert not hasattr(R, "no_such_name")


def _normalize(text: str) -> list[str]:
    return re.findall(r"[A-Za-z_][A-Za-z_0-9]*|\d+|[^\sA-Za-z_0-9]", text)


def test_cdef_matches_the_header():
    """_ffi.CDEF is the header's declarations: same tokens once comments, include guards, extern "C"
    and the TIDE_API attribute are dropped."""
    with open(HEADER) as f:
        header = f.read()
    header = re.sub(r"/\*.*?\*/", "", header, flags=re.S)
    kept = []
    for line in header.splitlines():
        s = line.strip()
        if s.startswith("#") and not re.match(r"#define TIDE_(MAX_RANK|TENSOR_ALIGNMENT) ", s):
            continue
        if s in ('extern "C" {', "}") and "tide" not in s:
            continue
        kept.append(line)
    want = [t for t in _normalize("\n".join(kept)) if t != "TIDE_API"]
    assert _normalize(_ffi.CDEF) == want


def test_library_exports_only_the_api_and_links_no_tvm():
    lib = build.library_path()
    ldd = subprocess.run(["ldd", lib], capture_output=True, text=True, check=True).stdout
    assert "tvm" not in ldd.lower() and "dlpack" not in ldd.lower(), ldd
    libs = {line.split()[0] for line in ldd.splitlines() if line.strip()}
    assert libs <= {"linux-vdso.so.1", "libc.so.6", "libdl.so.2", "libpthread.so.0", "/lib64/ld-linux-x86-64.so.2",
                    "/lib/ld-linux-aarch64.so.1", "linux-vdso.so.1"}, libs
    nm = subprocess.run(["nm", "-D", "--defined-only", lib], capture_output=True, text=True, check=True).stdout
    names = [line.split()[-1] for line in nm.splitlines() if line.strip()]
    assert names and all(n.startswith("tide_") for n in names), names
    assert "TVMFFIErrorSetRaisedFromCStrParts" not in nm


def test_build_into_the_cache(tmp_path, monkeypatch):
    monkeypatch.delenv("TIDE_RUNTIME_LIB", raising=False)
    monkeypatch.setenv("TIDE_CACHE", str(tmp_path))
    monkeypatch.setattr(build, "_fresh", lambda lib, sources: False)  # pretend <repo>/build is stale
    lib = build.library_path()
    assert lib.startswith(str(tmp_path)) and os.path.isfile(lib)
    assert build.library_path() == lib  # found again, not rebuilt
    assert [p for p in os.listdir(os.path.dirname(lib)) if p.startswith(".build-")] == []
    handle = _ffi.ffi.dlopen(lib)
    opts = _ffi.ffi.new("tide_model_options_t*")
    handle.tide_model_options_initialize(opts)
    assert opts.struct_size == _ffi.ffi.sizeof("tide_model_options_t") and opts.verify_checksums == 1
    monkeypatch.setenv("TIDE_CACHE", str(tmp_path / "other"))
    monkeypatch.setattr(build, "_compiler", lambda: None)
    with pytest.raises(build.RuntimeBuildError, match="no C compiler"):
        build.library_path()
    monkeypatch.setenv("TIDE_RUNTIME_LIB", str(tmp_path / "nope.so"))
    with pytest.raises(build.RuntimeBuildError, match="nope.so: no such file"):
        build.library_path()


# ---- Model.run ------------------------------------------------------------------------------------

def test_load_and_describe(standard):
    m = R.load(standard)
    assert m.target == "cpu" and m.entries == ["main", "step", "fail", "par"]
    assert m.metadata == {"name": "standard"}
    assert [(i.name, i.dtype, i.shape, i.role) for i in m.inputs("main")] == [("x", "float32", (4,), "data")]
    assert [o.name for o in m.outputs()] == ["y", "z", "t", "u"]
    assert m.outputs()[2].shape == (2, 2)
    assert [(i.name, i.role, i.state_index) for i in m.inputs("step")] == [("x", "data", None), ("acc", "state", 0)]
    assert m.states == [R.TensorInfo("acc", "float32", (4,), "state", 0)]
    assert m.memory == R.MemoryInfo(arena_bytes=12096, state_bytes=64, weight_bytes=80)
    with pytest.raises(R.TideError, match="no entry 'nope'"):
        m.inputs("nope")
    with pytest.raises(R.TideError, match="the artifact targets cpu; it cannot be loaded onto cuda:0"):
        R.load(standard, device="cuda", cuda_driver="/nonexistent/libcuda.so.1")
    with pytest.raises(R.TideError, match="No such file") as err:
        R.load(standard + ".missing")
    assert err.value.code == 2


def test_run(standard):
    m = R.load(standard)
    x = np.array([0.5, 1.0, 1.5, 2.0], dtype=np.float32)
    out = m.run({"x": x})
    assert list(out) == ["y", "z", "t", "u"]
    np.testing.assert_array_equal(out["y"], x + W0)
    np.testing.assert_array_equal(out["z"], (x + W0) * 3)
    np.testing.assert_array_equal(out["t"], x.reshape(2, 2) + W1)
    np.testing.assert_array_equal(out["u"], (x.reshape(2, 2) + W1).reshape(4))
    again = m.run({"x": x * 2})  # fresh arrays: the first result is not overwritten
    np.testing.assert_array_equal(out["y"], x + W0)
    np.testing.assert_array_equal(again["y"], 2 * x + W0)
    # Misaligned, non-contiguous, list and read-only inputs are staged into aligned memory.
    for value in (aligned_array(x, np.float32, offset_bytes=4), np.repeat(x, 2)[::2], x.tolist()):
        np.testing.assert_array_equal(m.run({"x": value})["y"], x + W0)
    ro = x.copy()
    ro.flags.writeable = False
    np.testing.assert_array_equal(m.run({"x": ro})["y"], x + W0)


def test_run_rejects_bad_feeds_and_stays_usable(standard):
    m = R.load(standard)
    x = np.ones(4, dtype=np.float32)
    cases = [
        ({"x": x, "w": x}, "entry 'main' has no input\\(s\\) 'w'; its inputs are x"),
        ({}, "missing input\\(s\\) 'x'"),
        ({"x": x.astype(np.float64)}, r"input 'x': expected float32\[4\], got float64\[4\]"),
        ({"x": np.ones(5, dtype=np.float32)}, r"expected float32\[4\], got float32\[5\]"),
        ({"x": np.ones((1, 4), dtype=np.float32)}, r"got float32\[1, 4\]"),
    ]
    for feeds, message in cases:
        with pytest.raises(R.TideError, match=message):
            m.run(feeds)
    with pytest.raises(R.TideError, match="feeds must be a dict"):
        m.run([x])
    with pytest.raises(R.TideError, match="no entry 'decode'"):
        m.run({"x": x}, entry="decode")
    np.testing.assert_array_equal(m.run({"x": x})["y"], x + W0)


def test_profile_of_the_internal_session(standard):
    """Per-kernel times of profiled runs, joined with the plan's argument bytes (no compiler
    metadata here: no FLOPs), the table and its JSON; stopping keeps the counts."""
    m = R.load(standard)
    with pytest.raises(R.TideError, match="nothing was profiled"):
        m.profile()
    x = np.arange(4, dtype=np.float32)
    m.run({"x": x}, "step")  # before profiling: not counted
    m.profiling()
    for _ in range(3):
        m.run({"x": x}, "step")
    m.time({"x": x}, "step", iterations=2)
    m.run({"x": x}, "main")
    m.profiling(False)
    m.run({"x": x}, "step")
    p = m.profile()
    assert p.entries() == ["main", "step"]
    step = {r.kernel: r for r in p.rows if r.entry == "step"}
    assert set(step) == {"accumulate", "add"}
    assert step["accumulate"].runs == 5 and step["accumulate"].calls == 1 and step["accumulate"].bytes == 32
    assert step["add"].bytes == 48 and step["add"].flops is None and step["add"].serves == "generic"
    assert all(r.seconds > 0 for r in p.rows)
    assert p.entry_seconds("step") == pytest.approx(sum(r.seconds for r in step.values()) / 5)
    main = {r.kernel: r for r in p.rows if r.entry == "main"}
    assert main["add"].calls == 2 and main["add"].runs == 1 and main["scale"].calls == 2
    roof = {"flops": 1e12, "bandwidth": 1e10}
    share = step["add"].roofline_share(roof)
    assert share == pytest.approx(48 / 1e10 / step["add"].mean_seconds)
    text = p.table(roof)
    assert "entry step: 5 runs" in text and "%roof" in text and "accumulate" in text
    doc = p.to_json(roof)
    assert doc["entries"]["step"]["runs"] == 5 and {k["kernel"] for k in doc["entries"]["step"]["kernels"]} == set(step)
    json.dumps(doc)


def test_state_semantics(standard):
    m = R.load(standard)
    x = np.arange(4, dtype=np.float32)
    first = m.run({"x": x}, "step")  # state starts at zero
    np.testing.assert_array_equal(first["snapshot"], x + W0)  # snapshot = acc + w0
    second = m.run({"x": x}, "step")  # omitted: the state is kept
    np.testing.assert_array_equal(second["acc_out"], 2 * x)
    given = np.array([100, 200, 300, 400], dtype=np.float32)
    third = m.run({"x": x, "acc": aligned_array(given, np.float32, offset_bytes=4)}, "step")  # copied in
    np.testing.assert_array_equal(third["acc_out"], given + x)
    views = m.run_dlpack({"x": x}, "step")
    again = m.run_dlpack({"x": x}, "step")
    assert views["acc_out"].data_ptr == again["acc_out"].data_ptr  # present aliases the state
    np.testing.assert_array_equal(again["acc_out"].numpy(), given + 3 * x)
    with pytest.raises(R.TideError, match="input 'acc'"):
        m.run({"x": x, "acc": np.zeros(3, dtype=np.float32)}, "step")
    np.testing.assert_array_equal(m.run({"x": np.zeros(4, np.float32)}, "step")["acc_out"], given + 3 * x)
    m.reset()
    np.testing.assert_array_equal(m.run({"x": x}, "step")["acc_out"], x)
    # Another model instance (another session) has its own state.
    np.testing.assert_array_equal(R.load(standard).run({"x": x}, "step")["acc_out"], x)


def test_time_runs_the_entry_each_iteration(standard):
    m = R.load(standard)
    x = np.array([0.5, -1.25, 2.0, 3.5], dtype=np.float32)
    seconds = m.time({"x": x}, "step", iterations=4)
    assert seconds.dtype == np.float64 and seconds.shape == (4,) and (seconds >= 0).all()
    # Four runs accumulated into the state: the next run sees 4x and adds the fifth.
    np.testing.assert_array_equal(m.run({"x": x}, "step")["acc_out"], 5 * x)
    with pytest.raises(R.TideError, match="iterations must be an integer >= 1"):
        m.time({"x": x}, "step", iterations=0)
    with pytest.raises(R.TideError, match="missing input"):
        m.time({}, "main")


def test_session_time_keeps_the_position(decode_model):
    s = R.load(decode_model).session()
    rng = np.random.default_rng(3)
    s.prefill(rng.integers(0, 7, (2, 3)))
    seconds = s.time(rng.integers(0, 7, (2, 1)), iterations=3)
    assert seconds.shape == (3,) and (seconds >= 0).all()
    assert s.time(rng.integers(0, 7, (2, 4)), iterations=2).shape == (2,)
    np.testing.assert_array_equal(s.position, [3, 3])
    with pytest.raises(R.TideError, match="no entry for 3 tokens"):
        s.time(rng.integers(0, 7, (2, 3)))


def test_kernel_error_names_the_kernel_and_the_model_stays_usable(standard):
    m = R.load(standard)
    x = np.ones(4, dtype=np.float32)
    for _ in range(2):
        with pytest.raises(R.TideError) as err:
            m.run({"x": x}, "fail")
        assert err.value.code == 6
        assert str(err.value) == ("entry 'fail' op 1: kernel 'fail' failed: ValueError: intentional failure "
                                  "from the fail kernel")
        np.testing.assert_array_equal(m.run({"x": x})["y"], x + W0)


@pytest.mark.parametrize("threads", [1, 2, 5])
def test_parallel_kernels(standard, threads):
    m = R.load(standard, num_threads=threads)
    x = np.linspace(-3, 7, 1000, dtype=np.float32)
    for _ in range(20):
        out = m.run({"x": x}, "par")
        np.testing.assert_array_equal(out["y"], x[::-1] * 2)
        np.testing.assert_array_equal(out["z"], x * 2)
        np.testing.assert_array_equal(out["w"], x + 1)
    assert m.session is not None


def test_concurrent_models_and_threads(standard):
    import threading

    m = R.load(standard, num_threads=2)
    x = np.linspace(0, 1, 1000, dtype=np.float32)
    errors = []

    def work(model):
        try:
            for _ in range(30):
                np.testing.assert_array_equal(model.run({"x": x}, "par")["y"], x[::-1] * 2)
        except Exception as err:  # noqa: BLE001 - reported below
            errors.append(err)

    threads = [threading.Thread(target=work, args=(mod,)) for mod in (m, m, R.load(standard, num_threads=2))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


# ---- DLPack -------------------------------------------------------------------------------------

def test_dlpack_outputs_are_zero_copy_views(standard):
    torch = pytest.importorskip("torch")
    m = R.load(standard)
    x = np.array([1, 2, 3, 4], dtype=np.float32)
    views = m.run_dlpack({"x": x})
    y = views["y"]
    assert isinstance(y, R.Tensor) and y.shape == (4,) and y.dtype == "float32" and y.__dlpack_device__() == (1, 0)
    t = torch.from_dlpack(y)
    n = np.from_dlpack(y)
    assert t.data_ptr() == y.data_ptr == n.ctypes.data
    np.testing.assert_array_equal(t.numpy(), x + W0)
    legacy = torch.utils.dlpack.from_dlpack(y.__dlpack__())  # legacy capsule (no max_version)
    assert legacy.data_ptr() == y.data_ptr
    copied = np.from_dlpack(y, copy=True)
    assert copied.ctypes.data != y.data_ptr
    m.run_dlpack({"x": 2 * x})  # the next run overwrites the views' contents ...
    np.testing.assert_array_equal(t.numpy(), 2 * x + W0)
    np.testing.assert_array_equal(copied, x + W0)  # ... not the copies
    del m, views, y, legacy, n
    gc.collect()
    np.testing.assert_array_equal(t.numpy(), 2 * x + W0)  # the memory outlives the model while viewed
    assert np.asarray(R.load(standard).run_dlpack({"x": x})["z"]).tolist() == ((x + W0) * 3).tolist()


def test_dlpack_inputs_without_copy(standard):
    torch = pytest.importorskip("torch")
    m = R.load(standard)
    x = torch.arange(4, dtype=torch.float32)
    assert x.data_ptr() % 64 == 0  # torch CPU allocations are 64-byte aligned
    out = m.run({"x": x})
    np.testing.assert_array_equal(out["y"], x.numpy() + W0)
    assert m._runners["main"].staging == {}  # used in place
    np.testing.assert_array_equal(m.run({"x": torch.arange(5, dtype=torch.float32)[1:]})["y"],
                                  np.arange(1, 5, dtype=np.float32) + W0)  # misaligned view: staged
    with pytest.raises(R.TideError, match="not contiguous"):
        m.run({"x": torch.arange(8, dtype=torch.float32)[::2]})
    with pytest.raises(R.TideError, match=r"expected float32\[4\], got float64\[4\]"):
        m.run({"x": torch.arange(4, dtype=torch.float64)})
    y = torch.zeros(4)
    m.run({"x": y})  # the borrowed tensor is released (deleter called): it stays usable
    y += 1
    assert y.sum().item() == 4


def test_bfloat16_entry_without_kernels(tmp_path):
    """An entry whose output is its input (an identity graph: no kernel at all)."""
    torch = pytest.importorskip("torch")
    plan = A.Plan([], [], [], [A.Entry("main", [A.Buffer("input", 0, "bfloat16", (2, 3))],
                                       [A.IOBinding("x", 0, "data")], [A.IOBinding("y", 0, "data")], [])])
    path = str(tmp_path / "bf16.tide")
    A.write_artifact(path, cpu_target(), plan, b"", [], {})
    m = R.load(path)
    x = torch.tensor([[1.5, -2.0, 3.25], [0.0, 7.0, -0.5]], dtype=torch.bfloat16)
    assert torch.equal(torch.from_dlpack(m.run_dlpack({"x": x})["y"]), x)
    xn = np.array([[1.5, -2.0, 3.25], [0.0, 7.0, -0.5]], dtype=ml_dtypes.bfloat16)
    out = m.run({"x": xn})["y"]
    assert out.dtype == ml_dtypes.bfloat16
    np.testing.assert_array_equal(out, xn)


# ---- decode sessions ------------------------------------------------------------------------------

def test_session_prefill_decode_generate(decode_model):
    m = R.load(decode_model)
    s = m.session()
    assert (s.batch, s.vocab_size, s.max_seq_len, s.prefill_sizes) == (2, 7, 16, (2, 4))
    assert s._chunks(11) == [("prefill_4", 4), ("prefill_4", 4), ("prefill_2", 2), ("decode", 1)]
    ref = ToyLM(2, 7)
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 7, (2, 11))
    np.testing.assert_array_equal(s.prefill(ids, all_logits=True), ref.feed(ids))
    np.testing.assert_array_equal(s.position, [11, 11])
    step = rng.integers(0, 7, (2, 1)).astype(np.int32)  # any integer dtype
    np.testing.assert_array_equal(s.decode(step), ref.feed(step)[:, -1])
    last = rng.integers(0, 7, (2, 3))
    np.testing.assert_array_equal(s.prefill(last), ref.feed(last)[:, -1])
    np.testing.assert_array_equal(s.position, [15, 15])
    # generate continues the sequence; compare with greedy decoding of the reference.
    s.reset()
    ref = ToyLM(2, 7)
    prompt = rng.integers(0, 7, (2, 5))
    seen = []
    new = s.generate(prompt, 6, on_token=lambda i, tok: seen.append((i, tok.tolist())))
    logits = ref.feed(prompt)[:, -1]
    want = []
    for _ in range(6):
        tok = logits.argmax(-1)
        want.append(tok)
        logits = ref.feed(tok[:, None])[:, -1]
    np.testing.assert_array_equal(new, np.stack(want, axis=1))
    assert new.dtype == np.int64 and [i for i, _ in seen] == list(range(6)) and seen[2][1] == new[:, 2].tolist()
    np.testing.assert_array_equal(s.position, [10, 10])  # the last new token is not fed back


def test_copied_weights_give_the_same_logits(decode_model):
    """copy_weights=True: the weights read from the model's own copy, the logits exactly the mapped
    model's and the reference's."""
    ids = np.random.default_rng(1).integers(0, 7, (2, 6))
    copied = R.load(decode_model, copy_weights=True).session().prefill(ids, all_logits=True)
    np.testing.assert_array_equal(copied, ToyLM(2, 7).feed(ids))
    np.testing.assert_array_equal(copied, R.load(decode_model).session().prefill(ids, all_logits=True))


def test_top_level_load_takes_the_runtime_options(decode_model):
    """``tide.load`` passes every option on to ``tide.runtime.load``; a misspelt one is refused by name."""
    import tide

    ids = np.random.default_rng(2).integers(0, 7, (2, 5))
    model = tide.load(decode_model, verify=True, num_threads=1, copy_weights=True)
    np.testing.assert_array_equal(model.session().prefill(ids, all_logits=True), ToyLM(2, 7).feed(ids))
    with pytest.raises(TypeError, match="copy_weight"):
        tide.load(decode_model, copy_weight=True)


def test_session_rejects_and_stays_usable(decode_model):
    s = R.load(decode_model).session(batch=2)
    ids = np.ones((2, 10), dtype=np.int64)
    first = s.prefill(ids)
    cases = [
        (lambda: s.prefill(np.ones((2, 7), dtype=np.int64)), "7 more tokens at position 10 exceed the state capacity "
                                                             r"\(max_seq_len 16\)"),
        (lambda: s.generate(np.ones((2, 4), dtype=np.int64), 4), "capacity"),
        (lambda: s.prefill(np.ones((3, 2), dtype=np.int64)), "batch 3; the model was compiled for batch 2"),
        (lambda: s.prefill(np.full((2, 2), 7)), r"must lie in \[0, 7\)"),
        (lambda: s.prefill(np.ones((2, 2), dtype=np.float32)), "integer array"),
        (lambda: s.prefill(np.ones((2, 0), dtype=np.int64)), "no tokens"),
        (lambda: s.decode(np.ones((2, 2), dtype=np.int64)), "one token per row"),
        (lambda: s.generate(np.ones((2, 1), dtype=np.int64), -1), "max_new_tokens"),
    ]
    for fn, message in cases:
        with pytest.raises(R.TideError, match=message):
            fn()
        np.testing.assert_array_equal(s.position, [10, 10])
    s.reset()
    np.testing.assert_array_equal(s.prefill(ids), first)
    with pytest.raises(R.TideError, match="compiled for batch 2, not batch 1"):
        R.load(decode_model).session(batch=1)


def test_session_kernel_failure_resets(tmp_path, kernels_so):
    """metadata claims more capacity than the state has: the kernel refuses, the session resets."""
    path = write_decode(str(tmp_path / "liar.tide"), kernels_so, capacity=8,
                        metadata={"kind": "decode", "max_seq_len": 100})
    s = R.load(path).session()
    s.prefill(np.ones((2, 6), dtype=np.int64))
    with pytest.raises(R.TideError, match="kernel 'toy_lm' failed: ValueError: toy_lm: position past the history "
                                          "capacity .*session state was reset"):
        s.prefill(np.ones((2, 4), dtype=np.int64))
    np.testing.assert_array_equal(s.position, [0, 0])
    np.testing.assert_array_equal(s.prefill(np.ones((2, 3), dtype=np.int64), all_logits=True),
                                  ToyLM(2, 7).feed(np.ones((2, 3), dtype=np.int64)))


def test_session_requires_a_decode_model(standard, tmp_path, kernels_so):
    with pytest.raises(R.TideError, match="not a decode model"):
        R.load(standard).session()
    path = write_decode(str(tmp_path / "nometa.tide"), kernels_so, metadata={})
    with pytest.raises(R.TideError, match="'max_seq_len'"):
        R.load(path).session()


# ---- rejected artifacts: the C loader and the Python reader agree ----------------------------------

def _expect_both(path: str, message: str, code: int, **load_kw):
    with pytest.raises(R.TideError, match=message) as err:
        R.load(path, **load_kw)
    assert err.value.code == code, err.value
    with pytest.raises(A.ArtifactError):
        A.read_artifact(path)


def _rewrite(path: str, good: bytes, edit) -> None:
    data = bytearray(good)
    edit(data)
    with open(path, "wb") as f:
        f.write(data)


def test_corrupt_artifacts_are_rejected(standard, tmp_path):
    with open(standard, "rb") as f:
        good = f.read()
    art = A.read_artifact(standard)
    path = str(tmp_path / "bad.tide")
    for cut in (0, 30, 64, 300, len(good) // 2, len(good) - 1):
        _rewrite(path, good[:cut], lambda d: None)
        _expect_both(path, "empty|truncated", 3)

    def flip(offset):
        def edit(d):
            d[offset] ^= 0x08
        return edit

    for offset in (16, 24, 36, 52, 64 + 8, 64 + 48 * 5 + 30):
        _rewrite(path, good, flip(offset))
        _expect_both(path, "header", 3)
    for s in art.section_info.values():
        _rewrite(path, good, flip(s.offset + s.size // 3))
        _expect_both(path, f"{s.kind} section: checksum mismatch", 3)
    _rewrite(path, good, flip(art.sections["WEIGHTS"][0]))
    assert R.load(path, verify=False).entries[0] == "main"  # bulk checksums skipped on request
    _rewrite(path, good, flip(1))
    _expect_both(path, "bad magic", 3)

    def version(d):
        struct.pack_into("<I", d, 8, 2)
    _rewrite(path, good, version)
    _expect_both(path, "format version 2 is not supported", 4)


def test_incompatible_targets_are_refused(tmp_path, kernels_so):
    path = str(tmp_path / "t.tide")
    other = "aarch64" if host_arch() == "x86_64" else "x86_64"
    write_standard(path, kernels_so, target=A.TargetInfo("cpu", other), check=False)  # the writer checks the ELF
    with pytest.raises(R.TideError, match=f"compiled for host architecture '{other}'; this machine is {host_arch()}"):
        R.load(path)
    plan = standard_plan()
    write_standard(path, kernels_so, target=A.TargetInfo("cuda", host_arch(), 0, "sm_90"), plan=plan,
                   check=False)  # opaque device code: the writer checks DEVICE_CODE
    with pytest.raises(R.TideError, match=r"DEVICE_CODE section, header \(byte 0\): bad magic") as err:
        R.load(path)
    assert err.value.code == 3


@pytest.mark.skipif(not sys.platform.startswith("linux") or os.uname().machine != "x86_64", reason="x86_64 feature bits")
def test_missing_cpu_features_are_named(tmp_path, kernels_so):
    path = write_standard(str(tmp_path / "f.tide"), kernels_so,
                          target=cpu_target(A.feature_mask(["avx2", "avx512bf16"])))
    lib = bindings.library()
    ffi = _ffi.ffi
    opts = ffi.new("tide_model_options_t*")
    lib.tide_model_options_initialize(opts)
    opts.allowed_cpu_features = ~A.feature_mask(["avx2", "avx512bf16"]) & (2**64 - 1)  # as if the CPU lacked them
    out = ffi.new("tide_model_t**")
    status = lib.tide_model_load_file(path.encode(), opts, out)
    assert status != ffi.NULL and out[0] == ffi.NULL
    message = ffi.string(lib.tide_status_message(status)).decode()
    lib.tide_status_free(status)
    assert "the artifact needs CPU features this machine lacks: avx2, avx512bf16" in message


def test_plan_and_library_errors(tmp_path, kernels_so):
    path = str(tmp_path / "p.tide")
    plan = standard_plan()
    plan.kernels.append("missing")
    write_standard(path, kernels_so, plan=plan)
    with pytest.raises(R.TideError, match="kernel 'missing' .*symbol __tvm_ffi_missing is missing") as err:
        R.load(path)
    assert err.value.code == 2
    # A plan that bypassed the writer's validation: the C loader applies the same rules.
    for mutate, message in [
        (lambda p: p.entries[0].calls[0].args.__setitem__(0, ("buf", 99)),
         r"PLAN section, entry 'main' op 0 \(byte \d+\): argument 0: buffer 99 out of range \(9 buffers\)"),
        (lambda p: setattr(p.entries[1].buffers[1], "index", 7), "state index 7 out of range"),
        (lambda p: setattr(p.entries[0].buffers[8], "offset", 4096), "exceed the 256-byte arena"),
        (lambda p: setattr(p.entries[0].outputs[0], "buffer", 77), "buffer index 77 out of range"),
    ]:
        plan = standard_plan()
        mutate(plan)
        write_standard(path, kernels_so, plan=plan, check=False)
        _expect_both(path, message, 3)
    # A kernel library linked without the shim cannot report errors: refused.
    write_standard(path, compile_test_kernels(str(tmp_path), with_shim=False))
    with pytest.raises(R.TideError, match="TVMFFIErrorSetRaisedFromCStrParts|__tide_error_hook"):
        R.load(path)


def test_many_models_get_their_own_kernel_libraries(standard):
    """Each load dlopens a private copy; reloading after release reuses no stale library."""
    models = [R.load(standard) for _ in range(3)]
    x = np.ones(4, dtype=np.float32)
    for m in models:
        np.testing.assert_array_equal(m.run({"x": x})["y"], x + W0)
    del models
    gc.collect()
    with pytest.raises(R.TideError, match="intentional failure"):
        R.load(standard).run({"x": x}, "fail")


# ---- a real TVM-built kernel library ----------------------------------------------------------------

@pytest.fixture(scope="module")
def tvm_libraries(tmp_path_factory):
    """padd (parallel + vectorized) and wsrev (workspace + parallel) built by TVM for llvm, linked
    with the shim two ways: export_library(addons=[shim.o]) and link_kernel_library."""
    tvm = pytest.importorskip("tvm")
    from tvm.script import tirx as T

    @T.prim_func
    def padd(a: T.Buffer((64, 128), "float32"), b: T.Buffer((64, 128), "float32"),
             c: T.Buffer((64, 128), "float32")):
        T.func_attr({"global_symbol": "padd", "tir.noalias": True})
        for i in T.parallel(64):
            for j in T.vectorized(128):
                c[i, j] = a[i, j] + b[i, j]

    @T.prim_func
    def wsrev(a: T.Buffer((4, 4096), "float32"), c: T.Buffer((4, 4096), "float32")):
        T.func_attr({"global_symbol": "wsrev", "tir.noalias": True})
        tmp = T.alloc_buffer((4, 4096), "float32")
        for i in T.parallel(4):
            for j in range(4096):
                tmp[i, j] = a[i, j] * T.float32(2)
            for j in range(4096):
                c[i, j] = tmp[i, 4095 - j]

    out = tmp_path_factory.mktemp("tvm")
    exe = tvm.compile(tvm.IRModule({"padd": padd, "wsrev": wsrev}), target=tvm.target.Target({"kind": "llvm"}))
    shim_o = str(out / "shim.o")
    subprocess.run(["gcc", "-c", "-fPIC", "-O2", "-o", shim_o, build.kernel_shim_source()], check=True)
    exported = str(out / "exported.so")
    exe.export_library(exported, addons=[shim_o])
    obj = str(out / "kernels.o")
    exe.mod.write_to_file(obj)
    linked = build.link_kernel_library([obj], str(out / "linked.so"))
    return [exported, linked]


def _tvm_artifact(path: str, library: str) -> str:
    f = "float32"
    bufs = [A.Buffer("input", 0, f, (64, 128)), A.Buffer("input", 1, f, (64, 128)),
            A.Buffer("arena", 0, f, (64, 128)), A.Buffer("arena", 0, f, (32, 128))]
    ios = [A.IOBinding("a", 0, "data"), A.IOBinding("b", 1, "data")]
    main = A.Entry("main", bufs, ios, [A.IOBinding("c", 2, "data")],
                   [A.Call("padd", [("buf", 0), ("buf", 1), ("buf", 2)])], 32768)
    bad = A.Entry("bad", bufs, ios, [A.IOBinding("c", 3, "data")],
                  [A.Call("padd", [("buf", 0), ("buf", 1), ("buf", 3)])], 32768)
    ws = A.Entry("ws", [A.Buffer("input", 0, f, (4, 4096)), A.Buffer("arena", 0, f, (4, 4096))],
                 [A.IOBinding("a", 0, "data")], [A.IOBinding("c", 1, "data")],
                 [A.Call("wsrev", [("buf", 0), ("buf", 1)])], 65536)
    with open(library, "rb") as fh:
        A.write_artifact(path, cpu_target(), A.Plan(["padd", "wsrev"], [], [], [main, bad, ws]), fh.read(), [], {})
    return path


def test_tvm_kernels(tvm_libraries, tmp_path):
    rng = np.random.default_rng(1)
    a, b = rng.standard_normal((2, 64, 128), dtype=np.float32)
    x = rng.standard_normal((4, 4096), dtype=np.float32)
    for k, library in enumerate(tvm_libraries):
        nm = subprocess.run(["nm", "-D", library], capture_output=True, text=True, check=True).stdout
        assert "__TVMBackendParallelLaunch" in nm and "__TVMBackendAllocWorkspace" in nm
        assert "U TVMFFIErrorSetRaisedFromCStrParts" not in nm  # bound to the shim inside the library
        path = _tvm_artifact(str(tmp_path / f"tvm{k}.tide"), library)
        for threads in (1, 3):
            m = R.load(path, num_threads=threads)
            for _ in range(3):
                np.testing.assert_array_equal(m.run({"a": a, "b": b})["c"], a + b)
                np.testing.assert_array_equal(m.run({"a": x}, "ws")["c"], (x * 2)[:, ::-1])
            with pytest.raises(R.TideError, match=r"entry 'bad' op 0: kernel 'padd' failed: ValueError: Invalid "
                                                  r"c.shape\[0\] on argument #2"):
                m.run({"a": a, "b": b}, "bad")
            np.testing.assert_array_equal(m.run({"a": a, "b": b})["c"], a + b)
