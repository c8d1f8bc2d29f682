"""Probe a target: reachable or why not, its Python, which runtimes it has, its CPU, cores, memory and OS.

The probe is ``_probe_script.py`` run in the target's own Python (standard library only), so it works on a
device where deploybench is not installed, and it installs nothing: what is missing is said with the
exact command that would install it, for the user to run.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deploybench.harness.remote._probe_script import MARKER
from deploybench.harness.remote.targets import Target
from deploybench.harness.remote.transport import TransportError, open_transport

SCRIPT = Path(__file__).with_name("_probe_script.py")
# A module deploybench does not run but which a device may have instead of one it does.
ALTERNATIVES = {"ai_edge_litert": "tflite_runtime"}
# Precisions a backend runs only where the CPU has the instructions for them, as its CPU plugin decides
# (OpenVINO on x86: bf16 with AVX512-BF16 or AMX, fp16 with AVX512-FP16 or AMX-FP16; elsewhere it runs
# another precision, which a cell refuses): {backend: {precision: the CPU features, any of which will do}}.
HARDWARE_PRECISIONS = {"openvino": {"bf16": ("avx512_bf16", "amx_bf16"), "fp16": ("avx512_fp16", "amx_fp16")}}
X86 = ("x86_64", "amd64", "i686", "x86")
# Exit status of a shell that did not find the command: the Python named for the target is not there.
COMMAND_NOT_FOUND = 127


@dataclass
class BackendOnTarget:
    backend: str
    module: str
    version: str | None  # None: not installed there
    note: str = ""  # why it cannot run there although installed, or what was found instead
    precisions: tuple[str, ...] = ()  # what it runs there (its own, less those the CPU cannot)
    missing: str = ""  # the precisions it cannot run there, and why

    @property
    def usable(self) -> bool:
        return self.version is not None and not self.note


@dataclass
class Probe:
    """What a target said, or why it could not say it."""

    target: Target
    status: str  # "ok", "unreachable", "no python", "failed"
    error: str = ""
    facts: dict[str, Any] = field(default_factory=dict)
    backends: list[BackendOnTarget] = field(default_factory=list)
    hints: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def python_text(self) -> str:
        python = self.facts.get("python")
        return f"{python['version']} ({python['executable']})" if python else "-"

    def runtimes_text(self) -> str:
        parts = []
        for found in self.backends:
            if found.version is None and not found.note:
                continue
            text = f"{found.backend} {found.version}" if found.version else found.backend
            detail = found.note or (" ".join(found.precisions) if found.usable else "")
            parts.append(f"{text} ({detail})" if detail else text)
        return ", ".join(parts) or ("none" if self.ok else "-")

    def machine_text(self) -> str:
        facts = self.facts
        if not facts:
            return "-"
        parts = [facts.get("cpu"), facts.get("arch"), f"{facts.get('cores')} cores",
                 f"{facts['memory_gib']} GiB" if facts.get("memory_gib") else None,
                 facts["os"]["name"],
                 facts.get("accelerator")]
        return ", ".join(str(p) for p in parts if p)


def _backend_modules(target: Target) -> dict[str, str]:
    """{backend: the module its engine class requires}, for the target's backends (default: all that can run
    on a target: not torch, whose cells run the model's own code, which stays on this machine)."""
    from deploybench.engines import engine_classes

    classes = engine_classes()
    names = target.backends or [name for name, cls in classes.items() if tuple(cls.formats) != ("torch",)]
    return {name: classes[name].requires for name in names if name in classes}


def probe_target(target: Target, timeout: float) -> Probe:
    """Connect, run the probe script in the target's Python, and read what it says; never raises for a
    fault of the target or the network (that is the probe's status and error)."""
    modules = _backend_modules(target)
    request = {"modules": sorted({*modules.values(), *ALTERNATIVES.values(), "deploybench", "numpy"}),
               "workdir": target.workdir, "alarm_s": timeout,
               "cpu_flags": sorted({f for needs in HARDWARE_PRECISIONS.values() for any_of in needs.values()
                                    for f in any_of})}
    # the request is written into the script, so the command (and any error naming it) stays `python3 -`
    script = SCRIPT.read_text().replace('REQUEST = "{}"', f"REQUEST = {json.dumps(request)!r}", 1)
    with open_transport(target, timeout) as transport:
        try:
            transport.connect()
        except TransportError as exc:  # ConnectError, or no answer at all
            return Probe(target, "unreachable", str(exc))
        try:
            done = transport.run(f"{target.python} -", input=script.encode(), timeout=timeout)
        except TransportError as exc:
            return Probe(target, "failed", str(exc))
    stderr = done.stderr.decode(errors="replace").strip().splitlines()
    last = stderr[-1] if stderr else "no message"
    if done.exit_status == COMMAND_NOT_FOUND:
        return Probe(target, "no python", f"target {target.name}: no `{target.python}` on the device ({last}); set "
                                          f"python = \"/path/to/python3\" for the target")
    lines = [line for line in done.stdout.decode(errors="replace").splitlines() if line.startswith(MARKER)]
    if done.exit_status != 0 or not lines:
        return Probe(target, "failed", f"target {target.name}: the probe failed under `{target.python}` (exit "
                                       f"{done.exit_status}): {last}")
    try:
        facts = json.loads(lines[-1][len(MARKER):])
    except ValueError as exc:  # a line cut short (the device ran out of something mid-print)
        return Probe(target, "failed", f"target {target.name}: the probe's answer could not be read ({exc})")
    probe = Probe(target, "ok", facts=facts)
    probe.backends = _backends_on(facts, modules)
    probe.hints = _hints(probe)
    return probe


