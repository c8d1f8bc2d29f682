"""deploybench's pytest plugin (loaded through the `pytest11` entry point in every pytest run).

Thin, like pytest-benchmark's: options, hooks and fixtures. The work is the one cell pipeline,
run in a worker process per model (``pipeline``): a cell is measured once, for what the selected
tests of that cell need (speed, memory, precision), and each test asserts its part of the
``Result``. A test that uses none of the fixtures below is untouched.

A test that asks for ``cell`` (directly or through ``model``, ``backend``, ``precision``,
``deploybench_result``, ``artifact``, ``engine``) is parametrized over the planned cells, with ids
like ``resnet18-onnx-openvino-fp32`` and a marker per registered backend, so ``-k``, ``-m openvino``,
``--co``, ``--junitxml`` and sharding work as pytest users expect. Planning converts nothing.
"""

from __future__ import annotations

from collections.abc import Mapping

import pytest

from deploybench.harness.pipeline import settings as run_options
from deploybench.harness.session_state import DeployBenchState, terminal_writer
from deploybench.spec import DeployBenchError

MARKERS = {
    "slow": "slower than ~15 s; left out of the fast path with -m 'not slow'",
    "speed": "a deploybench latency benchmark of one cell",
    "memory": "a deploybench peak-memory measurement of one cell, in a child process",
    "precision": "a deploybench accuracy check of one cell against the fp32 reference",
}
# Which measurement of the pipeline each benchmark marker needs.
MARKER_MEASURES = {"speed": "time", "memory": "memory", "precision": "accuracy"}

_STATE_KEY = pytest.StashKey["DeployBenchState"]()


# ---- options and configuration ---------------------------------------------------------------

def pytest_addoption(parser):
    group = parser.getgroup("deploybench", "deploybench: cells of model x format x backend x precision")
    group.addoption("--models", default=None,
                    help="comma-separated models: zoo names, file.py:factory[@1x3x64x64], .onnx/.tflite/.xml files")
    group.addoption("--backends", default=None, help="comma-separated backends (default from [tool.deploybench])")
    group.addoption("--precisions", default=None, help="comma-separated precisions: fp32, fp16, bf16, int8, int8ac")
    group.addoption("--shard", default=None, metavar="i/n", help="run only shard i of n (1-based; sizes differ by one at most)")
    group.addoption("--target", action="append", default=None, metavar="NAME",
                    help="measure on this machine (a [tool.deploybench.targets] name, ssh://user@host[:port], or "
                         "`local`); repeat for several; each cell id gets @NAME")
    group.addoption("--targets-file", default=None, metavar="FILE.toml", help="more targets, one [NAME] table each")
    group.addoption("--deploybench-json", default=None, metavar="PATH",
                    help="write the session's matrix in the `deploybench run` JSON schema")
    group.addoption("--deploybench-gate", default=None, metavar="BASELINE",
                    help="gate the session's results against a baseline JSON or storage id; exit 1 on regression")
    group.addoption("--deploybench-gate-ref", default=None, metavar="REF",
                    help="gate against the same tests run at git REF (e.g. origin/main) in a temporary worktree")
    group.addoption("--deploybench-planned", default=None, metavar="FILE", help="write every planned cell id (JSON)")
    group.addoption("--deploybench-shard-universe", default=None, metavar="FILE",
                    help="deal --shard from these cell ids too (JSON; what a sharded gate hands its baseline)")
    run_options.add_options(group.addoption, edge="pytest")


def _register_markers(config) -> None:
    from deploybench.engines import ENGINES

    for name, description in MARKERS.items():
        config.addinivalue_line("markers", f"{name}: {description}")
    for backend in ENGINES.names():  # built-in or from another package's entry point
        config.addinivalue_line("markers", f"{backend}: a cell run on the {backend} backend")


def pytest_configure(config):
    _register_markers(config)
    state = config.stash[_STATE_KEY] = DeployBenchState(config)
    from deploybench.harness.pipeline.plan import check_backends, check_precisions, parse_shard
    from deploybench.harness.results.io import check_writable

    try:  # bad option values stop the run before collection, with the fix in one line
        if config.getoption("shard", default=None):
            parse_shard(config.getoption("shard"))
        check_backends(state.list_option("backends", ()))
        check_precisions(state.list_option("precisions", ()))
        state.settings  # noqa: B018 - validates every measurement option now
        check_writable(config.getoption("deploybench_json", default=None))  # refused now, not at the end
        if _gate_asked(config):  # a baseline that cannot be read fails now, not after every test ran
            from deploybench.harness.gate.session import check_gate_options

            check_gate_options(config)
    except DeployBenchError as exc:
        raise pytest.UsageError(f"deploybench: {exc}") from None


def pytest_unconfigure(config):
    state = config.stash.get(_STATE_KEY, None)
    if state is not None:
        state.close_all()


