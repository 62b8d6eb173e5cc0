"""Parts of the compressor on the CPU, element by element against float64: its vectorizable exp
(``tide.ops.compressor.exp_lets``) over its whole input range. (Its projections are
``tide.ops.linear``s: tests/test_linear.py.)"""

from __future__ import annotations

import numpy as np
import tvm
from tvm.script import tirx as T

from tide.ops import compressor
from tide.targets import get


def test_exp_lets_is_accurate_over_its_range():
    n = 1 << 16

    @T.prim_func(s_tir=True)
    def func(a: T.Buffer((n,), "float32"), out: T.Buffer((n,), "float32")):
        T.func_attr({"global_symbol": "main", "tirx.noalias": True})
        for i0, i1 in T.grid(n // 16, 16):
            with T.sblock("exp"):
                i = T.axis.spatial(n, i0 * 16 + i1)
                e = compressor.exp_lets("e", a[i])
                out[i] = e

    sch = tvm.s_tir.Schedule(func)
    sch.vectorize(sch.get_loops(sch.get_sblock("exp"))[-1])
    ex = tvm.compile(tvm.IRModule({"main": sch.mod["main"]}), target=get("cpu").tvm_target())
    rng = np.random.default_rng(7)
    a = np.concatenate([-rng.uniform(0, 87, n - 4), [0.0, -87.0, -1e-7, -0.34657359]]).astype(np.float32)
    out = tvm.runtime.tensor(np.full(n, np.nan, np.float32))
    ex["main"](tvm.runtime.tensor(a), out)
    want = np.exp(a.astype(np.float64))
    rel = np.abs(out.numpy() - want) / want
    assert rel.max() < 5e-7, (rel.max(), a[rel.argmax()])
    # clamped: inputs below -87 give e^-87, positive inputs 1 (the kernel only feeds score - max <= 0)
    out2 = tvm.runtime.tensor(np.zeros(n, np.float32))
    ex["main"](tvm.runtime.tensor(np.where(np.arange(n) % 2 == 0, -1000.0, 5.0).astype(np.float32)), out2)
    np.testing.assert_allclose(out2.numpy()[0::2], np.exp(-87.0), rtol=1e-6)
    np.testing.assert_array_equal(out2.numpy()[1::2], 1.0)
