"""Measuring: the machine's own ceilings, timing, the roofline, output checks. TVM-free.

Timing rules: warm-up calls first, then repetitions until both a minimum count and a minimum time
are reached (capped); the inputs rotate over several freshly drawn sets so repeated calls do not
find their data in cache; each engine's output is checked against the float64 reference BEFORE
any of its time is taken (a wrong kernel has no speed). On a GPU, times come from device events
(torch.cuda.Event around the call on the current stream), never from host clocks around
asynchronous work; on the CPU, ``time.perf_counter_ns`` around synchronous calls.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass

import numpy as np


class CheckError(AssertionError):
    """An engine's output does not match the reference (its time is not recorded)."""


# ---------------------------------------------------------------------------------------------
# statistics and the roofline


@dataclass
class TimingPolicy:
    warmup: int = 2
    min_reps: int = 5
    min_seconds: float = 0.2
    max_reps: int = 50
    max_seconds: float = 2.0
    slow_call_s: float = 10.0   # a checked call slower than this is timed once more, not repeated


def stats(times_s: list[float]) -> dict:
    """Median, quartiles, min and count of per-call times (seconds)."""
    t = np.asarray(times_s, np.float64)
    if t.size == 0:
        raise ValueError("no times to summarize")
    p25, med, p75 = np.percentile(t, [25, 50, 75])
    return {"median_s": float(med), "p25_s": float(p25), "p75_s": float(p75), "min_s": float(t.min()),
            "reps": int(t.size), "spread": float((p75 - p25) / med) if med > 0 else 0.0}


def roofline(flops: float, bytes_: float, peak_flops: float, bandwidth: float) -> dict:
    """The attainable rate ``min(peak, intensity x bandwidth)`` as the shortest time the machine
    allows: ``max(flops / peak, bytes / bandwidth)`` (also defined for kernels without FLOPs)."""
    if peak_flops <= 0 or bandwidth <= 0:
        raise ValueError(f"ceilings must be positive, got peak {peak_flops}, bandwidth {bandwidth}")
    intensity = flops / bytes_ if bytes_ else float("inf")
    attainable = min(peak_flops, intensity * bandwidth)
    return {"intensity": intensity, "attainable_flops": attainable,
            "min_time_s": max(flops / peak_flops, bytes_ / bandwidth),
            "bound": "compute" if flops / peak_flops >= bytes_ / bandwidth else "memory"}


def figures(median_s: float, flops: float, bytes_: float, ceilings: dict) -> dict:
    """Achieved GFLOP/s and GB/s and the percentage of the measured roofline."""
    roof = roofline(flops, bytes_, ceilings["gemm_flops"], ceilings["bandwidth"])
    return {"gflops": flops / median_s / 1e9, "gbs": bytes_ / median_s / 1e9,
            "roofline_pct": 100.0 * roof["min_time_s"] / median_s, "intensity": roof["intensity"],
            "bound": roof["bound"]}


# ---------------------------------------------------------------------------------------------
# checks


def _close(name: str, got: np.ndarray, want: np.ndarray, rtol: float, atol_rel: float) -> None:
    if got.shape != want.shape:
        raise CheckError(f"{name}: shape {got.shape}, reference {want.shape}")
    if got.dtype.kind in "iub" or want.dtype.kind in "iub":
        bad = np.count_nonzero(got != want)
        if bad:
            first = tuple(int(i) for i in np.argwhere(got != want)[0])
            raise CheckError(f"{name}: {bad} of {got.size} elements differ (first at {first}: {got[first]} vs "
                             f"reference {want[first]})")
        return
    g, w = got.astype(np.float64), want.astype(np.float64)
    finite = np.isfinite(w)
    scale = float(np.abs(w[finite]).max()) if finite.any() else 1.0
    atol = atol_rel * max(scale, 1e-30)
    if not np.array_equal(np.isfinite(g), finite) or not np.array_equal(g[~finite], w[~finite]):
        raise CheckError(f"{name}: non-finite values differ from the reference")
    err = np.abs(g[finite] - w[finite])
    limit = atol + rtol * np.abs(w[finite])
    if err.size and np.any(err > limit):
        i = int(np.argmax(err - limit))
        raise CheckError(f"{name}: {int(np.count_nonzero(err > limit))} of {err.size} elements off the reference "
                         f"(worst |diff| {err[i]:.3g} > {limit[i]:.3g}; tolerance {atol:.3g} + {rtol:g}|ref|)")