def _state(config) -> DeployBenchState:
    return config.stash[_STATE_KEY]


# ---- parametrization -------------------------------------------------------------------------

def _user_models(metafunc) -> list:
    """ModelSpecs from a ``deploybench_models`` fixture visible to this test (its conftest.py)."""
    from deploybench.resolve import model_spec
    from deploybench.spec import ModelSpec

    manager = metafunc.config.pluginmanager.get_plugin("funcmanage")
    definitions = manager.getfixturedefs("deploybench_models", metafunc.definition) if manager else None
    if not definitions:
        return []
    value = definitions[-1].func()
    if hasattr(value, "__next__"):
        value = next(value)
    if value is None:
        return []
    if isinstance(value, Mapping):
        items = list(value.items())
    else:
        items = [(None, item) for item in (value if isinstance(value, (list, tuple)) else [value])]
    specs = []
    for name, item in items:
        if isinstance(item, (ModelSpec, str)):
            specs.append(item)
        elif isinstance(item, tuple) and len(item) == 2:
            specs.append(model_spec(item[0], example_inputs=item[1], name=name))
        else:
            raise DeployBenchError(f"deploybench_models returned {type(item).__name__}; return ModelSpecs, "
                                   "(nn.Module, example_inputs) pairs or model refs")
    return specs


def pytest_generate_tests(metafunc):
    if "cell" not in metafunc.fixturenames:
        return
    state = _state(metafunc.config)
    try:
        # planned once per session: the first test that asks for cells supplies the user's models
        cells = state.plan(_user_models(metafunc) if state._planned is None else [])
    except DeployBenchError as exc:
        raise pytest.UsageError(f"deploybench: {exc}") from None
    params = [pytest.param(cell, id=cell.id, marks=[getattr(pytest.mark, cell.backend)]) for cell in cells]
    metafunc.parametrize("cell", params, indirect=True)


@pytest.hookimpl(trylast=True)  # after -k / -m deselection: measure only what the selected tests need
def pytest_collection_modifyitems(session, config, items):
    state = _state(config)
    found = False
    for item in items:
        callspec = getattr(item, "callspec", None)
        cell = callspec.params.get("cell") if callspec else None
        if cell is None or not hasattr(cell, "id"):
            continue
        found = True
        wanted = state.measures.setdefault(cell.id, set())
        wanted.update(measure for marker, measure in MARKER_MEASURES.items() if item.get_closest_marker(marker))
    if found:
        # Keep every raw sample in --benchmark-autosave/--benchmark-save files: the gate tests
        # distributions, not just the stored summary.
        benchmark_session = getattr(config, "_benchmarksession", None)
        if benchmark_session is not None:
            benchmark_session.save_data = True


# ---- fixtures --------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def deploybench_state(request) -> DeployBenchState:
    """The plugin's session state: settings, models, workers and the Results being collected."""
    return _state(request.config)


@pytest.fixture(scope="session")
def deploybench_settings(deploybench_state):
    """The ``RunSettings`` (threads, seed, timing rules, memory, timeout, tolerances) of this session."""
    return deploybench_state.settings


@pytest.fixture
def cell(request):
    """The ``Cell`` (model, format, backend, precision) this test runs."""
    return request.param


@pytest.fixture
def model(cell, deploybench_state):
    """The cell's ``ModelInfo``: name, ref, task, and whether it is a PyTorch network or a model file."""
    return deploybench_state.infos[cell.model]


@pytest.fixture
def backend(cell) -> str:
    return cell.backend


@pytest.fixture
def fmt(cell) -> str:
    return cell.format


@pytest.fixture
def precision(cell) -> str:
    return cell.precision


@pytest.fixture
def deploybench_result(cell, deploybench_state):
    """The cell's ``Result``, measured once in its model's worker by the one pipeline. A cell that could
    not run skips (a backend missing here, a precision it lacks) or fails (with the stage) every test of it."""
    result = deploybench_state.result(cell)
    if result.status == "skipped":
        pytest.skip(f"{cell.id}: {result.reason}")
    if not result.ok:
        pytest.fail(f"{cell.id} {result.status}: {result.reason}", pytrace=False)
    return result


# ---- in this process, for a project's own tests that want the objects themselves ------------
def _here(state: DeployBenchState, cell, key: str, make):
    if (cell.id, key) not in state.in_process:
        from deploybench.harness.pipeline.stages import CellStopped, one_line
        from deploybench.spec import NotSupported

        try:
            state.in_process[(cell.id, key)] = make()
        except (CellStopped, NotSupported) as stop:
            pytest.skip(f"{cell.id}: {getattr(stop, 'reason', None) or one_line(stop)}")
        except Exception as exc:
            pytest.fail(f"{cell.id}: {key}: {one_line(exc)}", pytrace=False)
    return state.in_process[(cell.id, key)]


