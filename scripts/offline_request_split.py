"""How to split 2 cores for offline throughput: one request on two threads, or two requests on one
thread each? For ONNX Runtime (concurrent ``session.run`` calls on one session) and TFLite (one
interpreter per request), ResNet-18 fp32 at batch 1.

Windows of each split alternate in one process (A B, B A, ...) so both see the same speed states of the
shared machine; the figure is the median of the per-pair ratios (two requests / one request), with every
pair printed. Each split has its own engine, loaded once, whose threads are the per-request threads.

    PYTHONPATH=. python scripts/offline_request_split.py --pairs 6 --seconds 3 [--model resnet18]
"""

from __future__ import annotations

import argparse
import os
import statistics

from deploybench.converters import deploy_model
from deploybench.engines import create_deployer
from deploybench.harness.measure.scenarios import run_offline
from deploybench.resolve import get_model


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--pairs", type=int, default=6)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--backends", default="onnxruntime,tflite")
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    spec = get_model(args.model)
    inputs = spec.make_inputs(seed=0)
    for backend in args.backends.split(","):
        artifact = deploy_model(spec, "onnx" if backend == "onnxruntime" else backend)
        # (requests, threads per request): all cores in one request, or one core per request
        splits = [(1, cores), (cores, 1)]
        engines = {split: create_deployer(artifact, backend=backend, threads=split[1]).load() for split in splits}
        ratios = []
        for pair in range(args.pairs):
            order = splits if pair % 2 == 0 else splits[::-1]
            rates = {split: run_offline(engines[split], inputs, min_time_s=args.seconds, requests=split[0],
                                        warmup_s=0.5).samples_per_s for split in order}
            ratios.append(rates[splits[1]] / rates[splits[0]])
            print(f"{backend} pair {pair + 1}: {splits[0][0]}x{splits[0][1]} threads {rates[splits[0]]:.1f}/s, "
                  f"{splits[1][0]}x{splits[1][1]} threads {rates[splits[1]]:.1f}/s, ratio {ratios[-1]:.3f}", flush=True)
        print(f"{backend}: {cores} requests x 1 thread over 1 request x {cores} threads, median of {args.pairs} "
              f"pairs: {statistics.median(ratios):.3f} (min {min(ratios):.3f}, max {max(ratios):.3f})", flush=True)
        for engine in engines.values():
            engine.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
