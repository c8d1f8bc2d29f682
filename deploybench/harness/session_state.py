"""What the pytest plugin keeps for one session: its settings, the models and their workers (here and on
targets), the cells planned and the results measured. No pytest import: the hooks are in ``plugin``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from deploybench.harness.pipeline import settings as run_options


class DeployBenchState:
    """Everything the plugin keeps for one session: settings, the models and their workers, results by cell."""

    def __init__(self, config):
        self.config = config
        self._defaults = run_options.pyproject_defaults(Path(config.rootpath))
        self._settings = None
        self.models: dict[str, Any] = {}  # model name -> its ref or ModelSpec
        self.infos: dict[str, Any] = {}  # model name -> ModelInfo
        self.workers: dict[str, Any] = {}  # worker_key(model, target) -> Worker (started when a cell is measured)
        self.devices: list = []  # the --target machines (remote_worker.Device)
        self.measures: dict[str, set[str]] = {}  # cell id -> what its selected tests need
        self.results: dict[str, Any] = {}  # cell id -> Result
        self.in_process: dict[tuple[str, str], Any] = {}  # (cell id, "model" | "artifact" | "engine") -> object
        self.verdicts: list = []
        self.gate_error: str | None = None
        self._planned: list | None = None
        self.universe: set[str] = set()  # the cell ids --shard was dealt from (both sides' under a gate)
        self.json_written, self.json_failure = None, ""  # --deploybench-json: where it went, why not there

    # ---- configuration ------------------------------------------------------------------
    def option(self, name: str, default=None):
        """A command-line option, else its ``[tool.deploybench]`` value, else ``default``."""
        value = self.config.getoption(name, default=None)
        return self._defaults.get(name, default) if value is None else value

    @property
    def settings(self):
        """The ``RunSettings`` every cell of the session is measured with (CLI options and the same defaults)."""
        if self._settings is None:
            self._settings = run_options.settings_from_options(self.option)
        return self._settings

    def list_option(self, name: str, fallback) -> list[str]:
        from deploybench.spec import parse_csv

        return parse_csv(self.option(name)) or list(fallback)

    # ---- models and cells ---------------------------------------------------------------
    def plan(self, user_models) -> list:
        """The cells of this session (shard applied), planned once; nothing is built or converted.

        A zoo model or a ModelSpec made in a conftest is described here; a user's file or
        ``file.py:factory`` is resolved in its worker (its code never runs in this process)."""
        if self._planned is None:
            from deploybench.harness.pipeline.matrix import on_targets, open_workers
            from deploybench.harness.gate.session import session_shard
            from deploybench.harness.pipeline.plan import plan_cells

            models = [*self.list_option("models", ()), *user_models] or list(run_options.DEFAULT_MODELS)
            opened = open_workers(models, self.settings)
            for model, (info, worker) in zip(models, opened):
                self.models[info.name], self.infos[info.name], self.workers[info.name] = model, info, worker
            cells = plan_cells(self.infos.values(), self.list_option("backends", run_options.DEFAULT_BACKENDS),
                               self.list_option("precisions", run_options.DEFAULT_PRECISIONS),
                               sweep=self.settings.sweep)
            if self.config.getoption("target", default=None):
                from deploybench.harness.remote.targets import targets_to_run

                targets = targets_to_run(self.config.getoption("target"), self.config.getoption("targets_file"))
                cells, self.devices, remote = on_targets(targets, opened, cells, self.settings)
                self.workers.update(remote)
            self._planned, self.universe = session_shard(self.config, cells,
                                                         terminal_writer(self.config, "deploybench gate: "))
        return self._planned

    def result(self, cell):
        """The cell's ``Result``, measured once in its model's worker for what its selected tests need."""
        if cell.id not in self.results:
            from deploybench.harness.pipeline.stages import MEASURES

            measures = self.measures.get(cell.id) or set(MEASURES)
            from deploybench.harness.pipeline.matrix import worker_key

            self.results[cell.id] = self.workers[worker_key(cell.model, cell.target)].run_cell(cell, measures)
        return self.results[cell.id]

    def close_all(self) -> None:
        from deploybench.harness.pipeline.matrix import close_workers

        for engine in self.in_process.values():
            if hasattr(engine, "close"):
                engine.close()
        self.in_process.clear()
        close_workers(self.workers.values())
        self.workers.clear()
        for device in self.devices:
            device.close()


def terminal_writer(config, prefix: str):
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    return (lambda text: reporter.write_line(prefix + text)) if reporter else (lambda text: None)


__all__ = ["DeployBenchState", "terminal_writer"]
