"""Gate a pytest session (the plugin's ``--deploybench-gate`` and ``--deploybench-gate-ref``) without
importing pytest: the baseline is a results file, or the same selection of tests run again at a git
ref in a temporary worktree of the project, in a pytest process of its own that shares the conversion
cache. Either way the baseline's artifacts that are on this machine are re-run interleaved with the
session's (``command.judge``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from deploybench.harness.gate.command import judge
from deploybench.harness.gate.sources import commit_of, worktrees
from deploybench.harness.gate.verdict import GateSettings, Verdict, load_run
from deploybench.spec import DeployBenchError, Result

# Options of this session that must not reach the baseline's: the gate itself, and outputs that an
# absolute path would make the baseline session overwrite. (name, takes a value)
_NOT_FOR_THE_BASELINE = {"--deploybench-gate": True, "--deploybench-gate-ref": True, "--deploybench-json": True,
                         "--junitxml": True, "--junit-xml": True, "--benchmark-json": True,
                         "--benchmark-save": True, "--benchmark-autosave": False, "--html": True,
                         "--deploybench-planned": True, "--deploybench-shard-universe": True}
BASELINE_SESSION_TIMEOUT_S = 3 * 3600


def baseline_arguments(args: Sequence[str], also: Mapping[str, bool] | None = None) -> list[str]:
    """The session's own command-line arguments without the gate and the output options, nor the options
    in ``also`` ({name: takes a value})."""
    dropped = {**_NOT_FOR_THE_BASELINE, **(also or {})}
    kept: list[str] = []
    skip_value = False
    for arg in args:
        if skip_value:
            skip_value = False
            continue
        name = arg.split("=", 1)[0]
        if name in dropped:
            skip_value = dropped[name] and "=" not in arg
            continue
        kept.append(arg)
    return kept


def _pytest_at(ref: str, args: Sequence[str], folder: Path, cache_dir: str | None, extra: Sequence[str]):
    """Run pytest with ``args`` and ``extra`` in a temporary worktree of ``ref``: (completed process, commit)."""
    with worktrees([ref], cwd=folder) as [(tree, commit)]:
        env = {**os.environ, **({"DEPLOYBENCH_CACHE": cache_dir} if cache_dir else {})}
        command = [sys.executable, "-m", "pytest", *args, "-p", "no:cacheprovider", "-q", *extra]
        try:
            return subprocess.run(command, cwd=tree, env=env, capture_output=True, text=True,
                                  timeout=BASELINE_SESSION_TIMEOUT_S), commit
        except subprocess.TimeoutExpired:
            raise DeployBenchError(f"the baseline session at {ref} ran past {BASELINE_SESSION_TIMEOUT_S} s") from None


def baseline_from_ref(ref: str, args: Sequence[str], folder: Path, cache_dir: str | None,
                      log: Callable[[str], Any], universe: Sequence[str] = ()) -> tuple[list[Result], str]:
    """(cells, label): this session's selection run at ``ref`` in a temporary worktree. ``folder``: where
    the session was started (the same place inside the worktree is used). ``universe``: the cell ids
    both sides plan, which a sharded baseline deals its shard from (``plan.select_shard``)."""
    with tempfile.TemporaryDirectory() as scratch:
        output, dealt = Path(scratch) / "baseline.json", Path(scratch) / "universe.json"
        extra = ["--deploybench-json", str(output)]
        if universe:
            dealt.write_text(json.dumps(sorted(universe)))
            extra += ["--deploybench-shard-universe", str(dealt)]
        log(f"measuring the baseline: {ref} in a temporary worktree")
        done, commit = _pytest_at(ref, baseline_arguments(args), folder, cache_dir, extra)
        if not output.is_file():
            lines = (done.stdout + done.stderr).strip().splitlines()
            raise DeployBenchError(f"the baseline session at {ref} measured no cell (pytest exit {done.returncode}"
                                   f"{': ' + lines[-1] if lines else ''})")
        results, _ = load_run(str(output))
        return results, f"{ref} ({commit[:10]})"


def planned_at_ref(ref: str, args: Sequence[str], folder: Path, cache_dir: str | None,
                   log: Callable[[str], Any]) -> set[str]:
    """The cell ids the same tests plan at ``ref``, all shards (a collect-only session there); empty, and
    said, when that session cannot list them (a ref whose deploybench predates ``--deploybench-planned``)."""
    unsharded = baseline_arguments(args, also={"--shard": True})
    with tempfile.TemporaryDirectory() as scratch:
        listed = Path(scratch) / "planned.json"
        done, _ = _pytest_at(ref, unsharded, folder, cache_dir, ["--co", "--deploybench-planned", str(listed)])
        if listed.is_file():
            return set(json.loads(listed.read_text()))
    lines = (done.stdout + done.stderr).strip().splitlines()
    log(f"the baseline at {ref} did not list its cells ({lines[-1] if lines else f'pytest exit {done.returncode}'}); "
        "each side deals its shard from its own cells, so a cell added or removed may move others between shards")
    return set()


def session_shard(config, cells: Sequence[Any], log: Callable[[str], Any]) -> tuple[list[Any], set[str]]:
    """(the cells of this pytest session's ``--shard``, the universe it was dealt from).

    ``--deploybench-planned FILE`` writes every planned cell id first (what ``planned_at_ref`` reads).
    A sharded session gated against a git ref deals from the union of both sides' planned cells, as
    ``deploybench compare --shard`` does, so a cell both sides plan lands in the same shard on both;
    a baseline session is handed that union with ``--deploybench-shard-universe FILE``."""
    from deploybench.harness.pipeline.plan import parse_shard, select_shard

    planned_path = config.getoption("deploybench_planned", default=None)
    if planned_path:
        Path(planned_path).write_text(json.dumps(sorted(c.id for c in cells)))
    shard = config.getoption("shard", default=None)
    if not shard:
        return list(cells), set()
    universe_path = config.getoption("deploybench_shard_universe", default=None)
    ref = config.getoption("deploybench_gate_ref", default=None)
    universe = {c.id for c in cells}
    if universe_path:
        universe |= set(json.loads(Path(universe_path).read_text()))
    elif ref:
        from deploybench.converters.cache import default_cache_dir

        params = config.invocation_params
        universe |= planned_at_ref(ref, params.args, Path(params.dir), str(Path(default_cache_dir()).resolve()), log)
    return select_shard(cells, *parse_shard(shard), universe=universe), universe


def gate_session(results: list[Result], baseline: str | None, ref: str | None, args: Sequence[str],
                 folder: Path, cache_dir: str | None, threads: int | None,
                 log: Callable[[str], Any], universe: Sequence[str] = ()) -> list[Verdict]:
    """The verdicts of the session's ``results`` against ``baseline`` (a results file or storage id)
    or the same tests at git ``ref`` (a sharded one dealt from ``universe``)."""
    if ref:
        base_results, label = baseline_from_ref(ref, args, folder, cache_dir, log, universe)
    else:
        base_results, path = load_run(baseline)
        label = str(path)
    return judge(base_results, results, GateSettings(), label, "this session", threads=threads, log=log)


def check_gate_options(config) -> None:
    """Raise the one-line ``DeployBenchError`` of a ``--deploybench-gate`` file that cannot be read or a
    ``--deploybench-gate-ref`` that is not a commit here, before the session measures anything."""
    baseline = config.getoption("deploybench_gate", default=None)
    ref = config.getoption("deploybench_gate_ref", default=None)
    if baseline and ref:
        raise DeployBenchError("give --deploybench-gate BASELINE or --deploybench-gate-ref REF, not both")
    if baseline:
        load_run(baseline)
    if ref:
        commit_of(ref, Path(config.invocation_params.dir))


def gate_pytest_session(config, results: list[Result], settings, log: Callable[[str], Any],
                        universe: Sequence[str] = ()) -> list[Verdict]:
    """``gate_session`` with what a pytest ``config`` holds: ``--deploybench-gate``, ``--deploybench-gate-ref``,
    the session's arguments and folder, and the session's conversion cache and threads."""
    from deploybench.converters.cache import default_cache_dir

    params = config.invocation_params
    return gate_session(results, config.getoption("deploybench_gate", default=None),
                        config.getoption("deploybench_gate_ref", default=None), params.args, Path(params.dir),
                        str(Path(settings.cache_dir or default_cache_dir()).resolve()), settings.threads, log,
                        universe)


__all__ = ["baseline_arguments", "baseline_from_ref", "check_gate_options", "gate_pytest_session", "gate_session",
           "planned_at_ref", "session_shard"]