def check_outputs(outputs: list, got: dict, want: dict, paired: dict, rtol: float = 1e-4,
                  atol_rel: float = 1e-4) -> None:
    """Every output of ``got`` against the float64 reference ``want``; raises CheckError.

    Index outputs that come with ``"<name>:scores"`` in ``want`` (top-k picks) are checked by
    score: distinct picks whose reference scores equal the reference picks' scores (near-ties
    may swap); outputs ``paired`` to an index output are compared after sorting both by index."""
    for name, _, _ in outputs:
        if name not in got:
            raise CheckError(f"{name}: missing from the engine's outputs (got {sorted(got)})")
    # picks first: a wrong pick explains wrong paired values
    for name in sorted((n for n, _, _ in outputs), key=lambda n: f"{n}:scores" not in want):
        g, w = np.asarray(got[name]), np.asarray(want[name])
        scores = want.get(f"{name}:scores")
        if scores is not None:
            if g.shape != w.shape:
                raise CheckError(f"{name}: shape {g.shape}, reference {w.shape}")
            flat = g.reshape(-1, g.shape[-1])
            if any(len(np.unique(row)) != len(row) for row in flat):
                raise CheckError(f"{name}: a row picks the same entry twice")
            if g.min() < 0 or g.max() >= scores.shape[-1]:
                raise CheckError(f"{name}: picks outside [0, {scores.shape[-1]})")
            _close(f"{name} (scores of the picks)", np.take_along_axis(scores, g.astype(np.int64), -1),
                   np.take_along_axis(scores, w.astype(np.int64), -1), rtol, atol_rel)
        elif name in paired:
            key = paired[name]
            go = np.argsort(np.asarray(got[key]), axis=-1, kind="stable")
            wo = np.argsort(np.asarray(want[key]), axis=-1, kind="stable")
            _close(name, np.take_along_axis(g, go, -1), np.take_along_axis(w, wo, -1), rtol, atol_rel)
        else:
            _close(name, g, w, rtol, atol_rel)


# ---------------------------------------------------------------------------------------------
# timers


class CpuTimer:
    """Host clock around synchronous calls."""

    kind = "perf_counter_ns"

    def measure(self, call, n_sets: int, policy: TimingPolicy) -> list[float]:
        warm_start = time.perf_counter()
        for i in range(policy.warmup):  # slow calls (past max_seconds) need no more warming
            call(i % n_sets)
            if time.perf_counter() - warm_start > policy.max_seconds:
                break
        times, start, i = [], time.perf_counter(), 0
        while len(times) < policy.max_reps:
            t0 = time.perf_counter_ns()
            call(i % n_sets)
            times.append((time.perf_counter_ns() - t0) * 1e-9)
            i += 1
            if _enough(times, time.perf_counter() - start, policy):
                break
        return times


def _enough(times: list, spent: float, policy: TimingPolicy) -> bool:
    """min_reps and min_seconds reached, or max_seconds spent with at least 3 repetitions."""
    return (len(times) >= policy.min_reps and spent >= policy.min_seconds) or \
        (spent >= policy.max_seconds and len(times) >= min(3, policy.min_reps))


class ReportedTimer:
    """Calls that report their own duration (the runtime's ``Model.time``: CUDA events around each
    run on a GPU); ``call(i)`` returns seconds."""

    kind = "runtime_time"

    def measure(self, call, n_sets: int, policy: TimingPolicy) -> list[float]:
        for i in range(policy.warmup):
            call(i % n_sets)
        times, start, i = [], time.perf_counter(), 0
        while len(times) < policy.max_reps:
            times.append(float(call(i % n_sets)))
            i += 1
            if _enough(times, time.perf_counter() - start, policy):
                break
        return times