def _backends_on(facts: dict[str, Any], modules: dict[str, str]) -> list[BackendOnTarget]:
    found = facts["modules"]
    system, accelerator = facts["os"]["system"], facts.get("accelerator") or ""
    backends = []
    for backend, module in modules.items():
        version = found.get(module, {}).get("version") or ("unknown version" if found.get(module, {}).get("found")
                                                           else None)
        note = ""
        alternative = ALTERNATIVES.get(module)
        if version is None and alternative and found.get(alternative, {}).get("found"):
            note = f"{alternative} {found[alternative]['version']} found; deploybench runs {module}"
        # The engines' own platform checks run only where deploybench runs; these two are read off the facts.
        elif version and backend == "coreml" and system != "Darwin":
            note = "predicts on macOS only"
        elif version and backend == "tensorrt" and "NVIDIA" not in accelerator:
            note = "no NVIDIA GPU seen"
        backends.append(BackendOnTarget(backend, module, version, note, *_precisions_on(backend, facts)))
    return backends


def _precisions_on(backend: str, facts: dict[str, Any]) -> tuple[tuple[str, ...], str]:
    """(the precisions ``backend`` runs on the target's CPU, what it cannot run there and why). Read off the
    CPU's features on x86, where the rule is known; elsewhere the backend's own list, checked per cell."""
    from deploybench.engines import engine_classes

    own = tuple(engine_classes()[backend].precisions)
    needs = HARDWARE_PRECISIONS.get(backend, {})
    if str(facts.get("arch", "")).lower() not in X86 or "cpu_flags" not in facts:
        return own, ""
    flags = set(facts["cpu_flags"])
    lacking = {p: any_of for p, any_of in needs.items() if p in own and not flags & set(any_of)}
    why = "; ".join(f"runs no {p} there: the CPU has no {' or '.join(f.upper().replace('_', '-') for f in any_of)}"
                    " (its cells are skipped)" for p, any_of in lacking.items())
    return tuple(p for p in own if p not in lacking), why


def _hints(probe: Probe) -> list[str]:
    """What the user could do, as exact commands; nothing is run or installed on their device."""
    target, facts, hints = probe.target, probe.facts, []
    name, python = target.name, target.python
    wanted = [b for b in probe.backends if b.version is None] if target.backends else \
        ([] if any(b.usable for b in probe.backends) else [b for b in probe.backends if b.module == "onnxruntime"])
    if wanted:  # pip takes the module names as distribution names (ai_edge_litert is ai-edge-litert)
        hints.append(f"{name}: to run {', '.join(b.backend for b in wanted)} there, run on it: {python} -m pip "
                     f"install {' '.join(b.module.replace('_', '-') for b in wanted)}"
                     + (" (on a Jetson, TensorRT comes with JetPack instead)" if any(b.backend == "tensorrt"
                                                                                    for b in wanted) else ""))
    if not facts["modules"].get("deploybench", {}).get("found"):
        hints.append(f"{name}: deploybench is not installed in `{python}` there; this probe does not need it, "
                     f"`deploybench run --target {name}` does: run on it: {python} -m pip install 'deploybench[runtime]' "
                     "(no PyTorch)")
    needed = _requires_python()
    version = tuple(int(p) for p in facts["python"]["version"].split(".")[:2] if p.isdigit())
    if needed and version < needed:
        hints.append(f"{name}: deploybench needs Python >= {'.'.join(map(str, needed))} and `{python}` there is "
                     f"{facts['python']['version']}: set python = \"/path/to/python3.11\" for the target")
    hints += [f"{name}: {b.backend} {b.missing}" for b in probe.backends if b.usable and b.missing]
    workdir = facts["workdir"]
    if not workdir["exists"] and not workdir["writable"]:
        hints.append(f"{name}: the working folder {workdir['path']} cannot be created there (no write permission); "
                     "set workdir to a folder you can write")
    return hints


def _requires_python() -> tuple[int, ...] | None:
    """The lowest Python this deploybench supports, from its own metadata (pyproject's requires-python)."""
    from importlib.metadata import PackageNotFoundError, metadata

    try:
        spec = metadata("deploybench").get("Requires-Python") or ""
    except PackageNotFoundError:
        return None
    floor = spec.replace(" ", "").partition(">=")[2].split(",")[0]
    return tuple(int(p) for p in floor.split(".") if p.isdigit()) or None


__all__ = ["BackendOnTarget", "Probe", "probe_target"]
