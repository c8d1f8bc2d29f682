"""Does compiling for the deployed shape change the speed? Per backend, the same artifact loaded static
(``static_dims``: what a cell measures by default) and dynamic (``--shapes dynamic``), timed in
alternating short windows in this one process (this machine changes speed within seconds).

    .venv/bin/python scripts/static_vs_dynamic.py --model resnet18 --backends onnxruntime,openvino --pairs 9
"""

from __future__ import annotations

import argparse
import statistics


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--backends", default="onnxruntime,openvino")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--pairs", type=int, default=9)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    from deploybench.converters import deploy_model
    from deploybench.engines import create_deployer, engine_class
    from deploybench.harness.measure.timing import TimingRules, benchmark_inference
    from deploybench.resolve import get_model

    spec = get_model(args.model)
    dims = {**spec.dims, "batch": args.batch}
    inputs = spec.make_inputs(seed=0, dims=dims)
    # equal windows on both sides of each pair: no extra sampling for the median's interval
    rules = TimingRules(min_samples=20, min_time_s=args.seconds, max_time_s=args.seconds * 2, median_ci=None)
    for backend in args.backends.split(","):
        fmt = engine_class(backend).formats[0]
        artifact = deploy_model(spec, fmt, precision="fp32")
        static = create_deployer(artifact, backend=backend, threads=args.threads, static_dims=dims).load()
        dynamic = create_deployer(artifact, backend=backend, threads=args.threads).load()
        ratios = []
        for pair in range(args.pairs):
            order = (static, dynamic) if pair % 2 == 0 else (dynamic, static)
            medians = {id(engine): benchmark_inference(engine, inputs, rules=rules).stats.median for engine in order}
            ratios.append(medians[id(dynamic)] / medians[id(static)])
        ratios.sort()
        print(f"{args.model} b{args.batch} {fmt} on {backend}: dynamic / static median {statistics.median(ratios):.3f} "
              f"over {len(ratios)} pairs (range {ratios[0]:.3f}-{ratios[-1]:.3f}); static: "
              f"{static.runtime_notes['shapes']}")
        static.close()
        dynamic.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
