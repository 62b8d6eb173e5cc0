"""Per-kernel profiles of a session's runs (``tide_session_set_profiling`` / ``_read_profile``).

The runtime times every kernel call of every run while profiling is on (on the CPU with the
monotonic clock around each call, on a device with events between eagerly launched calls). A
:class:`Profile` aggregates those times per entry and kernel and joins what the artifact knows of
each kernel: what it serves (its METADATA ``kernels``), its FLOPs and bytes per call
(``kernel_costs``: a tide kernel's own counts; for TVM-lowered kernels TVM's FLOP estimate and the
bytes of the call's arguments in the plan). Rates and the share of a roofline follow from them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from ._ffi import ffi
from .bindings import check, library


@dataclass
class KernelProfile:
    """One kernel in one entry: its calls of a run summed over the profiled runs."""

    entry: str
    kernel: str
    serves: str        # the tide function it serves, or "generic" (TVM-lowered)
    calls: int         # calls of this kernel per run of the entry
    runs: int          # profiled runs of the entry
    seconds: float     # total time over those runs
    bytes: int         # argument bytes per run (what its calls read and write)
    flops: int | None  # FLOPs per run (None: unknown)

    @property
    def mean_seconds(self) -> float:
        """Time per run of the entry."""
        return self.seconds / self.runs if self.runs else 0.0

    @property
    def bytes_per_second(self) -> float:
        return self.bytes * self.runs / self.seconds if self.seconds else 0.0

    @property
    def flops_per_second(self) -> float | None:
        return self.flops * self.runs / self.seconds if self.seconds and self.flops is not None else None

    def roofline_share(self, roof: dict) -> float | None:
        """The roofline time (FLOPs at ``roof["flops"]`` or bytes at ``roof["bandwidth"]``, whichever
        is slower) over the measured time: 1.0 runs at the roof."""
        if not self.seconds or not self.runs:
            return None
        bound = max((self.flops or 0) / roof["flops"], self.bytes / roof["bandwidth"])
        return bound / self.mean_seconds


class Profile:
    """Every profiled entry's kernels, the slowest first within an entry."""

    def __init__(self, rows: list[KernelProfile]):
        self.rows = rows

    def entries(self) -> list[str]:
        return list(dict.fromkeys(r.entry for r in self.rows))

    def entry_seconds(self, entry: str) -> float:
        """Mean time of one run of ``entry`` (the sum of its calls' times)."""
        return sum(r.mean_seconds for r in self.rows if r.entry == entry)

    def table(self, roof: dict | None = None) -> str:
        """The profile as text: per entry, one line per kernel. ``roof`` ({"flops": FLOP/s,
        "bandwidth": bytes/s}) adds each kernel's share of the roofline."""
        lines = []
        for entry in self.entries():
            rows = [r for r in self.rows if r.entry == entry]
            total = self.entry_seconds(entry)
            lines.append(f"entry {entry}: {rows[0].runs} runs, {total * 1e3:.3f} ms per run, "
                         f"{sum(r.calls for r in rows)} calls of {len(rows)} kernels")
            head = (f"  {'kernel':52s} {'calls':>5s} {'ms/run':>9s} {'share':>6s} {'MB/run':>9s} {'MFLOP/run':>10s} "
                    f"{'GB/s':>7s} {'GFLOP/s':>8s}" + (f" {'%roof':>6s}" if roof else "") + "  serves")
            lines.append(head)
            for r in rows:
                rate = r.flops_per_second
                cols = (f"  {r.kernel[:52]:52s} {r.calls:5d} {r.mean_seconds * 1e3:9.3f} "
                        f"{100 * r.mean_seconds / total if total else 0:5.1f}% {r.bytes / 1e6:9.2f} "
                        f"{'-' if r.flops is None else f'{r.flops / 1e6:.2f}':>10s} {r.bytes_per_second / 1e9:7.2f} "
                        f"{'-' if rate is None else f'{rate / 1e9:.2f}':>8s}")
                if roof:
                    share = r.roofline_share(roof)
                    cols += f" {'-' if share is None else f'{100 * share:.1f}':>6s}"
                lines.append(f"{cols}  {r.serves}")
        return "\n".join(lines)

    def to_json(self, roof: dict | None = None) -> dict:
        """A JSON-ready document: the roof, and per entry its run time and kernels."""
        doc = {"roof": roof, "entries": {}}
        for entry in self.entries():
            rows = [r for r in self.rows if r.entry == entry]
            doc["entries"][entry] = {
                "runs": rows[0].runs, "seconds_per_run": self.entry_seconds(entry),
                "kernels": [{**asdict(r), "seconds_per_run": r.mean_seconds, "bytes_per_second": r.bytes_per_second,
                             "flops_per_second": r.flops_per_second,
                             "roofline_share": r.roofline_share(roof) if roof else None} for r in rows]}
        return doc

    def __str__(self) -> str:
        return self.table()


def set_profiling(handle, enabled: bool) -> None:
    check(library().tide_session_set_profiling(handle.ptr, 1 if enabled else 0))


def read(model, handle) -> Profile:
    """The profile of every entry of ``model`` the session ``handle`` ran while profiling."""
    lib = library()
    kernels = [ffi.string(lib.tide_model_kernel_name(model._ptr, i)).decode()
               for i in range(lib.tide_model_kernel_count(model._ptr))]
    served = model.metadata.get("kernels", {})
    costs = model.metadata.get("kernel_costs", {})
    rows = []
    count = ffi.new("int32_t*")
    for index, entry in enumerate(model.entries):
        check(lib.tide_session_read_profile(handle.ptr, index, ffi.NULL, 0, count))
        calls = ffi.new("tide_call_profile_t[]", max(count[0], 1))
        check(lib.tide_session_read_profile(handle.ptr, index, calls, count[0], count))
        by_kernel: dict[str, KernelProfile] = {}
        for c in calls[0:count[0]]:
            if not c.calls:
                continue
            name = kernels[c.kernel]
            cost = costs.get(name, {})
            row = by_kernel.get(name)
            if row is None:
                row = by_kernel[name] = KernelProfile(entry, name, served.get(name, "generic"), 0, int(c.calls), 0.0, 0,
                                                      0 if cost.get("flops") is not None else None)
            row.calls += 1
            row.seconds += float(c.seconds)
            row.bytes += int(cost["bytes"]) if cost.get("bytes") is not None else int(c.bytes)
            if row.flops is not None:
                row.flops += int(cost["flops"])
        rows += sorted(by_kernel.values(), key=lambda r: -r.seconds)
    return Profile(rows)
