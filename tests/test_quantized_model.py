"""A quantized DeepSeek-V4 checkpoint through the whole CPU path: the release layout (FP8 linears,
FP4 routed experts, bf16 elsewhere) -> ``tide export`` -> ``tide compile --target cpu`` -> the C
runtime, against transformers' own dequantized model on the same files.

Tolerance: tide dequantizes exactly (tests/test_quant_kernels.py), so both sides compute the same
float32 model and differ by reduction order only; LOGIT_TOL is the float model's
(tests/test_v4_spine.py).
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, FineGrainedFP8Config

import tide
from quant_checkpoint import tiny_quant_config, write_quantized_checkpoint
from tide.compiler.artifact import read_artifact
from tide.compiler.driver import CompileOptions, compile_model
from tide.compiler.export import export
from tide.compiler.export.weights import read_safetensors_header

LOGIT_TOL = 1e-4
NEW_TOKENS = 20


@pytest.fixture(scope="module")
def quantized(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("qmodel")
    ckpt = tmp / "ckpt"
    write_quantized_checkpoint(str(ckpt), tiny_quant_config(experts="fp4"), seed=11, layout="deepseek", experts="fp4")
    onnx_path, art = str(tmp / "q.onnx"), str(tmp / "q.tide")
    export(ckpt, onnx_path, max_seq_len=96)
    compile_model(onnx_path, art, CompileOptions(target="cpu", prefill_chunks=(16,), all_logits=True, progress=False))
    ref = AutoModelForCausalLM.from_pretrained(str(ckpt), quantization_config=FineGrainedFP8Config(
        dequantize=True)).float().eval()
    return ckpt, art, tide.load(art), ref


def test_weights_stay_in_their_stored_precision(quantized):
    ckpt, art, _, _ = quantized
    weights = {w.name: w for w in read_artifact(art).plan.weights}
    dtypes = {w.dtype for w in weights.values()}
    assert {"uint8", "bfloat16"} <= dtypes
    # every FP8 linear is read as stored bytes (packed into panels) with its scales
    wq_a = [w for n, w in weights.items() if "layers.1.self_attn.q_a_proj.weight" in n]
    assert wq_a and all(w.dtype == "uint8" for w in wq_a)
    experts = [w for n, w in weights.items() if "mlp.experts.gate_up_proj" in n]
    assert experts and all(w.dtype == "uint8" for w in experts)
    # the embedding table (gathered, then widened row by row) and the head stay bf16
    assert any(w.dtype == "bfloat16" and tuple(w.shape) == (512, 256) for w in weights.values())
    assert not any(w.dtype == "float32" and int(np.prod(w.shape)) == 512 * 256 for w in weights.values())
    stored = sum(e.nbytes for f in os.listdir(ckpt) if f.endswith(".safetensors")
                 for k, e in read_safetensors_header(str(ckpt / f)).items() if not k.startswith("mtp."))
    in_artifact = sum(w.nbytes for w in weights.values())
    assert in_artifact <= 1.10 * stored, (in_artifact, stored)


def test_teacher_forced_logits_match_transformers(quantized):
    _, _, model, ref = quantized
    rng = np.random.default_rng(7)
    prompt = rng.integers(2, 512, size=(1, 19))
    forced = rng.integers(2, 512, size=(1, NEW_TOKENS))
    session = model.session()
    got = [session.prefill(prompt, all_logits=True)]
    with torch.no_grad():
        out = ref(torch.from_numpy(prompt), use_cache=True)
        want, past = [out.logits.numpy()], out.past_key_values
        for t in range(NEW_TOKENS):
            step = forced[:, t:t + 1]
            got.append(session.decode(step)[:, None, :])
            out = ref(torch.from_numpy(step), past_key_values=past, use_cache=True)
            past = out.past_key_values
            want.append(out.logits.numpy())
    for step, (g, w) in enumerate(zip(got, want)):
        scale = float(np.abs(w).max())
        err = float(np.abs(g - w).max())
        assert err <= LOGIT_TOL * scale, f"step {step}: max |tide - transformers| = {err:.3g} (scale {scale:.3g})"


def test_greedy_tokens_match_transformers(quantized):
    _, _, model, ref = quantized
    prompt = np.random.default_rng(8).integers(2, 512, size=(1, 21))
    got = model.session().generate(prompt, NEW_TOKENS)
    with torch.no_grad():
        want = ref.generate(torch.from_numpy(prompt), max_new_tokens=NEW_TOKENS, do_sample=False)
    np.testing.assert_array_equal(got, want[:, prompt.shape[1]:].numpy())


@pytest.mark.heavy
def test_large_bf16_tables_are_memory_mapped_parameters(quantized, tmp_path, monkeypatch):
    """bf16 weights of NARROW_PARAMETER_MIN_BYTES or more (a real checkpoint's embedding and head)
    enter the compile as memory-mapped parameters, not constants copied at every entry's import;
    lowered here so the tiny model's embedding and head take that path: they reach the artifact as
    bf16 (the head packed once for both entries), and the logits equal the default compile's."""
    from tide.compiler import onnx_import

    ckpt, art, model, _ = quantized
    monkeypatch.setattr(onnx_import, "NARROW_PARAMETER_MIN_BYTES", 1 << 12)
    onnx_path, mapped = str(tmp_path / "q.onnx"), str(tmp_path / "q.tide")
    export(ckpt, onnx_path, max_seq_len=96)
    compile_model(onnx_path, mapped, CompileOptions(target="cpu", prefill_chunks=(16,), all_logits=True,
                                                    progress=False))
    weights = {w.name: w for w in read_artifact(mapped).plan.weights}
    tables = {n: w for n, w in weights.items() if n.startswith(("model.embed_tokens.weight", "lm_head.weight"))}
    assert "model.embed_tokens.weight" in tables and any(n.startswith("lm_head.weight.T.panel") for n in tables), \
        sorted(weights)
    assert len(tables) == 2 and all(w.dtype == "bfloat16" for w in tables.values())
    prompt = np.random.default_rng(9).integers(2, 512, size=(1, 16))
    want = model.session().prefill(prompt, all_logits=True)
    got = tide.load(mapped).session().prefill(prompt, all_logits=True)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6 * float(np.abs(want).max()))


