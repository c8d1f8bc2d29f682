"""deploybench's pytest plugin (loaded through the `pytest11` entry point in every pytest run).

Thin, like pytest-benchmark's: options, hooks and fixtures; the work is in ``matrix``, ``timing``,
``memory``, ``precision`` and ``gate``. A test that uses none of the fixtures below is untouched.

A test that asks for ``cell`` (directly or through ``model``, ``backend``, ``precision``,
``artifact``, ``engine``) is parametrized over the planned cells, with ids like
``resnet18-onnx-openvino-fp32`` and a marker per backend, so ``-k``, ``-m openvino``, ``--co``,
``--junitxml`` and sharding work as pytest users expect. Planning converts nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

MARKERS = {
    "slow": "slower than ~15 s; left out of the fast path with -m 'not slow'",
    "speed": "a deploybench latency benchmark of one cell",
    "memory": "a deploybench peak-memory measurement of one cell, in a child process",
    "precision": "a deploybench accuracy check of one cell against the fp32 reference",
    "torch": "a cell run on the PyTorch backend",
    "onnxruntime": "a cell run on the ONNX Runtime backend",
    "openvino": "a cell run on the OpenVINO backend",
    "tflite": "a cell run on the LiteRT (TFLite) backend",
    "coreml": "a cell run on the Core ML backend",
    "tensorrt": "a cell run on the TensorRT backend",
}

DEFAULT_MODELS = ("digits_cnn",)
DEFAULT_BACKENDS = ("torch", "onnxruntime", "openvino")
DEFAULT_PRECISIONS = ("fp32",)
TOLERANCE_ALIASES = {"top1": "top1_agreement", "metric": "metric_value", "cos": "cosine"}

_STATE_KEY = pytest.StashKey["DeployBenchState"]()


# ---------------------------------------------------------------------------------------------
# options and configuration
# ---------------------------------------------------------------------------------------------

def pytest_addoption(parser):
    group = parser.getgroup("deploybench", "deploybench: cells of model x format x backend x precision")
    group.addoption("--models", default=None,
                    help="comma-separated models: zoo names, file.py:factory[@1x3x64x64], .onnx/.tflite/.xml files")
    group.addoption("--backends", default=None, help="comma-separated backends (default from [tool.deploybench])")
    group.addoption("--precisions", default=None, help="comma-separated precisions: fp32, fp16, bf16, int8")
    group.addoption("--threads", type=int, default=None, help="threads per engine (default: the backend's)")
    group.addoption("--deploybench-cache", default=None, metavar="DIR", help="conversion cache directory")
    group.addoption("--cell-timeout", type=float, default=None, metavar="S",
                    help="seconds a memory child may run before it is killed (default 300)")
    group.addoption("--shard", default=None, metavar="i/n", help="run only shard i of n (1-based), by a stable hash")
    group.addoption("--deploybench-json", default=None, metavar="PATH",
                    help="write the session's matrix in the `deploybench run` JSON schema")
    group.addoption("--deploybench-gate", default=None, metavar="BASELINE",
                    help="gate the session's results against a baseline JSON or storage id; exit 1 on regression")
    group.addoption("--tolerance", action="append", default=[], metavar="PREC:KEY=VALUE",
                    help="accuracy tolerance override, e.g. int8:top1=0.97 (repeatable)")


def pytest_configure(config):
    for name, description in MARKERS.items():
        config.addinivalue_line("markers", f"{name}: {description}")
    config.stash[_STATE_KEY] = DeployBenchState(config)
    from deploybench.spec import DeployBenchError
    from deploybench.harness.pipeline.matrix import parse_shard

    try:  # bad option values stop the run before collection, with the fix in one line
        if config.getoption("shard", default=None):
            parse_shard(config.getoption("shard"))
        parse_tolerances(config.getoption("tolerance", default=[]))
    except DeployBenchError as exc:
        raise pytest.UsageError(f"deploybench: {exc}") from None


def pytest_unconfigure(config):
    state = config.stash.get(_STATE_KEY, None)
    if state is not None:
        state.close_all()


def _pyproject_defaults(config) -> dict[str, Any]:
    path = Path(config.rootpath) / "pyproject.toml"
    if not path.is_file():
        return {}
    import tomllib

    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError):
        return {}
    return dict(data.get("tool", {}).get("deploybench", {}) or {})


def parse_tolerances(entries) -> dict[str, dict[str, float]]:
    """['int8:top1=0.97', 'fp16:cosine=0.999'] -> {'int8': {'top1_agreement': 0.97}, ...}."""
    from deploybench.spec import DeployBenchError

    tolerances: dict[str, dict[str, float]] = {}
    for entry in entries or ():
        for part in str(entry).split(","):
            precision, _, rule = part.strip().partition(":")
            key, _, value = rule.partition("=")
            try:
                number = float(value)
            except ValueError:
                raise DeployBenchError(f"bad --tolerance {part!r}: write precision:key=value, "
                                       "e.g. int8:top1=0.97") from None
            key = TOLERANCE_ALIASES.get(key.strip(), key.strip())
            tolerances.setdefault(precision.strip(), {})[key] = number
    return tolerances


class DeployBenchState:
    """Everything the plugin keeps for one session: settings, models, caches, results by cell."""

    def __init__(self, config):
        self.config = config
        self._settings = None
        self.specs: dict[str, Any] = {}
        self.inputs: dict[str, dict] = {}
        self.references: dict[str, Any] = {}  # model name -> precision.Reference
        self.artifacts: dict[str, Any] = {}  # cell id -> Artifact or ("skip"|"fail", reason)
        self.engines: dict[str, Any] = {}
        self.pending: dict[str, int] = {}  # cell id -> tests of it not yet torn down
        self.results: dict[str, Any] = {}  # cell id -> Result
        self.verdicts: list = []
        self.gate_error: str | None = None
        self._planned: list | None = None

    # ---- configuration ------------------------------------------------------------------
    def option(self, name: str, default=None):
        value = self.config.getoption(name, default=None)
        if value is None:
            value = _pyproject_defaults(self.config).get(name.replace("-", "_"), default)
        return value

    @property
    def settings(self):
        """The ``RunSettings`` every cell of the session is measured with."""
        if self._settings is None:
            from deploybench.harness.pipeline.matrix import RunSettings

            timeout = self.option("cell_timeout")
            cache = self.option("deploybench_cache")
            self._settings = RunSettings(
                threads=self.option("threads"), timeout_s=float(timeout) if timeout else 300.0,
                cache_dir=str(cache) if cache else None,
                tolerances=parse_tolerances(self.config.getoption("tolerance", default=[]) or
                                            _pyproject_defaults(self.config).get("tolerance", [])))
        return self._settings

    def model_refs(self) -> list[str]:
        from deploybench.spec import parse_csv

        explicit = self.config.getoption("models", default=None)
        if explicit is not None:
            return parse_csv(explicit)
        return parse_csv(_pyproject_defaults(self.config).get("models"))

    def list_option(self, name: str, fallback) -> list[str]:
        from deploybench.spec import parse_csv

        return parse_csv(self.option(name)) or list(fallback)

    # ---- models and cells ---------------------------------------------------------------
    def load_specs(self, extra_models) -> list:
        """ModelSpecs of --models / [tool.deploybench] models plus the ``deploybench_models`` fixture's."""
        from deploybench.models import get_model, resolve_ref

        refs = self.model_refs()
        specs = []
        for ref in refs:
            if ref not in self.specs:
                self.specs[ref] = resolve_ref(ref) if "@" in ref else get_model(ref)
            specs.append(self.specs[ref])
        for spec in extra_models:
            self.specs.setdefault(spec.name, spec)
            specs.append(self.specs[spec.name])
        if not specs:
            for ref in DEFAULT_MODELS:
                self.specs.setdefault(ref, get_model(ref))
                specs.append(self.specs[ref])
        for spec in specs:
            self.specs[spec.name] = spec
        return specs

    def plan(self, extra_models) -> list:
        """The cells of this session (shard applied), planned once."""
        if self._planned is None:
            from deploybench.harness.pipeline.matrix import parse_shard, plan_cells, select_shard

            specs = self.load_specs(extra_models)
            cells = plan_cells(specs, self.list_option("backends", DEFAULT_BACKENDS),
                               self.list_option("precisions", DEFAULT_PRECISIONS))
            shard = self.config.getoption("shard", default=None)
            if shard:
                cells = select_shard(cells, *parse_shard(shard))
            self._planned = cells
        return self._planned

    # ---- per-cell objects -----------------------------------------------------------------
    def result(self, cell):
        """The session's ``Result`` of ``cell``: speed, memory and precision tests fill its parts."""
        from deploybench.spec import Result

        if cell.id not in self.results:
            from deploybench.harness.pipeline.matrix import _rebuildable_ref

            spec = self.specs.get(cell.model)
            result = Result(cell=cell)
            result.extra["seed"] = self.settings.seed
            ref = _rebuildable_ref(spec) if spec is not None else None
            if ref:  # lets `deploybench gate --interleave` rebuild the model in another process
                result.extra["model_ref"] = ref
            self.results[cell.id] = result
        return self.results[cell.id]

    def mark_not_run(self, cell, status: str, reason: str) -> None:
        result = self.result(cell)
        if result.status == "ok":
            result.status, result.reason = status, reason

    def release(self, cell_id: str) -> None:
        """One test of the cell is done; close its engine after the last one."""
        if cell_id not in self.pending:
            return
        self.pending[cell_id] -= 1
        if self.pending[cell_id] <= 0:
            engine = self.engines.pop(cell_id, None)
            if engine is not None:
                engine.close()

    def close_all(self) -> None:
        for runner in [*self.engines.values(), *self.references.values()]:
            try:
                runner.close()
            except Exception:  # closing at exit must not mask the session's outcome
                pass
        self.engines.clear()
        self.references.clear()


