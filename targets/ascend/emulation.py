"""The CPU-runner variant of an Ascend kernel module (``cpu_module``): what bishengir 1.2.0's
CPU-runner lowering cannot take, rewritten into what it can, line by line over the forms
``mlir.Builder`` and the kernels write. The cube ops become plain linalg, so the tiling and indexing
can be checked on the CPU; the real cube behaviour (fractal layout, L0 splitting) is not emulated.

The variant is derived from the module's text rather than written by the builder: the CPU runner
(``cpu_runner``) runs an artifact, which holds each kernel's device text and nothing it was built
from.
"""

from __future__ import annotations

import re

from . import mlir

_MMAD = re.compile(
    r"^(\s*)(%\w+) = hivm\.hir\.mmadL1 (\{b_transpose\} )?ins\((%\w+), (%\w+), (%\w+), (%\w+), (%\w+), (%\w+) : "
    r"tensor<(\d+)x(\d+)x(\w+)>, tensor<(\d+)x(\d+)x\w+>, i1, index, index, index\) "
    r"outs\((%[\w#]+) : tensor<(\d+)x(\d+)xf32>\) -> tensor<\d+x\d+xf32>$")
_FIXPIPE = re.compile(r"^(\s*)hivm\.hir\.fixpipe \{enable_nz2nd\} ins\((%[\w#]+) : tensor<(\d+)x(\d+)xf32>\) "
                      r"outs\((%\w+) : (memref<\?x\?xf32, .*>)\)$")
_MIX_ARG = re.compile(r"%\w+: (?:i64|memref<\?xi8>) \{hacc\.arg_type = #hacc\.arg_type<(?:ffts_base_address|workspace)>\}(?:, )?")
_VCAST = re.compile(r"^(\s*)(%\w+) = hivm\.hir\.vcast ins\((%[\w#]+) : tensor<(\d+)x(\d+)xf32>\) "
                    r"outs\((%\w+) : tensor<\d+x\d+x(\w+)>\) round_mode = <rint> -> tensor<\d+x\d+x\w+>$")
_STORE_T = re.compile(r"^(\s*)hivm\.hir\.store ins\((%[\w#]+) : (tensor<[^>]*>)\) outs\((%\w+) : (memref<.*>)\)$")
_BLOCK_IDX = re.compile(r"^(\s*)(%\w+) = hivm\.hir\.get_block_idx -> i64$")
_BLOCK_NUM = re.compile(r"^(\s*)(%\w+) = hivm\.hir\.get_block_num -> i64$")
_UB_ALLOC = re.compile(rf"= memref\.alloc\(\) : (memref<.*, {re.escape(mlir.UB)}>)$")
_ENTRY = re.compile(r"^(\s*func\.func @\w+\()(.*)(\) attributes \{.*hacc\.block_dim = (\d+) : i64.*)$")

BLOCK_ARG = "%tide_block"


def _mmad_linalg(g) -> list:
    ind, r, transposed, a, bt, init, ms, ks, ns = g[0], g[1], g[2], g[3], g[4], g[5], g[6], g[7], g[8]
    tm, tk, elem, b0, b1 = g[9], g[10], g[11], g[12], g[13]
    acc = g[14]
    p = r.lstrip("%")
    if transposed:
        b_slice = f"[{ns}, {ks}] [1, 1] : tensor<{b0}x{b1}x{elem}>"
        b_map = "affine_map<(m, n, k) -> (n, k)>"
    else:
        b_slice = f"[{ks}, {ns}] [1, 1] : tensor<{b0}x{b1}x{elem}>"
        b_map = "affine_map<(m, n, k) -> (k, n)>"
    tn = b0 if transposed else b1
    ext = (lambda v, out: f"  %{p}_{out} = arith.extf %{p}_{v} : {elem} to f32") if elem != "f32" else \
        (lambda v, out: f"  %{p}_{out} = arith.addf %{p}_{v}, %tide_zero : f32")
    L = [
        f"%{p}_a = tensor.extract_slice {a}[0, 0] [{ms}, {ks}] [1, 1] : tensor<{tm}x{tk}x{elem}> to tensor<?x?x{elem}>",
        f"%{p}_b = tensor.extract_slice {bt}[0, 0] {b_slice} to tensor<?x?x{elem}>",
        f"%{p}_c = tensor.extract_slice {acc}[0, 0] [{ms}, {ns}] [1, 1] : tensor<{tm}x{tn}xf32> to tensor<?x?xf32>",
        f"%{p}_z = linalg.fill ins(%tide_zero : f32) outs(%{p}_c : tensor<?x?xf32>) -> tensor<?x?xf32>",
        f"%{p}_i = arith.select {init}, %{p}_z, %{p}_c : tensor<?x?xf32>",
        f"%{p}_p = linalg.generic {{indexing_maps = [affine_map<(m, n, k) -> (m, k)>, {b_map}, "
        f"affine_map<(m, n, k) -> (m, n)>], iterator_types = [\"parallel\", \"parallel\", \"reduction\"]}} "
        f"ins(%{p}_a, %{p}_b : tensor<?x?x{elem}>, tensor<?x?x{elem}>) outs(%{p}_i : tensor<?x?xf32>) {{",
        f"^bb0(%{p}_x: {elem}, %{p}_y: {elem}, %{p}_o: f32):",
        ext("x", "xf"),
        ext("y", "yf"),
        f"  %{p}_m = arith.mulf %{p}_xf, %{p}_yf : f32",
        f"  %{p}_s = arith.addf %{p}_o, %{p}_m : f32",
        f"  linalg.yield %{p}_s : f32",
        "} -> tensor<?x?xf32>",
        f"{r} = tensor.insert_slice %{p}_p into {acc}[0, 0] [{ms}, {ns}] [1, 1] : tensor<?x?xf32> into tensor<{tm}x{tn}xf32>",
    ]
    return [ind + x for x in L]


