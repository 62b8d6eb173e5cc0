"""tide.runtime with device="cuda", on machines without a GPU: the runtime's whole CUDA path runs
against the recording stand-in driver runtime/tests/cuda_standin.c (host memory as device memory;
every call's arguments checked, one log line per call; a few known kernels emulated).

- device discovery and image choice (an artifact with fake cubins: the chosen image's load fails);
- a launch artifact compiled here by TVM + nvcc (three kernels: weights, state, a copy op, an int
  parameter, 64 KiB of dynamic shared memory) whose host stubs run through the runtime's
  HandleInitOnce / EnvModLookupFromImports / FunctionCall and whose kernels the stand-in emulates:
  numbers end to end, CUDA graph capture and replay, device-memory (DLPack) runs, event timing,
  out-of-memory and device-fault errors;
- the whole tiny model compiled for sm_90: every launch of prefill and decode checked (dimensions,
  shared memory, every pointer argument inside device memory), its decode graph replayed.
"""

from __future__ import annotations

import gc
import os

import numpy as np
import pytest

import tide.runtime as R
from tide.compiler import artifact as A
from tide.targets.cuda import device_code
from tide.runtime import bindings
from tide.runtime._ffi import ffi
import tide_test_models
from tide_test_models import (REPO, build_standin, compile_test_kernels, host_arch, standard_plan,
                              write_standard)

STANDIN = os.path.join(REPO, "build", "runtime-tests", "libcuda_standin.so")


@pytest.fixture(scope="module")
def standin():
    return build_standin("cuda_standin")


