"""``tide bench --target ascend --estimate``: kernel times on Ascend 910B and 950 from the analytic cost
model (``tide.targets.ascend.cost``), since no Ascend device is at hand: per kernel and SoC the chosen
tiling, the estimated time, the unit that bounds it, the TFLOP/s and the HBM bytes it implies. The
model's assumptions (hardware figures and their sources) are in that module's docstring; these are
estimates to compare tilings and targets, not measurements.
"""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path

TOKENS = (1, 512)  # decode and a prefill chunk


def rows(token_counts=TOKENS) -> list[dict]:
    from ..targets.ascend import cost

    out = []
    for soc, tokens, name, tiling, est in cost.v4_flash_table(token_counts=token_counts):
        out.append({"soc": soc, "tokens": tokens, "kernel": name,
                    "tiling": {"tm": tiling.tm, "tn": tiling.tn, "tk": tiling.tk, "blocks": tiling.blocks},
                    "time_s": est.time_s, "bound": est.bound, "flops": est.flops,
                    "tflops": est.flops / est.time_s / 1e12, "hbm_bytes": est.counts["hbm_bytes"],
                    "terms_s": dict(est.terms)})
    return out


def command(args) -> int:
    if not args.estimate:
        raise SystemExit("tide bench: --target ascend needs --estimate (no Ascend device here: the figures come "
                         "from the cost model)")
    if args.shapes and set(args.shapes) != {"flash"}:
        raise SystemExit("tide bench: the Ascend estimate covers the V4-Flash shapes (--shapes flash)")
    table = rows()
    print("Ascend estimates (analytic cost model, V4-Flash layer shapes, bf16 weights; not measured)")
    print(f"{'soc':17} {'T':>4} {'kernel':18} {'tiling tm,tn,tk,blocks':24} {'est us':>9} {'bound':8} "
          f"{'TFLOP/s':>8} {'HBM MB':>8}")
    for r in table:
        t = r["tiling"]
        print(f"{r['soc']:17} {r['tokens']:4d} {r['kernel']:18} {t['tm']:>5},{t['tn']:>5},{t['tk']:>5},{t['blocks']:>5}  "
              f"{r['time_s'] * 1e6:9.1f} {r['bound']:8} {r['tflops']:8.1f} {r['hbm_bytes'] / 1e6:8.1f}")
    compiled = None
    if args.compile:
        from . import ascend_kernels

        print("\nEvery V4-Flash benchmark case compiled with tide compile --target ascend per SoC (bishengir up to "
              "hivmc), estimated on its unit (vector: hand-written HIVM; scalar: translated from TIR)")
        compiled = ascend_kernels.rows("flash")
        ascend_kernels.print_table(compiled)
    if args.json:
        doc = {"kind": "tide-bench-ascend-estimate", "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
               "host": platform.node(), "rows": table}
        if compiled is not None:
            doc["compiled_cases"] = compiled
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(doc, indent=1))
        print(f"wrote {args.json}")
    return 0
