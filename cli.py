"""The ``tide`` command: export, compile, inspect, run, bench, demo.

Each subcommand imports only what it needs: ``tide run`` and ``tide inspect`` work without TVM,
torch or onnx installed.
"""

from __future__ import annotations

import argparse
import sys
import time


def _cmd_export(args) -> int:
    from .compiler.export import run_export

    return run_export(args) or 0


def _cmd_compile(args) -> int:
    from .compiler import onnx_import
    from .compiler.driver import CompileOptions, compile_model
    from .targets import get, kinds

    dims = {}
    for item in args.dim or []:
        name, _, value = item.partition("=")
        if not value.isdigit():
            raise SystemExit(f"tide compile: --dim expects NAME=INT, got '{item}'")
        dims[name] = int(value)
    bind = dict(onnx_import.parse_bind(item) for item in args.bind or [])
    target = get(args.target)
    for flag in {get(k).arch_flag for k in kinds()} - {None, target.arch_flag}:
        if getattr(args, flag):
            users = [k for k in kinds() if get(k).arch_flag == flag]
            raise SystemExit(f"tide compile: --{flag} is for --target {' or '.join(users)}, not --target {args.target}")
    options = CompileOptions(target=args.target, batch=args.batch, max_seq_len=args.max_seq_len,
                             prefill_chunks=tuple(args.prefill_chunk or (32,)), dims=dims, mcpu=args.mcpu,
                             arch=getattr(args, target.arch_flag) if target.arch_flag else None,
                             all_logits=args.all_logits, progress=not args.quiet, bind=bind)
    result = compile_model(args.model, args.output, options)
    generic = sorted(k for k, v in result.kernels.items() if v == "generic")
    tide_kernels = {k: v for k, v in result.kernels.items() if v != "generic"}
    print(f"compiled {args.model} -> {result.path} for {args.target} in {result.seconds:.1f}s; "
          f"entries: {', '.join(result.entries)}")
    print(f"tide kernels ({len(tide_kernels)}):")
    for k, v in sorted(tide_kernels.items()):
        print(f"  {k}: {v}")
    print(f"generic TVM lowering ({len(generic)} kernels)")
    return 0


def _cmd_inspect(args) -> int:
    from .compiler.inspect import describe

    print(describe(args.artifact))
    return 0


def _cmd_run(args) -> int:
    import numpy as np

    from .compiler.artifact import ArtifactError, read_artifact
    from .runtime import TideError, load
    from .targets import get

    try:
        runtime = read_artifact(args.artifact, verify=False).target.kind
    except (ArtifactError, OSError) as err:
        raise SystemExit(f"tide run: {err}") from None
    device = args.device or runtime
    try:
        model = load(args.artifact, device=device, copy_weights=args.copy_weights)
    except TideError as err:
        hint = get(runtime).missing_device_hint
        if device.split(":")[0] != runtime or not hint:
            raise
        raise SystemExit(f"tide run: {err}\n({hint.format(artifact=args.artifact)})") from None
    if "decode" not in model.entries:
        raise SystemExit(f"tide run: {args.artifact} is not a decode model (entries: {model.entries}); "
                         "use the Python API Model.run(feeds) for general graphs")
    meta = model.metadata
    batch = int(meta["batch"])
    if args.prompt:
        try:
            ids = [int(t) for t in args.prompt.replace(",", " ").split()]
        except ValueError:
            raise SystemExit(f"tide run: --prompt expects token ids, got '{args.prompt}'") from None
        prompt = np.array([ids] * batch, dtype=np.int64)
    else:
        rng = np.random.default_rng(args.seed)
        prompt = rng.integers(0, int(meta["vocab"]), size=(batch, args.prompt_len), dtype=np.int64)
    session = model.session()
    if args.profile or args.profile_json:
        session.generate(prompt, min(args.new_tokens, 2))  # warm-up (first-touch of weights and caches)
        session.reset()
        session.profiling()
    t0 = time.perf_counter()
    logits = session.prefill(prompt)
    t1 = time.perf_counter()
    tokens = [np.argmax(logits, axis=-1)]
    for _ in range(args.new_tokens - 1):
        tokens.append(np.argmax(session.decode(tokens[-1][:, None]), axis=-1))
    t2 = time.perf_counter()
    out = np.stack(tokens, axis=1)
    print("prompt:", " ".join(map(str, prompt[0].tolist())))
    for row in range(batch):
        print(f"tokens[{row}]:", " ".join(map(str, out[row].tolist())))
    steps = max(args.new_tokens - 1, 1)
    print(f"prefill: {prompt.size / (t1 - t0):.1f} tokens/s ({(t1 - t0) * 1e3:.2f} ms for "
          f"{prompt.shape[1]} tokens x batch {batch}); decode: {steps * batch / max(t2 - t1, 1e-9):.1f} "
          f"tokens/s ({(t2 - t1) * 1e3 / steps:.2f} ms/step)")
    if args.profile or args.profile_json:
        _print_profile(session.profile(), args, device)
    return 0