@pytest.fixture(scope="module")
def quantized_onnx(quantized, tmp_path_factory):
    ckpt = quantized[0]
    path = str(tmp_path_factory.mktemp("qonnx") / "q.onnx")
    export(ckpt, path, max_seq_len=64)
    return path


@pytest.mark.heavy
def test_ascend_artifact_runs_on_the_cpu_runner_and_matches_transformers(quantized, quantized_onnx, tmp_path):
    """The quantized tiny for Ascend 910B: the FP8/FP4 bytes dequantized on the device at run time
    (tide.ops.dequantize_fp8 / fp4, translated by the Ascend codegen), then the float32 kernels; the
    artifact's MLIR run through the CPU runner reproduces transformers' logits."""
    from tide.targets.ascend import toolchain

    if toolchain.missing_cpu_runner() is not None:
        pytest.skip(str(toolchain.missing_cpu_runner()))
    from tide.targets.ascend.cpu_runner import CpuRunner

    ref = quantized[3]
    art = str(tmp_path / "q_ascend.tide")
    compile_model(quantized_onnx, art, CompileOptions(target="ascend", arch="Ascend910B1", prefill_chunks=(16,),
                                                      progress=False))
    assert any(k.startswith("tide_dequantize_fp4") for k in read_artifact(art).plan.kernels)
    runner = CpuRunner(art)
    rng = np.random.default_rng(2)
    prompt, forced = rng.integers(2, 512, size=(1, 16)), rng.integers(2, 512, size=(1, 3))
    got = [runner.run("prefill_16", {"input_ids": prompt, "start_pos": np.zeros(1, np.int64)})["logits"]]
    with torch.no_grad():
        out = ref(torch.from_numpy(prompt), use_cache=True)
        want, past = [out.logits.numpy()[:, -1:]], out.past_key_values
        for t in range(forced.shape[1]):
            step = forced[:, t:t + 1]
            got.append(runner.run("decode", {"input_ids": step, "start_pos": np.full(1, 16 + t, np.int64)})["logits"])
            out = ref(torch.from_numpy(step), past_key_values=past, use_cache=True)
            past = out.past_key_values
            want.append(out.logits.numpy())
    for step, (g, w) in enumerate(zip(got, want)):
        scale = float(np.abs(w).max())
        assert float(np.abs(g - w).max()) <= LOGIT_TOL * scale, f"step {step}"


@pytest.mark.heavy
def test_cuda_artifact_builds_with_the_quantized_weights_as_stored(quantized_onnx, tmp_path):
    """The quantized tiny for CUDA (sm_90): it builds, with the FP8/FP4 bytes in the artifact and
    dequantized by device kernels at run time (numerics on a GPU are not checked here: no GPU)."""
    art = str(tmp_path / "q_cuda.tide")
    compile_model(quantized_onnx, art, CompileOptions(target="cuda", arch="sm_90", prefill_chunks=(16,),
                                                      progress=False))
    read = read_artifact(art)
    assert any(k.startswith("tide_dequantize_fp8") for k in read.plan.kernels)
    assert {w.dtype for w in read.plan.weights} >= {"uint8", "bfloat16"}
