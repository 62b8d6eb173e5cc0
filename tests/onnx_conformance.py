"""ONNX's backend node tests through tide: every case compiled for the CPU, run by the C runtime and
classified.

The cases are the ones the installed ``onnx`` package generates (``onnx.backend.test.case.node``:
one module per op family, each ``expect(...)`` call a case: a model, its inputs and expected
outputs; a function op also gets an ``_expanded`` case, its function body as plain nodes). Each case
is compiled with ``tide.compiler.driver.compile_model`` (target cpu); graph inputs that feed a
compile-time operand (``onnx_import.STATIC_OPERANDS``) are bound to the case's data, the way
``tide compile --bind`` does it. The artifact is run through the Python runtime API on the
remaining inputs, and the case is

- PASS: every output has the expected dtype and shape and every element is within the case's
  tolerance (rtol 1e-3, atol 1e-7: what ONNX's backend runner uses; for float16 / bfloat16 outputs
  also anything within HALF_ULPS units in the last place) or equal for non-floats;
- REFUSED: ``compile_model`` raised a CompileError whose message is one readable sentence;
- WRONG: it compiled and ran, but an output differs (dtype, shape or values);
- CRASH: anything else: another exception, an unreadable refusal (several lines, an IR dump, an
  internal error), a worker that died or hung.

Cases run in a worker process (``--worker``) so that a crash or hang of one case is recorded and the
next case runs in a fresh worker. ``python tests/onnx_conformance.py`` runs every case (or
``--ops``), prints the counts and can write ``docs/onnx-ops.md`` (``--write-docs``) and the results
as JSON (``--json``). ``tests/test_onnx_conformance.py`` runs a transformer-relevant subset in CI.
"""

from __future__ import annotations

import argparse
import collections
import importlib
import json
import os
import pkgutil
import re
import select
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass, field

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STATUSES = ("PASS", "REFUSED", "WRONG", "CRASH")
CASE_TIMEOUT_S = 180.0  # one case's compile + run; more is recorded as a CRASH (hang)
# Half-precision outputs: ONNX's rtol 1e-3 is below one unit in the last place of bfloat16 (2^-8
# relative) and about two of float16, so any rounding order but the reference's own (an accumulation
# in float32, as onnxruntime's kernels do) misses it. Those outputs may differ by HALF_ULPS units in
# the last place of the expected value (PyTorch's float16 / bfloat16 test tolerances are as wide).
HALF_ULPS = 2
HALF_MANTISSA_BITS = {"float16": 10, "bfloat16": 7}


@dataclass
class Case:
    """One backend node test case."""

    name: str
    op: str  # the op it tests ("ai.onnx.ml.X" outside the default domain)
    opset: int
    expanded: bool  # the op's function body rather than the op node
    model: object  # onnx.ModelProto
    inputs: list
    outputs: list
    rtol: float
    atol: float


@dataclass
class Result:
    name: str
    op: str
    opset: int
    expanded: bool
    status: str
    detail: str = ""
    bound: list[str] = field(default_factory=list)
    seconds: float = 0.0


def _modules() -> list[str]:
    import onnx.backend.test.case.node as node_cases

    return sorted(name for _, name, _ in pkgutil.iter_modules(node_cases.__path__) if not name.startswith("_"))


def _module_key(name: str) -> str:
    return name.replace("_", "").removesuffix("op").lower()


def collect(ops: list[str] | None = None) -> list[Case]:
    """The node test cases of ``ops`` (op type names; None: every op), in generation order.
    A module is imported (which generates its cases) only if its name matches one of ``ops``."""
    import onnx.backend.test.case.node as node_cases

    wanted = None if ops is None else {_module_key(op.rpartition(".")[2]) for op in ops}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in _modules():
            if wanted is None or _module_key(name) in wanted:
                importlib.import_module(f"{node_cases.__name__}.{name}")
    cases, op_of = [], {}
    for tc in node_cases._NodeTestCases:
        graph = tc.model.graph
        base = tc.name.split("_expanded")[0]
        expanded = base != tc.name
        if expanded and base in op_of:
            op = op_of[base]
        else:
            node = graph.node[0]
            op = f"{node.domain}.{node.op_type}" if node.domain not in ("", "ai.onnx") else node.op_type
            op_of.setdefault(tc.name, op)
        if ops is not None and op not in ops:
            continue
        opset = next((i.version for i in tc.model.opset_import if i.domain in ("", "ai.onnx")), 0)
        inputs, outputs = tc.data_sets[0]
        cases.append(Case(tc.name, op, opset, expanded, tc.model, [_array(x) for x in inputs],
                          [_array(x) for x in outputs], tc.rtol, tc.atol))
    return cases