def _print_profile(profile, args, device: str) -> None:
    """The profile table (with the share of this CPU's roofline, measured now, on a cpu run) and
    its JSON."""
    import json

    roof = None
    if device == "cpu":
        from .bench.harness import cpu_ceilings

        measured = cpu_ceilings()
        roof = {"flops": measured["gemm_flops"], "bandwidth": measured["bandwidth"]}
        print(f"roofline: {roof['flops'] / 1e9:.0f} GFLOP/s ({measured['gemm_how']}), "
              f"{roof['bandwidth'] / 1e9:.1f} GB/s ({measured['bandwidth_how']})")
    if args.profile:
        print(profile.table(roof))
    if args.profile_json:
        with open(args.profile_json, "w", encoding="utf-8") as f:
            json.dump(profile.to_json(roof), f, indent=1)
        print(f"profile written to {args.profile_json}")


def _cmd_bench(args) -> int:
    from .bench.suite import command

    return command(args)


def _cmd_demo(args) -> int:
    from .demo import run_demo

    return run_demo(args.workdir, args.new_tokens)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tide", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("export", help="export a DeepSeek-V4 checkpoint or built-in config to ONNX")
    from .compiler.export import add_export_arguments

    add_export_arguments(p)
    p.set_defaults(func=_cmd_export)

    p = sub.add_parser("compile", help="compile an ONNX model into a .tide artifact")
    p.add_argument("model", help="the ONNX file")
    p.add_argument("-o", "--output", required=True, help="the artifact to write")
    from .targets import get, kinds

    p.add_argument("--target", default="cpu", choices=kinds())
    p.add_argument("--batch", type=int, help="value of a symbolic batch dimension")
    p.add_argument("--max-seq-len", type=int, help="decode-state capacity (default: as exported)")
    p.add_argument("--prefill-chunk", type=int, action="append",
                   help="prefill chunk size (repeatable; default 32; single tokens use decode)")
    p.add_argument("--all-logits", action="store_true",
                   help="prefill entries return every position's logits (default: the last position's only, "
                        "and everything after the last state write that works row by row, e.g. the last "
                        "layer's output projection, experts and the lm_head, runs on that position alone)")
    p.add_argument("--dim", action="append", help="NAME=INT for other symbolic dimensions")
    p.add_argument("--bind", action="append", metavar="NAME=VALUE",
                   help="compile graph input NAME as a constant (repeatable): VALUE a number or comma-separated "
                        "numbers, e.g. shape=1,-1,64, in the input's declared dtype and shape; needed for inputs "
                        "that feed a shape, axes, k or other operand fixed at compile time")
    p.add_argument("--mcpu", help="LLVM CPU to compile for (default: this machine's; device targets: the generic "
                                  "host CPU)")
    for kind in kinds():
        target = get(kind)
        if target.arch_flag:
            p.add_argument(f"--{target.arch_flag}", help=f"{kind}: {target.arch_help}")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress display")
    p.set_defaults(func=_cmd_compile)

    p = sub.add_parser("inspect", help="print an artifact's target, entries, I/O, kernels, memory plan")
    p.add_argument("artifact")
    p.set_defaults(func=_cmd_inspect)

    p = sub.add_parser("run", help="generate tokens with a compiled decode model")
    p.add_argument("artifact")
    p.add_argument("--prompt", help="prompt token ids (space or comma separated); default: random")
    p.add_argument("--prompt-len", type=int, default=16, help="length of the random prompt")
    p.add_argument("-n", "--new-tokens", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", help="cpu, cuda[:N] or ascend[:N] (default: the device the artifact was compiled "
                                    "for)")
    p.add_argument("--profile", action="store_true",
                   help="time every kernel call (after a warm-up) and print the per-kernel table")
    p.add_argument("--profile-json", metavar="FILE", help="write the per-kernel profile as JSON to FILE")
    p.add_argument("--copy-weights", action="store_true",
                   help="cpu: copy the weights into memory at load instead of reading the file mapping in place")
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser("bench", help="kernel benchmark suite: every kernel vs the machine's ceilings and "
                                      "baselines (table, JSON, plots, --compare)")
    from .bench.suite import add_arguments as add_bench_arguments

    add_bench_arguments(p)
    p.set_defaults(func=_cmd_bench)

    p = sub.add_parser("demo", help="export, compile and run the built-in tiny V4 model; check it "
                                     "against transformers")
    p.add_argument("--workdir", default="out/demo")
    p.add_argument("-n", "--new-tokens", type=int, default=32)
    p.set_defaults(func=_cmd_demo)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from .compiler.errors import CompileError
    from .runtime import TideError

    try:
        return args.func(args)
    except (CompileError, TideError) as err:
        print(f"tide {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
