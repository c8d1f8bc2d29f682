"""What a target has, told by its own Python: sent as the stdin of ``PYTHON -``, its request written in.

Runs on the device, where deploybench may not be installed: standard library only, Python 3.6 syntax,
nothing imported from the packages it looks for (``find_spec`` and their metadata say whether and which
version is installed, without the seconds, or the crash, of importing a runtime). It bounds itself with
``alarm`` so it ends even if the SSH server never delivers the transport's kill. It prints one line,
``MARKER`` then JSON, so a login banner or a chatty shell start-up on stdout does not confuse the parser.
"""

import json
import os
import platform
import subprocess
import sys

MARKER = "DEPLOYBENCH-PROBE "
# The sender writes its request here (probe.py): {"modules": [...], "workdir": "...", "alarm_s": 15,
# "cpu_flags": [...]}.
REQUEST = "{}"


def _version(module):
    """The installed version of the distribution providing ``module``, else None."""
    try:
        from importlib import metadata
    except ImportError:  # Python < 3.8
        return None
    names = [module, module.replace("_", "-")]
    try:
        names += metadata.packages_distributions().get(module, [])
    except AttributeError:  # Python < 3.10
        pass
    for name in names:
        try:
            return metadata.version(name)
        except Exception:
            continue
    return None


def _module(name):
    try:
        import importlib.util
        found = importlib.util.find_spec(name) is not None
    except Exception:
        found = False
    return {"found": found, "version": _version(name) if found else None}


def _read(path):
    try:
        with open(path) as handle:
            return handle.read()
    except (OSError, UnicodeDecodeError):
        return ""


def _sysctl(name):
    try:
        return subprocess.check_output(["sysctl", "-n", name], stderr=subprocess.DEVNULL).decode().strip()
    except Exception:
        return ""


def _cpu():
    fields = {}
    for line in _read("/proc/cpuinfo").splitlines():
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    return (fields.get("model name") or fields.get("Model") or fields.get("Hardware")
            or _sysctl("machdep.cpu.brand_string") or platform.processor() or platform.machine())


def _memory_gib():
    for line in _read("/proc/meminfo").splitlines():
        if line.startswith("MemTotal:"):
            return round(int(line.split()[1]) / 2 ** 20, 1)
    size = _sysctl("hw.memsize")
    if size.isdigit():
        return round(int(size) / 2 ** 30, 1)
    try:
        return round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2 ** 30, 1)
    except (ValueError, OSError, AttributeError):
        return None


def _os_name():
    for line in _read("/etc/os-release").splitlines():
        if line.startswith("PRETTY_NAME="):
            return line.partition("=")[2].strip().strip('"')
    if platform.system() == "Darwin":
        return "macOS " + platform.mac_ver()[0]
    return platform.system()


def _cpu_flags(wanted):
    """Which of the ``wanted`` CPU features the CPU has: /proc/cpuinfo's flags (x86) or Features (ARM)."""
    have = set()
    for line in _read("/proc/cpuinfo").splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            have.update(value.split())
    return sorted(flag for flag in wanted if flag in have)


def _accelerator():
    gpus = sorted(os.listdir("/proc/driver/nvidia/gpus")) if os.path.isdir("/proc/driver/nvidia/gpus") else []
    if gpus:
        model = [line.partition(":")[2].strip() for line in
                 _read("/proc/driver/nvidia/gpus/%s/information" % gpus[0]).splitlines() if line.startswith("Model")]
        return "%d x NVIDIA %s" % (len(gpus), model[0] if model else "GPU")
    if os.path.exists("/etc/nv_tegra_release"):
        return "NVIDIA Jetson (Tegra) GPU"
    if platform.system() == "Darwin" and platform.machine() == "arm64":
        return "Apple Neural Engine and GPU"
    return None


def _workdir(path):
    """Where the working folder would be, and whether it exists or could be created (nothing is created)."""
    path = os.path.abspath(os.path.expanduser(path))
    existing = path
    while not os.path.isdir(existing) and os.path.dirname(existing) != existing:
        existing = os.path.dirname(existing)
    return {"path": path, "exists": os.path.isdir(path), "writable": os.access(existing, os.W_OK | os.X_OK)}


def main():
    request = json.loads(REQUEST)
    if hasattr(__import__("signal"), "alarm"):
        __import__("signal").alarm(int(request["alarm_s"]) + 1)
    report = {
        "python": {"version": platform.python_version(), "executable": sys.executable,
                   "implementation": platform.python_implementation()},
        "os": {"system": platform.system(), "release": platform.release(), "name": _os_name()},
        "arch": platform.machine(), "cpu": _cpu(), "cores": os.cpu_count(), "memory_gib": _memory_gib(),
        "accelerator": _accelerator(), "cpu_flags": _cpu_flags(request.get("cpu_flags", [])),
        "modules": dict((name, _module(name)) for name in request["modules"]),
        "workdir": _workdir(request["workdir"]),
    }
    sys.stdout.write(MARKER + json.dumps(report) + "\n")


if __name__ == "__main__":
    main()
