"""``tide compile --target cuda``: device code for sm_80 and sm_90 in one artifact, compiled here with
nvcc (no GPU needed). Checks the DEVICE_CODE section against the cubins themselves (ELF machine, SM
version, defined kernels and their parameter counts, read from each cubin's own symbol table and
.nv.info records) and against the host library (kernel names it looks up, exported entry points).

The regular tests read the default tiny (index top-4: the Lightning Indexer's CUDA schedule at a top-k
below its 128 threads), compiled once per session and shared with tests/test_runtime_cuda.py; the
heavy ones set ``index_topk`` to 128 (128 threads per block, no thread-guarded list merges).
"""

from __future__ import annotations

import os
import struct
import subprocess
import sys

import pytest

from tide.compiler import artifact
from tide.compiler.driver import CompileOptions, compile_model
from tide.compiler.errors import CompileError
from tide.compiler.export import export
from tide.targets import get
from tide.targets.cuda import device_code, nvcc

import tide_test_models

ARCHS = ("sm_80", "sm_90")
EM_CUDA = 190
EIATTR_KPARAM_INFO = 0x17
INDEXER_OVERRIDES = {"index_topk": 128, "max_position_embeddings": 512}


@pytest.fixture(scope="module")
def tiny_cuda(tmp_path_factory):
    return artifact.read_artifact(tide_test_models.tiny_cuda_artifact(tmp_path_factory))


# ---- a minimal ELF reader for cubins and the host library -----------------------------------------

def _sections(d: bytes) -> dict:
    shoff = struct.unpack_from("<Q", d, 40)[0]
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", d, 58)
    hdrs = [struct.unpack_from("<IIQQQQIIQQ", d, shoff + i * shentsize) for i in range(shnum)]
    names = hdrs[shstrndx][4]
    out = {}
    for h in hdrs:
        start = names + h[0]
        out[d[start:d.index(b"\0", start)].decode()] = {"type": h[1], "offset": h[4], "size": h[5],
                                                        "link": h[6], "index": hdrs.index(h)}
    return out, hdrs