def _array(value):
    """A case's tensor as numpy (TensorProto values converted); sequences, maps and optionals kept."""
    from onnx import TensorProto, numpy_helper

    if isinstance(value, TensorProto):
        return numpy_helper.to_array(value)
    return value


# ------------------------------------------------------------------------------------------------
# one case


def readable(message: str) -> bool:
    """A refusal a user can read: one sentence (``tide.compiler.errors.readable``), not an internal
    compiler error."""
    from tide.compiler.errors import INTERNAL
    from tide.compiler.errors import readable as one_sentence

    return one_sentence(message) and INTERNAL not in message


def run_case(case: Case, workdir: str) -> Result:
    """Compiles and runs one case; never raises."""
    import onnx

    from tide.compiler import onnx_import
    from tide.compiler.driver import CompileOptions, compile_model
    from tide.compiler.errors import CompileError

    t0 = time.time()
    result = Result(case.name, case.op, case.opset, case.expanded, "CRASH")
    onnx_path = os.path.join(workdir, f"{case.name}.onnx")
    art = os.path.join(workdir, f"{case.name}.tide")
    try:
        onnx.save(case.model, onnx_path)
        feeds = {vi.name: value for vi, value in zip(case.model.graph.input, case.inputs)}
        bind = {u.input: feeds[u.input] for u in onnx_import.static_operand_uses(case.model) if u.input in feeds}
        result.bound = sorted(bind)
        try:
            compile_model(onnx_path, art, CompileOptions(progress=False, bind=bind))
        except CompileError as err:
            message = str(err)
            result.status = "REFUSED" if readable(message) else "CRASH"
            result.detail = message if readable(message) else f"unreadable refusal: {message[:2000]}"
            return result
        _run_and_compare(case, art, {k: v for k, v in feeds.items() if k not in bind}, result)
    except Exception as err:  # noqa: BLE001  (every other failure is a CRASH, recorded with its type)
        result.status, result.detail = "CRASH", f"{type(err).__name__}: {str(err)[:2000]}"
    finally:
        result.seconds = round(time.time() - t0, 3)
        for path in (onnx_path, art):
            if os.path.exists(path):
                os.remove(path)
    return result


def _run_and_compare(case: Case, art: str, feeds: dict, result: Result) -> None:
    import tide

    model = tide.load(art)
    got = model.run(feeds)
    names = [o.name for o in case.model.graph.output]
    if list(got) != names[:len(got)] or len(got) != len(case.outputs):
        result.status, result.detail = "WRONG", f"outputs {list(got)}, expected {names}"
        return
    for name, g, want in zip(names, got.values(), case.outputs):
        problem = _difference(np.asarray(g), np.asarray(want), case.rtol, case.atol)
        if problem:
            result.status, result.detail = "WRONG", f"output '{name}': {problem}"
            return
    result.status = "PASS"


def _difference(got: np.ndarray, want: np.ndarray, rtol: float, atol: float) -> str:
    """Why ``got`` is not ``want`` within tolerance ('' when it is)."""
    if got.dtype != want.dtype:
        return f"dtype {got.dtype}, expected {want.dtype}"
    if got.shape != want.shape:
        return f"shape {got.shape}, expected {want.shape}"
    if want.dtype.kind in "biuOSU":
        bad = np.argwhere(got != want)
        return f"{len(bad)} of {want.size} elements differ (first at {tuple(bad[0])})" if len(bad) else ""
    g, w = got.astype(np.float64), want.astype(np.float64)
    allowed = atol + rtol * np.abs(w)
    half = HALF_MANTISSA_BITS.get(str(want.dtype))
    if half is not None:  # half precision: HALF_ULPS units in the last place of the expected value
        with np.errstate(divide="ignore"):
            exponent = np.floor(np.log2(np.maximum(np.abs(w), np.finfo(np.float32).tiny)))
        allowed = np.maximum(allowed, HALF_ULPS * np.exp2(exponent - half))
    with np.errstate(invalid="ignore"):
        ok = (np.abs(g - w) <= allowed) | (np.isnan(g) & np.isnan(w)) | (g == w)
    if ok.all():
        return ""
    first = tuple(int(i) for i in np.argwhere(~ok)[0])
    what = f"rtol {rtol}, atol {atol}" + (f" or {HALF_ULPS} ulp of {want.dtype}" if half is not None else "")
    return f"{int((~ok).sum())} of {want.size} elements outside {what} (first at {first}: {g[first]!r} vs {w[first]!r})"


