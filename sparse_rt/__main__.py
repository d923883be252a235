"""`python -m sparse_rt {convert,explain,check,bench,serve}`."""

from __future__ import annotations

import argparse
import sys
import time


def _convert(args: argparse.Namespace) -> int:
    import sparse_rt

    start = time.perf_counter()
    calibration = [_feed(path) for path in args.calibration] if args.calibration else None
    graph = sparse_rt.convert(args.model, shapes=dict(args.shapes) if args.shapes else None,
                              batch_sizes=args.batch_sizes, device=args.device, tune=not args.no_tune,
                              progress=not args.quiet, quantize=args.quantize,
                              quantize_tolerance=args.quantize_tolerance, calibration=calibration,
                              rounding=args.rounding)
    sparse_rt.save(graph, args.output)
    layers = sum(1 for n in graph.nodes if n.op_type == "SparseLinear")
    how = "heuristic" if args.no_tune else "tuned"
    at = (f"at {' '.join(map(str, args.batch_sizes))} rows" if args.batch_sizes
          else "at the rows each layer sees" + (f" with {' '.join(f'{n}={list(s)}' for n, s in args.shapes)}"
                                                if args.shapes else ""))
    print(f"converted {args.model} -> {args.output}: {layers} linear layers lowered, {how} {at}, "
          f"{time.perf_counter() - start:.1f} s")
    return 0


def _feed(path: str) -> dict:
    """One calibration feed {input name: array} from an .npz file (numpy.savez)."""
    import numpy as np

    try:
        with np.load(path, allow_pickle=False) as archive:
            return {name: archive[name] for name in archive.files}
    except FileNotFoundError:
        raise FileNotFoundError(f"calibration feed {path!r} does not exist") from None
    except (OSError, ValueError) as error:
        raise ValueError(f"calibration feed {path!r}: expected an .npz file of input arrays: {error}") from None


def _explain(args: argparse.Namespace) -> int:
    import sparse_rt
    from sparse_rt.scheduler.explain import format_conv_report, format_report, layer_reports

    graph = sparse_rt.load(args.model)
    print(format_report(layer_reports(graph), args.batch))
    convs = format_conv_report(graph)
    if convs:
        print(convs)
    return 0


def _shapes(text: str) -> tuple[str, tuple[int, ...]]:
    """'input_ids=1x128' -> ("input_ids", (1, 128))."""
    name, sep, dims = text.rpartition("=")
    try:
        if not sep or not name:
            raise ValueError
        return name, tuple(int(d) for d in dims.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected NAME=DxDx... such as input_ids=1x128, got {text!r}") from None


def _check(args: argparse.Namespace) -> int:
    from sparse_rt.runtime.check import check_against_onnxruntime

    report = check_against_onnxruntime(args.model, shapes=dict(args.shapes or ()))
    print(report.describe())
    return 0 if report.ok else 1


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "bench":
        from sparse_rt.bench import main as bench_main

        return bench_main(argv[1:])
    if argv and argv[0] == "serve":
        from sparse_rt.serve.cli import main as serve_main

        return serve_main(argv[1:])
    parser = argparse.ArgumentParser(prog="python -m sparse_rt", description="Sparse inference runtime.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="{convert,explain,check,bench,serve}")
    convert = commands.add_parser("convert", help="convert an ONNX model: lower and tune its linear layers")
    convert.add_argument("model", help="input ONNX file")
    convert.add_argument("-o", "--output", required=True, help="where to write the converted model")
    convert.add_argument("--shapes", type=_shapes, nargs="+", metavar="NAME=DxD",
                         help="representative input shapes (default: 1 for a leading dynamic dim, 128 for "
                              "other dynamic dims), e.g. input_ids=1x128")
    convert.add_argument("--batch-sizes", type=int, nargs="+", default=None,
                         help="tune every layer at these rows instead of the rows it sees")
    convert.add_argument("--device", default="cpu")
    convert.add_argument("--no-tune", action="store_true", help="pick kernels by heuristic, without timing")
    convert.add_argument("--quiet", action="store_true", help="no progress bar")
    convert.add_argument("--quantize", choices=["int8"], default=None,
                         help="also try int8 weights (activations quantized per token) per layer")
    convert.add_argument("--quantize-tolerance", type=float, default=None,
                         help="largest relative output error of an int8 layer against fp32 (default 0.05)")
    convert.add_argument("--calibration", nargs="+", metavar="FEED.npz", default=None,
                         help="with --quantize: feeds like those the model will serve, one .npz of input arrays "
                              "each (numpy.savez); the int8 layers' biases are corrected on them")
    convert.add_argument("--rounding", choices=["nearest", "gptq"], default="nearest",
                         help="int8 weights rounded to nearest or by GPTQ against the calibration feeds")
    explain = commands.add_parser("explain", help="per-layer report of a converted model")
    explain.add_argument("model", help="a file written by `convert`")
    explain.add_argument("--batch", type=int, default=None, help="rows per call to report (default: the rows most layers were tuned at)")
    check = commands.add_parser(
        "check", help="run a plain ONNX model in onnxruntime and converted in sparse_rt; name the first "
                      "value that diverges (exit 1 if any does)")
    check.add_argument("model", help="a plain ONNX file")
    check.add_argument("--shapes", type=_shapes, nargs="+", metavar="NAME=DxD",
                       help="input shapes for symbolic dims (default 1), e.g. input_ids=1x128")
    commands.add_parser("bench", help="benchmark (python -m sparse_rt.bench --help)")
    commands.add_parser("serve", help="HTTP server (python -m sparse_rt serve --help)")
    args = parser.parse_args(argv)
    try:
        return {"convert": _convert, "explain": _explain, "check": _check}[args.command](args)
    except (ValueError, TypeError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