@pytest.fixture
def model_spec(cell, deploybench_state):
    """The cell's ``ModelSpec`` built in this process (model code runs here, without a worker's isolation)."""
    state = deploybench_state

    def make():
        from deploybench.resolve import ModelSource

        model = state.models[cell.model]
        return model if not isinstance(model, str) else ModelSource(ref=model).resolve()

    return _here(state, cell, "model", make)


@pytest.fixture
def inputs(cell, model_spec, deploybench_settings):
    """Seeded inputs of the model at the cell's sizes, the same ones the pipeline measures every backend on."""
    return model_spec.make_inputs(seed=deploybench_settings.seed, dims=deploybench_settings.for_cell(cell).dims)


@pytest.fixture
def artifact(cell, model_spec, deploybench_state):
    """The cell's converted ``Artifact`` (from the conversion cache after the first conversion), made in
    this process by the pipeline's own stages; a backend that cannot run here skips with the reason."""
    from deploybench.harness.pipeline import stages

    def make():
        stages.check_availability(cell)
        return stages.convert(model_spec, cell, deploybench_state.settings)

    return _here(deploybench_state, cell, "artifact", make)


@pytest.fixture
def engine(cell, model_spec, artifact, deploybench_state):
    """A loaded ``InferenceEngine`` of the cell in this process (compiled for the cell's shape as the pipeline
    does), built once and closed at session end."""
    from deploybench.harness.pipeline import stages

    settings = deploybench_state.settings.for_cell(cell)
    return _here(deploybench_state, cell, "engine",
                 lambda: stages.load(cell, artifact, settings, **stages.engine_options(cell, model_spec, settings)))


# ---- session end: matrix table, JSON, gate ---------------------------------------------------

def _session_matrix(state):
    from deploybench.harness.measure.machine import machine_info
    from deploybench.harness.pipeline.matrix import matrix_machine
    from deploybench.harness.report.matrix import Matrix

    results = list(state.results.values())
    return Matrix(results=results, machine=matrix_machine(results, machine_info(), state.devices),
                  settings={"source": "pytest", **state.settings.to_dict()})


@pytest.hookimpl(optionalhook=True)
def pytest_benchmark_update_machine_info(config, machine_info):
    """A session that ran cells on targets stores every machine they ran on beside pytest-benchmark's own
    block (this machine's), so a stored run reads back with each cell's machine (``results.io``)."""
    state = config.stash.get(_STATE_KEY, None)
    if state is None or not state.devices:
        return
    machine = _session_matrix(state).machine  # {machine_id: block}, or one block when one machine ran them all
    machine_info["deploybench_machines"] = {machine["machine_id"]: machine} if "machine_id" in machine else machine


def pytest_sessionfinish(session, exitstatus):
    state = session.config.stash.get(_STATE_KEY, None)
    if state is None:
        return
    state.close_all()
    if not state.results:
        return
    path = session.config.getoption("deploybench_json", default=None)
    if path:
        state.json_written, state.json_failure = _session_matrix(state).save_or_keep(path)
    if _gate_asked(session.config):
        from deploybench.harness.gate.session import gate_pytest_session
        from deploybench.harness.gate.verdict import has_regression

        try:
            state.verdicts = gate_pytest_session(session.config, list(state.results.values()), state.settings,
                                                 terminal_writer(session.config, "deploybench gate: "), state.universe)
        except DeployBenchError as exc:
            state.gate_error = str(exc)
            session.exitstatus = pytest.ExitCode.USAGE_ERROR
            return
        if has_regression(state.verdicts) and session.exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED


def _gate_asked(config) -> bool:
    return any(config.getoption(name, default=None) for name in ("deploybench_gate", "deploybench_gate_ref"))


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    state = config.stash.get(_STATE_KEY, None)
    if state is None or not state.results:
        return
    from deploybench.harness.report.table import terminal_table

    terminalreporter.section("deploybench matrix")
    terminalreporter.write_line(terminal_table(list(state.results.values())))
    if state.json_written:  # --deploybench-json, or where the matrix was kept when that could not be written
        terminalreporter.write_line(f"deploybench: {state.json_failure}; kept in {state.json_written}" if
                                    state.json_failure else f"deploybench: matrix written to {state.json_written}")
    if state.gate_error:
        terminalreporter.write_line(f"deploybench gate: {state.gate_error}", red=True)
    elif _gate_asked(config):
        from deploybench.harness.gate.verdict import has_regression, verdict_table

        terminalreporter.section("deploybench gate")
        terminalreporter.write_line(verdict_table(state.verdicts))
        if has_regression(state.verdicts):
            terminalreporter.write_line("deploybench gate: regression -> exit status 1", red=True)


__all__ = ["MARKERS", "DeployBenchState"]
