"""`python -m sparse_rt {convert,explain,bench,serve}`."""

from __future__ import annotations

import argparse
import sys
import time


def _convert(args: argparse.Namespace) -> int:
    import sparse_rt

    start = time.perf_counter()
    graph = sparse_rt.convert(args.model, batch_sizes=args.batch_sizes, device=args.device,
                              tune=not args.no_tune, progress=not args.quiet, quantize=args.quantize,
                              quantize_tolerance=args.quantize_tolerance)
    sparse_rt.save(graph, args.output)
    layers = sum(1 for n in graph.nodes if n.op_type == "SparseLinear")
    print(f"converted {args.model} -> {args.output}: {layers} linear layers lowered, "
          f"{'heuristic' if args.no_tune else 'tuned at batch ' + ' '.join(map(str, args.batch_sizes))}, "
          f"{time.perf_counter() - start:.1f} s")
    return 0


def _explain(args: argparse.Namespace) -> int:
    import sparse_rt
    from sparse_rt.scheduler.explain import format_report, layer_reports

    print(format_report(layer_reports(sparse_rt.load(args.model)), args.batch))
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "bench":
        from sparse_rt.bench import main as bench_main

        return bench_main(argv[1:])
    if argv and argv[0] == "serve":
        from sparse_rt.serve.cli import main as serve_main

        return serve_main(argv[1:])
    parser = argparse.ArgumentParser(prog="python -m sparse_rt", description="Sparse inference runtime.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="{convert,explain,bench,serve}")
    convert = commands.add_parser("convert", help="convert an ONNX model: lower and tune its linear layers")
    convert.add_argument("model", help="input ONNX file")
    convert.add_argument("-o", "--output", required=True, help="where to write the converted model")
    convert.add_argument("--batch-sizes", type=int, nargs="+", default=[1], help="rows per call to tune for")
    convert.add_argument("--device", default="cpu")
    convert.add_argument("--no-tune", action="store_true", help="pick kernels by heuristic, without timing")
    convert.add_argument("--quiet", action="store_true", help="no progress bar")
    convert.add_argument("--quantize", choices=["int8"], default=None,
                         help="also try int8 weights (activations quantized per token) per layer")
    convert.add_argument("--quantize-tolerance", type=float, default=None,
                         help="largest relative output error of an int8 layer against fp32 (default 0.05)")
    explain = commands.add_parser("explain", help="per-layer report of a converted model")
    explain.add_argument("model", help="a file written by `convert`")
    explain.add_argument("--batch", type=int, default=None, help="batch size to report (default: the first tuned)")
    commands.add_parser("bench", help="benchmark (python -m sparse_rt.bench --help)")
    commands.add_parser("serve", help="HTTP server (python -m sparse_rt serve --help)")
    args = parser.parse_args(argv)
    try:
        return {"convert": _convert, "explain": _explain}[args.command](args)
    except (ValueError, TypeError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
