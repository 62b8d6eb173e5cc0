"""``tide demo``: the main job end to end on the built-in ``tiny`` DeepSeek-V4 model.

Exports it to ONNX (with its Hugging Face checkpoint), compiles it for this CPU, generates tokens
with tide's C runtime, checks them against transformers' ``DeepseekV4ForCausalLM.generate`` on the
same checkpoint, and prints tokens/s of both.
"""

from __future__ import annotations

import os
import time

import numpy as np


def run_demo(workdir: str = "out/demo", new_tokens: int = 32, prompt_len: int = 24, seed: int = 0) -> int:
    import torch
    from transformers import DeepseekV4ForCausalLM

    from .compiler.driver import CompileOptions, compile_model
    from .compiler.export import export
    from .runtime import load

    os.makedirs(workdir, exist_ok=True)
    onnx_path = os.path.join(workdir, "tiny.onnx")
    ckpt = os.path.join(workdir, "tiny-checkpoint")
    art = os.path.join(workdir, "tiny.tide")

    t = time.perf_counter()
    export("tiny", onnx_path, seed=seed, save_checkpoint=ckpt)
    print(f"exported tiny -> {onnx_path} ({time.perf_counter() - t:.1f}s)")
    t = time.perf_counter()
    result = compile_model(onnx_path, art, CompileOptions(target="cpu"))
    tide_kernels = sum(1 for v in result.kernels.values() if v != "generic")
    print(f"compiled -> {art} ({time.perf_counter() - t:.1f}s; {len(result.kernels)} kernels, "
          f"{tide_kernels} of them tide's own)")

    model = load(art)
    vocab = int(model.metadata["vocab"])
    rng = np.random.default_rng(seed)
    prompt = rng.integers(0, vocab, size=(1, prompt_len), dtype=np.int64)

    session = model.session()
    t0 = time.perf_counter()
    logits = session.prefill(prompt)
    t1 = time.perf_counter()
    tokens = [int(np.argmax(logits[0]))]
    for _ in range(new_tokens - 1):
        tokens.append(int(np.argmax(session.decode(np.array([[tokens[-1]]], dtype=np.int64))[0])))
    t2 = time.perf_counter()

    ref = DeepseekV4ForCausalLM.from_pretrained(ckpt, dtype=torch.float32).eval()
    with torch.no_grad():
        r0 = time.perf_counter()
        ref.generate(torch.from_numpy(prompt), max_new_tokens=1, do_sample=False)
        r1 = time.perf_counter()
        want = ref.generate(torch.from_numpy(prompt), max_new_tokens=new_tokens, do_sample=False)
        r2 = time.perf_counter()
    want = want[0, prompt_len:].tolist()

    print("prompt:      ", " ".join(map(str, prompt[0].tolist())))
    print("tide:        ", " ".join(map(str, tokens)))
    print("transformers:", " ".join(map(str, want)))
    decode_steps = new_tokens - 1
    print(f"tide (C runtime, cpu): prefill {prompt_len / (t1 - t0):.0f} tokens/s, "
          f"decode {decode_steps / (t2 - t1):.1f} tokens/s")
    ref_decode = (r2 - r1) - (r1 - r0)
    print(f"transformers eager:    prefill {prompt_len / (r1 - r0):.0f} tokens/s (incl. 1 step), "
          f"decode {decode_steps / max(ref_decode, 1e-9):.1f} tokens/s")
    if tokens != want:
        first = next(i for i, (a, b) in enumerate(zip(tokens, want)) if a != b)
        print(f"MISMATCH: tide and transformers differ from new token {first}")
        return 1
    print(f"OK: {new_tokens} tokens identical to transformers")
    return 0
