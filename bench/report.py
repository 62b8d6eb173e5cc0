"""Results: derived figures, the terminal table, the JSON document, plots, and ``--compare``. TVM-free.

JSON document (``SCHEMA_VERSION`` 1)::

    {"schema": 1, "created": ISO time, "seconds": run time, "machine": {...}, "seed": int,
     "ceilings": {"gemm_flops", "gemm_how", "bandwidth", "bandwidth_how", "blas": [...], on the CPU also
                  "gemm_all_cores", "gemm_one_core", "read_bandwidth", "measured": [start, end]},
     "policy": {warmup, min_reps, min_seconds, max_reps, max_seconds},
     "results": [{"name": "kernel/shapes/phase/label", "kernel", "group", "shapes", "phase", "label",
                  "flops", "bytes", "rotation_sets", "timer",
                  "engines": {engine: {"median_s", "p25_s", "p75_s", "min_s", "reps", "spread",
                                       "gflops", "gbs", "roofline_pct", "intensity", "bound"}},
                  "ratios": {baseline engine: baseline median / tide median},
                  "skipped": {engine: why (a wrong output is never timed)},
                  optional "notes": {engine: how it was timed}, "cost_note": how FLOPs/bytes were estimated}]}
"""

from __future__ import annotations

import json
from pathlib import Path

from . import harness

SCHEMA_VERSION = 1
BASELINES = ("generic", "torch", "onnxruntime", "transformers", "llama.cpp")
_RESULT_KEYS = {"name": str, "kernel": str, "group": str, "shapes": str, "phase": str, "label": str,
                "flops": (int, float), "bytes": (int, float), "engines": dict, "ratios": dict, "skipped": dict}
_ENGINE_KEYS = ("median_s", "p25_s", "p75_s", "min_s", "reps", "spread", "gflops", "gbs", "roofline_pct")


def add_figures(record: dict, ceilings: dict) -> None:
    """Adds achieved rates and % of roofline to every engine, and the ratios to the baselines."""
    for st in record["engines"].values():
        st.update(harness.figures(st["median_s"], record["flops"], record["bytes"], ceilings))
    tide = record["engines"].get("tide")
    record["ratios"] = {}
    if tide:
        for name, st in record["engines"].items():
            if name != "tide":
                record["ratios"][name] = st["median_s"] / tide["median_s"]


def validate(doc: dict) -> None:
    """Raises ValueError naming the first field that breaks the schema."""
    if doc.get("schema") != SCHEMA_VERSION:
        raise ValueError(f"schema: expected {SCHEMA_VERSION}, got {doc.get('schema')!r}")
    for key in ("machine", "ceilings", "results"):
        if key not in doc:
            raise ValueError(f"missing top-level field '{key}'")
    for key in ("gemm_flops", "bandwidth"):
        if not isinstance(doc["ceilings"].get(key), (int, float)) or doc["ceilings"][key] <= 0:
            raise ValueError(f"ceilings.{key}: expected a positive number, got {doc['ceilings'].get(key)!r}")
    for i, rec in enumerate(doc["results"]):
        for key, typ in _RESULT_KEYS.items():
            if not isinstance(rec.get(key), typ):
                raise ValueError(f"results[{i}] ({rec.get('name', '?')}).{key}: expected {typ}, got {rec.get(key)!r}")
        for engine, st in rec["engines"].items():
            for key in _ENGINE_KEYS:
                if not isinstance(st.get(key), (int, float)):
                    raise ValueError(f"results[{i}] ({rec['name']}).engines.{engine}.{key}: missing or not a number")


def write_json(doc: dict, path: Path) -> None:
    validate(doc)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=1, sort_keys=False) + "\n")


def load_json(path: Path) -> dict:
    try:
        doc = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: not a readable benchmark JSON ({err})") from None
    try:
        validate(doc)
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None
    return doc


# ---------------------------------------------------------------------------------------------
# terminal table


def _ms(s: float) -> str:
    ms = s * 1e3
    return f"{ms:.3f}" if ms < 10 else f"{ms:.1f}"