def _state(config) -> DeployBenchState:
    return config.stash[_STATE_KEY]


# ---------------------------------------------------------------------------------------------
# parametrization
# ---------------------------------------------------------------------------------------------

def _user_models(metafunc) -> list:
    """ModelSpecs from a ``deploybench_models`` fixture visible to this test (its conftest.py)."""
    from deploybench.models import model_spec
    from deploybench.spec import DeployBenchError, ModelSpec

    manager = metafunc.config.pluginmanager.get_plugin("funcmanage")
    definitions = None
    if manager is not None:
        try:
            definitions = manager.getfixturedefs("deploybench_models", metafunc.definition)
        except TypeError:  # older pytest took the node id
            definitions = manager.getfixturedefs("deploybench_models", metafunc.definition.nodeid)
    if not definitions:
        return []
    func = definitions[-1].func
    value = func()
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
        if isinstance(item, ModelSpec):
            specs.append(item)
        elif isinstance(item, tuple) and len(item) == 2:
            specs.append(model_spec(item[0], example_inputs=item[1], name=name))
        elif isinstance(item, str):
            specs.append(model_spec(item))
        else:
            raise DeployBenchError(f"deploybench_models returned {type(item).__name__}; return ModelSpecs, "
                                   "(nn.Module, example_inputs) pairs or model refs")
    return specs