def _symbols(d: bytes, table: str, kind: int | None = None, defined: bool = True) -> set[str]:
    secs, hdrs = _sections(d)
    sec = secs[table]
    strings = hdrs[sec["link"]][4]
    out = set()
    for i in range(1, sec["size"] // 24):
        name, info, _, shndx, _, _ = struct.unpack_from("<IBBHQQ", d, sec["offset"] + i * 24)
        if (kind is None or info & 0xF == kind) and (not defined or shndx != 0):
            start = strings + name
            out.add(d[start:d.index(b"\0", start)].decode())
    return out


def _param_count(d: bytes, func: str) -> int:
    """Number of EIATTR_KPARAM_INFO records (one per kernel parameter) in ``.nv.info.<func>``."""
    sec = _sections(d)[0][f".nv.info.{func}"]
    pos, end, count = sec["offset"], sec["offset"] + sec["size"], 0
    while pos < end:
        fmt, attr = d[pos], d[pos + 1]
        if fmt == 4:  # EIFMT_SVAL: u16 size, then the value
            pos += 4 + struct.unpack_from("<H", d, pos + 2)[0]
        elif fmt in (2, 3):  # EIFMT_BVAL / EIFMT_HVAL
            pos += 4
        else:  # EIFMT_NVAL
            pos += 2
        count += attr == EIATTR_KPARAM_INFO
    return count


def _sm_of(cubin: bytes) -> int:
    flags = struct.unpack_from("<I", cubin, 48)[0]
    return (flags >> 8) & 0xFF if cubin[8] >= 8 else flags & 0xFF  # EF_CUDA_SM by ELF ABI version


# ---- the compiled artifact ------------------------------------------------------------------------

def test_tiny_artifact_holds_a_cubin_per_arch(tiny_cuda):
    art = tiny_cuda
    assert art.target.kind == "cuda" and art.target.device_arch == "sm_80,sm_90"
    assert art.target.host_features == 0  # generic host stubs
    code = art.device_code
    assert [img.arch for img in code.images] == list(ARCHS)
    names = {f.name for f in code.functions}
    assert len(names) == len(code.functions) >= len(art.plan.kernels)
    for img in code.images:
        d = img.data
        assert img.format == "cubin" and d[:4] == b"\x7fELF" and d[4] == 2
        assert struct.unpack_from("<H", d, 18)[0] == EM_CUDA
        assert _sm_of(d) == int(img.arch[3:])
        defined = _symbols(d, ".symtab", kind=2)  # STT_FUNC
        missing = names - defined
        assert not missing, f"{img.arch}: device functions missing from the cubin: {sorted(missing)[:5]}"
        for f in code.functions:
            assert _param_count(d, f.name) == len(f.args), f"{img.arch} {f.name}"
            assert f.tags and all(t in device_code.TAGS for t in f.tags)


def test_host_library_exports_every_kernel_and_looks_up_every_device_function(tiny_cuda):
    art = tiny_cuda
    host = art.section_bytes("KERNELS_HOST")
    exported = _symbols(host, ".dynsym")
    missing = [k for k in art.plan.kernels if f"__tvm_ffi_{k}" not in exported]
    assert not missing, f"kernels not exported by the host library: {missing[:5]}"
    for needed in ("__TVMFFIEnvModLookupFromImports", "__TVMFFIFunctionCall", "__TVMFFIHandleInitOnce"):
        assert needed in exported
    strings = set(host.split(b"\0"))
    for f in art.device_code.functions:
        assert f.name.encode() in strings, f"the host stubs never look up {f.name}"


def test_inspect_shows_archs_and_device_functions(tiny_cuda):
    art = tiny_cuda
    res = subprocess.run([sys.executable, "-m", "tide.cli", "inspect", art.path], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert "target: cuda (x86_64, sm_80,sm_90)" in res.stdout
    assert f"device code: 2 images, {len(art.device_code.functions)} device functions" in res.stdout
    for arch in ARCHS:
        assert f"  {arch}: cubin, " in res.stdout
    first = art.device_code.functions[0]
    assert f"  {first.name}({len(first.args)} args) launch {', '.join(first.tags)}" in res.stdout


# ---- the DEVICE_CODE reader ---------------------------------------------------------------------------

def test_device_code_roundtrip(tiny_cuda):
    art = tiny_cuda
    raw = art.section_bytes("DEVICE_CODE")
    assert device_code.encode(device_code.decode(raw)) == raw


def _corruptions(raw: bytes):
    code = device_code.decode(raw)
    first = code.images[0]
    head_len = 8 + 4 + 4 + 4 + len(first.arch)  # magic, version, count, arch string length + text
    yield "bad magic", b"TIDEGPU\0" + raw[8:], 'bad magic (expected "TIDECUDA")'
    yield "version", raw[:8] + struct.pack("<I", 2) + raw[12:], "version 2 is not supported"
    functions_at = 16 + sum(4 + len(img.arch) + 1 + 8 + len(img.data) for img in code.images)
    yield "no images", raw[:12] + struct.pack("<I", 0) + raw[functions_at:], "no device image"
    yield "format", raw[:head_len] + b"\x07" + raw[head_len + 1:], "unknown image format 7"
    yield "image size", raw[:head_len + 1] + struct.pack("<Q", len(raw)) + raw[head_len + 9:], "exceeds"
    yield "truncated", raw[:-3], "truncated"
    yield "trailing", raw + b"\0", "1 bytes follow the last function"
    arch = raw.index(b"sm_90")
    yield "duplicate arch", raw[:arch] + b"sm_80" + raw[arch + 5:], "duplicate DEVICE_CODE image architecture"
    yield "bad arch", raw[:arch] + b"sx_90" + raw[arch + 5:], "is not sm_<digits>[a]"
    tag = raw.index(b"threadIdx.x")
    yield "bad tag", raw[:tag] + b"threadIdx.w" + raw[tag + 11:], "unknown launch tag 'threadIdx.w'"
    count_at = functions_at
    first_fn = raw[count_at + 4:]
    fn_len = 4 + len(code.functions[0].name) + 4 + 4 * len(code.functions[0].args) + 4 + sum(
        4 + len(t) for t in code.functions[0].tags)
    yield ("duplicate function", raw[:count_at] + struct.pack("<I", len(code.functions) + 1) + first_fn[:fn_len]
           + first_fn, "duplicate DEVICE_CODE function name")


def test_device_code_reader_rejects_corrupt_sections(tiny_cuda):
    art = tiny_cuda
    raw = art.section_bytes("DEVICE_CODE")
    for what, bad, message in _corruptions(raw):
        with pytest.raises(artifact.ArtifactError, match="DEVICE_CODE") as err:
            device_code.decode(bad)
        assert message in str(err.value), f"{what}: {err.value}"


def test_writer_and_reader_check_device_arch_and_presence(tiny_cuda, tmp_path):
    art = tiny_cuda
    raw = art.section_bytes("DEVICE_CODE")
    weights = [art.weight(i) for i in range(len(art.plan.weights))]
    host = art.section_bytes("KERNELS_HOST")
    path = str(tmp_path / "x.tide")
    for device_arch, code, message in (("sm_90,sm_80", raw, "expected 'sm_80,sm_90'"),
                                       ("sm_90", raw, "expected 'sm_80,sm_90'"),
                                       ("sm_80,sm_90", None, "a cuda target needs a DEVICE_CODE section")):
        target = artifact.TargetInfo("cuda", art.target.host_arch, 0, device_arch)
        with pytest.raises(artifact.ArtifactError, match=message):
            artifact.write_artifact(path, target, art.plan, host, weights, art.metadata, code)
        artifact.write_artifact(path, target, art.plan, host, weights, art.metadata, code, check=False)
        with pytest.raises(artifact.ArtifactError, match=message):
            artifact.read_artifact(path)


# ---- bad input --------------------------------------------------------------------------------------

def test_unknown_arch_is_refused(tmp_path):
    for spec, message in (("sm_75", "unknown CUDA architecture 'sm_75'"), ("sm_90,sm_90", "twice"),
                          (",", "names no architecture"), ("compute_90", "unknown CUDA architecture 'compute_90'")):
        with pytest.raises(CompileError, match=message):
            get("cuda").parse_archs(spec)
    assert get("cuda").parse_archs("sm_90a, sm_80,sm_90") == ["sm_80", "sm_90", "sm_90a"]
    assert get("cuda").parse_archs(None) == ["sm_90"]
    onnx_path = str(tmp_path / "tiny.onnx")
    export("tiny", onnx_path, seed=0)
    res = subprocess.run([sys.executable, "-m", "tide.cli", "compile", onnx_path, "-o", str(tmp_path / "t.tide"),
                          "--target", "cuda", "--arch", "sm_80,sm_100x", "-q"], capture_output=True, text=True)
    assert res.returncode != 0 and "unknown CUDA architecture 'sm_100x'" in res.stderr
    with pytest.raises(CompileError, match="target 'cpu' has no device architectures"):
        compile_model(onnx_path, str(tmp_path / "c.tide"), CompileOptions(target="cpu", arch="sm_90", progress=False))


BROKEN = r'''
extern "C" __global__ void good_kernel(float* __restrict__ x) { x[threadIdx.x] = 1.0f; }
extern "C" __global__ void broken_kernel(float* __restrict__ x) {
  x[threadIdx.x] = undefined_name;
}
'''


def test_nvcc_failure_names_the_kernel_and_shows_stderr():
    with pytest.raises(CompileError) as err:
        nvcc.compile_source(BROKEN, ["sm_80", "sm_90"])
    text = str(err.value)
    assert "nvcc failed for sm_8" in text or "nvcc failed for sm_9" in text
    assert "in kernel 'broken_kernel'" in text and "undefined_name" in text and "-cubin" in text


def test_missing_nvcc_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("NVCC", str(tmp_path / "no-nvcc"))
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(os, "access", lambda path, mode: False)  # hide the toolkit's fixed locations
    with pytest.raises(CompileError, match="nvcc not found"):
        nvcc.compile_source(BROKEN, ["sm_90"])


def test_every_kernel_needs_a_thread_binding():
    """A kernel no CUDA schedule binds to threads is refused by name (it would fail TVM's memory
    verification later): here one written as a plain loop, which dlight's rules cannot schedule."""
    import tvm
    from tvm.script import tirx as T

    from tide.compiler import schedule

    @T.prim_func
    def host_loop(x: T.Buffer((8,), "float32"), y: T.Buffer((8,), "float32")):
        for i in range(8):
            y[i] = x[i] * T.float32(2)

    cuda = get("cuda")
    with pytest.raises(CompileError, match="kernel 'host_loop': the cuda generic schedule failed: .*no thread binding"):
        schedule.schedule(tvm.IRModule({"host_loop": host_loop}), cuda, cuda.tvm_target(None, ["sm_90"]))


FLASH_REDUCED = {"vocab_size": 1024, "n_routed_experts": 4, "num_experts_per_tok": 2, **INDEXER_OVERRIDES}
# V4-Flash's head_dim 512, rope split, CSA/HCA ratios and indexer shape at small widths
FLASH_NARROW = {**FLASH_REDUCED, "hidden_size": 128, "num_attention_heads": 4, "q_lora_rank": 64, "o_groups": 2,
                "o_lora_rank": 64, "moe_intermediate_size": 64, "index_n_heads": 16}


def _check_flash(tmp_path, overrides):
    onnx_path, art = str(tmp_path / "flash.onnx"), str(tmp_path / "flash.tide")
    export("flash-2layer", onnx_path, max_seq_len=512, config_overrides=overrides)
    compile_model(onnx_path, art, CompileOptions(target="cuda", arch="sm_80,sm_90", prefill_chunks=(32,),
                                                 progress=False))
    read = artifact.read_artifact(art)
    assert [img.arch for img in read.device_code.images] == list(ARCHS)
    for img in read.device_code.images:
        assert _sm_of(img.data) == int(img.arch[3:])
        defined = _symbols(img.data, ".symtab", kind=2)
        for f in read.device_code.functions:
            assert f.name in defined and _param_count(img.data, f.name) == len(f.args), f"{img.arch} {f.name}"
    exported = _symbols(read.section_bytes("KERNELS_HOST"), ".dynsym")
    assert all(f"__tvm_ffi_{k}" in exported for k in read.plan.kernels)
    assert any(k.startswith("tide_sink_attention") and "d512" in k for k in read.plan.kernels)


@pytest.mark.heavy
def test_flash_2layer_narrow_compiles_for_both_archs(tmp_path):
    _check_flash(tmp_path, FLASH_NARROW)


@pytest.mark.heavy
def test_flash_2layer_compiles_for_both_archs(tmp_path):
    """Full V4-Flash widths (about 2 GB of fp32 weights: needs that much free disk twice)."""
    _check_flash(tmp_path, FLASH_REDUCED)


def test_default_tiny_indexer_and_attention_kernels(tiny_cuda):
    """The built-in tiny as exported by default (index top-4, a float32 model): the Lightning
    Indexer's CUDA kernels at top-4 for decode and the prefill chunk, attention on the float32
    kernels, every device function defined in every image."""
    indexers = [k for k in tiny_cuda.plan.kernels if k.startswith("tide_lightning_indexer") and k.endswith("k4r4")]
    assert len(indexers) == 2, tiny_cuda.plan.kernels  # decode and the prefill chunk
    attention = [k for k in tiny_cuda.plan.kernels if "sink_attention" in k]
    assert attention and not any(k.endswith("_mma_bf16") for k in attention)
    for image in tiny_cuda.device_code.images:
        assert {f.name for f in tiny_cuda.device_code.functions} <= _symbols(image.data, ".symtab", kind=2)


@pytest.mark.heavy
def test_tiny_with_index_topk_128_compiles_for_cuda(tmp_path):
    """tiny with ``index_topk`` 128 (the Lightning Indexer's 128 threads per block, no thread-guarded
    list merges) builds for sm_90, one prefill chunk."""
    onnx_path, art = str(tmp_path / "tiny.onnx"), str(tmp_path / "tiny.tide")
    export("tiny", onnx_path, seed=0, max_seq_len=512, config_overrides=INDEXER_OVERRIDES)
    compile_model(onnx_path, art, CompileOptions(target="cuda", arch="sm_90", prefill_chunks=(16,), progress=False))
    read = artifact.read_artifact(art)
    indexers = [k for k in read.plan.kernels if k.startswith("tide_lightning_indexer") and k.endswith("k128r4")]
    assert len(indexers) == 2, read.plan.kernels  # decode and the prefill chunk
    defined = _symbols(read.device_code.images[0].data, ".symtab", kind=2)
    assert {f.name for f in read.device_code.functions} <= defined


@pytest.mark.heavy
def test_bf16_tiny_prefill_attention_on_tensor_cores(tmp_path):
    """A bfloat16 export: its prefill chunk's sink attention (dense and CSA) on the tensor-core
    kernels, decode on the float32 ones, device code for both archs (about a minute)."""
    onnx_path, art = str(tmp_path / "tiny.onnx"), str(tmp_path / "tiny.tide")
    export("tiny", onnx_path, seed=0, dtype="bfloat16")
    compile_model(onnx_path, art, CompileOptions(target="cuda", arch="sm_80,sm_90", prefill_chunks=(16,),
                                                 progress=False))
    read = artifact.read_artifact(art)
    attention = [k for k in read.plan.kernels if "sink_attention" in k]
    assert {k.endswith("_mma_bf16") for k in attention if "b1s16" in k} == {True}
    assert {k.endswith("_mma_bf16") for k in attention if "b1s1h" in k} == {False}
    assert any(k.startswith("tide_sparse_sink_attention") and k.endswith("_mma_bf16") for k in attention)
    for img in read.device_code.images:
        defined = _symbols(img.data, ".symtab", kind=2)
        assert {f.name for f in read.device_code.functions} <= defined, img.arch