@pytest.fixture(scope="module")
def cuda_artifact(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cuda")
    kernels = compile_test_kernels(str(tmp))
    code = device_code.CudaCode(
        images=[device_code.CudaImage("sm_80", "cubin", b"fake cubin for sm_80"),
                device_code.CudaImage("sm_90", "cubin", b"fake cubin for sm_90")],
        functions=[device_code.CudaFunction("vadd_kernel", ["handle", "handle", "int32"], ["blockIdx.x", "threadIdx.x"])])
    path = str(tmp / "cuda.tide")
    write_standard(path, kernels, target=A.TargetInfo("cuda", host_arch(), 0, "sm_80,sm_90"), plan=standard_plan(),
                   device_code=device_code.encode(code), check=False)
    return path


@pytest.fixture
def driver_env(monkeypatch, tmp_path):
    log = tmp_path / "standin.log"
    monkeypatch.setenv("TIDE_STANDIN_LOG", str(log))
    for name in ("TIDE_STANDIN_CC", "TIDE_STANDIN_DEVICES", "TIDE_STANDIN_INIT_RC"):
        monkeypatch.delenv(name, raising=False)
    return log


def test_cuda_artifact_on_the_cpu_is_refused(cuda_artifact):
    with pytest.raises(R.TideError, match=r"targets cuda \(device 'sm_80,sm_90'\); it cannot run on the cpu") as err:
        R.load(cuda_artifact)
    assert err.value.code == 4


def test_no_driver(cuda_artifact):
    with pytest.raises(R.TideError, match=r"/nonexistent/libcuda\.so\.1 not found: ") as err:
        R.load(cuda_artifact, device="cuda", cuda_driver="/nonexistent/libcuda.so.1")
    assert err.value.code == 7


@pytest.mark.parametrize("cc, devices, device, code, message", [
    ("90", "1", "cuda", 3, r"cuModuleLoadData of the sm_90 image \(20 bytes\) failed: CUDA error 200"),
    ("86", "2", "cuda:1", 3, r"cuModuleLoadData of the sm_80 image \(20 bytes\) failed: CUDA error 200"),
    ("75", "1", "cuda:0", 4, r"device code for sm_80 \(cubin\), sm_90 \(cubin\); this device is sm_75"),
    ("90", "0", "cuda", 7, r"no CUDA device: the driver reports 0 devices"),
    ("90", "1", "cuda:3", 7, r"CUDA device 3 does not exist \(the driver reports 1 device\)"),
])
def test_device_discovery_with_the_standin(cuda_artifact, standin, driver_env, monkeypatch, cc, devices, device,
                                           code, message):
    monkeypatch.setenv("TIDE_STANDIN_CC", cc)
    monkeypatch.setenv("TIDE_STANDIN_DEVICES", devices)
    with pytest.raises(R.TideError, match=message) as err:
        R.load(cuda_artifact, device=device, cuda_driver=standin)
    assert err.value.code == code
    calls = driver_env.read_text().splitlines()
    assert calls[:2] == ["cuInit 0", f"cuDeviceGetCount -> {devices}"]


def test_cpu_artifact_on_cuda_and_bad_device_strings(tmp_path, standin):
    path = write_standard(str(tmp_path / "cpu.tide"), compile_test_kernels(str(tmp_path)))
    with pytest.raises(R.TideError, match=r"the artifact targets cpu; it cannot be loaded onto cuda:0"):
        R.load(path, device="cuda:0", cuda_driver=standin)
    for bad in ("gpu", "cuda:", "cuda:-1", "cpu:1", "npu", 3):
        with pytest.raises(R.TideError, match=r"device must be 'cpu', 'cuda\[:<ordinal>\]' or 'ascend\[:<ordinal>\]'"):
            R.load(path, device=bad)
    assert R.load(path, device="cpu").target == "cpu"


# ---- the launch path: three kernels compiled here, emulated by the stand-in ----------------------

N = 16384  # elements of every tensor of the launch artifact (the stand-in's EMULATED_N)
SHARED = N * 4  # the reversal's dynamic shared memory: 64 KiB, above the 48 KiB launch default


def _launch_kernels() -> dict:
    from tvm.script import tirx as T

    @T.prim_func
    def add_w(x: T.Buffer((N,), "float32"), w: T.Buffer((N,), "float32"), y: T.Buffer((N,), "float32")):
        for b in T.thread_binding(N // 128, "blockIdx.x"):
            for t in T.thread_binding(128, "threadIdx.x"):
                y[b * 128 + t] = x[b * 128 + t] + w[b * 128 + t]

    @T.prim_func
    def accum(acc: T.Buffer((N,), "float32"), y: T.Buffer((N,), "float32"), k: T.int32):
        for b in T.thread_binding(N // 256, "blockIdx.x"):
            for t in T.thread_binding(256, "threadIdx.x"):
                acc[b * 256 + t] = acc[b * 256 + t] + y[b * 256 + t] * T.Cast("float32", k)

    @T.prim_func
    def reverse(a: T.Buffer((N,), "float32"), r: T.Buffer((N,), "float32")):
        for t in T.thread_binding(1024, "threadIdx.x"):
            sh = T.alloc_buffer((N,), "float32", scope="shared.dyn")
            for j in range(N // 1024):
                sh[j * 1024 + t] = a[j * 1024 + t]
            for j in range(N // 1024):
                r[j * 1024 + t] = sh[N - 1 - (j * 1024 + t)]

    return {"add_w": add_w, "accum": accum, "reverse": reverse}


def _param_spec(source: str, functions) -> str:
    """TIDE_STANDIN_KERNELS from the generated CUDA source: each kernel's parameter names in order,
    scalars marked ('#' 4 bytes, '%' 8 bytes)."""
    import re

    specs = []
    for f in functions:
        m = re.search(r"__global__ void (?:__launch_bounds__\(\d+\) )?" + re.escape(f.name) + r"\(([^)]*)\)", source)
        assert m, f"{f.name} not in the CUDA source"
        names = []
        for decl in m.group(1).split(","):
            words = decl.replace("__restrict__", "").replace("*", " * ").split()
            name = words[-1].removesuffix("_ptr")  # TVM names a buffer's pointer <buffer>_ptr
            names.append(name if "*" in words else ("%" if words[0] in ("int64_t", "double", "long") else "#") + name)
        specs.append(f"{f.name}={','.join(names)}")
    return ";".join(specs)


@pytest.fixture(scope="module")
def launch_artifact(tmp_path_factory):
    """(path, TIDE_STANDIN_KERNELS, weight w). Entries:
    step(x f32[N], acc STATE) -> acc_out STATE (acc += 3 (x + w)), r = reverse(acc)
    twice(x f32[N]) -> y = x + w (add_w only)"""
    from tide.targets import get
    from tide.targets.cuda import nvcc

    tmp = tmp_path_factory.mktemp("launch")
    kernels = _launch_kernels()
    cuda = get("cuda")
    target = cuda.tvm_target(archs=("sm_90",))
    lib = cuda.build(kernels, target, ["sm_90"])
    code = device_code.decode(lib.device_code)
    assert {f.name for f in code.functions} == {"add_w_kernel", "accum_kernel", "reverse_kernel"}
    assert next(f for f in code.functions if f.name == "reverse_kernel").tags[-1] == "tir.use_dyn_shared_memory"
    import tvm

    source = nvcc.device_modules(tvm.compile(tvm.IRModule(
        {k: f.with_attr("global_symbol", k) for k, f in kernels.items()}), target=target).mod)[0][2]
    spec = _param_spec(source, code.functions)
    names = ["add_w", "accum", "reverse"]
    f32 = "float32"
    step = A.Entry("step", [
        A.Buffer("input", 0, f32, (N,)),              # 0 x
        A.Buffer("state", 0, f32, (N,)),              # 1 acc
        A.Buffer("weight", 0, f32, (N,)),             # 2 w
        A.Buffer("arena", 0, f32, (N,), 0),           # 3 y
        A.Buffer("arena", 0, f32, (N,), N * 4),       # 4 r
    ], [A.IOBinding("x", 0, "data"), A.IOBinding("acc", 1, "state")],
        [A.IOBinding("acc_out", 1, "state"), A.IOBinding("r", 4, "data")],
        [A.Call("add_w", [("buf", 0), ("buf", 2), ("buf", 3)]),
         A.Call("accum", [("buf", 1), ("buf", 3), ("imm", 3)]),
         A.Call("reverse", [("buf", 1), ("buf", 4)])], 2 * N * 4)
    once = A.Entry("once", [A.Buffer("input", 0, f32, (N,)), A.Buffer("weight", 0, f32, (N,)),
                            A.Buffer("arena", 0, f32, (N,))],
                   [A.IOBinding("x", 0, "data")], [A.IOBinding("y", 2, "data")],
                   [A.Call("add_w", [("buf", 0), ("buf", 1), ("buf", 2)])], N * 4)
    plan = A.Plan(names, [A.WeightSpec("w", f32, (N,))], [A.StateSpec("acc", f32, (N,))], [step, once])
    w = np.random.default_rng(7).standard_normal(N).astype(np.float32)
    path = str(tmp / "launch.tide")
    A.write_artifact(path, A.TargetInfo("cuda", host_arch(), 0, "sm_90"), plan, lib.host, [w], {"name": "launch"},
                     lib.device_code)
    return path, spec, w


@pytest.fixture
def launch_env(standin, driver_env, monkeypatch, launch_artifact):
    """The stand-in's log, starting after earlier tests' models are released (the stand-in counts
    their device memory as in use until then)."""
    gc.collect()
    driver_env.write_text("")
    monkeypatch.setenv("TIDE_STANDIN_KERNELS", launch_artifact[1])
    for name in ("TIDE_STANDIN_MEM_BYTES", "TIDE_STANDIN_SYNC_RC"):
        monkeypatch.delenv(name, raising=False)
    return driver_env


def _log(path) -> list[str]:
    return path.read_text().splitlines()


def test_launch_path_numbers_graphs_and_state(launch_artifact, launch_env):
    path, _, w = launch_artifact
    model = R.load(path, device="cuda", cuda_driver=STANDIN)
    assert model.target == "cuda" and model.device == (2, 0)
    rng = np.random.default_rng(0)
    acc = np.zeros(N, dtype=np.float64)
    for run in range(4):
        x = rng.standard_normal(N).astype(np.float32)
        out = model.run({"x": x}, entry="step")
        acc += 3 * (x.astype(np.float64) + w)
        np.testing.assert_allclose(out["acc_out"], acc, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(out["r"], acc[::-1], rtol=1e-5, atol=1e-5)
    log = _log(launch_env)
    launches = [line for line in log if line.startswith("cuLaunchKernel")]
    # run 1 eager, run 2 captured (3 kernels), runs 3 and 4 replay the graph (3 launches)
    assert len([line for line in launches if "(captured)" not in line]) == 3
    assert len([line for line in launches if "(captured)" in line]) == 3
    assert log.count("cuStreamEndCapture nodes 3") == 1
    assert log.count("cuGraphLaunch nodes 3") == 3
    assert "cuLaunchKernel add_w_kernel grid 128,1,1 block 128,1,1 shared 0" in launches
    assert "cuLaunchKernel accum_kernel grid 64,1,1 block 256,1,1 shared 0" in launches
    assert f"cuLaunchKernel reverse_kernel grid 1,1,1 block 1024,1,1 shared {SHARED}" in launches
    assert "cuFuncSetAttribute reverse_kernel max_dynamic_shared 232448" in log
    # no host copy inside a capture; inputs in, outputs out, nothing else through the host
    assert not [line for line in log if "no current context" in line or "not device memory" in line]
    assert log.count(f"cuMemcpyHtoDAsync {N * 4}") == 4 + 1  # x per run + the weights at load
    assert log.count(f"cuMemcpyDtoHAsync {N * 4}") == 4 * 2


def test_state_read_reset_and_state_input(launch_artifact, launch_env):
    path, _, w = launch_artifact
    model = R.load(path, device="cuda", cuda_driver=STANDIN)
    x = np.random.default_rng(1).standard_normal(N).astype(np.float32)
    start = np.random.default_rng(2).standard_normal(N).astype(np.float32)
    out = model.run({"x": x, "acc": start}, entry="step")
    np.testing.assert_allclose(out["acc_out"], start + 3 * (x.astype(np.float64) + w), rtol=1e-5, atol=1e-5)
    model.reset()
    out = model.run({"x": x}, entry="step")
    np.testing.assert_allclose(out["acc_out"], 3 * (x.astype(np.float64) + w), rtol=1e-5, atol=1e-5)
    assert "cuMemsetD8Async 65536" in _log(launch_env)


def test_device_memory_run_stays_on_the_device(launch_artifact, launch_env):
    """run_dlpack with inputs in device memory: copied on the device, outputs are device views."""
    path, _, w = launch_artifact
    model = R.load(path, device="cuda", cuda_driver=STANDIN)
    x = np.random.default_rng(3).standard_normal(N).astype(np.float32)
    host = model.run_dlpack({"x": x}, entry="once")["y"]
    assert host.device == (1, 0)
    np.testing.assert_allclose(host.numpy(), x + w, rtol=1e-6)
    # A device tensor to feed back: the session's own state memory, seeded through a host run.
    model.run({"x": x}, entry="step")
    t = ffi.new("tide_tensor_t*")
    bindings.check(bindings.library().tide_session_state(model._handle.ptr, 0, t))
    state = R.Tensor(int(ffi.cast("uintptr_t", t.data)), "float32", (N,), model._handle, device=(2, 0))
    expect = 3 * (x.astype(np.float64) + w)
    before = len(_log(launch_env))
    y = model.run_dlpack({"x": state}, entry="once")["y"]
    assert y.device == (2, 0) and y.__dlpack_device__() == (2, 0)
    # the stand-in's device memory is host memory: read the device view directly
    got = np.frombuffer(ffi.buffer(ffi.cast("char*", y.data_ptr), N * 4), dtype=np.float32)
    np.testing.assert_allclose(got, expect + w, rtol=1e-5, atol=1e-5)
    calls = _log(launch_env)[before:]
    assert f"cuMemcpyDtoDAsync {N * 4}" in calls
    assert not [c for c in calls if c.startswith(("cuMemcpyHtoD", "cuMemcpyDtoH"))]
    with pytest.raises(R.TideError, match="is CUDA device memory"):
        y.numpy()
    with pytest.raises(R.TideError, match="for inputs and outputs on cuda:0 use run_dlpack"):
        model.run({"x": state}, entry="once")


def test_device_timing_uses_events(launch_artifact, launch_env):
    path, _, _ = launch_artifact
    model = R.load(path, device="cuda", cuda_driver=STANDIN)
    x = np.random.default_rng(4).standard_normal(N).astype(np.float32)
    seconds = model.time({"x": x}, entry="once", iterations=5)
    assert seconds.shape == (5,) and np.all(seconds >= 0)
    log = _log(launch_env)
    assert log.count("cuEventRecord") == 10
    assert log.count("cuGraphLaunch nodes 1") == 4  # run 1 eager, 2 captured and launched, 3-5 replayed


def test_graphs_can_be_turned_off(launch_artifact, launch_env):
    path, _, w = launch_artifact
    model = R.load(path, device="cuda", cuda_driver=STANDIN, cuda_graphs=False)
    x = np.random.default_rng(5).standard_normal(N).astype(np.float32)
    for _ in range(3):
        np.testing.assert_allclose(model.run({"x": x}, entry="once")["y"], x + w, rtol=1e-6)
    log = _log(launch_env)
    assert not [line for line in log if "Capture" in line or "cuGraph" in line]
    assert len([line for line in log if line.startswith("cuLaunchKernel add_w_kernel")]) == 3


def test_out_of_device_memory_names_bytes_and_free(launch_artifact, launch_env, monkeypatch):
    path, _, _ = launch_artifact
    monkeypatch.setenv("TIDE_STANDIN_MEM_BYTES", str(N * 4 + 100_000))  # the weights fit, a session does not
    model = R.load(path, device="cuda", cuda_driver=STANDIN)
    with pytest.raises(R.TideError, match=r"out of device memory on cuda:0 allocating 131072 bytes for the arena "
                                          r"\(\d+ of \d+ bytes free\)") as err:
        model.run({"x": np.ones(N, np.float32)}, entry="once")
    assert err.value.code == 5
    monkeypatch.setenv("TIDE_STANDIN_MEM_BYTES", "1000")
    with pytest.raises(R.TideError, match=r"allocating 65536 bytes for the weights") as err:
        R.load(path, device="cuda", cuda_driver=STANDIN)
    assert err.value.code == 5
    log = _log(launch_env)
    assert log.count("cuDevicePrimaryCtxRetain 0") == log.count("cuDevicePrimaryCtxRelease 0") + 1  # first model alive


def test_device_fault_is_reported_and_the_process_survives(launch_artifact, launch_env, monkeypatch):
    path, _, w = launch_artifact
    model = R.load(path, device="cuda", cuda_driver=STANDIN)
    x = np.random.default_rng(6).standard_normal(N).astype(np.float32)
    monkeypatch.setenv("TIDE_STANDIN_SYNC_RC", "700")
    with pytest.raises(R.TideError, match=r"cuStreamSynchronize \(a kernel or copy failed on the device\) failed: "
                                          r"CUDA error 700 \(an illegal memory access was encountered\)"):
        model.run({"x": x}, entry="once")
    monkeypatch.delenv("TIDE_STANDIN_SYNC_RC")
    np.testing.assert_allclose(model.run({"x": x}, entry="once")["y"], x + w, rtol=1e-6)


def test_release_frees_everything(launch_artifact, launch_env):
    path, _, _ = launch_artifact
    model = R.load(path, device="cuda", cuda_driver=STANDIN)
    model.run({"x": np.ones(N, np.float32)}, entry="once")
    del model
    gc.collect()
    log = _log(launch_env)
    allocs = [line for line in log if line.startswith("cuMemAlloc ")]
    frees = [line for line in log if line.startswith("cuMemFree ")]
    assert sorted(int(a.split()[1]) for a in allocs) == sorted(int(f.split()[1]) for f in frees)
    for call in ("cuModuleUnload", "cuStreamDestroy", "cuDevicePrimaryCtxRelease 0"):
        assert call in log


# ---- the whole tiny model (sm_90 + sm_80 images; the stand-in is an sm_90 device), every launch checked

@pytest.fixture(scope="module")
def tiny_cuda_artifact(tmp_path_factory):
    return tide_test_models.tiny_cuda_artifact(tmp_path_factory)


def test_tiny_model_launches_are_valid_and_decode_replays_a_graph(tiny_cuda_artifact, standin, driver_env,
                                                                  monkeypatch):
    code = A.read_artifact(tiny_cuda_artifact).device_code
    kinds = {"handle": "", "int32": "#", "float32": "#", "int64": "%", "float64": "%"}
    monkeypatch.setenv("TIDE_STANDIN_KERNELS", ";".join(
        f"{f.name}=" + ",".join(f"{kinds[a]}a{i}" for i, a in enumerate(f.args)) for f in code.functions))
    gc.collect()
    driver_env.write_text("")
    model = R.load(tiny_cuda_artifact, device="cuda", cuda_driver=STANDIN)
    session = model.session()
    ids = np.random.default_rng(0).integers(0, session.vocab, (session.batch, 16))
    session.prefill(ids)
    prefill_log = _log(driver_env)
    steps = []
    for t in range(4):
        before = len(_log(driver_env))
        logits = session.decode(ids[:, t:t + 1])
        assert logits.shape == (session.batch, session.vocab)
        steps.append(_log(driver_env)[before:])
    log = _log(driver_env)
    bad = [line for line in log if any(k in line for k in ("is not a device pointer", "is not device memory",
                                                            "bad dimensions", "above the function's limit",
                                                            "no current context", "inside a stream capture"))]
    assert not bad
    launched = {line.split()[1] for line in log if line.startswith("cuLaunchKernel ")}
    assert launched == {f.name for f in code.functions}  # every device function, none unknown
    eager = [line for line in steps[0] if line.startswith("cuLaunchKernel ")]
    captured = [line for line in steps[1] if line.startswith("cuLaunchKernel ")]
    assert eager and [line.replace(" (captured)", "") for line in captured] == eager
    nodes = int(next(line for line in steps[1] if line.startswith("cuStreamEndCapture")).split()[-1])
    assert nodes >= len(captured)
    for step in steps[2:]:  # replays: one graph launch, no kernel launched one by one
        assert f"cuGraphLaunch nodes {nodes}" in step
        assert not [line for line in step if line.startswith("cuLaunchKernel ")]
    # kernels' device workspaces (the indexer's) are allocated in an entry's first run, reused after
    assert [line for line in prefill_log if line.startswith("cuMemAlloc ")]
    assert [line for line in steps[0] if line.startswith("cuMemAlloc ")]
    assert not [line for step in steps[1:] for line in step if line.startswith("cuMemAlloc ")]
    assert [line for line in prefill_log if line.startswith("cuLaunchKernel ")]  # one prefill: eager
    assert not [line for line in prefill_log if "Capture" in line]


def test_tide_run_picks_the_cuda_device_for_a_cuda_artifact(launch_artifact, capsys, monkeypatch):
    from tide.cli import main

    assert main(["run", launch_artifact[0], "--device", "cpu"]) == 2
    assert "targets cuda" in capsys.readouterr().err
    asked = []

    def load(path, device="cpu", copy_weights=False):
        asked.append((device, copy_weights))
        raise R.TideError("stop here")

    monkeypatch.setattr(R, "load", load)
    assert main(["run", launch_artifact[0]]) == 2
    assert main(["run", launch_artifact[0], "--device", "cuda:1"]) == 2
    assert main(["run", launch_artifact[0], "--copy-weights"]) == 2  # the flag reaches load
    assert asked == [("cuda", False), ("cuda:1", False), ("cuda", True)]


def test_shared_memory_opt_in_leaves_room_for_static_shared(launch_artifact, launch_env, monkeypatch):
    """A function's static shared memory counts against the device's per-block limit: the opt-in asks
    for what is left, and a launch that cannot fit is a clear error."""
    path, _, w = launch_artifact
    monkeypatch.setenv("TIDE_STANDIN_STATIC_SHARED", "1024")
    model = R.load(path, device="cuda", cuda_driver=STANDIN)
    x = np.random.default_rng(8).standard_normal(N).astype(np.float32)
    out = model.run({"x": x}, entry="step")
    np.testing.assert_allclose(out["r"], (3 * (x.astype(np.float64) + w))[::-1], rtol=1e-5, atol=1e-5)
    assert "cuFuncSetAttribute reverse_kernel max_dynamic_shared 231424" in _log(launch_env)
    monkeypatch.setenv("TIDE_STANDIN_STATIC_SHARED", "200000")
    gc.collect()
    model = R.load(path, device="cuda", cuda_driver=STANDIN)
    with pytest.raises(R.TideError, match=r"device function 'reverse_kernel' needs 65536 \+ 200000 \(static\) bytes "
                                          r"of shared memory per block; cuda:0 allows 232448 \(sm_90\)") as err:
        model.run({"x": x}, entry="step")
    assert err.value.code == 6
