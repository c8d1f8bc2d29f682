"""Targets: the machines a run can measure on, named by an ``ssh://`` URL or defined in TOML.

A target is defined in ``[tool.deploybench.targets.NAME]`` of the project's pyproject.toml, or as a
``[NAME]`` table of a targets file (``--targets-file``)::

    [tool.deploybench.targets.pi]
    host = "raspberrypi.local"          # or a Host alias of ~/.ssh/config
    user = "pi"                         # default: ~/.ssh/config's User, else your local user name
    port = 22                           # default: ~/.ssh/config's Port, else 22
    identity_file = "~/.ssh/id_ed25519" # default: ~/.ssh/config, the agent and ~/.ssh/id_*
    python = "~/venv/bin/python3"       # as typed in the device's shell (default: python3)
    workdir = "deploybench"             # relative to the login folder (default: .cache/deploybench)
    backends = ["onnxruntime", "tflite"]  # the backends to try there (default: every one it has)

Anything left out is left to the user's ssh set-up, as ``ssh`` would. Every mistake in a definition is one
``DeployBenchError`` line naming the target and the field.

The pyproject is read here rather than through ``pipeline.settings.pyproject_defaults``: that reader
forgives a broken file on purpose (a test session must not stop), while a target asked for by name must
say why it cannot be found; and this room stays below ``pipeline`` so a worker can run through it.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from deploybench.spec import DeployBenchError, parse_csv

DEFAULT_PYTHON = "python3"
DEFAULT_WORKDIR = ".cache/deploybench"
# A transport per URL scheme; a target's ``transport`` field names one (an adb transport is one more line).
TRANSPORTS = {"ssh": "deploybench.harness.remote.ssh:SshTransport"}
FIELDS = ("host", "user", "port", "identity_file", "python", "workdir", "backends", "transport")


@dataclass(frozen=True)
class Target:
    """One machine to measure on, and how to reach it; validated on creation."""

    name: str
    host: str
    user: str | None = None
    port: int | None = None
    identity_file: str | None = None
    python: str = DEFAULT_PYTHON
    workdir: str = DEFAULT_WORKDIR
    backends: tuple[str, ...] = ()
    transport: str = "ssh"
    defined_in: str = field(default="", compare=False)  # "pyproject.toml", a targets file, "the command line"

    def __post_init__(self):
        def bad(name: str, problem: str) -> DeployBenchError:
            where = f" (in {self.defined_in})" if self.defined_in else ""
            return DeployBenchError(f"target {self.name}{where}: {name} {problem}")

        if not isinstance(self.name, str) or not self.name or any(c.isspace() for c in self.name):
            raise DeployBenchError(f"target name {self.name!r} must be a word without spaces, e.g. pi")
        if not isinstance(self.host, str) or not self.host or any(c.isspace() or c in "/@" for c in self.host):
            raise bad("host", f"{self.host!r} must be a host name or address without user or path, "
                              "e.g. host = \"raspberrypi.local\"")
        if self.user is not None and (not isinstance(self.user, str) or not self.user
                                      or any(c.isspace() or c == "@" for c in self.user)):
            raise bad("user", f"{self.user!r} must be a login name, e.g. user = \"pi\"")
        if self.port is not None and (isinstance(self.port, bool) or not isinstance(self.port, int)
                                      or not 1 <= self.port <= 65535):
            raise bad("port", f"{self.port!r} must be a number from 1 to 65535, e.g. port = 22")
        for name in ("identity_file", "python", "workdir"):
            value = getattr(self, name)
            if value is None and name == "identity_file":
                continue
            if not isinstance(value, str) or not value.strip() or "\n" in value:
                raise bad(name, f"{value!r} must be a non-empty one-line string")
        if self.transport not in TRANSPORTS:
            raise bad("transport", f"{self.transport!r} is unknown; known: {', '.join(TRANSPORTS)}")
        from deploybench.engines import ENGINES

        unknown = [b for b in self.backends if b not in ENGINES.names()]
        if unknown:
            raise bad("backends", f"{', '.join(unknown)} unknown; known: {', '.join(ENGINES.names())}")

    @property
    def address(self) -> str:
        """``user@host:port`` as far as the definition says it (ssh config fills in the rest)."""
        user = f"{self.user}@" if self.user else ""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.transport}://{user}{host}" + (f":{self.port}" if self.port else "")


def target_from_url(url: str) -> Target:
    """``ssh://[user@]host[:port]`` -> a Target named by the URL, every other field at its default."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise DeployBenchError(f"target {url}: {exc}; write it as ssh://user@host:port") from None
    if parts.scheme not in TRANSPORTS:
        raise DeployBenchError(f"target {url}: transport {parts.scheme!r} is unknown; known: "
                               f"{', '.join(TRANSPORTS)} (e.g. ssh://pi@raspberrypi.local)")
    if parts.path not in ("", "/") or parts.query or parts.fragment or parts.password:
        raise DeployBenchError(f"target {url}: only ssh://user@host:port is understood here; define the "
                               "python, workdir or backends in [tool.deploybench.targets.NAME] instead")
    if not parts.hostname:
        raise DeployBenchError(f"target {url}: no host; write it as ssh://user@host:port")
    return Target(name=url, host=parts.hostname, user=parts.username or None, port=port,
                  transport=parts.scheme, defined_in="the command line")


