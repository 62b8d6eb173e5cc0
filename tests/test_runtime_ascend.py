"""tide.runtime with device="ascend": the runtime's AscendCL backend against the recording stand-in
runtime/tests/acl_standin.c (device memory is host memory; every call checked and logged; the
kernels vadd and vacc emulated), with an ascend artifact written here: the DEVICE_CODE format
(HIVM text + device binary + block_dim + argument kinds per kernel), the loader's checks, device
and SoC discovery, binaries, argument slots packed once per session, state on the device, copies,
timing and the errors a user can meet (no AscendCL, no device, wrong SoC, no binaries, out of
device memory, a device fault)."""

from __future__ import annotations

import gc
import os

import numpy as np
import pytest

import tide.runtime as R
from tide.compiler import artifact as A
from tide.targets.ascend import device_code
from tide_test_models import REPO, build_standin, host_arch

STANDIN = os.path.join(REPO, "build", "runtime-tests", "libacl_standin.so")
N = 1000
HIVM = "module {\n  func.func @%s() {\n    return\n  }\n}\n"  # the text is stored, not run here


@pytest.fixture(scope="module")
def standin():
    return build_standin("acl_standin")


def _kernels(binaries: bool = True) -> list:
    return [device_code.AscendKernel("vadd", 8, ["ptr", "ptr", "ptr", "i64"], HIVM % "vadd",
                                     b"TIDEBIN vadd" if binaries else b""),
            device_code.AscendKernel("vacc", 4, ["ptr", "ptr", "i64"], HIVM % "vacc", b"TIDEBIN vacc" if binaries else b"")]


def _plan() -> A.Plan:
    """step(x f32[N], acc STATE) -> acc_out STATE (acc += x + w), snapshot = acc + w."""
    f32 = "float32"
    step = A.Entry("step", [
        A.Buffer("input", 0, f32, (N,)), A.Buffer("state", 0, f32, (N,)), A.Buffer("weight", 0, f32, (N,)),
        A.Buffer("arena", 0, f32, (N,), 0), A.Buffer("arena", 0, f32, (N,), 4032),
    ], [A.IOBinding("x", 0, "data"), A.IOBinding("acc", 1, "state")],
        [A.IOBinding("acc_out", 1, "state"), A.IOBinding("snapshot", 4, "data")],
        [A.Call("vadd", [("buf", 0), ("buf", 2), ("buf", 3), ("imm", N)]),
         A.Call("vacc", [("buf", 1), ("buf", 3), ("imm", N)]),
         A.Call("vadd", [("buf", 1), ("buf", 2), ("buf", 4), ("imm", N)])], 2 * N * 4 + 64)
    return A.Plan(["vadd", "vacc"], [A.WeightSpec("w", f32, (N,))], [A.StateSpec("acc", f32, (N,))], [step])


W = np.random.default_rng(11).standard_normal(N).astype(np.float32)


def _write(path, soc="Ascend910B1", kernels=None, check=True) -> str:
    code = device_code.encode(device_code.AscendCode(soc, kernels if kernels is not None else _kernels()))
    A.write_artifact(str(path), A.TargetInfo("ascend", host_arch(), 0, soc), _plan(), b"", [W], {"name": "ascend"},
                     code, check=check)
    return str(path)


@pytest.fixture
def acl_env(standin, monkeypatch, tmp_path):
    gc.collect()  # earlier tests' models release their device memory first
    log = tmp_path / "acl.log"
    monkeypatch.setenv("TIDE_ACL_LOG", str(log))
    for name in ("TIDE_ACL_DEVICES", "TIDE_ACL_SOC", "TIDE_ACL_INIT_RC", "TIDE_ACL_MEM_BYTES", "TIDE_ACL_SYNC_RC"):
        monkeypatch.delenv(name, raising=False)
    return log