# ------------------------------------------------------------------------------------------------
# workers


def _worker(modules: list[str]) -> int:
    """Reads case names (one a line) on stdin, writes one JSON result a line on stdout."""
    cases = {c.name: c for c in collect(None if modules == ["*"] else modules)}
    out = sys.stdout
    sys.stdout = sys.stderr  # anything the compiler prints stays off the result channel
    with tempfile.TemporaryDirectory(prefix="tide-onnx-conf-") as workdir:
        print(json.dumps({"ready": True}), file=out, flush=True)
        for line in sys.stdin:
            result = run_case(cases[line.strip()], workdir)
            print(json.dumps(asdict(result)), file=out, flush=True)
    return 0


class _Worker:
    def __init__(self, ops: list[str] | None):
        cmd = [sys.executable, os.path.abspath(__file__), "--worker", ",".join(ops) if ops else "*"]
        env = dict(os.environ, PYTHONWARNINGS="ignore")
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, text=True, env=env, cwd=REPO)
        self.ready = False

    def ask(self, case: Case, timeout: float) -> Result:
        if not self.ready:
            line = self._line(CASE_TIMEOUT_S + timeout)
            if line is None:
                return self._failed(case, "the worker did not start")
            self.ready = True
        self.proc.stdin.write(case.name + "\n")
        self.proc.stdin.flush()
        line = self._line(timeout)
        if line is None:
            return self._failed(case, f"no result within {timeout:.0f}s" if self.proc.poll() is None
                                else f"the worker died (exit status {self.proc.returncode})")
        return Result(**json.loads(line))

    def _line(self, timeout: float) -> str | None:
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not ready:
            return None
        line = self.proc.stdout.readline()
        return line or None

    def _failed(self, case: Case, why: str) -> Result:
        self.close()
        return Result(case.name, case.op, case.opset, case.expanded, "CRASH", why)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


def run(cases: list[Case], timeout: float = CASE_TIMEOUT_S, progress=None) -> list[Result]:
    """Runs ``cases`` one at a time in a worker process (a fresh one after a crash or hang)."""
    ops = sorted({c.op for c in cases})
    results, worker = [], None
    for case in cases:
        if worker is None or worker.proc.poll() is not None:
            worker = _Worker(ops)
        result = worker.ask(case, timeout)
        results.append(result)
        if progress:
            progress(result)
    if worker is not None:
        worker.close()
    return results


# ------------------------------------------------------------------------------------------------
# summaries


def counts(results: list[Result]) -> dict[str, int]:
    c = collections.Counter(r.status for r in results)
    return {s: c.get(s, 0) for s in STATUSES}


def by_op(results: list[Result]) -> dict[str, list[Result]]:
    table: dict[str, list[Result]] = collections.defaultdict(list)
    for r in results:
        table[r.op].append(r)
    return dict(sorted(table.items()))


def refusal_reason(detail: str) -> str:
    """The reason part of a refusal (what follows the node's description), numbers and names kept."""
    reason = re.sub(r"^.*?\(op [^)]*\):\s*", "", detail)
    reason = re.sub(r"^[^:]*\.onnx:\s*", "", reason)
    return reason.removeprefix("unsupported: ")


def _summarize_reasons(rs: list[Result]) -> str:
    reasons = collections.Counter(refusal_reason(r.detail) for r in rs if r.status == "REFUSED")
    return "; ".join(f"{reason} ({n})" if n > 1 else reason for reason, n in reasons.most_common(3)) + \
        (f"; {len(reasons) - 3} more" if len(reasons) > 3 else "")


