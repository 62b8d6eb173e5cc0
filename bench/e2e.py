"""Whole-model prefill and decode: tide (C runtime) vs transformers eager vs onnxruntime vs llama.cpp.

Every engine runs the same weights, in a process of its own, one engine after the other (a
full-width model's weights are gigabytes per engine): tide the compiled artifact (and, for the small
models, ``tide-generic``: the same ONNX compiled without tide's kernels), transformers the saved
Hugging Face checkpoint with its own cache, onnxruntime the exported ONNX file (feeding ``present.*``
back as ``past.*``), llama.cpp (when ``python -m tide.bench.llamacpp setup`` installed it) a float32
GGUF converted from the checkpoint. Each engine's greedy tokens for every prompt are checked against
transformers' before any of its times is reported (a wrong engine has no speed).

Figures: prefill time per prompt length (last-position logits, as generation needs), decode time per
token after the first prompt (each generate run less the median prefill, over its decode steps), the
bytes of weights a decode step reads (every weight, but one row of the lookup tables: the embedding
and the hash router's table, and ``top-k / experts`` of the routed experts) and the share of the weight-streaming floor (those
bytes at the machine's all-core read bandwidth) each engine reaches.

    python -m tide.bench.e2e --model tiny --prompt-len 64 --new-tokens 32 [--json out.json]
    python -m tide.bench.e2e --model flash-2layer --prompt-len 32 --prompt-len 256 --new-tokens 16 \\
        --workdir ~/.cache/tide-bench/e2e    # exports and compiles once, then reuses the files
    python -m tide.bench.e2e ... --engine tide --engine llama.cpp --rounds 4   # alternating order, pooled
    python -m tide.bench.e2e --model flash-2layer --weights fp8 ...   # DeepSeek's FP8 + FP4 release format
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

ENGINES = ("tide", "tide-generic", "transformers", "onnxruntime", "llama.cpp")
SAFETENSORS_ITEMSIZE = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "F8_E5M2": 1, "F8_E8M0": 1,
                        "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}
# the weights' precision: float32 / bf16 exports of the built-in config, or its release-format checkpoint
WEIGHTS = ("float32", "bfloat16", "fp8")
WEIGHT_NAMES = {"float32": "float32", "bfloat16": "bf16", "fp8": "fp8 + fp4 experts"}
GENERIC_MODELS = ("tiny",)  # tide-generic (TVM's own lowering) only here: a full-width compile takes hours


def _times(fn, repeat: int) -> list[float]:
    fn()
    times = []
    for _ in range(repeat):
        t = time.perf_counter_ns()
        fn()
        times.append((time.perf_counter_ns() - t) * 1e-9)
    return times


def prompt_ids(vocab: int, length: int) -> np.ndarray:
    """The seeded prompt of ``length`` tokens every engine gets."""
    return np.random.default_rng(length).integers(0, vocab, size=(1, length), dtype=np.int64)


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

    def prefill(self, prompt: np.ndarray) -> None:
        self.generate(prompt, 1)


def _engine(name: str, files: dict, threads: int, max_prompt: int):
    """``(prefill(prompt), generate(prompt, n) -> tokens [1, n])`` of one engine."""
    if name in ("tide", "tide-generic"):
        from ..runtime import load

        # the weights copied into memory: this machine streams them faster from there (README)
        session = load(files["tide" if name == "tide" else "tide_generic"], copy_weights=True).session()

        def prefill(prompt):
            session.reset()
            session.prefill(prompt)

        def generate(prompt, n):
            session.reset()
            return session.generate(prompt, n)

        return prefill, generate
    if name == "transformers":
        import torch
        from transformers import DeepseekV4ForCausalLM

        torch.set_num_threads(threads)
        if files.get("weights") == "fp8":   # its own dequantizer, then the float32 model
            from transformers import FineGrainedFP8Config

            model = DeepseekV4ForCausalLM.from_pretrained(
                files["checkpoint"], quantization_config=FineGrainedFP8Config(dequantize=True)).float().eval()
        else:
            model = DeepseekV4ForCausalLM.from_pretrained(files["checkpoint"], dtype=torch.float32).eval()

        def prefill(prompt):
            with torch.no_grad():
                model(torch.from_numpy(prompt), use_cache=True, logits_to_keep=1)  # as its generate() prefills

        def generate(prompt, n):
            with torch.no_grad():
                out = model.generate(torch.from_numpy(prompt), max_new_tokens=n, do_sample=False)
            return out[:, prompt.shape[1]:].numpy()

        return prefill, generate
    if name == "onnxruntime":
        dec = _OrtDecoder(files["onnx"], threads)
        return dec.prefill, dec.generate
    if name == "llama.cpp":
        from .llamacpp import LlamaCppDecoder

        dec = LlamaCppDecoder(files["gguf"], threads, n_ctx=max_prompt + 64)
        return dec.prefill, dec.generate
    raise ValueError(f"unknown engine {name!r}: expected one of {', '.join(ENGINES)}")


def worker(name: str, files: dict, prompt_lens: list[int], new_tokens: int, repeat: int, threads: int,
           vocab: int) -> dict:
    """One engine: its greedy tokens for every prompt, prefill times per prompt, decode times per
    token after the first prompt."""
    prefill, generate = _engine(name, files, threads, max(prompt_lens))
    tokens, prefill_times = {}, {}
    for length in prompt_lens:
        prompt = prompt_ids(vocab, length)
        tokens[length] = np.asarray(generate(prompt, new_tokens)).tolist()
        prefill_times[length] = _times(lambda: prefill(prompt), repeat)
    first = prompt_ids(vocab, prompt_lens[0])
    tp = statistics.median(prefill_times[prompt_lens[0]])
    steps = max(new_tokens - 1, 1)
    decode_times = [max(t - tp, 1e-9) / steps for t in _times(lambda: generate(first, new_tokens), repeat)]
    return {"tokens": tokens, "prefill_times_s": prefill_times, "decode_times_s": decode_times}


def decode_reads(checkpoint: str) -> tuple[int, int, int, int]:
    """(bytes, elements) of the weights a decode step reads, the elements of the output projection
    (lm_head) and of all weights, from the checkpoint's tensors: everything but the tables a token
    looks up (the embedding and the hash router's token -> expert table: one row of each) and the
    routed experts (top-k / experts of theirs). Quantized weights count their stored bytes (two FP4
    weights per byte) plus their scales' bytes."""
    from safetensors import safe_open

    with open(os.path.join(checkpoint, "config.json")) as f:
        config = json.load(f)
    share = config["num_experts_per_tok"] / config["n_routed_experts"]
    read = read_elements = head = elements = 0
    for file in sorted(f for f in os.listdir(checkpoint) if f.endswith(".safetensors")):
        with safe_open(os.path.join(checkpoint, file), "np") as st:
            keys = set(st.keys())
            for key in st.keys():
                part = st.get_slice(key)
                shape, size = part.get_shape(), SAFETENSORS_ITEMSIZE[part.get_dtype()]
                count = int(np.prod(shape))
                table = "embed_tokens" in key or key == "embed.weight" or "tid2eid" in key
                used = shape[-1] if table else int(count * share) if ".experts." in key else count
                read += used * size
                if key.endswith(".scale") and f"{key[:-6]}.weight" in keys:   # block scales: bytes, not weights
                    continue
                per_byte = 2 if size == 1 and ".experts." in key and config.get("expert_dtype") == "fp4" else 1
                elements += count * per_byte
                read_elements += used * per_byte
                head += count if key in ("lm_head.weight", "head.weight") else 0
    return read, read_elements, head, elements


def prepare(model_name: str, workdir: str, engines: list[str], prompt_lens: list[int], log=print,
            weights: str = "float32") -> dict:
    """Exports, saves the checkpoint, compiles (with a prefill chunk per prompt length; and converts
    for llama.cpp) what ``engines`` need into ``workdir``, reusing files a previous run left there;
    returns their paths. ``weights``: the precision of the model's weights, one of WEIGHTS (fp8: the
    release format, FP8 linears and FP4 experts, ``tide.bench.quantized``)."""
    from ..compiler.driver import CompileOptions, compile_model
    from ..compiler.export import export

    os.makedirs(workdir, exist_ok=True)
    stem = model_name if weights == "float32" else f"{model_name}-{weights}"
    files = {"onnx": os.path.join(workdir, f"{stem}.onnx"),
             "checkpoint": os.path.join(workdir, f"{stem}-ckpt"),
             "tide": os.path.join(workdir, f"{stem}.tide"),
             "tide_generic": os.path.join(workdir, f"{stem}-generic.tide"),
             "gguf": os.path.join(workdir, f"{stem}-f32.gguf"),
             "weights": weights}
    if not (os.path.exists(files["onnx"]) and os.path.exists(os.path.join(files["checkpoint"], "config.json"))):
        log(f"export {stem} -> {files['onnx']}")
        if weights == "fp8":
            from . import quantized

            quantized.write(model_name, files["checkpoint"], seed=0)
            export(files["checkpoint"], files["onnx"])
        else:
            export(model_name, files["onnx"], seed=0, dtype=weights, save_checkpoint=files["checkpoint"])
    chunks = tuple(sorted(set(prompt_lens)))  # each prompt one prefill call
    if "tide" in engines and not os.path.exists(files["tide"]):
        log(f"compile {files['tide']}")
        compile_model(files["onnx"], files["tide"], CompileOptions(target="cpu", prefill_chunks=chunks, progress=False))
    if "tide-generic" in engines and not os.path.exists(files["tide_generic"]):
        log(f"compile {files['tide_generic']} (generic lowering)")
        compile_model(files["onnx"], files["tide_generic"],
                      CompileOptions(target="cpu", prefill_chunks=chunks, progress=False, kernels=False))
    if "llama.cpp" in engines and weights == "fp8":
        files["unsupported"] = {"llama.cpp": "the benchmark converts float checkpoints to GGUF only"}
        return files
    if "llama.cpp" in engines and not os.path.exists(files["gguf"]):
        from . import llamacpp

        with open(os.path.join(files["checkpoint"], "config.json")) as f:
            config = json.load(f)
        try:
            llamacpp.release_config(config)
        except ValueError as err:  # a V4 variant llama.cpp's implementation does not run
            files["unsupported"] = {"llama.cpp": str(err)}
            return files
        log(f"convert {files['checkpoint']} -> {files['gguf']}")
        llamacpp.convert(files["checkpoint"], files["gguf"], outtype="f32")
    return files


def available_engines(model_name: str) -> list[str]:
    """Every engine this machine can run for the model (llama.cpp when its setup ran; tide-generic
    for ``GENERIC_MODELS`` only)."""
    from importlib.util import find_spec

    out = ["tide"]
    if model_name in GENERIC_MODELS:
        out.append("tide-generic")
    out += ["transformers", "onnxruntime"]
    if find_spec("llama_cpp") is not None:
        out.append("llama.cpp")
    return out


def run(model_name: str, prompt_lens: list[int], new_tokens: int, repeat: int, workdir: str, threads: int,
        engines: list[str] | None = None, log=print, weights: str = "float32", rounds: int = 1) -> dict:
    """Every engine in its own subprocess, transformers first (the reference tokens). With ``rounds``
    > 1 every engine runs that many times, the order reversed from one round to the next, and its
    figures (and the read bandwidth of the floor, measured after each round) are the medians over all
    rounds: a machine whose speed drifts during the run (a shared VM) then weighs on every engine
    alike instead of on whichever ran at its slow moment; an engine whose tokens change from one
    round to another counts as wrong."""
    from .harness import cpu_bandwidth

    if rounds < 1:
        raise ValueError(f"rounds must be at least 1, got {rounds}")
    prompt_lens = sorted(set(prompt_lens), key=prompt_lens.index)
    if engines is None:
        engines = available_engines(model_name)
    files = prepare(model_name, workdir, engines, prompt_lens, log, weights)
    unsupported = files.pop("unsupported", {})
    for name, why in unsupported.items():
        log(f"{name}: not run: {why}")
    engines = [e for e in engines if e not in unsupported]
    with open(os.path.join(files["checkpoint"], "config.json")) as f:
        vocab = int(json.load(f)["vocab_size"])
    order = ["transformers"] + [e for e in engines if e != "transformers"]
    raw, unstable, bandwidths = {}, set(), []
    for r in range(rounds):
        for name in order if r % 2 == 0 else order[::-1]:
            log(f"run {name}" + (f" (round {r + 1} of {rounds})" if rounds > 1 else ""))
            got = _run_worker(name, files, prompt_lens, new_tokens, repeat, threads, vocab)
            rounds_ms = {"decode": [statistics.median(got["decode_times_s"]) * 1e3],
                         "prefill": {n: [statistics.median(t) * 1e3] for n, t in got["prefill_times_s"].items()}}
            if name not in raw:
                raw[name] = dict(got, rounds_ms=rounds_ms)
                continue
            kept = raw[name]
            if got["tokens"] != kept["tokens"]:
                unstable.add(name)
            kept["decode_times_s"] += got["decode_times_s"]
            kept["rounds_ms"]["decode"] += rounds_ms["decode"]
            for n, t in got["prefill_times_s"].items():
                kept["prefill_times_s"][n] += t
                kept["rounds_ms"]["prefill"][n] += rounds_ms["prefill"][n]
        bandwidths.append(cpu_bandwidth(threads=threads)["read_bandwidth"])   # the machine as this round left it
    want = raw["transformers"]["tokens"]
    wrong = sorted(n for n in order if raw[n]["tokens"] != want or n in unstable)
    bytes_read, read_elements, head, elements = decode_reads(files["checkpoint"])
    bandwidth = statistics.median(bandwidths)
    floor_s = bytes_read / bandwidth
    rows = {}
    for name in order:
        if name in wrong:
            continue
        r = raw[name]
        decode_s = statistics.median(r["decode_times_s"])
        rows[name] = {"prefill_ms": {str(n): statistics.median(t) * 1e3 for n, t in r["prefill_times_s"].items()},
                      "prefill_tokens_per_s": {str(n): int(n) / statistics.median(t)
                                               for n, t in r["prefill_times_s"].items()},
                      "decode_ms_per_token": decode_s * 1e3, "decode_tokens_per_s": 1.0 / decode_s,
                      "decode_share_of_floor": floor_s / decode_s,
                      "prefill_times_s": {str(n): t for n, t in r["prefill_times_s"].items()},
                      "decode_times_s": r["decode_times_s"],
                      "decode_ms_per_round": r["rounds_ms"]["decode"],
                      "prefill_ms_per_round": {str(n): t for n, t in r["rounds_ms"]["prefill"].items()}}
    return {"model": model_name, "weights": weights, "prompt_lens": prompt_lens, "new_tokens": new_tokens,
            "threads": threads, "rounds": rounds,
            "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count()},
            "weight_elements": elements, "decode_weight_elements": read_elements, "head_weight_elements": head,
            "decode_bytes_per_token": bytes_read,
            "read_bandwidth": bandwidth, "read_bandwidth_per_round": bandwidths, "streaming_floor_ms": floor_s * 1e3,
            "engines": order, "wrong_tokens": wrong, "unsupported": unsupported, "tokens": want, "results": rows}


def _run_worker(name: str, files: dict, prompt_lens, new_tokens, repeat, threads, vocab) -> dict:
    with tempfile.TemporaryDirectory(prefix="tide-e2e-") as tmp:
        out = os.path.join(tmp, "result.json")
        spec = {"engine": name, "files": files, "prompt_lens": list(prompt_lens), "new_tokens": new_tokens,
                "repeat": repeat, "threads": threads, "vocab": vocab, "out": out}
        env = dict(os.environ, TVM_NUM_THREADS=str(threads), OMP_NUM_THREADS=str(threads))
        proc = subprocess.run([sys.executable, "-m", "tide.bench.e2e", "--worker", json.dumps(spec)], env=env,
                              capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"e2e: engine {name} failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
        with open(out) as f:
            result = json.load(f)
    result["tokens"] = {int(k): v for k, v in result["tokens"].items()}
    result["prefill_times_s"] = {int(k): v for k, v in result["prefill_times_s"].items()}
    return result


def table(result: dict) -> str:
    lens = result["prompt_lens"]
    lines = [f"{result['model']} ({WEIGHT_NAMES[result.get('weights', 'float32')]} weights): prompts {', '.join(map(str, lens))}, {result['new_tokens']} new tokens, "
             f"{result['threads']} threads; decode reads {result['decode_bytes_per_token'] / 1e9:.2f} GB of weights "
             f"per token: floor {result['streaming_floor_ms']:.1f} ms at {result['read_bandwidth'] / 1e9:.1f} GB/s "
             "(greedy tokens of every engine listed equal transformers')"
             + (f"; {result['rounds']} rounds, alternating order, medians over all" if result.get("rounds", 1) > 1 else "")]
    lines += [f"{name}: greedy tokens differ from transformers' (not timed)" for name in result["wrong_tokens"]]
    lines += [f"{name}: not run: {why}" for name, why in result["unsupported"].items()]
    head = "".join(f"{'prefill ' + str(n) + ' ms':>17}" for n in lens)
    lines.append(f"{'engine':<14}{head}{'decode ms/tok':>15}{'tok/s':>8}{'% floor':>9}")
    for name, r in result["results"].items():
        cells = "".join(f"{r['prefill_ms'][str(n)]:>17.1f}" for n in lens)
        lines.append(f"{name:<14}{cells}{r['decode_ms_per_token']:>15.1f}{r['decode_tokens_per_s']:>8.2f}"
                     f"{100 * r['decode_share_of_floor']:>8.0f}%")
    if result.get("rounds", 1) > 1:
        lines.append("per round, in round order (decode ms/tok | prefill ms per prompt length):")
        for name, r in result["results"].items():
            prefill = " | ".join(f"{n}: " + " ".join(f"{t:.0f}" for t in r["prefill_ms_per_round"][str(n)])
                                 for n in lens)
            lines.append(f"  {name:<14}decode " + " ".join(f"{t:.1f}" for t in r["decode_ms_per_round"]) +
                         f" | prefill {prefill}")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny", help="a built-in config: tiny, flash-2layer, pro-2layer")
    parser.add_argument("--prompt-len", type=int, action="append", help="prompt lengths (repeatable; default 64)")
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=1,
                        help="run every engine this many times, the order reversed each round (a drifting machine "
                             "then weighs on every engine alike)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--engine", action="append", choices=ENGINES, help="only these engines (repeatable)")
    parser.add_argument("--weights", choices=WEIGHTS, default="float32",
                        help="the weights' precision (fp8: DeepSeek's release format, FP8 linears and FP4 experts)")
    parser.add_argument("--workdir", help="keep the export, checkpoint and artifacts here (default: a temporary "
                                          "folder)")
    parser.add_argument("--json")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error(f"--rounds must be at least 1, got {args.rounds}")
    if args.worker:
        spec = json.loads(args.worker)
        result = worker(spec["engine"], spec["files"], spec["prompt_lens"], spec["new_tokens"], spec["repeat"],
                        spec["threads"], spec["vocab"])
        with open(spec["out"], "w") as f:
            json.dump(result, f)
        return 0
    engines = args.engine
    if engines and "transformers" not in engines:
        engines = ["transformers"] + engines  # the reference tokens
    with tempfile.TemporaryDirectory(prefix="tide-e2e-") as tmp:
        result = run(args.model, args.prompt_len or [64], args.new_tokens, args.repeat, args.workdir or tmp,
                     args.threads, engines, weights=args.weights, rounds=args.rounds)
    print(table(result))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
