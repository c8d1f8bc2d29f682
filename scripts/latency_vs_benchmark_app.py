"""Does deploybench's single-stream OpenVINO median agree with OpenVINO's own ``benchmark_app``?

Both time the same IR at the same precision with the latency hint's own thread count (benchmark_app
refuses ``-nthreads`` beside ``-hint latency``; ``runtime_notes`` prints what deploybench ran), in alternating short windows (A B B A ...),
because this machine changes speed within seconds: only figures taken side by side compare. Three
measurements per window pair: deploybench compiled static (the default: the shape that is deployed),
deploybench compiled dynamic (``--shapes dynamic``), and ``benchmark_app -hint latency -shape ...``.

    .venv/bin/python scripts/latency_vs_benchmark_app.py --model resnet18 --pairs 9 --seconds 4
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
               "-shape", "[" + ",".join(map(str, shape)) + "]", "-infer_precision", "f32",
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
    args = parser.parse_args()

    from deploybench.converters import deploy_model
    from deploybench.engines import create_deployer
    from deploybench.harness.measure.timing import TimingRules, benchmark_inference
    from deploybench.resolve import get_model

    spec = get_model(args.model)
    artifact = deploy_model(spec, "openvino", precision="fp32")
    inputs = spec.make_inputs(seed=0)
    shape = list(next(iter(inputs.values())).shape)
    rules = TimingRules(min_samples=30, min_time_s=args.seconds, max_time_s=args.seconds * 2)
    static = create_deployer(artifact, backend="openvino", static_dims=dict(spec.dims)).load()
    dynamic = create_deployer(artifact, backend="openvino").load()
    print(f"{args.model}: {artifact.path} at {shape}, {static.runtime_notes['threads']} threads, f32; static: "
          f"{static.runtime_notes['shapes']}; dynamic: {dynamic.runtime_notes['shapes']}")
    rows = []
    for pair in range(args.pairs):
        figures = {}
        order = ["deploybench static", "deploybench dynamic", "benchmark_app"]
        for name in order if pair % 2 == 0 else reversed(order):
            if name == "benchmark_app":
                figures[name] = benchmark_app_median(artifact.path, shape, args.seconds)
            else:
                engine = static if name.endswith("static") else dynamic
                figures[name] = benchmark_inference(engine, inputs, rules=rules).stats.median
        rows.append(figures)
        print(f"pair {pair + 1}: " + ", ".join(f"{k} {v:.3f} ms" for k, v in figures.items()) +
              f"; static/app {figures['deploybench static'] / figures['benchmark_app']:.3f}, "
              f"dynamic/app {figures['deploybench dynamic'] / figures['benchmark_app']:.3f}")
    for name in ("deploybench static", "deploybench dynamic"):
        ratios = sorted(r[name] / r["benchmark_app"] for r in rows)
        print(f"{name} / benchmark_app: median {statistics.median(ratios):.3f} over {len(ratios)} pairs "
              f"(range {ratios[0]:.3f}-{ratios[-1]:.3f})")
    static.close()
    dynamic.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