def table(doc: dict) -> str:
    c = doc["ceilings"]
    lines = [f"machine: {doc['machine'].get('cpu', '?')} ({doc['machine'].get('cores')} cores), target "
             f"{doc['machine'].get('target')}; ceilings: GEMM {c['gemm_flops'] / 1e9:.1f} GFLOP/s, "
             f"bandwidth {c['bandwidth'] / 1e9:.1f} GB/s",
             "times: median ms (IQR/median); ratios: baseline time / tide time (>1: tide faster)"]
    head = (f"{'case':<52}{'tide ms':>10}{'spread':>8}{'GFLOP/s':>9}{'GB/s':>8}{'%roof':>7}  "
            f"{'vs generic':>10}{'vs torch':>10}{'vs ort':>9}{'vs hf':>9}{'vs llama':>9}")
    lines += [head, "-" * len(head)]
    for rec in doc["results"]:
        tide = rec["engines"].get("tide")
        r = rec.get("ratios", {})

        def ratio(name):
            if name in r:
                return f"{r[name]:.2f}x"
            why = rec["skipped"].get(name, "")
            return "WRONG" if why.startswith("WRONG") else "FAIL" if why.startswith("FAILED") else "-"
        if tide:
            lines.append(f"{rec['name']:<52}{_ms(tide['median_s']):>10}{100 * tide['spread']:>7.0f}%"
                         f"{tide['gflops']:>9.1f}{tide['gbs']:>8.1f}{tide['roofline_pct']:>7.1f}  "
                         f"{ratio('generic'):>10}{ratio('torch'):>10}{ratio('onnxruntime'):>9}"
                         f"{ratio('transformers'):>9}{ratio('llama.cpp'):>9}")
        else:
            why = rec["skipped"].get("tide", "not run")
            lines.append(f"{rec['name']:<52}  tide: {why[:120]}")
    wrong = [(rec["name"], e, w) for rec in doc["results"] for e, w in rec["skipped"].items()
             if w.startswith(("WRONG", "FAILED"))]
    for name, engine, why in wrong:
        lines.append(f"! {name} [{engine}]: {why}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# comparison


def compare(old: dict, new: dict, threshold: float = 0.10, engine: str = "tide") -> dict:
    """Regressions (new median slower by more than ``threshold``), improvements, newly wrong
    outputs and cases present in only one document, matched by case name."""
    before = {r["name"]: r for r in old["results"]}
    out = {"regressions": [], "improvements": [], "unchanged": [], "newly_wrong": [], "only_old": [], "only_new": []}
    for rec in new["results"]:
        prev = before.pop(rec["name"], None)
        if prev is None:
            out["only_new"].append(rec["name"])
            continue
        why = rec["skipped"].get(engine, "")
        if why.startswith(("WRONG", "FAILED")) and engine in prev["engines"]:
            out["newly_wrong"].append((rec["name"], why))
            continue
        if engine not in rec["engines"] or engine not in prev["engines"]:
            continue
        ratio = rec["engines"][engine]["median_s"] / prev["engines"][engine]["median_s"]
        row = (rec["name"], prev["engines"][engine]["median_s"], rec["engines"][engine]["median_s"], ratio)
        if ratio > 1 + threshold:
            out["regressions"].append(row)
        elif ratio < 1 / (1 + threshold):
            out["improvements"].append(row)
        else:
            out["unchanged"].append(row)
    out["only_old"] = sorted(before)
    return out


def compare_text(result: dict, threshold: float) -> str:
    lines = [f"comparison (tide median time, threshold {100 * threshold:.0f}%):"]
    for key, title in (("regressions", "REGRESSIONS"), ("improvements", "improvements")):
        lines.append(f"{title} ({len(result[key])}):")
        for name, t_old, t_new, ratio in sorted(result[key], key=lambda r: -r[3]):
            lines.append(f"  {name:<52} {_ms(t_old):>9} -> {_ms(t_new):>9} ms  ({ratio:.2f}x time)")
    if result["newly_wrong"]:
        lines.append(f"NEWLY WRONG ({len(result['newly_wrong'])}):")
        lines += [f"  {name}: {why}" for name, why in result["newly_wrong"]]
    lines.append(f"unchanged: {len(result['unchanged'])}; only in the baseline: {len(result['only_old'])}; "
                 f"new cases: {len(result['only_new'])}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# plots

_GROUP_COLORS = {"attention": "tab:blue", "moe": "tab:orange", "norm": "tab:green", "linear": "tab:purple",
                 "model": "tab:red"}
_PHASE_MARKERS = {"decode": "o", "prefill": "s"}


def plots(doc: dict, outdir: Path, stem: str = "") -> list[Path]:
    """``roofline_<target>.png`` (every tide case as a point under the measured roofs) and
    ``ratios_<target>.png`` (baseline time / tide time per case)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    outdir.mkdir(parents=True, exist_ok=True)
    target = doc["machine"].get("target", "cpu")
    c = doc["ceilings"]
    peak, bw = c["gemm_flops"] / 1e9, c["bandwidth"] / 1e9
    recs = [r for r in doc["results"] if "tide" in r["engines"] and r["flops"] > 0]
    paths = []

    sets = sorted({r["shapes"] for r in recs}, key=lambda n: ("tiny", "flash", "pro").index(n)
                  if n in ("tiny", "flash", "pro") else 9) or ["-"]
    fig, axes = plt.subplots(1, len(sets), figsize=(8.5 * len(sets), 7.5), squeeze=False, sharey=True)
    xs = [r["flops"] / r["bytes"] for r in recs] or [1.0]
    lo, hi = min(min(xs) / 2, 0.05), max(max(xs) * 2, 4 * peak / bw)
    grid = [lo * (hi / lo) ** (i / 200) for i in range(201)]
    for ax, shapes in zip(axes[0], sets):
        ax.plot(grid, [min(peak, x * bw) for x in grid], color="black", lw=2,
                label=f"roofline: GEMM {peak:.0f} GFLOP/s, copy {bw:.1f} GB/s")
        for r in (r for r in recs if r["shapes"] == shapes):
            st = r["engines"]["tide"]
            x = r["flops"] / r["bytes"]
            ax.scatter(x, st["gflops"], color=_GROUP_COLORS.get(r["group"], "gray"),
                       marker=_PHASE_MARKERS.get(r["phase"], "^"), s=42, edgecolor="black", linewidths=0.4, zorder=3)
            ax.annotate(f"{r['kernel']} {r['label']}", (x, st["gflops"]), fontsize=6.5, xytext=(4, 2),
                        textcoords="offset points")
        for group, color in _GROUP_COLORS.items():
            ax.scatter([], [], color=color, label=group)
        for phase, marker in _PHASE_MARKERS.items():
            ax.scatter([], [], color="white", edgecolor="black", marker=marker, label=phase)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("arithmetic intensity (FLOP / byte, analytic cost())")
        ax.set_title(f"shapes: {shapes}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(loc="lower right", fontsize=8)
    axes[0][0].set_ylabel("achieved GFLOP/s (median)")
    fig.suptitle(f"tide kernels on {doc['machine'].get('cpu', target)} ({target}): roofline")
    fig.tight_layout()
    path = outdir / f"{stem}roofline_{target}.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    paths.append(path)

    with_ratios = [r for r in doc["results"] if r.get("ratios")]
    names = [n for n in BASELINES if any(n in r["ratios"] for r in with_ratios)]
    sets = sorted({r["shapes"] for r in with_ratios}, key=lambda n: ("tiny", "flash", "pro").index(n)
                  if n in ("tiny", "flash", "pro") else 9) or ["-"]
    rows = max([sum(r["shapes"] == n for r in with_ratios) for n in sets] + [1])
    fig, axes = plt.subplots(1, len(sets), figsize=(8.5 * len(sets), 0.3 * rows + 2.0), squeeze=False)
    height = 0.8 / max(1, len(names))
    colors = {"generic": "tab:purple", "torch": "tab:orange", "onnxruntime": "tab:blue", "transformers": "tab:red",
              "llama.cpp": "tab:green"}
    for ax, shapes in zip(axes[0], sets):
        part = [r for r in with_ratios if r["shapes"] == shapes]
        for j, name in enumerate(names):
            ys = [i + j * height for i, r in enumerate(part) if name in r["ratios"]]
            vals = [r["ratios"][name] for r in part if name in r["ratios"]]
            if not vals:
                continue
            ax.barh(ys, vals, height=height, color=colors.get(name, "gray"), label=f"{name} time / tide time")
        ax.axvline(1.0, color="black", lw=1)
        ax.set_xscale("log")
        ax.set_yticks([i + 0.4 - height / 2 for i in range(len(part))])
        ax.set_yticklabels([r["name"].split("/", 2)[0] + "/" + r["name"].split("/", 2)[2] for r in part], fontsize=7)
        ax.set_ylim(rows, -1)
        ax.set_xlabel("baseline time / tide time (log; > 1: tide faster)")
        ax.set_title(f"shapes: {shapes}")
        ax.grid(True, axis="x", which="both", alpha=0.3)
        ax.legend(loc="lower right", fontsize=8)
    fig.suptitle(f"tide vs baselines measured in the same run ({target})")
    fig.tight_layout()
    path = outdir / f"{stem}ratios_{target}.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    paths.append(path)
    return paths