def _log(path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def test_ascend_code_roundtrip_and_writer_checks(tmp_path):
    path = _write(tmp_path / "a.tide")
    art = A.read_artifact(path)
    assert art.target.kind == "ascend" and art.device_code.soc == "Ascend910B1"
    assert [k.name for k in art.device_code.kernels] == ["vadd", "vacc"]
    assert art.device_code.kernels[0].hivm == HIVM % "vadd" and art.device_code.kernels[1].block_dim == 4
    bad = _kernels()
    bad[1].args = ["ptr", "i64", "i64"]
    with pytest.raises(A.ArtifactError, match=r"entry 'step' op 1 calls 'vacc' with \(ptr, ptr, i64\); the kernel "
                                              r"takes \(ptr, i64, i64\)"):
        _write(tmp_path / "b.tide", kernels=bad)
    with pytest.raises(A.ArtifactError, match=r"missing \['vacc'\]"):
        _write(tmp_path / "c.tide", kernels=_kernels()[:1])
    with pytest.raises(A.ArtifactError, match="is not the DEVICE_CODE SoC"):
        code = device_code.encode(device_code.AscendCode("Ascend950PR_9599", _kernels()))
        A.write_artifact(str(tmp_path / "d.tide"), A.TargetInfo("ascend", host_arch(), 0, "Ascend910B1"), _plan(),
                         b"", [W], {}, code)
    with pytest.raises(A.ArtifactError, match="block_dim"):
        device_code.encode(device_code.AscendCode("Ascend910B1", [device_code.AscendKernel("vadd", 0, [], "x")]))
    assert not list(tmp_path.glob("[bcd].tide"))


def test_loader_checks_the_section(tmp_path, acl_env):
    """The C loader refuses a call whose arguments do not match the kernel's kinds, as the writer
    does (written here with the writer's checks off); the fuzzer covers corrupt sections."""
    bad = _kernels()
    bad[0].args = ["ptr", "ptr", "ptr", "ptr"]
    path = _write(tmp_path / "bad.tide", kernels=bad, check=False)
    with pytest.raises(R.TideError, match=r"DEVICE_CODE section, kernel 'vadd' \(byte \d+\): entry 'step' op 0 calls it with 4 arguments that do not "
                                          r"match its 4 argument kinds") as err:
        R.load(path, device="ascend", ascend_acl=STANDIN)
    assert err.value.code == 3
    with pytest.raises(A.ArtifactError, match=r"calls .vadd. with \(ptr, ptr, ptr, i64\); the kernel takes"):
        A.read_artifact(path)


def test_run_numbers_state_copies_and_timing(tmp_path, acl_env):
    model = R.load(_write(tmp_path / "a.tide"), device="ascend", ascend_acl=STANDIN)
    assert model.target == "ascend"
    rng = np.random.default_rng(0)
    acc = np.zeros(N)
    for _ in range(3):
        x = rng.standard_normal(N).astype(np.float32)
        out = model.run({"x": x}, entry="step")
        acc += x.astype(np.float64) + W
        np.testing.assert_allclose(out["acc_out"], acc, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(out["snapshot"], acc + W, rtol=1e-5, atol=1e-5)
    log = _log(acl_env)
    assert log.count("aclrtLaunchKernel vadd block_dim 8 args 32") == 6
    assert log.count("aclrtLaunchKernel vacc block_dim 4 args 24") == 3
    assert log.count("aclrtBinaryLoadFromData 12") == 2
    assert "aclrtMemcpy 88 kind 1" in log  # the three calls' argument slots, packed once
    assert not [line for line in log if "no current context" in line or "not device memory" in line]
    seconds = model.time({"x": np.ones(N, np.float32)}, entry="step", iterations=3)
    assert seconds.shape == (3,) and np.all(seconds >= 0)
    model.reset()
    out = model.run({"x": np.ones(N, np.float32)}, entry="step")
    np.testing.assert_allclose(out["acc_out"], 1 + W.astype(np.float64), rtol=1e-6)


def test_session_api_generate_path_state_read(tmp_path, acl_env):
    model = R.load(_write(tmp_path / "a.tide"), device="ascend:0", ascend_acl=STANDIN)
    x = np.random.default_rng(1).standard_normal(N).astype(np.float32)
    start = np.random.default_rng(2).standard_normal(N).astype(np.float32)
    out = model.run({"x": x, "acc": start}, entry="step")
    np.testing.assert_allclose(out["acc_out"], start + x.astype(np.float64) + W, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("env, device, code, message", [
    ({"TIDE_ACL_SOC": "Ascend950PR_9599"}, "ascend", 4,
     r"compiled for Ascend910B1; ascend:0 is Ascend950PR_9599 \(recompile with --soc Ascend950PR_9599\)"),
    ({"TIDE_ACL_DEVICES": "0"}, "ascend", 7, "no Ascend device: AscendCL reports 0 devices"),
    ({"TIDE_ACL_DEVICES": "2"}, "ascend:2", 7, r"Ascend device 2 does not exist \(AscendCL reports 2 devices\)"),
    ({"TIDE_ACL_INIT_RC": "500000"}, "ascend", 7, "aclInit failed: ACL error 500000: stand-in error"),
    ({"TIDE_ACL_MEM_BYTES": "100"}, "ascend", 5,
     r"out of device memory on ascend:0 allocating 4000 bytes for the weights \(100 of 100 bytes free\)"),
])
def test_device_errors(tmp_path, acl_env, monkeypatch, env, device, code, message):
    path = _write(tmp_path / "a.tide")
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(R.TideError, match=message) as err:
        R.load(path, device=device, ascend_acl=STANDIN)
    assert err.value.code == code


def test_missing_acl_binaries_and_targets(tmp_path, acl_env, monkeypatch):
    path = _write(tmp_path / "a.tide")
    with pytest.raises(R.TideError, match=r"/nonexistent/libascendcl\.so not found: .*no CANN") as err:
        R.load(path, device="ascend", ascend_acl="/nonexistent/libascendcl.so")
    assert err.value.code == 7
    with pytest.raises(R.TideError, match=r"targets ascend \(device 'Ascend910B1'\); it cannot run on the cpu"):
        R.load(path)
    nobin = _write(tmp_path / "nobin.tide", kernels=_kernels(binaries=False))
    with pytest.raises(R.TideError, match=r"kernel\(s\) 'vadd', 'vacc' have HIVM but no device binary: the artifact "
                                          r"was compiled without hivmc") as err:
        R.load(nobin, device="ascend", ascend_acl=STANDIN)
    assert err.value.code == 4
    model = R.load(path, device="ascend", ascend_acl=STANDIN)
    monkeypatch.setenv("TIDE_ACL_SYNC_RC", "507015")
    with pytest.raises(R.TideError, match=r"aclrtSynchronizeStream \(a kernel or copy failed on the device\) failed: "
                                          r"ACL error 507015"):
        model.run({"x": np.ones(N, np.float32)}, entry="step")
    monkeypatch.delenv("TIDE_ACL_SYNC_RC")
    model.run({"x": np.ones(N, np.float32)}, entry="step")


def test_release_frees_everything(tmp_path, acl_env):
    model = R.load(_write(tmp_path / "a.tide"), device="ascend", ascend_acl=STANDIN)
    model.run({"x": np.ones(N, np.float32)}, entry="step")
    del model
    gc.collect()
    log = _log(acl_env)
    allocs = sorted(int(line.split()[1]) for line in log if line.startswith("aclrtMalloc ") and "out of" not in line)
    frees = sorted(int(line.split()[1]) for line in log if line.startswith("aclrtFree "))
    assert allocs == frees and allocs
    assert log.count("aclrtBinaryUnLoad") == 2 and "aclrtDestroyContext" in log and "aclrtResetDevice 0" in log


def test_inspect_lists_the_ascend_kernels(tmp_path, capsys):
    from tide.cli import main

    path = _write(tmp_path / "a.tide")
    assert main(["inspect", path]) == 0
    out = capsys.readouterr().out
    assert "device code: Ascend910B1, 2 kernels (2 scalar; 2 with a device binary)" in out
    assert "  vadd(ptr, ptr, ptr, i64) block_dim 8, scalar: HIVM 48 chars" in out


FAKE_HIVMC = """#!/bin/sh
# A stand-in for CANN's hivmc: bishengir-compile calls it with the optimized HIVM module and -o OUT.
[ "$1" = "--version" ] && { echo "hivmc (tide test stand-in)"; exit 0; }
out=""; prev=""
for a in "$@"; do [ "$prev" = "-o" ] && out="$a"; prev="$a"; done
printf 'TIDEBIN %s' "$(cksum < "$1")" > "$out"
"""


@pytest.mark.skipif(__import__("tide.targets.ascend.toolchain", fromlist=["missing"]).missing() is not None,
                    reason="the Ascend toolchain (bishengir) is not installed")
def test_compiled_tiny_launches_every_kernel_through_acl(acl_env, tmp_path, monkeypatch):
    """``tide compile --target ascend`` with an ``hivmc`` on PATH stores every kernel's binary; the
    runtime loads them all and a prefill and a decode launch each plan call once, with the
    kernel's block_dim and one 8-byte slot per argument."""
    from tide.compiler.driver import CompileOptions, compile_model
    from tide.compiler.export import export

    tools = tmp_path / "bin"
    tools.mkdir()
    (tools / "hivmc").write_text(FAKE_HIVMC)
    (tools / "hivmc").chmod(0o755)
    monkeypatch.setenv("PATH", f"{tools}:{os.environ['PATH']}")
    onnx_path, art = str(tmp_path / "tiny.onnx"), str(tmp_path / "tiny.tide")
    export("tiny", onnx_path, seed=0, batch=1)
    compile_model(onnx_path, art, CompileOptions(target="ascend", arch="Ascend910B1", prefill_chunks=(16,),
                                                 progress=False))
    a = A.read_artifact(art)
    kernels = {k.name: k for k in a.device_code.kernels}
    assert all(k.binary.startswith(b"TIDEBIN ") for k in kernels.values())
    model = R.load(art, device="ascend:0", ascend_acl=STANDIN)
    session = model.session()
    session.prefill(np.arange(16, dtype=np.int64)[None] % 512)
    session.decode(np.array([[7]], np.int64))
    log = _log(acl_env)
    assert log.count(f"aclrtBinaryLoadFromData {len(kernels[a.plan.kernels[0]].binary)}") >= 1
    assert sum(line.startswith("aclrtBinaryLoadFromData") for line in log) == len(kernels)
    want = []
    for entry in ("prefill_16", "decode"):
        e = next(x for x in a.plan.entries if x.name == entry)
        for call in e.calls:
            k = kernels[call.kernel]
            want.append(f"aclrtLaunchKernel {k.name} block_dim {k.block_dim} args {8 * len(call.args)}")
    assert [line for line in log if line.startswith("aclrtLaunchKernel")] == want
