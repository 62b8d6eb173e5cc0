"""``tide compile --target ascend``: the whole ``tiny`` V4 model for Ascend 910B and 950.

Every kernel is translated from TIR to MLIR and compiled by bishengir for the SoC (a compile that
bishengir rejects fails here). The artifact's kernels (the MLIR text in it) then run on this CPU
through the CPU-runner lowering, chained by the artifact's plan (``tide.targets.ascend.cpu_runner``,
in a child process with ``MALLOC_PERTURB_`` set), and must reproduce transformers' greedy tokens and
teacher-forced logits; and each kernel call of a run is checked against TVM's own CPU build of the
same kernel on the same inputs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tide.targets.ascend import toolchain

pytestmark = pytest.mark.skipif(toolchain.missing_cpu_runner() is not None,
                                reason=str(toolchain.missing_cpu_runner()))

SOCS = ("Ascend910B1", "Ascend950PR_9599")
NEW_TOKENS = 12
LOGIT_TOL = 1e-4  # of the logits' scale, as tests/test_v4_spine.py (float32 on both sides)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    import torch
    from transformers import DeepseekV4ForCausalLM

    from tide.compiler.export import export

    tmp = tmp_path_factory.mktemp("ascend_tiny")
    onnx_path, ckpt = str(tmp / "tiny.onnx"), str(tmp / "ckpt")
    export("tiny", onnx_path, seed=0, batch=1, save_checkpoint=ckpt)
    ref = DeepseekV4ForCausalLM.from_pretrained(ckpt, dtype=torch.float32).eval()
    return tmp, onnx_path, ref


@pytest.fixture(scope="module", params=[SOCS[0], pytest.param(SOCS[1], marks=pytest.mark.heavy)])
def compiled(request, tiny):
    """(soc, artifact path, {kernel: PrimFunc}) for one SoC, prefill chunk 16."""
    from tide.compiler.driver import CompileOptions, compile_model
    from tide.targets.ascend import codegen

    tmp, onnx_path, _ = tiny
    soc = request.param
    kernels = {}
    original = codegen.build

    def capture(funcs, soc_name, workers=None):
        kernels.update(funcs)
        return original(funcs, soc_name, workers)

    codegen.build = capture
    try:
        art = str(tmp / f"tiny-{soc}.tide")
        compile_model(onnx_path, art, CompileOptions(target="ascend", arch=soc, prefill_chunks=(16,), all_logits=True,
                                                     progress=False))
    finally:
        codegen.build = original
    return soc, art, kernels


def _prompt(length: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 512, size=(1, length), dtype=np.int64)


def test_artifact_holds_every_kernel_for_its_soc(compiled):
    from tide.compiler.artifact import read_artifact

    soc, art, kernels = compiled
    a = read_artifact(art)
    assert a.target.kind == "ascend" and a.target.device_arch == soc
    assert a.device_code.soc == soc
    assert sorted(k.name for k in a.device_code.kernels) == sorted(a.plan.kernels) == sorted(kernels)
    for k in a.device_code.kernels:
        assert f"func.func @{k.name}(" in k.hivm and "hacc.entry" in k.hivm
        assert k.binary == b""  # no hivmc (CANN) here
    parallel = [k for k in a.device_code.kernels if k.block_dim > 1]
    assert parallel and all("hivm.hir.get_block_idx" in k.hivm for k in parallel)


def test_tide_run_without_an_npu_points_to_the_cpu_runner(compiled):
    _, art, _ = compiled
    proc = subprocess.run([sys.executable, "-m", "tide.cli", "run", art, "--prompt", "1 2", "-n", "1"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "libascendcl.so" in proc.stderr and "tide.targets.ascend.cpu_runner" in proc.stderr


def test_greedy_tokens_match_transformers(compiled, tiny):
    import torch

    _, art, _ = compiled
    prompt = _prompt(21, seed=1)  # 16 by prefill_16, 5 by decode: past the window, mid compression block
    proc = subprocess.run([sys.executable, "-m", "tide.targets.ascend.cpu_runner", art, "--prompt",
                           " ".join(map(str, prompt[0])), "-n", str(NEW_TOKENS)], capture_output=True, text=True,
                          env={**os.environ, "MALLOC_PERTURB_": "165"}, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = np.array(json.loads(proc.stdout.strip().splitlines()[-1]))
    with torch.no_grad():
        want = tiny[2].generate(torch.from_numpy(prompt), max_new_tokens=NEW_TOKENS, do_sample=False)
    np.testing.assert_array_equal(got, want[:, prompt.shape[1]:].numpy())


def test_teacher_forced_logits_and_every_kernel_call_match(compiled, tiny):
    """Prefill (16 tokens) and 6 decode steps: logits against transformers; every kernel call
    against TVM's LLVM build of the same PrimFunc run on the same inputs."""
    import torch
    import tvm

    from tide.targets.ascend.cpu_runner import CpuRunner

    _, art, kernels = compiled
    ref_lib = tvm.compile(tvm.IRModule({n: f.with_attr("global_symbol", n) for n, f in kernels.items()}),
                          target=tvm.target.Target({"kind": "llvm"}))
    worst: dict = {}

    def observe(name, before, after):
        args = [tvm.runtime.tensor(a, tvm.cpu()) if isinstance(a, np.ndarray) else a for a in before]
        ref_lib[name](*args)
        for i, (r, got) in enumerate(zip(args, after)):
            if not isinstance(got, np.ndarray):
                continue
            r = r.numpy()
            if got.dtype.kind in "iub":
                assert np.array_equal(got, r), f"kernel {name}: argument {i} differs from TVM's build"
                continue
            g64, r64 = got.astype(np.float64), r.astype(np.float64)
            assert np.array_equal(np.isnan(g64), np.isnan(r64)), f"kernel {name}: NaNs differ in argument {i}"
            same = (g64 == r64) | np.isnan(r64)  # equal infinities too
            finite = np.isfinite(r64)
            scale = max(1.0, float(np.abs(r64[finite]).max(initial=0.0)))
            err = float(np.abs(g64[~same] - r64[~same]).max(initial=0.0))
            worst[name] = max(worst.get(name, 0.0), err / scale)

    runner = CpuRunner(art, observer=observe)
    prompt, forced = _prompt(16, seed=2), _prompt(6, seed=3)
    got = [runner.run("prefill_16", {"input_ids": prompt, "start_pos": np.zeros(1, np.int64)})["logits"]]
    with torch.no_grad():
        out = tiny[2](torch.from_numpy(prompt), use_cache=True)
        want, past = [out.logits.numpy()], out.past_key_values
        for t in range(forced.shape[1]):
            step = forced[:, t:t + 1]
            got.append(runner.run("decode", {"input_ids": step, "start_pos": np.full(1, 16 + t, np.int64)})["logits"])
            out = tiny[2](torch.from_numpy(step), past_key_values=past, use_cache=True)
            past = out.past_key_values
            want.append(out.logits.numpy())
    for step, (g, w) in enumerate(zip(got, want)):
        scale = float(np.abs(w).max())
        assert float(np.abs(g - w).max()) <= LOGIT_TOL * scale, f"step {step}"
    assert set(worst) <= set(kernels) and len(worst) > len(kernels) // 2  # the calls were observed
    bad = {n: e for n, e in worst.items() if e > 1e-5}
    assert not bad, f"kernels whose CPU-runner results differ from TVM's build (relative error): {bad}"


