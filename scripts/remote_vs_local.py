"""Does measuring through a target change the figure? The same cells measured here and on a target,
interleaved (here, there, there, here, ...) so both sides see the same speed states of a shared machine.

Point it at a target that IS this machine (``ssh://you@localhost``, or tests/ssh_server.py's) to see
what the remote path itself costs: the device's worker times in its own process exactly as a local
worker does, so the ratio should be 1 within the machine's noise. Pointed at a real device, the same
table is "how much slower is the Pi". Prints each cell's median per round and the median of the
per-round ratios (there / here) with their range; accuracy must match exactly.

    PYTHONPATH=. python scripts/remote_vs_local.py --target box --targets-file targets.toml \\
        --models digits_cnn,resnet18 --backends onnxruntime,openvino --precisions fp32,int8 --rounds 6
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics

from deploybench.harness.pipeline.matrix import close_workers, open_workers
from deploybench.harness.pipeline.plan import plan_cells
from deploybench.harness.pipeline.remote_worker import RemoteWorker, open_devices
from deploybench.harness.pipeline.settings import RunSettings
from deploybench.harness.measure.timing import TimingRules
from deploybench.harness.remote.targets import targets_to_run
from deploybench.spec import parse_csv


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", required=True)
    parser.add_argument("--targets-file", default=None)
    parser.add_argument("--models", default="digits_cnn")
    parser.add_argument("--backends", default="onnxruntime,openvino")
    parser.add_argument("--precisions", default="fp32,int8")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--seconds", type=float, default=0.5, help="sampling time of each window")
    args = parser.parse_args()
    (target,) = targets_to_run([args.target], args.targets_file)
    settings = RunSettings(timing=TimingRules(min_time_s=args.seconds, median_ci=None))
    opened = open_workers(parse_csv(args.models), settings)
    devices = open_devices([target], settings)
    remote = {info.name: RemoteWorker(worker, devices[0], settings) for info, worker in opened}
    local = {info.name: worker for info, worker in opened}
    cells = [c for c in plan_cells([info for info, _ in opened], parse_csv(args.backends), parse_csv(args.precisions))
             if c.format != "torch"]
    medians: dict[str, list[tuple[float, float]]] = {c.id: [] for c in cells}
    accuracy_differs: set[str] = set()
    try:
        for round_ in range(args.rounds):
            for cell in cells:
                sides = [("here", local[cell.model], cell),
                         ("there", remote[cell.model], dataclasses.replace(cell, target=target.name))]
                if round_ % 2:
                    sides.reverse()
                figures = {}
                for side, worker, measured in sides:
                    result = worker.run_cell(measured, measures=("time", "accuracy"))
                    if not result.ok:
                        print(f"{measured.id}: {result.status}: {result.reason}")
                        figures = {}
                        break
                    figures[side] = result
                if figures:
                    here, there = figures["here"], figures["there"]
                    medians[cell.id].append((here.latency_ms.median, there.latency_ms.median))
                    if here.accuracy.max_abs_error != there.accuracy.max_abs_error:
                        accuracy_differs.add(cell.id)
    finally:
        close_workers(remote.values())
        close_workers(local.values())
        devices[0].close()
    print(f"{'cell':42} {'here ms':>9} {'there ms':>9} {'there/here':>10} {'range':>14}")
    for cell_id, pairs in medians.items():
        if not pairs:
            continue
        ratios = [there / here for here, there in pairs]
        print(f"{cell_id:42} {statistics.median(h for h, _ in pairs):9.3f} {statistics.median(t for _, t in pairs):9.3f} "
              f"{statistics.median(ratios):10.3f} {min(ratios):6.3f}-{max(ratios):.3f}")
    print("accuracy identical here and there" if not accuracy_differs else
          f"accuracy differs for: {', '.join(sorted(accuracy_differs))}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
