"""``tide bench --target ascend --estimate --compile``: every benchmark case of a shape set (one tide
kernel at a V4 shape, ``bench/cases.py``) compiled with ``tide compile --target ascend`` for each SoC
(so every kernel of the case passes bishengir for it, or the row says why not), with the cost
model's estimate of the case on that SoC.

A case is estimated on the unit its op's kernels (``tide_*``) run on: the vector unit where they are
vector code only (hand-written HIVM kernels: RMSNorm, RoPE), the scalar unit where any scalar
loop remains (translated from TIR, even with some loops vectorized); the estimate is
``cost.streaming`` on the case's analytic FLOPs and bytes (``KernelDef.cost``) over the AI cores
its widest such kernel uses. Other kernels the graph adds around the op (projection GEMMs on the
cube, reshape copies) are listed in ``not_estimated``. The cube and MoE grouped GEMMs of the hand-written kernels are in the
other table (``ascend_estimate``).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np

SOCS = ("Ascend910B1", "Ascend950PR_9599")


def compile_case(case, soc: str, folder: Path) -> dict:
    """Compiles ``case`` for ``soc`` in ``folder``: {"ok", "error", "kernels": [{name, block_dim, unit}],
    "seconds"}."""
    from ..compiler.artifact import read_artifact
    from ..compiler.driver import CompileOptions, compile_model
    from ..compiler.errors import CompileError
    from ..targets.ascend.codegen import unit_of
    from .cases import KERNELS
    from .prepare import write_onnx

    onnx_path = folder / "model.onnx"
    if not onnx_path.exists():
        write_onnx(case, KERNELS[case.kernel].make_weights(case, np.random.default_rng(case.seed)), onnx_path)
    art = folder / f"{soc}.tide"
    t0 = time.time()
    try:
        compile_model(str(onnx_path), str(art), CompileOptions(target="ascend", arch=soc, progress=False))
    except CompileError as err:
        return {"ok": False, "error": str(err)[:2000], "kernels": [], "seconds": round(time.time() - t0, 1)}
    code = read_artifact(str(art)).device_code
    art.unlink()
    kernels = [{"name": k.name, "block_dim": k.block_dim, "unit": unit_of(k.hivm)} for k in code.kernels]
    return {"ok": True, "error": "", "kernels": kernels, "seconds": round(time.time() - t0, 1)}


def estimate_case(case, soc: str, compiled: dict) -> dict:
    from ..targets.ascend import cost
    from .cases import KERNELS

    kdef = KERNELS[case.kernel]
    c = kdef.cost(case, kdef.make_inputs(case, np.random.default_rng(case.seed)))
    ops = [k for k in compiled["kernels"] if k["name"].startswith("tide_")] or compiled["kernels"]
    unit = "scalar" if any(k["unit"] == "scalar" for k in ops) else "vector"
    blocks = max((k["block_dim"] for k in ops), default=1)
    est = cost.streaming(soc, case.name, float(c["flops"]), float(c["bytes"]), blocks, unit)
    return {"time_s": est.time_s, "bound": est.bound, "unit": unit, "blocks": blocks,
            "flops": float(c["flops"]), "bytes": float(c["bytes"]),
            "not_estimated": [k["name"] for k in compiled["kernels"] if k not in ops]}


def rows(shapes: str = "flash", socs=SOCS, kernels=None, log=print) -> list[dict]:
    """One row per (case, SoC) of the shape set's default cases (``kernels``: only these)."""
    from .cases import all_cases

    out = []
    with tempfile.TemporaryDirectory(prefix="tide-ascend-bench-") as tmp:
        for case in all_cases([shapes], kernels):
            folder = Path(tmp) / case.name.replace("/", "_").replace("@", "_")
            folder.mkdir()
            for soc in socs:
                compiled = compile_case(case, soc, folder)
                row = {"case": case.name, "phase": case.phase, "soc": soc, **compiled}
                if compiled["ok"]:
                    row.update(estimate_case(case, soc, compiled))
                out.append(row)
                log(f"  {case.name} {soc}: {'ok' if compiled['ok'] else 'FAILED'} ({compiled['seconds']} s)")
            for p in folder.iterdir():
                p.unlink()
    return out


def print_table(table: list[dict]) -> None:
    print(f"{'case':44} {'soc':17} {'bishengir':9} {'kernels':>7} {'blocks':>6} {'unit':6} {'est us':>11} {'bound':6}")
    print("(est: the op's kernels only; see not_estimated in the JSON)")
    for r in table:
        if not r["ok"]:
            print(f"{r['case']:44} {r['soc']:17} {'FAILED':9} {r['error'].splitlines()[0][:60]}")
            continue
        print(f"{r['case']:44} {r['soc']:17} {'ok':9} {len(r['kernels']):>7} {r['blocks']:>6} {r['unit']:6} "
              f"{r['time_s'] * 1e6:>11.1f} {r['bound']:6}")