def _fixpipe_copy(g, n: int) -> list:
    ind, src, tm, tn, dst, dst_t = g
    p = f"tide_fp{n}"
    L = [
        f"%{p}_m = memref.dim {dst}, %tide_c0 : {dst_t}",
        f"%{p}_n = memref.dim {dst}, %tide_c1 : {dst_t}",
        f"%{p}_s = tensor.extract_slice {src}[0, 0] [%{p}_m, %{p}_n] [1, 1] : tensor<{tm}x{tn}xf32> to tensor<?x?xf32>",
        f"bufferization.materialize_in_destination %{p}_s in restrict writable {dst} : (tensor<?x?xf32>, {dst_t}) -> ()",
    ]
    return [ind + x for x in L]


def _vcast_linalg(g) -> list:
    ind, r, src, rows, cols, dst, elem = g
    p = r.lstrip("%")
    L = [
        f"{r} = linalg.generic {{indexing_maps = [affine_map<(i, j) -> (i, j)>, affine_map<(i, j) -> (i, j)>], "
        f"iterator_types = [\"parallel\", \"parallel\"]}} ins({src} : tensor<{rows}x{cols}xf32>) "
        f"outs({dst} : tensor<{rows}x{cols}x{elem}>) {{",
        f"^bb0(%{p}_x: f32, %{p}_o: {elem}):",
        f"  %{p}_t = arith.truncf %{p}_x : f32 to {elem}",
        f"  linalg.yield %{p}_t : {elem}",
        f"}} -> tensor<{rows}x{cols}x{elem}>",
    ]
    return [ind + x for x in L]


def cpu_module(text: str) -> str:
    """The module as the CPU runner builds it:

    - UB allocations (``codegen`` hoists them to the entry) -> ``memref.alloca``, so that repeated
      calls do not leak;
    - ``mmadL1 {b_transpose}`` -> a linalg.generic over the valid (m, k, n) part, on extended-to-f32
      inputs, accumulating into the carried tensor unless the init condition holds (then from zero);
    - ``fixpipe {enable_nz2nd}`` -> the destination-sized corner of the accumulator copied out;
    - ``vcast`` f32 -> bf16/f16 (round to nearest even) -> ``arith.truncf``;
    - ``store`` of a tensor into a GM memref -> ``materialize_in_destination`` (the conversion takes
      only all-tensor or all-memref stores);
    - the mixed-kernel FFTS address and workspace arguments are dropped (no cross-core hand-off);
    - ``get_block_idx`` -> a value read from an extra last argument ``memref<1xi64>`` (the emulator
      calls the kernel once per block), ``get_block_num`` -> the launch's ``hacc.block_dim``.
    Everything else (loads, stores, vector ops) is left to bishengir's own CPU conversion."""
    out, blocks, fixpipes = [], None, 0
    for line in text.split("\n"):
        if (m := _ENTRY.match(line)):
            blocks = int(m.group(4))
            params = _MIX_ARG.sub("", m.group(2))
            out.append(f"{m.group(1)}{params}, {BLOCK_ARG}: {mlir.gm((1,), 'i64')}{m.group(3)}")
            out.append("    %tide_c0 = arith.constant 0 : index")
            out.append("    %tide_c1 = arith.constant 1 : index")
            out.append("    %tide_zero = arith.constant 0.000000e+00 : f32")
        elif (m := _UB_ALLOC.search(line)):
            out.append(f"{line[:m.start()]}= memref.alloca() : {m.group(1)}")
        elif (m := _BLOCK_IDX.match(line)):
            out.append(f"{m.group(1)}{m.group(2)} = memref.load {BLOCK_ARG}[%tide_c0] : {mlir.gm((1,), 'i64')}")
        elif (m := _BLOCK_NUM.match(line)):
            if blocks is None:
                raise ValueError("ascend cpu emulation: get_block_num outside an entry with hacc.block_dim")
            out.append(f"{m.group(1)}{m.group(2)} = arith.constant {blocks} : i64")
        elif (m := _MMAD.match(line)):
            out.extend(_mmad_linalg(m.groups()))
        elif (m := _FIXPIPE.match(line)):
            fixpipes += 1
            out.extend(_fixpipe_copy(m.groups(), fixpipes))
        elif (m := _STORE_T.match(line)):
            ind, src, src_t, dst, dst_t = m.groups()
            out.append(f"{ind}bufferization.materialize_in_destination {src} in restrict writable {dst} : "
                       f"({src_t}, {dst_t}) -> ()")
        elif (m := _VCAST.match(line)):
            out.extend(_vcast_linalg(m.groups()))
        elif any(op in line for op in ("hivm.hir.mmadL1", "hivm.hir.fixpipe", "hivm.hir.vcast")):
            raise ValueError(f"ascend cpu emulation: cube op in a form it does not rewrite: {line.strip()}")
        else:
            out.append(line)
    if blocks is None:
        raise ValueError("ascend cpu emulation: no entry function with hacc.block_dim")
    return "\n".join(out)