def pytest_generate_tests(metafunc):
    if "cell" not in metafunc.fixturenames:
        return
    from deploybench.spec import DeployBenchError

    state = _state(metafunc.config)
    try:
        # planned once per session: the first test that asks for cells supplies the user's models
        cells = state.plan(_user_models(metafunc) if state._planned is None else [])
    except DeployBenchError as exc:
        raise pytest.UsageError(f"deploybench: {exc}") from None
    params = [pytest.param(cell, id=cell.id, marks=[getattr(pytest.mark, cell.backend)]) for cell in cells]
    metafunc.parametrize("cell", params, indirect=True)


@pytest.hookimpl(trylast=True)  # after -k / -m deselection: count only the tests that will run
def pytest_collection_modifyitems(session, config, items):
    state = _state(config)
    found = False
    for item in items:
        callspec = getattr(item, "callspec", None)
        cell = callspec.params.get("cell") if callspec else None
        if cell is not None and hasattr(cell, "id"):
            state.pending[cell.id] = state.pending.get(cell.id, 0) + 1
            found = True
    if found:
        # Keep every raw sample in --benchmark-autosave/--benchmark-save files: the gate tests
        # distributions, not just the stored summary.
        benchmark_session = getattr(config, "_benchmarksession", None)
        if benchmark_session is not None:
            benchmark_session.save_data = True


