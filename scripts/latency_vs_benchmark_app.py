"""Does deploybench's single-stream OpenVINO median agree with OpenVINO's own ``benchmark_app``?

Both time the same IR at the same precision with f32 input (``-ip f32``: benchmark_app would feed u8
through a Convert) and the latency hint's own thread count (benchmark_app refuses ``-nthreads``
beside ``-hint latency``; ``runtime_notes`` prints what deploybench ran), in alternating short
windows (A B B A ...), because this machine changes speed within seconds: only figures taken side
by side compare. Per window pair: deploybench compiled static (the default: the shape that is
deployed), deploybench compiled dynamic (``--shapes dynamic``; left out with ``--without-dynamic``,
since a second compiled model keeps its own thread pool in the process), and
``benchmark_app -hint latency -shape ...``.

    .venv/bin/python scripts/latency_vs_benchmark_app.py --model resnet18 --pairs 12 --seconds 3 --without-dynamic
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
from pathlib import Path

MEDIAN = re.compile(r"Median:\s+([\d.]+)\s*ms")


def benchmark_app_median(xml: Path, shape: list[int], seconds: int) -> float:
    command = [str(Path(sys.executable).with_name("benchmark_app")), "-m", str(xml), "-d", "CPU", "-hint", "latency",
               "-shape", "[" + ",".join(map(str, shape)) + "]", "-infer_precision", "f32", "-ip", "f32",
               "-t", str(seconds)]  # benchmark_app takes whole seconds
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    found = MEDIAN.search(done.stdout)
    if not found:
        raise SystemExit(f"no median in benchmark_app's output:\n{done.stdout[-2000:]}")
    return float(found.group(1))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--pairs", type=int, default=9)
    parser.add_argument("--seconds", type=int, default=3)
    parser.add_argument("--without-dynamic", action="store_true",
                        help="time only the static engine: a second compiled model in the process keeps its own "
                             "thread pool, which may disturb the first")
    args = parser.parse_args()

    from deploybench.converters import deploy_model
    from deploybench.engines import create_deployer
    from deploybench.harness.measure.timing import TimingRules, benchmark_inference
    from deploybench.resolve import get_model

    spec = get_model(args.model)
    artifact = deploy_model(spec, "openvino", precision="fp32")
    inputs = spec.make_inputs(seed=0)
    shape = list(next(iter(inputs.values())).shape)
    # equal windows, as benchmark_app times them: no extra sampling for the median's interval
    rules = TimingRules(min_samples=30, min_time_s=args.seconds, max_time_s=args.seconds * 2, median_ci=None)
    static = create_deployer(artifact, backend="openvino", static_dims=dict(spec.dims)).load()
    dynamic = None if args.without_dynamic else create_deployer(artifact, backend="openvino").load()
    print(f"{args.model}: {artifact.path} at {shape}, {static.runtime_notes['threads']} threads, f32; static: "
          f"{static.runtime_notes['shapes']}" + (f"; dynamic: {dynamic.runtime_notes['shapes']}" if dynamic else ""))
    rows = []
    for pair in range(args.pairs):
        figures = {}
        order = ["deploybench static", "benchmark_app"] if dynamic is None else \
            ["deploybench static", "deploybench dynamic", "benchmark_app"]
        for name in order if pair % 2 == 0 else reversed(order):
            if name == "benchmark_app":
                figures[name] = benchmark_app_median(artifact.path, shape, args.seconds)
            else:
                engine = static if name.endswith("static") else dynamic
                figures[name] = benchmark_inference(engine, inputs, rules=rules).stats.median
        rows.append(figures)
        print(f"pair {pair + 1}: " + ", ".join(f"{k} {v:.3f} ms" for k, v in figures.items()))
    for name in [n for n in order if n != "benchmark_app"]:
        ratios = sorted(r[name] / r["benchmark_app"] for r in rows)
        print(f"{name} / benchmark_app: median {statistics.median(ratios):.3f} over {len(ratios)} pairs "
              f"(range {ratios[0]:.3f}-{ratios[-1]:.3f})")
    for engine in (static, dynamic):
        if engine is not None:
            engine.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
