"""CPU timings of the MoE kernel variants the compiler chooses between (weight layout, weight dtype)
and of the shared-expert/combine fusion question; ``tide bench`` times only the chosen variant.

    python -m tide.bench.moe_variants chain TOKENS [LAYOUT:DTYPE ...]
        the routed-expert chain (permute, gate/up, down, combine) at V4-Flash expert dims
        (D 4096, F 2048, top-6) with 16 experts; LAYOUT panel|rows, DTYPE float32|bfloat16
    python -m tide.bench.moe_variants shared-combine
        the routed combine plus the shared expert's rows and the add, against one combine that
        reads the shared expert's down output directly (does fusing them pay?)

Each line reports the best of a few runs after a warm-up.
"""

from __future__ import annotations

import sys
import time

import ml_dtypes  # noqa: F401  (registers the "bfloat16" numpy dtype)
import numpy as np
import tvm

from tide.compiler.schedule import schedule_kernel
from tide.ops import moe_down, moe_experts, moe_gate_up
from tide.ops.kernel import tag
from tide.targets import get

D, F, E, K = 4096, 2048, 16, 6


def _tensor(a):
    return tvm.runtime.tensor(np.ascontiguousarray(a), tvm.cpu())


def _build(funcs):
    """The CPU target's schedules of tagged kernels, built with TVM for calling from Python."""
    cpu = get("cpu")
    target = cpu.tvm_target()
    mod = tvm.IRModule({n: schedule_kernel(f, cpu, target, n).with_attr("global_symbol", n) for n, f in funcs})
    lib = tvm.compile(mod, target=target)
    return [lib[n] for n, _ in funcs]


def chain(tokens: int, variants):
    rng = np.random.default_rng(0)
    gate_up = rng.standard_normal((E, 2 * F, D), dtype=np.float32) * np.float32(0.02)
    down = rng.standard_normal((E, D, F), dtype=np.float32) * np.float32(0.02)
    x = _tensor(rng.standard_normal((tokens, D), dtype=np.float32))
    indices = _tensor(np.stack([rng.choice(E, K, replace=False) for _ in range(tokens)]).astype(np.int64))
    weights = _tensor((rng.random((tokens, K)) + 0.1).astype(np.float32))
    active = len(np.unique(indices.numpy()))
    for layout, dtype in variants:
        funcs, br, max_tiles, rows = moe_experts.kernels(tokens, K, E, D, F, 10.0, layout=layout, weight_dtype=dtype)
        fns = _build(funcs)
        gw = _tensor(moe_gate_up.pack(gate_up.astype(dtype), layout))
        dw = _tensor(moe_down.pack(down.astype(dtype), layout))
        perm = [_tensor(np.zeros(s, d)) for s, d in [((rows,), np.int32), ((rows,), np.float32),
                                                      ((max_tiles,), np.int32), ((1,), np.int32),
                                                      ((tokens, K), np.int32)]]
        h, o = _tensor(np.zeros((rows, F), np.float32)), _tensor(np.zeros((rows, D), np.float32))
        y = _tensor(np.zeros((tokens, D), np.float32))
        calls = [(fns[0], (indices, weights, *perm)), (fns[1], (x, gw, *perm[:4], h)),
                 (fns[2], (h, dw, perm[2], perm[3], o)), (fns[3], (o, perm[4], y))]

        def run():
            times = []
            for fn, args in calls:
                start = time.perf_counter()
                fn(*args)
                times.append(time.perf_counter() - start)
            return times

        run()
        best = min((run() for _ in range(5 if tokens < 64 else 2)), key=sum)
        total = sum(best)
        weight_bytes = active * 3 * F * D * np.dtype(dtype).itemsize
        used_rows = int(perm[3].numpy()[0]) * br
        print(f"T={tokens:4d} {layout:5s} {dtype:8s} {br}-row tiles: total {total * 1e3:8.2f} ms (permute "
              f"{best[0] * 1e3:.2f}, gate/up {best[1] * 1e3:.2f}, down {best[2] * 1e3:.2f}, combine "
              f"{best[3] * 1e3:.2f}); {active} active experts: {weight_bytes / total / 1e9:.1f} GB/s of weights, "
              f"{2 * used_rows * D * 3 * F / total / 1e9:.1f} GFLOP/s on the computed rows")