def pytest_runtest_teardown(item, nextitem):
    callspec = getattr(item, "callspec", None)
    cell = callspec.params.get("cell") if callspec else None
    if cell is not None and hasattr(cell, "id"):
        _state(item.config).release(cell.id)


# ---------------------------------------------------------------------------------------------
# fixtures
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def deploybench_state(request) -> DeployBenchState:
    """The plugin's session state: settings, caches and the Results being collected."""
    return _state(request.config)


@pytest.fixture(scope="session")
def deploybench_settings(deploybench_state):
    """The ``RunSettings`` (threads, seed, stopping rules, timeout, tolerances) of this session."""
    return deploybench_state.settings


@pytest.fixture
def cell(request):
    """The ``Cell`` (model, format, backend, precision) this test runs."""
    return request.param


@pytest.fixture
def model(cell, deploybench_state):
    """The cell's ``ModelSpec`` (one per model name for the session)."""
    return deploybench_state.specs[cell.model]


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
    """The session's ``Result`` of this cell, which speed, memory and precision tests fill in."""
    return deploybench_state.result(cell)


@pytest.fixture
def inputs(model, deploybench_state):
    """Seeded inputs of the model, the same for every backend (one set per model)."""
    if model.name not in deploybench_state.inputs:
        settings = deploybench_state.settings
        deploybench_state.inputs[model.name] = model.make_inputs(seed=settings.seed, dims=settings.dims)
    return deploybench_state.inputs[model.name]


@pytest.fixture
def reference(model, deploybench_state):
    """The fp32 reference of ``model`` (PyTorch eager, or the artifact's own fp32 run): a callable
    ``inputs -> outputs`` named after what it runs, made once per model, the same one
    ``deploybench run`` uses, so a cell is judged alike inside and outside pytest."""
    if model.name not in deploybench_state.references:
        from deploybench.harness.measure.accuracy import make_reference

        deploybench_state.references[model.name] = make_reference(model)
    return deploybench_state.references[model.name]


def _one_line(exc: BaseException) -> str:
    from deploybench.spec import DeployBenchError

    lines = str(exc).strip().splitlines()
    text = lines[0] if lines else ""
    return text if isinstance(exc, DeployBenchError) and text else f"{type(exc).__name__}: {text}".rstrip(": ")


@pytest.fixture
def artifact(cell, model, deploybench_state):
    """The cell's converted ``Artifact`` (from the on-disk cache after the first conversion).

    A backend that cannot run here, or a format that cannot express the precision, skips the test
    with the reason; a conversion that fails fails it with the one-line reason.
    """
    key = cell.id
    if key not in deploybench_state.artifacts:
        deploybench_state.artifacts[key] = _convert_cell(cell, model, deploybench_state)
    outcome = deploybench_state.artifacts[key]
    if isinstance(outcome, tuple):
        kind, reason = outcome
        deploybench_state.mark_not_run(cell, "skipped" if kind == "skip" else "failed", reason)
        if kind == "skip":
            pytest.skip(reason)
        pytest.fail(reason, pytrace=False)
    return outcome


def _convert_cell(cell, model, state):
    from deploybench.engines import backend_availability, engine_class
    from deploybench.harness.pipeline.matrix import _convert, _is_unsupported_precision

    try:
        available, detail = backend_availability(cell.backend)
    except Exception as exc:
        available, detail = False, _one_line(exc)
    if not available:
        return ("skip", f"{cell.backend} cannot run here: {detail}")
    offered = engine_class(cell.backend).precisions
    if cell.precision not in offered:
        return ("skip", f"backend {cell.backend} has no {cell.precision} mode; it runs: {', '.join(offered)}")
    try:
        artifact = _convert(model, cell, state.settings)
    except Exception as exc:
        if _is_unsupported_precision(exc, cell.precision):
            return ("skip", _one_line(exc))
        return ("fail", f"conversion of {cell.id} to {cell.format} failed: {_one_line(exc)}")
    result = state.result(cell)
    result.conversion_s = artifact.conversion_s
    if artifact.files and artifact.path.exists():
        result.artifact_bytes = artifact.size_bytes
        result.extra["artifact_path"] = str(artifact.path)
    return artifact


