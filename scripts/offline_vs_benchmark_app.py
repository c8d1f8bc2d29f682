"""deploybench's offline throughput on OpenVINO against OpenVINO's own ``benchmark_app -hint throughput``.

Both run the same IR: ResNet-18 from the zoo, converted with ``deploy_model(..., "openvino")`` and
then saved with a static input shape (``benchmark_app -shape`` compiles static, and ``-ip f32``
keeps its input f32 as ours is, not u8; deploybench's engine compiles what the IR says, so a
dynamic IR would compare two different compilations). Windows of each alternate in one run
(A B, B A, ...) so both see the same speed states of the machine; the figure is the median of the
per-pair ratios, with every pair printed. The engine stays loaded while benchmark_app runs.

    PYTHONPATH=. python scripts/offline_vs_benchmark_app.py --pairs 5 --seconds 10 [--json out.json]

``--dynamic`` adds deploybench on the IR as converted (dynamic batch) as a third column.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np


def static_ir(xml: Path, shape: list[int], out_dir: Path) -> Path:
    """``xml`` reshaped to ``shape`` and saved (weights unchanged): the IR both tools will run."""
    import openvino as ov

    model = ov.Core().read_model(str(xml))
    model.reshape({model.inputs[0].get_any_name(): ov.PartialShape(shape)})
    target = out_dir / "model_static.xml"
    ov.save_model(model, str(target), compress_to_fp16=False)
    return target


def benchmark_app(xml: Path, shape: list[int], seconds: float) -> dict:
    """One ``benchmark_app -hint throughput`` window: its FPS, streams and requests as it printed them."""
    exe = Path(sys.executable).with_name("benchmark_app")
    command = [str(exe), "-m", str(xml), "-d", "CPU", "-hint", "throughput", "-infer_precision", "f32", "-ip", "f32",
               "-shape", "[" + ",".join(map(str, shape)) + "]", "-t", str(int(seconds))]
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    found = lambda pattern: re.search(pattern, out)  # noqa: E731
    return {"fps": float(found(r"Throughput:\s+([\d.]+) FPS").group(1)),
            "streams": int(found(r"NUM_STREAMS: (\d+)").group(1)) if found(r"NUM_STREAMS: (\d+)") else None,
            "requests": int(found(r"(\d+) inference requests")
                            .group(1)) if found(r"(\d+) inference requests") else None,
            "median_latency_ms": float(found(r"Median:\s+([\d.]+) ms").group(1)) if found(r"Median:\s+([\d.]+) ms")
            else None, "command": " ".join(command)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--cache", default=None, help="conversion cache (default: $DEPLOYBENCH_CACHE)")
    parser.add_argument("--dynamic", action="store_true", help="also run deploybench on the dynamic IR")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    from deploybench.converters import artifact_from_path, deploy_model
    from deploybench.engines import create_deployer, engine_class
    from deploybench.harness.measure.scenarios import run_offline
    from deploybench.resolve import get_model

    artifact = deploy_model(get_model("resnet18"), "openvino", output_dir=args.cache, precision="fp32")
    shape = [args.batch, 3, 224, 224]
    work = Path(tempfile.mkdtemp(prefix="offline-vs-bapp-"))
    xml = static_ir(artifact.path, shape, work)
    inputs = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    options = engine_class("openvino").throughput_options
    engines = {"deploybench": create_deployer(artifact_from_path(xml), backend="openvino", **options).load()}
    if args.dynamic:
        engines["deploybench_dynamic_ir"] = create_deployer(artifact, backend="openvino", **options).load()
    rows = []
    for pair in range(args.pairs):
        order = ["deploybench", "benchmark_app"] if pair % 2 == 0 else ["benchmark_app", "deploybench"]
        row = {"pair": pair, "order": order, "loadavg": os.getloadavg()[0]}
        for side in order + [k for k in engines if k != "deploybench"]:
            if side == "benchmark_app":
                row["benchmark_app"] = benchmark_app(xml, shape, args.seconds)
            else:
                result = run_offline(engines[side], inputs, min_time_s=args.seconds)
                row[side] = {"fps": result.samples_per_s, "requests": result.requests,
                             "streams": result.notes.get("streams"), "mean_in_flight": result.mean_in_flight,
                             "median_latency_ms": result.latency.median}
        row["ratio"] = row["deploybench"]["fps"] / row["benchmark_app"]["fps"]
        rows.append(row)
        print(f"pair {pair}: deploybench {row['deploybench']['fps']:.2f} FPS "
              f"({row['deploybench']['requests']} requests, {row['deploybench']['streams']} streams, "
              f"in flight {row['deploybench']['mean_in_flight']:.2f}), benchmark_app "
              f"{row['benchmark_app']['fps']:.2f} FPS ({row['benchmark_app']['requests']} requests, "
              f"{row['benchmark_app']['streams']} streams): ratio {row['ratio']:.3f}"
              + (f"; dynamic IR {row['deploybench_dynamic_ir']['fps']:.2f} FPS" if args.dynamic else "")
              + f"  [load {row['loadavg']:.2f}]", flush=True)
    for engine in engines.values():
        engine.close()
    ratios = [r["ratio"] for r in rows]
    summary = {"median_ratio": statistics.median(ratios), "min_ratio": min(ratios), "max_ratio": max(ratios),
               "within_10_percent": abs(statistics.median(ratios) - 1) <= 0.10, "ir": str(xml),
               "source_ir": str(artifact.path), "shape": shape, "seconds": args.seconds, "pairs": rows}
    print(f"median ratio deploybench / benchmark_app over {len(rows)} pairs: {summary['median_ratio']:.3f} "
          f"(range {summary['min_ratio']:.3f}-{summary['max_ratio']:.3f}); within 10 %: "
          f"{summary['within_10_percent']}")
    print(f"benchmark_app command: {rows[0]['benchmark_app']['command']}")
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
