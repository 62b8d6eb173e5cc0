"""Whole-model prefill and decode throughput: tide (C runtime) vs onnxruntime vs transformers eager.

All run the same model in one process, one after the other: tide runs the compiled artifact
(and ``tide-generic`` the same ONNX compiled without tide's kernels: generic TVM lowering),
onnxruntime the exported ONNX file (feeding ``present.*`` back as ``past.*``), transformers the
saved Hugging Face checkpoint with its own cache. Each figure is the median of ``--repeat`` runs
after one warm-up; every engine's greedy tokens are checked against transformers' before any time
is reported (a wrong engine has no speed).

    python -m tide.bench.e2e --model tiny --prompt-len 64 --new-tokens 32 [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time

import numpy as np


def _times(fn, repeat: int) -> list[float]:
    fn()
    times = []
    for _ in range(repeat):
        t = time.perf_counter_ns()
        fn()
        times.append((time.perf_counter_ns() - t) * 1e-9)
    return times


class _OrtDecoder:
    """Prefill + greedy decode with onnxruntime on the tide-exported graph."""

    def __init__(self, onnx_path: str, threads: int):
        import onnx
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        self.sess = ort.InferenceSession(onnx_path, opts, providers=["CPUExecutionProvider"])
        graph = onnx.load(onnx_path, load_external_data=False).graph
        self.state_specs = [(i.name, [d.dim_value for d in i.type.tensor_type.shape.dim])
                            for i in graph.input if i.name.startswith("past.")]

    def generate(self, prompt: np.ndarray, new_tokens: int) -> np.ndarray:
        state = {n: np.zeros(s, np.float32) for n, s in self.state_specs}
        batch = prompt.shape[0]
        pos = np.zeros(batch, np.int64)
        ids, out = prompt, []
        for _ in range(new_tokens):
            res = self.sess.run(None, {"input_ids": ids, "start_pos": pos, **state})
            for (name, _), value in zip(self.state_specs, res[1:]):
                state[name] = value
            pos = pos + ids.shape[1]
            ids = np.argmax(res[0][:, -1], axis=-1)[:, None].astype(np.int64)
            out.append(ids[:, 0])
        return np.stack(out, axis=1)


def run(model_name: str, prompt_len: int, new_tokens: int, repeat: int, workdir: str, threads: int) -> dict:
    import torch
    from transformers import DeepseekV4ForCausalLM

    from ..compiler.driver import CompileOptions, compile_model
    from ..compiler.export import export
    from ..runtime import load

    onnx_path = os.path.join(workdir, f"{model_name}.onnx")
    ckpt = os.path.join(workdir, f"{model_name}-ckpt")
    art = os.path.join(workdir, f"{model_name}.tide")
    export(model_name, onnx_path, seed=0, save_checkpoint=ckpt)
    compile_model(onnx_path, art, CompileOptions(target="cpu", progress=False))
    model = load(art)
    generic_art = os.path.join(workdir, f"{model_name}-generic.tide")
    compile_model(onnx_path, generic_art, CompileOptions(target="cpu", progress=False, kernels=False))
    generic_session = load(generic_art).session()
    vocab = int(model.metadata["vocab"])
    prompt = np.random.default_rng(0).integers(0, vocab, size=(1, prompt_len), dtype=np.int64)

    torch.set_num_threads(threads)
    ref = DeepseekV4ForCausalLM.from_pretrained(ckpt, dtype=torch.float32).eval()
    with torch.no_grad():
        want = ref.generate(torch.from_numpy(prompt), max_new_tokens=new_tokens, do_sample=False)
    want = want[:, prompt_len:].numpy()

    ort_dec = _OrtDecoder(onnx_path, threads)
    session = model.session()
    checks = {
        "tide": np.array_equal(session.generate(prompt, new_tokens), want),
        "tide-generic": np.array_equal(generic_session.generate(prompt, new_tokens), want),
        "onnxruntime": np.array_equal(ort_dec.generate(prompt, new_tokens), want),
    }

    def tide_prefill():
        session.reset()
        session.prefill(prompt)

    def tide_generate():
        session.reset()
        session.generate(prompt, new_tokens)

    def generic_prefill():
        generic_session.reset()
        generic_session.prefill(prompt)

    def generic_generate():
        generic_session.reset()
        generic_session.generate(prompt, new_tokens)

    def ort_prefill():
        ort_dec.generate(prompt, 1)

    def ort_generate():
        ort_dec.generate(prompt, new_tokens)

    def hf_prefill():
        with torch.no_grad():
            ref(torch.from_numpy(prompt), use_cache=True)

    def hf_generate():
        with torch.no_grad():
            ref.generate(torch.from_numpy(prompt), max_new_tokens=new_tokens, do_sample=False)

    rows = {}
    for name, prefill, generate in (("tide", tide_prefill, tide_generate),
                                    ("tide-generic", generic_prefill, generic_generate),
                                    ("onnxruntime", ort_prefill, ort_generate),
                                    ("transformers", hf_prefill, hf_generate)):
        if not checks.get(name, True):
            continue  # its greedy tokens differ from transformers': no time for it
        prefill_times = _times(prefill, repeat)
        generate_times = _times(generate, repeat)
        tp = statistics.median(prefill_times)
        # per decode step: each generate run less the median prefill, over its decode steps
        steps = max(new_tokens - 1, 1)
        decode_times = [max(tg - tp, 1e-9) / steps for tg in generate_times]
        decode_s = statistics.median(decode_times)
        rows[name] = {"prefill_tokens_per_s": prompt_len / tp, "decode_tokens_per_s": 1.0 / decode_s,
                      "prefill_ms": tp * 1e3, "decode_ms_per_token": decode_s * 1e3,
                      "prefill_times_s": prefill_times, "decode_times_s": decode_times}
    return {"model": model_name, "prompt_len": prompt_len, "new_tokens": new_tokens, "threads": threads,
            "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count()},
            "weight_bytes": model.memory.weight_bytes,
            "weight_elements": sum(int(np.prod(w.shape)) for w in ref.parameters()),
            "tokens_checked_against_transformers": True,
            "wrong_tokens": sorted(n for n, ok in checks.items() if not ok), "results": rows}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--prompt-len", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--workdir")
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="tide-e2e-") as tmp:
        result = run(args.model, args.prompt_len, args.new_tokens, args.repeat, args.workdir or tmp, args.threads)
    print(f"{args.model}: prompt {args.prompt_len}, {args.new_tokens} new tokens, {args.threads} threads "
          "(tokens of every engine listed equal transformers')")
    for name in result["wrong_tokens"]:
        print(f"{name}: greedy tokens differ from transformers' (not timed)")
    print(f"{'engine':<14}{'prefill tok/s':>15}{'decode tok/s':>15}{'decode ms/tok':>15}")
    for name, r in result["results"].items():
        print(f"{name:<14}{r['prefill_tokens_per_s']:>15.1f}{r['decode_tokens_per_s']:>15.1f}"
              f"{r['decode_ms_per_token']:>15.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