@pytest.fixture
def engine(cell, model, artifact, inputs, deploybench_state):
    """A loaded ``InferenceEngine`` of the cell, built once and closed after the cell's last test."""
    state = deploybench_state
    if cell.id not in state.engines:
        from deploybench.engines import create_deployer
        from deploybench.harness.measure.timing import time_first_inference

        options = {"module": model.build()} if cell.format == "torch" else {}
        try:
            built = create_deployer(artifact, backend=cell.backend, precision=cell.precision,
                                    threads=state.settings.threads, **options)
            _, first_ms = time_first_inference(built, inputs)
        except Exception as exc:
            from deploybench.harness.pipeline.matrix import _is_unsupported_precision

            reason = _one_line(exc)
            if _is_unsupported_precision(exc, cell.precision):
                state.mark_not_run(cell, "skipped", reason)
                pytest.skip(reason)
            state.mark_not_run(cell, "failed", f"load or first inference failed: {reason}")
            pytest.fail(f"{cell.id}: load or first inference failed: {reason}", pytrace=False)
        result = state.result(cell)
        result.load_ms, result.first_inference_ms = built.load_ms, first_ms
        state.engines[cell.id] = built
        state.pending.setdefault(cell.id, 1)
    return state.engines[cell.id]


# ---------------------------------------------------------------------------------------------
# session end: matrix table, JSON, gate
# ---------------------------------------------------------------------------------------------

def _session_matrix(state):
    from deploybench.harness.measure.machine import machine_info
    from deploybench.harness.pipeline.matrix import Matrix

    return Matrix(results=list(state.results.values()), machine=machine_info(),
                  settings={"source": "pytest", **state.settings.to_dict()})


def pytest_sessionfinish(session, exitstatus):
    state = session.config.stash.get(_STATE_KEY, None)
    if state is None:
        return
    state.close_all()
    if not state.results:
        return
    path = session.config.getoption("deploybench_json", default=None)
    if path:
        _session_matrix(state).save(path)
    baseline = session.config.getoption("deploybench_gate", default=None)
    if baseline:
        from deploybench.spec import DeployBenchError
        from deploybench.harness.gate.verdict import GateSettings, gate_results, has_regression, load_run

        try:
            base_results, _ = load_run(baseline)
            state.verdicts = gate_results(base_results, list(state.results.values()), GateSettings())
        except DeployBenchError as exc:
            state.gate_error = str(exc)
            session.exitstatus = pytest.ExitCode.USAGE_ERROR
            return
        if has_regression(state.verdicts) and session.exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    state = config.stash.get(_STATE_KEY, None)
    if state is None or not state.results:
        return
    results = list(state.results.values())
    terminalreporter.section("deploybench matrix")
    try:
        from deploybench.harness.report.render import terminal_table

        table = terminal_table(results)
    except Exception:  # the report module is optional here: fall back to the plain table
        from deploybench.harness.pipeline.matrix import plain_table

        table = plain_table(results)
    terminalreporter.write_line(table)
    path = config.getoption("deploybench_json", default=None)
    if path:
        terminalreporter.write_line(f"deploybench: matrix written to {path}")
    if state.gate_error:
        terminalreporter.write_line(f"deploybench gate: {state.gate_error}", red=True)
    elif config.getoption("deploybench_gate", default=None):
        from deploybench.harness.gate.verdict import has_regression, verdict_table

        terminalreporter.section("deploybench gate")
        terminalreporter.write_line(verdict_table(state.verdicts) if state.verdicts else
                                    "no cell was measured in both the baseline and this session")
        if has_regression(state.verdicts):
            terminalreporter.write_line("deploybench gate: regression -> exit status 1", red=True)


def record_timing(result, samples_ms, stopped_by: str | None = None) -> None:
    """Put latency samples (ms) into a session Result (used by the speed benchmark)."""
    from deploybench.harness.measure.stats import is_unstable, latency_stats

    if not samples_ms:
        return
    result.samples_ms = list(samples_ms)
    result.latency_ms = latency_stats(samples_ms)
    result.unstable = is_unstable(result.latency_ms)
    if stopped_by:
        result.extra["stopped_by"] = stopped_by


__all__ = ["MARKERS", "DeployBenchState", "parse_tolerances", "record_timing"]