def _combine_with_shared(tokens: int, rows: int, shared_rows: int, name: str):
    from tvm.script import tirx as T

    @T.prim_func(s_tir=True)
    def func(o: T.Buffer((rows, D), "float32"), slot: T.Buffer((tokens, K), "int32"),
             shared: T.Buffer((shared_rows, D), "float32"), y: T.Buffer((tokens, D), "float32")):
        T.func_attr({"global_symbol": name, "tirx.noalias": True})
        for t, c in T.grid(tokens, D):
            with T.sblock("combine"):
                vt, vc = T.axis.remap("SS", [t, c])
                y[vt, vc] = moe_experts.slot_sum(o, slot, vt, vc, K) + shared[vt, vc]

    return tag(func, "moe_combine")


def _add(tokens: int, name: str):
    from tvm.script import tirx as T

    @T.prim_func(s_tir=True)
    def func(a: T.Buffer((tokens, D), "float32"), b: T.Buffer((tokens, D), "float32"),
             y: T.Buffer((tokens, D), "float32")):
        T.func_attr({"global_symbol": name, "tirx.noalias": True})
        for t, c in T.grid(tokens, D):
            with T.sblock("add"):
                vt, vc = T.axis.remap("SS", [t, c])
                y[vt, vc] = a[vt, vc] + b[vt, vc]

    return tag(func, "moe_combine")  # a [rows, cols] element-wise kernel: the combine's schedule


def shared_combine():
    for tokens in (1, 8, 64, 512):
        rows = tokens * K + 2 * 16
        shared_rows = -(-tokens // 3) * 3 if tokens > 1 else 1
        combine, shared_out, add, fused = _build([
            ("combine", tag(moe_experts.prim_func(tokens, K, D, rows, name="combine"), "moe_combine")),
            ("shared_rows", tag(moe_experts.prim_func(tokens, 1, D, shared_rows, name="shared_rows"), "moe_combine")),
            ("add", _add(tokens, "add")), ("fused", _combine_with_shared(tokens, rows, shared_rows, "fused"))])
        rng = np.random.default_rng(0)
        o = _tensor(rng.standard_normal((rows, D), dtype=np.float32))
        slot = _tensor(rng.permutation(tokens * K).reshape(tokens, K).astype(np.int32))
        shared = _tensor(rng.standard_normal((shared_rows, D), dtype=np.float32))
        shared_slot = _tensor(np.arange(tokens, dtype=np.int32)[:, None])
        routed_y, shared_y, y, fused_y = (_tensor(np.zeros((tokens, D), np.float32)) for _ in range(4))

        def separate():
            combine(o, slot, routed_y)
            shared_out(shared, shared_slot, shared_y)
            add(routed_y, shared_y, y)

        def together():
            fused(o, slot, shared, fused_y)

        times = {}
        for name, fn in (("separate", separate), ("fused", together)):
            fn()
            reps = 200 if tokens < 64 else 20
            start = time.perf_counter()
            for _ in range(reps):
                fn()
            times[name] = (time.perf_counter() - start) / reps
        np.testing.assert_allclose(fused_y.numpy(), y.numpy(), rtol=1e-6, atol=1e-5)
        print(f"T={tokens:4d}: combine + shared rows + add {times['separate'] * 1e6:8.1f} us; one combine reading "
              f"the shared output {times['fused'] * 1e6:8.1f} us")


if __name__ == "__main__":
    if len(sys.argv) >= 3 and sys.argv[1] == "chain":
        chain(int(sys.argv[2]), [tuple(v.split(":")) for v in sys.argv[3:]] or [("panel", "float32")])
    elif sys.argv[1:] == ["shared-combine"]:
        shared_combine()
    else:
        sys.exit(__doc__)
