"""The main path on DeepSeek-V4: ``tide export tiny`` -> ``tide compile --target cpu`` -> the C
runtime, checked against transformers' DeepseekV4ForCausalLM on the same checkpoint."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from transformers import DeepseekV4ForCausalLM

import tide
from tide.compiler.artifact import read_artifact
from tide.compiler.driver import CompileOptions, compile_model
from tide.compiler.export import export
from tide.runtime import TideError
from tide_test_models import tiny_cpu_model

NEW_TOKENS = 33
# Teacher-forced logits: float32 on both sides, but different GEMM blocking and reduction orders
# (tide's tiled kernels vs MKL/OpenBLAS in torch) leave ~1e-6 relative error per op, compounded
# over the layers, the mHC Sinkhorn iterations and the compressor softmaxes. 1e-4 of the logits'
# scale is two orders above that noise and far below any real error (a wrong mask, state slot or
# routing choice moves logits by O(scale)).
LOGIT_TOL = 1e-4


@pytest.fixture(scope="module", params=[1, pytest.param(2, marks=pytest.mark.heavy)], ids=["batch1", "batch2"])
def tiny(request, tmp_path_factory):
    batch = request.param
    files = tiny_cpu_model(tmp_path_factory, batch)
    ref = DeepseekV4ForCausalLM.from_pretrained(files["checkpoint"], dtype=torch.float32).eval()
    return batch, tide.load(files["artifact"]), ref


def _prompt(model, batch, length, seed):
    rng = np.random.default_rng(seed)
    return rng.integers(0, int(model.metadata["vocab"]), size=(batch, length), dtype=np.int64)


def test_greedy_tokens_match_transformers(tiny):
    batch, model, ref = tiny
    prompt = _prompt(model, batch, 21, seed=1)  # 21: past the window, ends mid compression block
    got = model.session().generate(prompt, NEW_TOKENS)
    with torch.no_grad():
        want = ref.generate(torch.from_numpy(prompt), max_new_tokens=NEW_TOKENS, do_sample=False)
    np.testing.assert_array_equal(got, want[:, prompt.shape[1]:].numpy())


def test_teacher_forced_logits_match_transformers(tiny):
    batch, model, ref = tiny
    prompt = _prompt(model, batch, 19, seed=2)
    forced = _prompt(model, batch, NEW_TOKENS, seed=3)  # both sides are fed the same tokens
    session = model.session()
    got = [session.prefill(prompt, all_logits=True)]
    with torch.no_grad():
        out = ref(torch.from_numpy(prompt), use_cache=True)
        want = [out.logits.numpy()]
        past = out.past_key_values
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


def test_chunked_prefill_equals_single_prefill(tiny):
    batch, model, _ = tiny
    prompt = _prompt(model, batch, 37, seed=4)
    whole = model.session().prefill(prompt, all_logits=True)
    session = model.session()
    parts, pos = [], 0
    for size in (3, 16, 5, 1, 12):  # chunks ending mid compression block, a full compiled chunk
        parts.append(session.prefill(prompt[:, pos:pos + size], all_logits=True))
        pos += size
    np.testing.assert_allclose(np.concatenate(parts, axis=1), whole, rtol=0,
                               atol=LOGIT_TOL * float(np.abs(whole).max()))


def test_prefill_computes_only_the_last_positions_logits_by_default(tiny, tmp_path):
    """Compiled without ``all_logits`` (the default), a prefill chunk computes the last layer's
    row-wise tail (attention output projection, hyper-connection mixing, router, experts, shared
    expert, final norm, lm_head) on its last position alone: those kernels run on ``batch`` rows, not
    ``batch x 16``, while every state write still sees the whole chunk; and a session's prefill returns
    the same next-token logits as the every-position artifact, chunk after chunk."""
    import os
    from collections import Counter

    batch, model, ref = tiny
    art = str(tmp_path / "tiny-last.tide")
    compile_model(os.path.join(os.path.dirname(model.path), "tiny.onnx"), art,
                  CompileOptions(target="cpu", prefill_chunks=(16,), progress=False))
    last = tide.load(art)
    vocab, hidden = int(model.metadata["vocab"]), ref.config.hidden_size
    assert last.metadata["prefill_logits"] == "last" and model.metadata["prefill_logits"] == "all"

    def prefill_kernels(path):
        entry = next(e for e in read_artifact(path).plan.entries if e.name == "prefill_16")
        logits = entry.buffers[next(o.buffer for o in entry.outputs if o.name == "logits")]
        return tuple(logits.shape), Counter(c.kernel for c in entry.calls)

    shape_all, calls_all = prefill_kernels(model.path)
    shape_last, calls_last = prefill_kernels(art)
    assert shape_all == (batch, 16, vocab) and shape_last == (batch, 1, vocab)
    head = f"tide_linear_{{}}x{hidden}x{vocab}_"
    assert [k for k in calls_all if k.startswith(head.format(16 * batch))]
    assert [k for k in calls_last if k.startswith(head.format(batch))]
    assert not [k for k in calls_last if k.startswith(head.format(16 * batch))]

    def count(calls, prefix):
        return sum(n for k, n in calls.items() if k.startswith(prefix))

    layers = ref.config.num_hidden_layers
    for kernel in ("tide_moe_gate_up", "tide_moe_down", "tide_shared_gate_up", "tide_shared_down"):
        # the last layer's experts on one row per sequence, every other layer's on the whole chunk
        assert count(calls_all, f"{kernel}_t{16 * batch}k") + count(calls_all, f"{kernel}_t{16 * batch}d") == layers
        assert count(calls_last, f"{kernel}_t{batch}k") + count(calls_last, f"{kernel}_t{batch}d") == 1
        assert count(calls_last, f"{kernel}_t{16 * batch}k") + count(calls_last, f"{kernel}_t{16 * batch}d") == \
            layers - 1
    # the state writes (scatters into the decode state) are the same in both
    scatters = [k for k in calls_all if "scatter" in k]
    assert scatters and all(calls_last[k] == calls_all[k] for k in scatters)
    prompt = _prompt(model, batch, 37, seed=9)  # 16 + 16 + 5 by decode
    every, only = model.session(), last.session()
    for part in (prompt[:, :16], prompt[:, 16:35], prompt[:, 35:]):
        want = every.prefill(part, all_logits=True)[:, -1]
        np.testing.assert_allclose(only.prefill(part), want, rtol=0, atol=LOGIT_TOL * float(np.abs(want).max()))
    with pytest.raises(TideError, match="--all-logits"):
        only.prefill(prompt[:, :2], all_logits=True)
    np.testing.assert_array_equal(only.position, np.full(batch, 37))  # the refused call consumed nothing


def test_session_reset_and_capacity(tiny):
    batch, model, _ = tiny
    prompt = _prompt(model, batch, 8, seed=5)
    session = model.session()
    first = session.prefill(prompt)
    session.decode(np.argmax(first, -1)[:, None])
    session.reset()
    np.testing.assert_array_equal(session.prefill(prompt), first)
    capacity = int(model.metadata["max_seq_len"])
    with pytest.raises(Exception, match="capacity|max_seq_len"):
        session.prefill(_prompt(model, batch, capacity, seed=6))
    np.testing.assert_array_equal(session.position, np.full(batch, 8))  # the rejected call changed nothing
    with pytest.raises(Exception, match="batch"):
        session.prefill(_prompt(model, batch + 1, 4, seed=7))


def test_cli_run_generates(tiny):
    batch, model, _ = tiny
    res = subprocess.run([sys.executable, "-m", "tide.cli", "run", model.path, "--prompt", "5 17 3 99", "-n", "8"],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert "tokens[0]:" in res.stdout and "decode:" in res.stdout
    ids = [int(t) for t in res.stdout.split("tokens[0]:")[1].splitlines()[0].split()]
    want = model.session().generate(np.array([[5, 17, 3, 99]] * batch, dtype=np.int64), 8)[0].tolist()
    assert ids == want


def test_session_profile_and_cli_profile(tiny, tmp_path):
    """A profiled session: every decode call timed, each tide kernel with its own FLOPs and bytes
    from the artifact (its cost counts), generic kernels with TVM's FLOP estimate; the profiled
    tokens are the unprofiled ones; `tide run --profile-json` writes the same table for tools."""
    batch, model, _ = tiny
    prompt = _prompt(model, batch, 21, seed=8)
    want = model.session().generate(prompt, 4)
    session = model.session(profile=True)
    np.testing.assert_array_equal(session.generate(prompt, 4), want)
    profile = session.profile()
    assert set(profile.entries()) == {"prefill_16", "decode"}
    decode = [r for r in profile.rows if r.entry == "decode"]
    assert all(r.runs == 8 for r in decode)  # 21 = 16 + 5 decode steps of the prompt, then 3 new tokens
    costs = model.metadata["kernel_costs"]
    plan = read_artifact(model.path).plan
    assert sum(r.calls for r in decode) == len(next(e for e in plan.entries if e.name == "decode").calls)
    attention = [r for r in decode if r.kernel.startswith("tide_sink_attention")]
    assert attention and all(r.flops == r.calls * costs[r.kernel]["flops"] > 0 for r in attention)
    assert all(r.serves.startswith("tide.SinkAttention") for r in attention)
    matmuls = [r for r in decode if r.serves == "generic" and "matmul" in r.kernel]
    assert matmuls and all(r.flops > 0 for r in matmuls)
    out = tmp_path / "profile.json"
    res = subprocess.run([sys.executable, "-m", "tide.cli", "run", model.path, "--prompt", "5 17 3 99", "-n", "4",
                          "--profile", "--profile-json", str(out)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert "entry decode:" in res.stdout and "%roof" in res.stdout and "tide.SinkAttention" in res.stdout
    doc = json.loads(out.read_text())
    assert doc["roof"]["flops"] > 0 and doc["entries"]["decode"]["runs"] == 4 + 3  # the 4-token prompt, 3 steps


@pytest.mark.heavy
def test_flash_2layer_generates_transformers_tokens(tmp_path):
    """Real V4-Flash attention dims (4096 hidden, 64 x 512 heads, CSA + HCA) with vocab and experts
    reduced (the full 129280-entry vocab needs more memory than this machine has to compile):
    ~1.9 GB of external-data weights, ~75 s to compile, ~12 GB peak."""
    overrides = {"vocab_size": 1024, "n_routed_experts": 4, "num_experts_per_tok": 2}
    onnx_path, ckpt, art = str(tmp_path / "flash.onnx"), str(tmp_path / "ckpt"), str(tmp_path / "flash.tide")
    export("flash-2layer", onnx_path, max_seq_len=256, config_overrides=overrides, save_checkpoint=ckpt)
    compile_model(onnx_path, art, CompileOptions(target="cpu", prefill_chunks=(32,), progress=False))
    prompt = np.random.default_rng(0).integers(0, 1024, (1, 40)).astype(np.int64)
    got = tide.load(art).session().generate(prompt, 8)
    ref = DeepseekV4ForCausalLM.from_pretrained(ckpt, dtype=torch.float32).eval()
    with torch.no_grad():
        want = ref.generate(torch.from_numpy(prompt), max_new_tokens=8, do_sample=False)[:, 40:].numpy()
    np.testing.assert_array_equal(got, want)


@pytest.mark.heavy
def test_weights_passed_as_parameters_give_the_same_logits(tmp_path, monkeypatch):
    """Weights above onnx_import.PARAMETER_MIN_BYTES enter Relax as parameters bound to the
    memory-mapped arrays (how multi-GB models compile without copies); lowered to 64 KiB here so the
    tiny model's embedding, lm_head and expert weights take that path, the lm_head ``Gemm(transB=1)``
    reading a panel-packed view of the stored array written out at compile time (no transpose or
    copy at run time, no unpacked copy in the artifact). Checked against onnxruntime."""
    import onnxruntime as ort

    from tide.compiler import onnx_import

    monkeypatch.setattr(onnx_import, "PARAMETER_MIN_BYTES", 1 << 16)
    monkeypatch.setattr(onnx_import, "FOLD_MAX_ELEMENTS", 1 << 14)
    onnx_path, art = str(tmp_path / "tiny.onnx"), str(tmp_path / "tiny.tide")
    export("tiny", onnx_path, seed=3)
    compile_model(onnx_path, art, CompileOptions(target="cpu", prefill_chunks=(8,), all_logits=True, progress=False))
    model = tide.load(art)
    prompt = _prompt(model, 1, 8, seed=8)
    got = model.session().prefill(prompt, all_logits=True)
    sess = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
    feeds = {i.name: np.zeros(i.shape, np.float32) for i in sess.get_inputs()[2:]}
    want = sess.run(["logits"], {"input_ids": prompt, "start_pos": np.zeros(1, np.int64), **feeds})[0]
    np.testing.assert_allclose(got, want, rtol=0, atol=LOGIT_TOL * float(np.abs(want).max()))
    plan = tide.compiler.artifact.read_artifact(art).plan
    weights = {w.name: w.shape for w in plan.weights}
    assert any(name.startswith("model.layers.") for name in weights)
    heads = [n for n in weights if n.startswith(("lm_head.weight.T.panel", "model.embed_tokens.weight.T.panel"))]
    assert len(heads) == 1, sorted(weights)
    panel = int(heads[0].rsplit("panel", 1)[1])
    assert weights[heads[0]] == (1, 512 // panel, 128, panel)
    assert "lm_head.weight" not in weights and "lm_head.weight.T" not in weights


def test_inspect_prints_the_state_plan_by_layer_kind(tiny):
    """``tide inspect``'s decode-state plan against the model's own config: layers per kind (sliding
    window, CSA, HCA with their compression ratios), the bytes that grow with the context (one
    compressed entry of head_dim values, plus indexer keys for CSA, per ``ratio`` positions), and
    the V3.2-style MLA cache (576 bf16 values per position per layer) it is compared with."""
    from tide.compiler.inspect import describe, state_plan

    batch, model, ref = tiny
    cfg = ref.config
    art = read_artifact(model.path)
    plan = state_plan(art.plan, art.metadata)
    capacity = int(model.metadata["max_seq_len"])
    assert plan["capacity"] == capacity and plan["layers"] == cfg.num_hidden_layers
    assert plan["mla"] == cfg.num_hidden_layers * batch * capacity * 576 * 2
    label = {"sliding_attention": "sliding window", "compressed_sparse_attention": "CSA",
             "heavily_compressed_attention": "HCA"}
    want: dict[str, int] = {}
    for layer_type in cfg.layer_types:
        rate = (cfg.compress_rates or {}).get(layer_type)
        kind = label[layer_type] + (f" 1/{rate}" if rate else "")
        want[kind] = want.get(kind, 0) + 1
    assert {k: v["layers"] for k, v in plan["kinds"].items()} == want
    for kind, k in plan["kinds"].items():
        if k["ratio"] is None:
            assert k["grows"] == 0
            continue
        values = cfg.head_dim + (cfg.index_head_dim if kind.startswith("CSA") else 0)
        per_entry = batch * values * 4  # float32 state
        entries = k["grows"] // per_entry
        assert k["grows"] == entries * per_entry and capacity // k["ratio"] <= entries <= capacity // k["ratio"] + 1
    text = describe(model.path)
    assert f"decode state for {capacity} positions x batch {batch} (float32)" in text
    assert f"ratio {100 * plan['ratio']:.1f}%" in text and "CSA 1/4 x 2 layers" in text
    decode = next(e for e in art.plan.entries if e.name == "decode")
    layers = cfg.num_hidden_layers
    assert (f"entry decode: {len(decode.calls)} kernel calls ({len(decode.calls) / layers:.0f} per layer over "
            f"{layers} layers, embedding and head included)") in text


def test_decode_step_is_few_kernels_per_layer(tiny):
    """The hyper-connection mixing is three kernel calls per sublayer (projection, per-token mixing,
    stream rebuild; every call of the mixing functions served by them), and no call of the plan is a
    reshape (reshapes are views of their source)."""
    from collections import Counter

    _, model, ref = tiny
    art = read_artifact(model.path)
    layers = ref.config.num_hidden_layers
    for entry in art.plan.entries:
        calls = Counter(c.kernel for c in entry.calls)
        assert sum(n for k, n in calls.items() if k.startswith("tide_hc_pre_")) == 2 * layers
        assert sum(n for k, n in calls.items() if k.startswith("tide_hc_post_")) == 2 * layers
        assert not [k for k in calls if all(p.startswith("reshape") for p in k.removeprefix("fused_").split("_"))]
        assert sum(calls.values()) <= 50 * layers, (entry.name, sum(calls.values()), calls.most_common(8))
