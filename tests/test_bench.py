"""The benchmark suite's machinery (tide.bench) on one small kernel: cost counters, the roofline,
output checks refusing a wrong kernel, the JSON schema, --compare, and the TVM-free bundle path.
Performance is never asserted: times only have to exist (or not, for a wrong output)."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tide.bench import cases, harness, report, suite
from tide.bench.cases import KERNELS, all_cases

FAKE_CEILINGS = {"gemm_flops": 100e9, "gemm_how": "test", "bandwidth": 10e9, "bandwidth_how": "test", "blas": []}
QUICK = harness.TimingPolicy(warmup=1, min_reps=3, min_seconds=0.0, max_reps=3, max_seconds=1.0)


def _rmsnorm_case(phase="decode"):
    return next(c for c in KERNELS["rmsnorm"].cases("tiny") if c.phase == phase)


# ---------------------------------------------------------------------------------------------
# counters and formulas


def test_rmsnorm_cost_matches_hand_count():
    case = _rmsnorm_case("prefill")           # x [256, 128]
    rows, dim = 256, 128
    assert case.inputs[0][2] == (rows, dim)
    # square, sum, scale, weight: 4 FLOPs per element; x read, y written (4 bytes), weight once
    assert KERNELS["rmsnorm"].cost(case, {}) == {"flops": 4 * rows * dim, "bytes": 4 * (2 * rows * dim + dim)}


def test_moe_experts_cost_counts_routed_rows_and_active_experts():
    case = next(c for c in KERNELS["moe_experts"].cases("tiny") if c.label == "T1")   # T 1, k 4, E 16, D 128, F 64
    feeds = {"indices": np.array([[3, 7, 11, 12]], np.int64)}
    got = KERNELS["moe_experts"].cost(case, feeds)
    D, F, k, active, rows = 128, 64, 4, 4, 4   # 1-row tiles in decode: one row per routed pair
    gate_up = 2 * rows * D * 2 * F + 6 * rows * F
    down = 2 * rows * D * F
    combine = 1 * (k - 1) * D
    assert got["flops"] == gate_up + down + combine
    weights = 4 * active * (2 * F * D + D * F)
    assert got["bytes"] > weights  # every active expert's weights once, plus activations and indices
    assert got["bytes"] - weights < 4 * 16 * (D + F) + 1024


def test_quantized_costs_count_the_stored_bytes():
    """The quantized cases' rooflines are on the bytes a kernel reads: one byte per FP8 weight and
    half a byte per FP4 weight, plus their e8m0 scales (one per 128 x 128 and per 1 x 32 block)."""
    fp8 = next(c for c in KERNELS["linear_fp8"].cases("tiny") if c.phase == "decode")
    (_, _, (rows, dim)), = fp8.inputs
    cols = fp8.weights[0][2][0]
    got = KERNELS["linear_fp8"].cost(fp8, {})
    assert got["flops"] == 2 * rows * dim * cols
    assert got["bytes"] == dim * cols + -(-dim // 128) * -(-cols // 128) + 4 * rows * (dim + cols)

    fp4 = next(c for c in KERNELS["moe_experts_fp4"].cases("tiny") if c.label == "T1")
    feeds = {"indices": np.array([[3, 7, 11, 12]], np.int64)}
    D, F, active = 128, 64, 4
    weights = active * 3 * F * D * 17 // 32   # 4 bits + one scale byte per 32 weights
    got_fp4, got_f32 = KERNELS["moe_experts_fp4"].cost(fp4, feeds), KERNELS["moe_experts"].cost(fp4, feeds)
    assert got_fp4["flops"] == got_f32["flops"]
    assert got_f32["bytes"] - got_fp4["bytes"] == 4 * active * 3 * F * D - weights


def test_release_format_checkpoint_reads_a_third_of_the_bytes(tmp_path):
    """The whole-model rows' quantized checkpoint (``tide.bench.quantized``): the same weights as the
    float32 export, stored as DeepSeek releases them; a decode step reads the same weights in fewer
    bytes, and tide exports it keeping the FP8 / FP4 forms."""
    from tide.bench import e2e, quantized
    from tide.compiler.export import export

    export("tiny", str(tmp_path / "f32.onnx"), save_checkpoint=str(tmp_path / "f32"))
    quantized.write("tiny", str(tmp_path / "q"), seed=0)
    f32, q = e2e.decode_reads(str(tmp_path / "f32")), e2e.decode_reads(str(tmp_path / "q"))
    assert q[1:] == f32[1:]               # weights read, lm_head, all weights: the same model
    assert q[0] < f32[0] / 2.5            # FP8 / FP4 / bf16 instead of float32
    forms = dict(f.split(":") for f in export(str(tmp_path / "q"), str(tmp_path / "q.onnx")).weights.split(","))
    assert {"fp8", "fp4", "bfloat16"} <= set(forms)
    from transformers import AutoModelForCausalLM, FineGrainedFP8Config   # the bench's reference loads it

    AutoModelForCausalLM.from_pretrained(str(tmp_path / "q"), quantization_config=FineGrainedFP8Config(dequantize=True))


def test_roofline_formula():
    peak, bw = 100e9, 10e9                    # ridge at 10 FLOP/byte
    mem = harness.roofline(1e9, 1e9, peak, bw)           # intensity 1: memory bound, 10 GFLOP/s attainable
    assert mem["bound"] == "memory" and mem["attainable_flops"] == pytest.approx(10e9)
    assert mem["min_time_s"] == pytest.approx(0.1)
    comp = harness.roofline(1e12, 1e9, peak, bw)         # intensity 1000: compute bound
    assert comp["bound"] == "compute" and comp["attainable_flops"] == pytest.approx(peak)
    fig = harness.figures(0.2, 1e9, 1e9, {"gemm_flops": peak, "bandwidth": bw})
    assert fig["gflops"] == pytest.approx(5.0) and fig["roofline_pct"] == pytest.approx(50.0)
    # no FLOPs (a permutation): the bytes alone set the bound
    assert harness.figures(0.2, 0, 1e9, {"gemm_flops": peak, "bandwidth": bw})["roofline_pct"] == pytest.approx(50.0)
    with pytest.raises(ValueError):
        harness.roofline(1.0, 1.0, 0.0, bw)


def test_stats_median_and_spread():
    st = harness.stats([4.0, 1.0, 2.0, 3.0, 5.0])
    assert st["median_s"] == 3.0 and st["min_s"] == 1.0 and st["reps"] == 5
    assert st["spread"] == pytest.approx((4.0 - 2.0) / 3.0)


# ---------------------------------------------------------------------------------------------
# checks


def test_check_refuses_one_wrong_element():
    outputs = [("y", "float32", (4, 8))]
    want = {"y": np.random.default_rng(0).standard_normal((4, 8))}
    got = {"y": want["y"].astype(np.float32)}
    harness.check_outputs(outputs, got, want, {})
    got["y"][2, 5] += 0.05
    with pytest.raises(harness.CheckError, match=r"y: 1 of 32 elements"):
        harness.check_outputs(outputs, got, want, {})


def test_check_topk_picks_by_score_and_paired_weights():
    outputs = [("weights", "float32", (1, 3)), ("indices", "int64", (1, 3))]
    scores = np.array([[0.5, 0.9, 0.1, 0.9 + 1e-9, 0.3]])
    want = {"indices": np.array([[3, 1, 0]]), "weights": np.array([[0.4, 0.35, 0.25]]), "indices:scores": scores}
    # a near-tie swap of entries 1 and 3 is accepted; paired weights follow their indices
    got = {"indices": np.array([[1, 3, 0]]), "weights": np.array([[0.35, 0.4, 0.25]], np.float32)}
    harness.check_outputs(outputs, got, want, {"weights": "indices"})
    with pytest.raises(harness.CheckError, match="scores of the picks"):
        harness.check_outputs(outputs, {**got, "indices": np.array([[1, 3, 4]])}, want, {"weights": "indices"})
    with pytest.raises(harness.CheckError, match="twice"):
        harness.check_outputs(outputs, {**got, "indices": np.array([[1, 1, 0]])}, want, {"weights": "indices"})


# ---------------------------------------------------------------------------------------------
# the suite on one small kernel


@pytest.fixture(scope="module")
def rmsnorm_run(tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    doc = suite.run_suite("cpu", ["tiny"], ["rmsnorm"], cache=cache, policy=QUICK, models=False,
                          engines=("tide", "generic", "onnxruntime"), ceilings=dict(FAKE_CEILINGS))
    return doc, cache


def test_suite_json_schema_table_and_plots(rmsnorm_run, tmp_path):
    doc, _ = rmsnorm_run
    report.validate(doc)
    assert [r["name"] for r in doc["results"]] == ["rmsnorm/tiny/decode/T1", "rmsnorm/tiny/prefill/T256"]
    assert (doc["results"][0]["flops"], doc["results"][0]["bytes"]) == (4 * 128, 4 * (2 * 128 + 128))
    for rec in doc["results"]:
        assert set(rec["engines"]) == {"tide", "generic", "onnxruntime"}, rec["skipped"]
        assert set(rec["ratios"]) == {"generic", "onnxruntime"}
        tide = rec["engines"]["tide"]
        assert tide["reps"] == 3 and tide["p25_s"] <= tide["median_s"] <= tide["p75_s"]
        assert tide["gflops"] == pytest.approx(rec["flops"] / tide["median_s"] / 1e9)
    path = tmp_path / "out.json"
    report.write_json(doc, path)
    assert report.load_json(path)["results"][0]["name"] == "rmsnorm/tiny/decode/T1"
    broken = json.loads(path.read_text())
    del broken["results"][1]["engines"]["tide"]["median_s"]
    path.write_text(json.dumps(broken))
    with pytest.raises(ValueError, match=r"results\[1\].*engines.tide.median_s"):
        report.load_json(path)
    text = report.table(doc)
    assert "rmsnorm/tiny/prefill/T256" in text and "GEMM 100.0 GFLOP/s" in text
    pngs = report.plots(doc, tmp_path)
    assert [p.name for p in pngs] == ["roofline_cpu.png", "ratios_cpu.png"]
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)


def test_compare_flags_planted_regression(rmsnorm_run):
    doc, _ = rmsnorm_run
    new = copy.deepcopy(doc)
    new["results"][0]["engines"]["tide"]["median_s"] *= 1.5      # planted regression
    new["results"][1]["engines"]["tide"]["median_s"] *= 0.5      # planted improvement
    result = report.compare(doc, new, threshold=0.10)
    assert [r[0] for r in result["regressions"]] == ["rmsnorm/tiny/decode/T1"]
    assert result["regressions"][0][3] == pytest.approx(1.5)
    assert [r[0] for r in result["improvements"]] == ["rmsnorm/tiny/prefill/T256"]
    assert "REGRESSIONS (1)" in report.compare_text(result, 0.10)
    same = report.compare(doc, copy.deepcopy(doc))
    assert not same["regressions"] and not same["improvements"] and len(same["unchanged"]) == 2
    wrong = copy.deepcopy(doc)
    del wrong["results"][0]["engines"]["tide"]
    wrong["results"][0]["skipped"]["tide"] = "WRONG OUTPUT, not timed: y: ..."
    assert [n for n, _ in report.compare(doc, wrong)["newly_wrong"]] == ["rmsnorm/tiny/decode/T1"]


def test_wrong_kernel_output_is_not_timed(rmsnorm_run, monkeypatch):
    """A kernel whose output is off (here: the reference the artifact must match is scaled by
    1.001, i.e. the artifact computes something else) gets no time, only the reason."""
    _, cache = rmsnorm_run
    case = _rmsnorm_case("decode")
    from tide.bench.prepare import prepare_case

    folder = prepare_case(case, "cpu", cache)
    kdef = KERNELS["rmsnorm"]
    right = kdef.reference
    monkeypatch.setattr(type(kdef), "reference", lambda self, c, f, w: {"y": right(c, f, w)["y"] * 1.001})
    rec = suite.run_case(case, folder, "cpu", "cpu", ("tide", "generic"), QUICK, 0, 0)
    assert rec["engines"] == {}
    assert rec["skipped"]["tide"].startswith("WRONG OUTPUT, not timed: y:")
    assert rec["skipped"]["generic"].startswith("WRONG OUTPUT")


def test_bundle_runs_without_tvm(rmsnorm_run, tmp_path):
    """--prepare cpu writes artifacts + case descriptions; --bundle runs them with TVM unimportable."""
    from tide.bench.prepare import prepare_bundle

    bundle = tmp_path / "bundle"
    prepare_bundle([_rmsnorm_case("decode")], "cpu", bundle, max_mib=5.0, log=lambda m: None)
    index = json.loads((bundle / "bundle.json").read_text())
    assert index["target"] == "cpu" and len(index["cases"]) == 1
    assert not list(bundle.rglob("*.onnx"))
    script = (
        "import sys, json\n"
        "sys.modules['tvm'] = None\n"   # any TVM import fails
        "from pathlib import Path\n"
        "from tide.bench import suite, harness\n"
        f"doc = suite.run_suite('cpu', bundle=Path({str(bundle)!r}), policy=harness.TimingPolicy(1, 3, 0.0, 3, 1.0),\n"
        f"                      models=False, ceilings={FAKE_CEILINGS!r})\n"
        "rec = doc['results'][0]\n"
        "print(json.dumps([rec['name'], sorted(rec['engines']), rec['skipped']]))\n")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "TIDE_BENCH_CACHE": str(tmp_path / "unused")})
    assert proc.returncode == 0, proc.stderr[-3000:]
    name, engines, skipped = json.loads(proc.stdout.strip().splitlines()[-1])
    assert name == "rmsnorm/tiny/decode/T1" and "tide" in engines and "generic" in engines
    assert "onnxruntime" in skipped  # the bundle carries no ONNX


def test_cache_keeps_one_compilation_per_case(tmp_path):
    from tide.bench import prepare

    case = _rmsnorm_case("decode")
    first = prepare.prepare_case(case, "cpu", tmp_path, generic=False, log=lambda m: None)
    stale = first.with_name("0" * 20)
    first.rename(stale)                      # as if compiled by older sources (another key)
    fresh = prepare.prepare_case(case, "cpu", tmp_path, generic=False, log=lambda m: None)
    assert fresh.exists() and not stale.exists()
    names = {p.name for p in fresh.iterdir()}
    assert {"case.json", "kernel.tide", "model.onnx"} <= names and "generic.tide" not in names


def test_bundle_size_limit_and_unavailable_target(tmp_path):
    from tide.bench.prepare import prepare_bundle
    from tide.compiler.errors import CompileError

    small, big = _rmsnorm_case("decode"), next(c for c in KERNELS["moe_shared"].cases("flash") if c.label == "T1")
    doc = prepare_bundle([big, small], "cpu", tmp_path / "b", max_mib=1.0, log=lambda m: None)
    assert len(doc["cases"]) == 1 and list(doc["left_out"]) == [big.name]   # 3 x 4096 x 2048 weights: 96 MiB
    assert doc["bytes"] <= 2**20
    prepare_bundle([_rmsnorm_case("decode")], "cuda", tmp_path / "c", max_mib=50, log=lambda m: None)
    assert json.loads((tmp_path / "c" / "bundle.json").read_text())["target"] == "cuda"
    with pytest.raises(CompileError, match="target 'tpu' is not available in this build"):
        prepare_bundle([_rmsnorm_case("decode")], "tpu", tmp_path / "t", max_mib=50, log=lambda m: None)


def test_case_selection_and_json_round_trip():
    default = all_cases(["tiny", "flash"])
    assert not any(c.heavy for c in default)
    assert {c.kernel for c in default} == set(KERNELS)
    heavy = all_cases(["flash", "pro"], heavy=True)
    assert any(c.label == "ctx1048576" for c in heavy) and all(c.heavy for c in heavy if c.shapes == "pro")
    case = default[3]
    assert cases.Case.from_json(json.loads(json.dumps(case.to_json()))) == case
    with pytest.raises(ValueError, match="unknown kernel"):
        all_cases(["tiny"], ["nope"])


def test_ceilings_are_measured():
    gemm = harness.cpu_gemm_peak(n=128, seconds=0.05)
    assert gemm["gemm_flops"] > 0 and gemm["blas"], gemm
    bw = harness.cpu_bandwidth(mib=8, reps=2)
    assert bw["bandwidth"] > 0 and bw["read_bandwidth"] > 0
    best = harness.best_ceilings({"gemm_flops": 1.0, "gemm_how": "a", "bandwidth": 5.0, "bandwidth_how": "a"},
                                 {"gemm_flops": 2.0, "gemm_how": "b", "bandwidth": 3.0, "bandwidth_how": "b"})
    assert (best["gemm_flops"], best["gemm_how"], best["bandwidth"], best["bandwidth_how"]) == (2.0, "b", 5.0, "a")


def test_cli_parses_bench():
    from tide.cli import build_parser

    args = build_parser().parse_args(["bench", "--target", "cpu", "--kernel", "rmsnorm", "--shapes", "tiny",
                                      "--json", "x.json", "--compare", "base.json"])
    assert args.kernel == ["rmsnorm"] and args.shapes == ["tiny"] and args.compare == "base.json"
    assert Path(args.json).name == "x.json"


def test_cli_refuses_bad_arguments_before_measuring(tmp_path):
    """An unknown kernel or an unreadable --compare baseline is an error (exit 2, named) before the
    suite spends time on ceilings or cases."""
    bad = tmp_path / "base.json"
    bad.write_text("{not json")
    for extra, message in ((["--kernel", "nope"], "unknown kernel(s) nope"),
                           (["--kernel", "rmsnorm", "--compare", str(bad)], "not a readable benchmark JSON")):
        proc = subprocess.run([sys.executable, "-m", "tide.cli", "bench", "--shapes", "tiny", *extra],
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2 and message in proc.stderr, proc.stderr
        assert "measuring" not in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


def test_ascend_estimate(tmp_path, capsys):
    """``--target ascend --estimate``: the cost model's V4-Flash rows for both SoCs; the JSON holds what
    the table shows; asking ascend without --estimate (or --estimate elsewhere) is refused."""
    from tide.cli import main

    out = tmp_path / "asc.json"
    assert main(["bench", "--target", "ascend", "--estimate", "--json", str(out)]) == 0
    table = capsys.readouterr().out
    doc = json.loads(out.read_text())
    assert {r["soc"] for r in doc["rows"]} == {"Ascend910B1", "Ascend950PR_9599"}
    assert {r["tokens"] for r in doc["rows"]} == {1, 512}
    for r in doc["rows"]:
        assert r["time_s"] > 0 and r["bound"] in r["terms_s"] and r["time_s"] >= max(r["terms_s"].values())
        assert f"{r['time_s'] * 1e6:9.1f}" in table
    decode = {r["kernel"]: r for r in doc["rows"] if r["tokens"] == 1 and r["soc"] == "Ascend910B1"}
    assert decode["moe_gate_up"]["bound"] == "hbm"  # one token streams the active experts' weights
    for argv, message in ((["--target", "ascend"], "needs --estimate"),
                          (["--target", "cpu", "--estimate"], "--estimate is for --target ascend")):
        with pytest.raises(SystemExit, match=message):
            main(["bench", *argv])


@pytest.mark.skipif(__import__("tide.targets.ascend.toolchain", fromlist=["missing"]).missing() is not None,
                    reason="the Ascend toolchain (bishengir) is not installed")
def test_ascend_compiled_cases():
    """``--estimate --compile`` rows: each case compiled for the SoC (every kernel through bishengir),
    the unit it runs on (RMSNorm: the hand-written vector kernel; attention: translated, scalar), and
    an estimate no faster than its HBM traffic; ``--compile`` elsewhere is refused."""
    from tide.bench import ascend_kernels
    from tide.cli import main
    from tide.targets.ascend import cost

    rows = ascend_kernels.rows("tiny", socs=("Ascend910B1",), kernels=["rmsnorm", "sink_attention"], log=lambda _: None)
    assert rows and all(r["ok"] and r["soc"] == "Ascend910B1" for r in rows)
    units = {r["case"].split("/")[0]: r["unit"] for r in rows}
    assert units == {"rmsnorm": "vector", "sink_attention": "scalar"}
    from tide.targets.ascend.codegen import unit_of

    assert unit_of("hivm.hir.mmadL1 ...") == "cube" and unit_of("hivm.hir.vadd ins(...)") == "vector"
    assert unit_of("hivm.hir.vadd ins(...)\nmemref.store %v, %b[%i]") == "scalar"
    for r in rows:
        assert r["kernels"] and 1 <= r["blocks"] <= cost.soc("Ascend910B1").vector_cores
        assert r["time_s"] >= r["bytes"] / cost.soc("Ascend910B1").hbm_bytes_per_s
    with pytest.raises(SystemExit, match="--compile is for --target ascend"):
        main(["bench", "--target", "cpu", "--compile"])


@pytest.mark.heavy
def test_whole_model_rows_check_tokens_and_count_decode_reads(tmp_path):
    """``tide.bench.e2e`` on tiny: every engine in its own process, tokens checked against
    transformers' for every prompt before any time is kept, and the bytes a decode step reads
    counted from the checkpoint as transformers' parameters give them (one embedding row, the
    routed experts at top-k / experts)."""
    import torch
    from transformers import DeepseekV4ForCausalLM

    from tide.bench import e2e

    res = e2e.run("tiny", [16], 3, 1, str(tmp_path), 2, engines=["tide"], log=lambda m: None)
    assert res["wrong_tokens"] == [] and set(res["results"]) == {"transformers", "tide"}
    assert set(res["tokens"]) == {16} and len(res["tokens"][16][0]) == 3
    for row in res["results"].values():
        assert set(row["prefill_ms"]) == {"16"} and row["decode_ms_per_token"] > 0
        assert 0 < row["decode_share_of_floor"]
    model = DeepseekV4ForCausalLM.from_pretrained(str(tmp_path / "tiny-ckpt"), dtype=torch.float32)
    cfg = model.config
    want = 0
    for name, p in model.state_dict().items():  # parameters and persistent buffers: what the checkpoint holds
        n = p.numel()
        if "embed_tokens" in name or "tid2eid" in name:  # tables a token looks up one row of
            n = p.shape[-1]
        elif ".mlp.experts." in name:
            n = n * cfg.num_experts_per_tok // cfg.n_routed_experts
        want += n * p.element_size()
    assert res["decode_bytes_per_token"] == want
    assert res["head_weight_elements"] == model.lm_head.weight.numel()
    assert "tiny (float32 weights): prompts 16, 3 new tokens" in e2e.table(res)


def test_whole_model_rounds_alternate_the_order_and_pool_the_times(tmp_path, monkeypatch):
    """``rounds``: every engine runs once per round, the order reversed each round; its figures (and
    the floor's bandwidth, measured after each round) are the medians over all rounds, each round's
    median is kept, and an engine whose tokens change between rounds is reported wrong (not timed)."""
    from tide.bench import e2e, harness

    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "config.json").write_text(json.dumps({"vocab_size": 7}))
    monkeypatch.setattr(e2e, "prepare", lambda *args, **kw: {"checkpoint": str(ckpt)})
    monkeypatch.setattr(e2e, "decode_reads", lambda checkpoint: (1000, 250, 10, 500))
    measured = iter([1e5, 3e5, 2e5])
    monkeypatch.setattr(harness, "cpu_bandwidth", lambda threads: {"read_bandwidth": next(measured)})
    calls = []

    def worker(name, files, prompt_lens, new_tokens, repeat, threads, vocab):
        calls.append(name)
        k = len(calls)
        tokens = [[1, 2, 4]] if name == "onnxruntime" and k > 3 else [[1, 2, 3]]
        return {"tokens": {16: tokens}, "prefill_times_s": {16: [0.01 * k]}, "decode_times_s": [0.001 * k, 0.003 * k]}

    monkeypatch.setattr(e2e, "_run_worker", worker)
    res = e2e.run("tiny", [16], 3, 1, str(tmp_path), 2, engines=["tide", "onnxruntime"], log=lambda m: None,
                  rounds=3)
    assert calls == ["transformers", "tide", "onnxruntime", "onnxruntime", "tide", "transformers",
                     "transformers", "tide", "onnxruntime"]
    assert res["rounds"] == 3 and res["wrong_tokens"] == ["onnxruntime"]
    assert res["read_bandwidth_per_round"] == [1e5, 3e5, 2e5] and res["streaming_floor_ms"] == pytest.approx(5)
    assert set(res["results"]) == {"transformers", "tide"}
    row = res["results"]["tide"]  # calls 2, 5 and 8
    assert row["decode_ms_per_round"] == pytest.approx([4, 10, 16])
    assert row["decode_ms_per_token"] == pytest.approx(7)  # median of 2, 6, 5, 15, 8, 24 ms
    assert row["prefill_ms_per_round"]["16"] == pytest.approx([20, 50, 80])
    assert row["prefill_ms"]["16"] == pytest.approx(50)
    text = e2e.table(res)
    assert "3 rounds, alternating order" in text and "tide          decode 4.0 10.0 16.0 | prefill 16: 20 50 80" in text
    with pytest.raises(ValueError, match="rounds must be at least 1, got 0"):
        e2e.run("tiny", [16], 3, 1, str(tmp_path), 2, engines=["tide"], log=lambda m: None, rounds=0)