def write_docs(results: list[Result], path: str) -> None:
    """``docs/onnx-ops.md``: the claimed ops, every op's cases by status, the refusal reasons."""
    from tide.compiler.onnx_import import SUPPORTED_OPS

    total = counts(results)
    ops = by_op(results)
    lines = [
        "# ONNX operator conformance",
        "",
        "Generated by `python tests/onnx_conformance.py --write-docs docs/onnx-ops.md` from ONNX's backend",
        "node tests (the cases the installed `onnx` package generates): each case compiled by `tide compile`",
        "for the CPU, run by the C runtime and compared with the case's expected outputs (rtol 1e-3,",
        "atol 1e-7, as ONNX's backend runner; float16 and bfloat16 outputs may also differ by 2 units in",
        "the last place, since that rtol is finer than their precision and only the reference's own",
        "rounding order would meet it). A graph input that feeds a compile-time operand (a shape,",
        "axes, k, ...) is bound to the case's data, as `tide compile --bind` does.",
        "",
        "- PASS: every output's dtype, shape and values as expected;",
        "- REFUSED: refused at compile time with a reason (the node, its op, the opset);",
        "- WRONG: compiled, but an output differs;",
        "- CRASH: any other failure.",
        "",
        f"Overall: {len(results)} cases, " + ", ".join(f"{total[s]} {s}" for s in STATUSES) + ".",
        "",
        "## Supported ops",
        "",
        "The ops tide claims (`tide.compiler.onnx_import.SUPPORTED_OPS`); `tide compile` refuses every",
        "other op. A claimed op may still refuse some of its cases (a mode, dtype or attribute value",
        "tide does not compile); those are listed with their reason.",
        "",
        "| op | opsets | passed / cases | refused (reasons) |",
        "|---|---|---|---|",
    ]

    def row(op: str, rs: list[Result]) -> str:
        c = counts(rs)
        opsets = ", ".join(str(v) for v in sorted({r.opset for r in rs}))
        extra = "".join(f", {c[s]} {s}" for s in ("WRONG", "CRASH") if c[s])
        refused = f"{c['REFUSED']}: {_summarize_reasons(rs)}" if c["REFUSED"] else ""
        return f"| {op} | {opsets} | {c['PASS']} / {len(rs)}{extra} | {refused.replace('|', '/')} |"

    claimed = [op for op in ops if op in SUPPORTED_OPS]
    lines += [row(op, ops[op]) for op in claimed]
    lines += ["", f"{len(claimed)} ops, {sum(len(ops[op]) for op in claimed)} cases: " +
              ", ".join(f"{counts([r for op in claimed for r in ops[op]])[s]} {s}" for s in STATUSES) + ".",
              "", "## Other ops", "",
              "Ops tide does not claim: each of their cases is refused (or passes only through other ops, for",
              "an expanded function body).", "",
              "| op | opsets | passed / cases | refused (reasons) |", "|---|---|---|---|"]
    lines += [row(op, rs) for op, rs in ops.items() if op not in SUPPORTED_OPS]
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--ops", help="comma-separated op types (default: every op)")
    parser.add_argument("--json", help="write every case's result to this file")
    parser.add_argument("--write-docs", metavar="MD", help="write the op table (docs/onnx-ops.md)")
    parser.add_argument("--previous", metavar="JSON",
                        help="results of an earlier run (--json): only the cases of --ops run again, the "
                             "rest are taken from it")
    parser.add_argument("--timeout", type=float, default=CASE_TIMEOUT_S, help="seconds per case")
    parser.add_argument("-v", "--verbose", action="store_true", help="print every case's result")
    args = parser.parse_args(argv)
    if args.worker:
        return _worker(args.worker.split(","))
    cases = collect(args.ops.split(",") if args.ops else None)
    t0 = time.time()
    done: list[Result] = []

    def progress(r: Result) -> None:
        done.append(r)
        if args.verbose or r.status in ("WRONG", "CRASH") or len(done) % 100 == 0:
            print(f"{r.status:8} {r.name} ({r.seconds:.1f}s) {r.detail[:300]}", flush=True)

    results = run(cases, args.timeout, progress)
    if args.previous:
        with open(args.previous, encoding="utf-8") as f:
            earlier = [Result(**r) for r in json.load(f)]
        rerun = {r.name for r in results}
        results = [r for r in earlier if r.name not in rerun] + results
    print(f"{len(results)} cases in {time.time() - t0:.0f}s: " +
          ", ".join(f"{n} {s}" for s, n in counts(results).items()))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump([asdict(r) for r in results], f, indent=1)
    if args.write_docs:
        write_docs(results, args.write_docs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