def target_from_table(name: str, table: Any, defined_in: str) -> Target:
    """A Target from one TOML table; unknown fields and wrong types are one line naming target and field."""
    if not isinstance(table, Mapping):
        raise DeployBenchError(f"target {name} (in {defined_in}) must be a table of fields ({', '.join(FIELDS)}), "
                               f"e.g. [{name}] host = \"raspberrypi.local\"")
    unknown = sorted(set(table) - set(FIELDS))
    if unknown:
        raise DeployBenchError(f"target {name} (in {defined_in}): unknown field {', '.join(unknown)}; "
                               f"known fields: {', '.join(FIELDS)}")
    if "host" not in table:
        raise DeployBenchError(f"target {name} (in {defined_in}): host is missing, e.g. host = \"raspberrypi.local\"")
    values = dict(table)
    backends = values.get("backends", ())
    if isinstance(backends, str):
        backends = parse_csv(backends)
    if not isinstance(backends, (list, tuple)) or not all(isinstance(b, str) for b in backends):
        raise DeployBenchError(f"target {name} (in {defined_in}): backends {backends!r} must be a list of names, "
                               "e.g. backends = [\"onnxruntime\", \"tflite\"]")
    values["backends"] = tuple(backends)
    return Target(name=name, defined_in=defined_in, **values)


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise DeployBenchError(f"cannot read {path}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise DeployBenchError(f"{path} is not valid TOML: {exc}") from None


def find_pyproject(start: Path | None = None) -> Path | None:
    """The nearest pyproject.toml in ``start`` (default: the current folder) or a folder above it."""
    folder = (start or Path.cwd()).resolve()
    for candidate in (folder, *folder.parents):
        if (candidate / "pyproject.toml").is_file():
            return candidate / "pyproject.toml"
    return None


def defined_targets(pyproject: Path | None = None, targets_file: Path | None = None) -> dict[str, Target]:
    """Every target defined in ``pyproject``'s ``[tool.deploybench.targets]`` and in ``targets_file``
    (its top-level tables). A name defined in both is refused rather than one silently winning."""
    targets: dict[str, Target] = {}
    if pyproject is not None:
        tables = _read_toml(pyproject).get("tool", {}).get("deploybench", {}).get("targets", {})
        if not isinstance(tables, Mapping):
            raise DeployBenchError(f"[tool.deploybench] targets in {pyproject} must be tables, "
                                   "e.g. [tool.deploybench.targets.pi] host = \"raspberrypi.local\"")
        for name, table in tables.items():
            targets[name] = target_from_table(name, table, str(pyproject))
    if targets_file is not None:
        if not targets_file.is_file():
            raise DeployBenchError(f"targets file {targets_file} does not exist")
        for name, table in _read_toml(targets_file).items():
            if name in targets:
                raise DeployBenchError(f"target {name} is defined in both {targets[name].defined_in} and "
                                       f"{targets_file}; rename one")
            targets[name] = target_from_table(name, table, str(targets_file))
    return targets


def resolve_targets(names: list[str], defined: Mapping[str, Target]) -> list[Target]:
    """The targets ``names`` ask for (a URL or a defined name); no names: every defined target."""
    if not names:
        return list(defined.values())
    chosen = []
    for name in names:
        if "://" in name:
            chosen.append(target_from_url(name))
        elif name in defined:
            chosen.append(defined[name])
        else:
            known = f"defined: {', '.join(defined)}" if defined else "none is defined"
            raise DeployBenchError(f"unknown target {name} ({known}); name one as ssh://user@host[:port] or "
                                   f"define it in [tool.deploybench.targets.{name}] of pyproject.toml")
    return chosen


def targets_to_run(names: list[str], targets_file: str | Path | None) -> list[Target | None]:
    """The targets ``--target`` names, ``None`` standing for this machine (``local``); checked before anything runs."""
    defined = defined_targets(find_pyproject(), Path(targets_file) if targets_file else None)
    chosen = [None if name == "local" else resolve_targets([name], defined)[0] for name in names]
    seen = [t.name if t is not None else "local" for t in chosen]
    if len(set(seen)) < len(seen):
        raise DeployBenchError(f"--target names a machine twice: {', '.join(seen)}")
    import importlib.util

    if any(t is not None and t.transport == "ssh" for t in chosen) and importlib.util.find_spec("asyncssh") is None:
        raise DeployBenchError("SSH targets need asyncssh: pip install 'deploybench[remote]'")
    return chosen


__all__ = ["DEFAULT_PYTHON", "DEFAULT_WORKDIR", "FIELDS", "TRANSPORTS", "Target", "defined_targets",
           "find_pyproject", "resolve_targets", "targets_to_run", "target_from_table", "target_from_url"]