@pytest.mark.heavy
def test_flash_2layer_tokens_match_transformers(tmp_path):
    """Real V4-Flash attention dims (4096 hidden, 64 x 512 heads, CSA + HCA; vocab and experts
    reduced as in tests/test_v4_spine.py) compiled for Ascend 910B: every kernel through bishengir,
    then the artifact's kernels on the CPU runner reproduce transformers' greedy tokens."""
    import torch
    from transformers import DeepseekV4ForCausalLM

    from tide.compiler.driver import CompileOptions, compile_model
    from tide.compiler.export import export

    overrides = {"vocab_size": 1024, "n_routed_experts": 4, "num_experts_per_tok": 2}
    onnx_path, ckpt, art = str(tmp_path / "flash.onnx"), str(tmp_path / "ckpt"), str(tmp_path / "flash.tide")
    export("flash-2layer", onnx_path, max_seq_len=256, config_overrides=overrides, save_checkpoint=ckpt)
    compile_model(onnx_path, art, CompileOptions(target="ascend", arch="Ascend910B1", prefill_chunks=(32,),
                                                 progress=False))
    prompt = np.random.default_rng(0).integers(0, 1024, (1, 40)).astype(np.int64)
    proc = subprocess.run([sys.executable, "-m", "tide.targets.ascend.cpu_runner", art, "--prompt",
                           " ".join(map(str, prompt[0])), "-n", "8"], capture_output=True, text=True,
                          env={**os.environ, "MALLOC_PERTURB_": "165"}, timeout=3600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = np.array(json.loads(proc.stdout.strip().splitlines()[-1]))
    ref = DeepseekV4ForCausalLM.from_pretrained(ckpt, dtype=torch.float32).eval()
    with torch.no_grad():
        want = ref.generate(torch.from_numpy(prompt), max_new_tokens=8, do_sample=False)[:, 40:].numpy()
    np.testing.assert_array_equal(got, want)
