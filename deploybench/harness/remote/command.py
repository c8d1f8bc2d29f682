"""``deploybench targets``: list the configured targets and probe each (see ``probe``)."""

from __future__ import annotations

import argparse
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from deploybench.harness.remote.targets import defined_targets, find_pyproject, resolve_targets
from deploybench.harness.remote.transport import DEFAULT_TIMEOUT_S

EXIT_OK, EXIT_TARGET_FAILED, EXIT_NO_TARGET = 0, 1, 3  # 2 (a usage error) is cli.main's
# Probes run side by side, so a run over many targets takes about one target's time.
MAX_PARALLEL_PROBES = 8

EPILOG = """\
A target is ssh://user@host[:port], or a name defined in [tool.deploybench.targets.NAME] of pyproject.toml
or in a targets file (host, user, port, identity_file, python, workdir, backends). SSH uses your own
set-up: ~/.ssh/config, the agent, and known_hosts (an unknown host key is refused, never accepted).
The probe runs a small script in the target's Python and installs nothing there.

exit status: 0 when every target was probed, 1 when any was unreachable or could not be probed,
2 for a usage error (a bad target definition, an unknown name), 3 when no target is defined or named.

examples:
  deploybench targets
  deploybench targets ssh://pi@raspberrypi.local --timeout 30
  deploybench targets pi mac --targets-file ~/deploybench-targets.toml
"""


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number of seconds, e.g. 15")
    return value


def add_targets_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = EPILOG
    parser.add_argument("names", nargs="*", metavar="TARGET",
                        help="targets to probe: defined names or ssh://user@host[:port] (default: every defined one)")
    parser.add_argument("--targets-file", type=Path, default=None, metavar="FILE.toml",
                        help="more targets, one [NAME] table each, with the fields of [tool.deploybench.targets]")
    parser.add_argument("--timeout", type=_positive_seconds, default=DEFAULT_TIMEOUT_S, metavar="S",
                        help=f"seconds each remote step may take: connecting, the probe (default: {DEFAULT_TIMEOUT_S:g})")
    parser.add_argument("--no-probe", action="store_true", help="only list the definitions; connect to nothing")


def targets_command(args: argparse.Namespace) -> int:
    from tabulate import tabulate

    targets = resolve_targets(list(args.names), defined_targets(find_pyproject(), args.targets_file))
    if not targets:
        print("deploybench: no target is defined: name one (deploybench targets ssh://user@host) or define it in "
              "[tool.deploybench.targets.NAME] of pyproject.toml (host = \"...\", user = \"...\")", file=sys.stderr)
        return EXIT_NO_TARGET
    if args.no_probe:
        rows = [[t.name, t.address, t.python, t.workdir, ", ".join(t.backends) or "all", t.defined_in]
                for t in targets]
        print(tabulate(rows, headers=["target", "address", "python", "workdir", "backends", "defined in"],
                       tablefmt="simple"))
        return EXIT_OK
    from deploybench.harness.remote.probe import probe_target

    with ThreadPoolExecutor(max_workers=min(MAX_PARALLEL_PROBES, len(targets))) as pool:
        probes = list(pool.map(lambda target: probe_target(target, args.timeout), targets))
    rows = [[p.target.name, p.target.address, p.status, p.python_text(), p.runtimes_text(), p.machine_text()]
            for p in probes]
    print(tabulate(rows, headers=["target", "address", "status", "python", "backends there", "machine"],
                   tablefmt="simple"))
    notes = [p.error for p in probes if p.error] + [hint for p in probes for hint in p.hints]
    if notes:
        print()
        print("\n".join(notes))
    return EXIT_OK if all(p.ok for p in probes) else EXIT_TARGET_FAILED


__all__ = ["add_targets_arguments", "targets_command"]