class CudaEventTimer:
    """CUDA events recorded on the current stream around each call (device time)."""

    kind = "cuda_events"

    def __init__(self):
        import torch

        self.torch = torch

    def measure(self, call, n_sets: int, policy: TimingPolicy) -> list[float]:
        torch = self.torch
        for i in range(policy.warmup):
            call(i % n_sets)
        torch.cuda.synchronize()
        times, start, i = [], time.perf_counter(), 0
        while len(times) < policy.max_reps:
            begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            begin.record()
            call(i % n_sets)
            end.record()
            end.synchronize()
            times.append(begin.elapsed_time(end) * 1e-3)
            i += 1
            if _enough(times, time.perf_counter() - start, policy):
                break
        return times


# ---------------------------------------------------------------------------------------------
# the machine and its ceilings

_PEAK_SCRIPT = r"""
import json, sys, time
import numpy as np
from threadpoolctl import threadpool_info
n = int(sys.argv[1])
rng = np.random.default_rng(0)
a = rng.standard_normal((n, n), dtype=np.float32)
b = rng.standard_normal((n, n), dtype=np.float32)
c = a @ b
best = float("inf")
end = time.perf_counter() + float(sys.argv[2])
reps = 0
while reps < 3 or time.perf_counter() < end:
    t0 = time.perf_counter(); np.matmul(a, b, out=c); best = min(best, time.perf_counter() - t0); reps += 1
libs = [{k: i.get(k) for k in ("internal_api", "version", "architecture", "num_threads", "threading_layer")}
        for i in threadpool_info() if i.get("user_api") == "blas"]
print(json.dumps({"flops": 2.0 * n ** 3 / best, "n": n, "reps": reps, "blas": libs}))
"""


def one_blas_thread():
    """A context in which numpy's BLAS runs on one thread (threadpoolctl). Around the float64
    references: OpenBLAS's worker threads otherwise keep spinning on the cores after a call returns
    and slow down whatever is timed next. Where threadpoolctl is missing (a GPU machine's bare Python)
    the references run as they are: timings on the GPU do not share its cores."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        import contextlib

        return contextlib.nullcontext()
    return threadpool_limits(limits=1, user_api="blas")


def cpu_gemm_peak(n: int = 2048, seconds: float = 3.0) -> dict:
    """float32 GEMM rate of numpy's BLAS, in a subprocess without OPENBLAS_CORETYPE/OPENBLAS_L2_SIZE
    (which may pin OpenBLAS to a slower kernel here); reports which BLAS kernel ran (threadpoolctl).
    Measured on all cores and on one core times the core count; the higher is the peak (on a shared
    machine a neighbour on one core halves a statically split all-core GEMM)."""
    cores = os.cpu_count() or 1
    env = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")}
    runs = {}
    for threads in sorted({cores, 1}, reverse=True):
        one = {**env, "OPENBLAS_NUM_THREADS": str(threads), "OMP_NUM_THREADS": str(threads)}
        proc = subprocess.run([sys.executable, "-c", _PEAK_SCRIPT, str(n), str(seconds / 2)], env=one,
                              capture_output=True, text=True, timeout=300)
        if proc.returncode != 0:
            raise RuntimeError(f"GEMM peak measurement failed: {proc.stderr.strip()[-2000:]}")
        runs[threads] = json.loads(proc.stdout.strip().splitlines()[-1])
    all_cores, single = runs[cores]["flops"], runs[1]["flops"] * cores
    how = (f"numpy float32 matmul {n}^3, best of {runs[cores]['reps']} on {cores} threads"
           if all_cores >= single else f"numpy float32 matmul {n}^3 on 1 thread x {cores} cores")
    return {"gemm_flops": max(all_cores, single), "gemm_how": how, "gemm_all_cores": all_cores,
            "gemm_one_core": runs[1]["flops"], "blas": runs[cores]["blas"]}


def cpu_bandwidth(mib: int = 256, reps: int = 8, threads: int | None = None) -> dict:
    """Large copy rate, bytes read plus bytes written, one thread per core each copying its share
    (numpy releases the GIL), best of ``reps``; the all-core read rate is recorded beside it."""
    from concurrent.futures import ThreadPoolExecutor

    k = threads or os.cpu_count() or 1
    n = mib * 2**20 // 4
    src = np.random.default_rng(0).standard_normal(n, dtype=np.float32)
    dst = np.empty_like(src)
    parts = [slice(i * n // k, (i + 1) * n // k) for i in range(k)]
    with ThreadPoolExecutor(k) as pool:
        def best(fn):
            t_best = float("inf")
            for _ in range(reps):
                t0 = time.perf_counter()
                list(pool.map(fn, parts))
                t_best = min(t_best, time.perf_counter() - t0)
            return t_best
        t_copy = best(lambda s: np.copyto(dst[s], src[s]))
        t_read = best(lambda s: src[s].max())
    return {"bandwidth": 2.0 * src.nbytes / t_copy, "read_bandwidth": src.nbytes / t_read,
            "bandwidth_how": f"numpy copy of {mib} MiB on {k} threads (read + write)"}


def cpu_ceilings() -> dict:
    """GEMM peak and copy bandwidth; the caller may measure again at the end and keep the best
    (:func:`best_ceilings`), so a neighbour's burst on this shared machine does not lower the roof."""
    return {**cpu_gemm_peak(), **cpu_bandwidth()}


