"""Small artifacts for the runtime and artifact tests, written with tide.compiler.artifact over the
hand-written ABI kernels of runtime/tests/test_kernels.c (compiled here with the kernel shim)."""

from __future__ import annotations

import fcntl
import os
import platform
import shutil
import subprocess

import numpy as np

from tide.compiler import artifact as A
from tide.runtime import build

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEST_KERNELS_C = os.path.join(REPO, "runtime", "tests", "test_kernels.c")
F32 = "float32"
I64 = "int64"
W0 = np.array([1, 2, 3, 4], dtype=np.float32)
W1 = np.array([[10, 20], [30, 40]], dtype=np.float32)


def host_arch() -> str:
    return {"amd64": "x86_64", "arm64": "aarch64"}.get(platform.machine().lower(), platform.machine())


def cpu_target(features: int = 0) -> A.TargetInfo:
    return A.TargetInfo("cpu", host_arch(), features, "")


def repo_make(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """make -C runtime ARGS in the repository's build directory, one caller at a time: test workers
    running in parallel (pytest -n) share that directory, and a library half-written by one make must
    never be loaded by another worker."""
    os.makedirs(os.path.join(REPO, "build"), exist_ok=True)
    with open(os.path.join(REPO, "build", ".make.lock"), "w") as lock:  # closing it releases the lock
        fcntl.flock(lock, fcntl.LOCK_EX)
        return subprocess.run(["make", "-C", os.path.join(REPO, "runtime"), *args], capture_output=True, text=True,
                              timeout=timeout)


def shared_dir(tmp_path_factory, key: str, build) -> str:
    """A directory that ``build(path)`` fills once per test session, for whichever test file (and
    pytest-xdist worker) asks first; the others wait for it and reuse it."""
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent  # the session's directory, shared by its workers
    path = os.path.join(base, f"shared-{key}")
    with open(path + ".lock", "w") as lock:  # closing it releases the lock
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not os.path.exists(os.path.join(path, ".built")):
            shutil.rmtree(path, ignore_errors=True)
            os.makedirs(path)
            build(path)
            open(os.path.join(path, ".built"), "w").close()
    return path


def tiny_cpu_model(tmp_path_factory, batch: int = 1) -> dict:
    """The built-in tiny model (seed 0, ``batch`` rows) exported with its checkpoint and compiled for the
    CPU with a 16-token prefill chunk computing every position's logits, once per session
    (tests/test_v4_spine.py, tests/test_moe_kernels.py): paths ``onnx``, ``checkpoint``, ``artifact``."""
    def build(path):
        from tide.compiler.driver import CompileOptions, compile_model
        from tide.compiler.export import export

        export("tiny", os.path.join(path, "tiny.onnx"), seed=0, batch=batch,
               save_checkpoint=os.path.join(path, "ckpt"))
        compile_model(os.path.join(path, "tiny.onnx"), os.path.join(path, "tiny.tide"),
                      CompileOptions(target="cpu", prefill_chunks=(16,), all_logits=True, progress=False))

    path = shared_dir(tmp_path_factory, f"tiny-cpu-b{batch}", build)
    return {"onnx": os.path.join(path, "tiny.onnx"), "checkpoint": os.path.join(path, "ckpt"),
            "artifact": os.path.join(path, "tiny.tide")}


CUDA_TINY_OVERRIDES = {"max_position_embeddings": 512}


def tiny_cuda_artifact(tmp_path_factory) -> str:
    """The built-in tiny model (512 positions) compiled for sm_90 + sm_80 with a
    16-token prefill chunk, once per session (tests/test_compile_cuda.py, tests/test_runtime_cuda.py)."""
    def build(path):
        from tide.compiler.driver import CompileOptions, compile_model
        from tide.compiler.export import export

        onnx_path = os.path.join(path, "tiny.onnx")
        export("tiny", onnx_path, seed=0, max_seq_len=512, config_overrides=CUDA_TINY_OVERRIDES)
        compile_model(onnx_path, os.path.join(path, "tiny.tide"),
                      CompileOptions(target="cuda", arch="sm_90,sm_80", prefill_chunks=(16,), progress=False))

    return os.path.join(shared_dir(tmp_path_factory, "tiny-cuda", build), "tiny.tide")


def build_standin(name: str) -> str:
    """runtime/tests/<name>.c built by the runtime's Makefile (a recording stand-in for a device
    library: libcuda_standin.so, libacl_standin.so); returns its path."""
    path = os.path.join(REPO, "build", "runtime-tests", f"lib{name}.so")
    proc = repo_make(path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return path


def compile_test_kernels(out_dir: str, with_shim: bool = True) -> str:
    """runtime/tests/test_kernels.c (+ the shim) -> a shared object; returns its path."""
    path = os.path.join(out_dir, "libtest_kernels.so" if with_shim else "libtest_kernels_noshim.so")
    cmd = ["gcc", "-std=c11", "-O2", "-fPIC", "-shared", "-o", path, TEST_KERNELS_C, "-Wl,-Bsymbolic"]
    if with_shim:
        cmd.insert(-1, build.kernel_shim_source())
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    return path


KERNELS = ["add", "scale", "fail", "accumulate", "par_reverse", "nested_par", "many_tasks", "barrier_many",
           "toy_lm"]
K = {name: i for i, name in enumerate(KERNELS)}


def call(kernel: str, *bufs, imm=()):
    return A.Call(kernel, [("buf", b) for b in bufs] + [("imm", v) for v in imm])


def standard_plan() -> A.Plan:
    """Entries:
    main(x f32[4]) -> y = x + w0, z = y * 3, t = x.reshape(2, 2) + w1, u = t flattened, times 1
    step(x f32[4], acc STATE) -> acc_out STATE (acc += x), snapshot = acc + w0
    fail(x f32[4]) -> y: add, then the fail kernel
    par(x f32[1000]) -> y = reverse(x) * 2, z = x * 2 (nested launch), w = x + 1 (37 tasks)
    """
    main = A.Entry("main", [
        A.Buffer("input", 0, F32, (4,)),
        A.Buffer("weight", 0, F32, (4,)),
        A.Buffer("arena", 0, F32, (4,), 0),
        A.Buffer("arena", 0, F32, (4,), 64),
        A.Buffer("input", 0, F32, (2, 2)),
        A.Buffer("weight", 1, F32, (2, 2)),
        A.Buffer("arena", 0, F32, (2, 2), 128),
        A.Buffer("arena", 0, F32, (4,), 128),
        A.Buffer("arena", 0, F32, (4,), 192),
    ], [A.IOBinding("x", 0, "data")],
        [A.IOBinding("y", 2, "data"), A.IOBinding("z", 3, "data"), A.IOBinding("t", 6, "data"),
         A.IOBinding("u", 8, "data")],
        [call("add", 0, 1, 2), call("scale", 2, 3, imm=(3,)), call("add", 4, 5, 6), call("scale", 7, 8, imm=(1,))],
        256)
    step = A.Entry("step", [
        A.Buffer("input", 0, F32, (4,)),
        A.Buffer("state", 0, F32, (4,)),
        A.Buffer("arena", 0, F32, (4,)),
        A.Buffer("weight", 0, F32, (4,)),
    ], [A.IOBinding("x", 0, "data"), A.IOBinding("acc", 1, "state")],
        [A.IOBinding("acc_out", 1, "state"), A.IOBinding("snapshot", 2, "data")],
        [call("accumulate", 1, 0), call("add", 1, 3, 2)], 64)
    fail = A.Entry("fail", [
        A.Buffer("input", 0, F32, (4,)),
        A.Buffer("weight", 0, F32, (4,)),
        A.Buffer("arena", 0, F32, (4,)),
    ], [A.IOBinding("x", 0, "data")], [A.IOBinding("y", 2, "data")],
        [call("add", 0, 1, 2), call("fail", 0)], 64)
    par = A.Entry("par", [
        A.Buffer("input", 0, F32, (1000,)),
        A.Buffer("arena", 0, F32, (1000,), 0),
        A.Buffer("arena", 0, F32, (1000,), 4032),
        A.Buffer("arena", 0, F32, (1000,), 8064),
    ], [A.IOBinding("x", 0, "data")],
        [A.IOBinding("y", 1, "data"), A.IOBinding("z", 2, "data"), A.IOBinding("w", 3, "data")],
        [call("par_reverse", 0, 1), call("nested_par", 0, 2), call("many_tasks", 0, 3)], 12096)
    return A.Plan(list(KERNELS), [A.WeightSpec("w0", F32, (4,)), A.WeightSpec("w1", F32, (2, 2))],
                  [A.StateSpec("acc", F32, (4,))], [main, step, fail, par])


def write_standard(path: str, kernels_so: str, **kw) -> str:
    with open(kernels_so, "rb") as f:
        lib = f.read()
    A.write_artifact(path, kw.pop("target", cpu_target()), kw.pop("plan", standard_plan()), lib, [W0, W1],
                     kw.pop("metadata", {"name": "standard"}), kw.pop("device_code", b"opaque device code"), **kw)
    return path


# ---- a toy decode model over the toy_lm kernel -------------------------------------------------------

def decode_plan(batch: int, capacity: int, vocab: int, chunks=(4, 2)) -> A.Plan:
    """Entries decode and prefill_<S> over toy_lm(input_ids, start_pos, history, logits); the state
    'history' int64 [batch, capacity] records the tokens."""
    entries = []
    for seq, name in [(1, "decode")] + [(s, f"prefill_{s}") for s in chunks]:
        arena = -(-batch * seq * vocab * 4 // 64) * 64
        entries.append(A.Entry(name, [
            A.Buffer("input", 0, I64, (batch, seq)),
            A.Buffer("input", 1, I64, (batch,)),
            A.Buffer("state", 0, I64, (batch, capacity)),
            A.Buffer("arena", 0, F32, (batch, seq, vocab)),
        ], [A.IOBinding("input_ids", 0, "data"), A.IOBinding("start_pos", 1, "data"),
            A.IOBinding("past.history", 2, "state")],
            [A.IOBinding("logits", 3, "data"), A.IOBinding("present.history", 2, "state")],
            [call("toy_lm", 0, 1, 2, 3)], arena))
    return A.Plan(list(KERNELS), [], [A.StateSpec("history", I64, (batch, capacity))], entries)


def write_decode(path: str, kernels_so: str, batch: int = 2, capacity: int = 16, vocab: int = 7,
                 chunks=(4, 2), metadata=None) -> str:
    with open(kernels_so, "rb") as f:
        lib = f.read()
    meta = {"kind": "decode", "max_seq_len": capacity, "batch": batch, "vocab": vocab} if metadata is None \
        else metadata
    A.write_artifact(path, cpu_target(), decode_plan(batch, capacity, vocab, chunks), lib, [], meta)
    return path


class ToyLM:
    """numpy reference of toy_lm: logits[b, p] is one-hot at (sum(tokens[b, :p+1]) + p) % vocab."""

    def __init__(self, batch: int, vocab: int):
        self.vocab = vocab
        self.history = [[] for _ in range(batch)]

    def feed(self, ids: np.ndarray) -> np.ndarray:
        out = np.zeros(ids.shape + (self.vocab,), dtype=np.float32)
        for b, row in enumerate(ids):
            for s, tok in enumerate(row):
                self.history[b].append(int(tok))
                p = len(self.history[b]) - 1
                out[b, s, (sum(self.history[b]) + p) % self.vocab] = 1
        return out


def run_converters(body, arrays, weights: int = 0):
    """A Relax function over ``arrays``' shapes whose body is ``body(bb, params, converters, report)``
    (a list of output expressions; ``converters`` are the CPU target's tide-function converters),
    substituted, scheduled and built for this CPU as the compiler does, then run on ``arrays``; the
    last ``weights`` arrays are passed as model weights (main's trailing parameters, as
    ``onnx_import.weights_as_inputs`` passes them). Returns (outputs as numpy arrays, report)."""
    import tvm
    from tvm import relax

    from tide.compiler import schedule, substitute
    from tide.targets import get

    cpu = get("cpu")
    target = cpu.tvm_target()
    bb = relax.BlockBuilder()
    params = [relax.Var(f"in{i}", relax.TensorType(a.shape, str(a.dtype))) for i, a in enumerate(arrays)]
    report = substitute.SubstitutionReport()
    converters = substitute.function_kernels(cpu, report)
    with bb.function("main", params):
        with bb.dataflow():
            outs = body(bb, params, converters, report)
            out = bb.emit_output(relax.Tuple([bb.emit(o) for o in outs]))
        bb.emit_func_output(out)
    weight_params = {f"in{i}": arrays[i] for i in range(len(arrays) - weights, len(arrays))}
    mod = substitute.substitute(bb.get(), cpu, {}, report, target, weight_params)
    mod = schedule.schedule(mod, cpu, target)
    for gv, func in mod.functions_items():
        if isinstance(func, tvm.tirx.PrimFunc):  # the compiler names every kernel so (Target.build)
            mod[gv] = func.with_attr("global_symbol", gv.name_hint)
    vm = relax.VirtualMachine(tvm.compile(mod, target=target), tvm.cpu())
    # a weight the substitution re-laid-out is a new parameter: weight_params holds them in main's new order
    args = list(arrays[:len(arrays) - weights]) + list(weight_params.values())
    result = vm["main"](*[tvm.runtime.tensor(np.ascontiguousarray(a)) for a in args])
    return [r.numpy() for r in result], report