def best_ceilings(a: dict, b: dict) -> dict:
    """Per ceiling, the higher of two measurements (with its description)."""
    out = dict(a)
    for key, how in (("gemm_flops", "gemm_how"), ("bandwidth", "bandwidth_how"), ("read_bandwidth", None)):
        if key in b and b[key] > out.get(key, 0):
            out[key] = b[key]
            if how in b:
                out[how] = b[how]
    out["measured"] = [{k: m.get(k) for k in ("gemm_flops", "bandwidth")} for m in (a, b)]
    return out


def cuda_ceilings(device: str) -> dict:
    """cuBLAS float32 GEMM (TF32 off) and device copy bandwidth, timed with CUDA events."""
    import torch

    torch.backends.cuda.matmul.allow_tf32 = False
    dev = torch.device(device)
    n = 8192
    a = torch.randn(n, n, device=dev)
    b = torch.randn(n, n, device=dev)
    timer, pol = CudaEventTimer(), TimingPolicy(warmup=3, min_reps=10, min_seconds=0.5, max_reps=30)
    t = min(timer.measure(lambda i: torch.matmul(a, b), 1, pol))
    src = torch.empty(2**28, device=dev)
    dst = torch.empty_like(src)
    tb = min(timer.measure(lambda i: dst.copy_(src), 1, pol))
    return {"gemm_flops": 2.0 * n ** 3 / t, "gemm_how": f"torch float32 matmul {n}^3 (cuBLAS, TF32 off)",
            "bandwidth": 2.0 * src.numel() * 4 / tb, "bandwidth_how": "torch device copy of 1 GiB (read + write)",
            "blas": [{"internal_api": "cublas", "device": torch.cuda.get_device_name(dev)}]}


def machine_info(target: str, device: str) -> dict:
    info = {"platform": platform.platform(), "python": platform.python_version(), "cpu": _cpu_name(),
            "cores": os.cpu_count(), "target": target, "device": device,
            "env": {k: os.environ[k] for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "OMP_NUM_THREADS")
                    if k in os.environ}}
    try:
        import torch

        info["torch"] = torch.__version__
        if target == "cuda" and torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    except ImportError:
        pass
    for mod in ("onnxruntime", "numpy"):
        try:
            info[mod] = __import__(mod).__version__
        except ImportError:
            pass
    return info


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def aligned(array: np.ndarray, alignment: int = 64) -> np.ndarray:
    """A C-contiguous copy of ``array`` whose data starts on an ``alignment``-byte boundary (the
    runtime copies misaligned inputs, which would be timed)."""
    raw = np.empty(array.nbytes + alignment, np.uint8)
    offset = (-raw.ctypes.data) % alignment
    out = raw[offset:offset + array.nbytes].view(array.dtype).reshape(array.shape)
    np.copyto(out, array)
    return out
