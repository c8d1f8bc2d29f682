"""The SSH transport and `deploybench targets` against a real SSH server on 127.0.0.1.

The server (tests/ssh_server.py, asyncssh's server in its own process) has a temporary host key and
accepts a temporary user key; the client side is the real transport with real keys, reading a real
known_hosts and ~/.ssh/config from a temporary HOME. No fake stands in for the transport.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import venv
from pathlib import Path
from importlib.metadata import version

import pytest

asyncssh = pytest.importorskip("asyncssh", reason="needs asyncssh: pip install 'deploybench[remote]'")

from deploybench.cli import main  # noqa: E402
from deploybench.harness.pipeline.frames import FrameReader, send_frame  # noqa: E402
from deploybench.harness.remote.probe import _precisions_on, probe_target  # noqa: E402
from deploybench.harness.remote.ssh import CONNECTION_LOST, SshTransport  # noqa: E402
from deploybench.harness.remote.targets import Target  # noqa: E402
from deploybench.harness.remote.transport import ConnectError, TransportError  # noqa: E402

from ssh_fixtures import Server, target  # noqa: E402 (the fixtures come from conftest.py)


# ---- the transport -----------------------------------------------------------------------------------
def test_run_returns_exit_status_stdout_stderr_and_feeds_stdin(server, client_home):
    with SshTransport(target(server), timeout=10) as transport:
        done = transport.run("cat; echo to-err >&2; exit 3", input=b"hello device")
        assert (done.exit_status, done.stdout, done.stderr) == (3, b"hello device", b"to-err\n")
        assert transport.run("pwd").stdout.decode().strip() == str(server.home)


def test_a_command_that_ends_before_its_input_is_sent_keeps_its_exit_status(server, client_home, monkeypatch):
    """On a loaded machine the device can run `missing-python -` to its end before the script is written:
    that is exit 127, not a lost connection (found when the suite shared 2 cores with test_package)."""
    import asyncio

    opened = asyncssh.SSHClientConnection.create_process

    async def slow_to_write(self, *args, **kwargs):
        process = await opened(self, *args, **kwargs)
        await asyncio.sleep(0.5)  # the command ends and its channel closes meanwhile
        return process

    monkeypatch.setattr(asyncssh.SSHClientConnection, "create_process", slow_to_write)
    with SshTransport(target(server), timeout=10) as transport:
        assert transport.run("exit 3", input=b"print('never read')").exit_status == 3


def test_put_and_get_copy_files_whole(server, client_home, tmp_path):
    payload = os.urandom(300_000)
    (tmp_path / "artifact.bin").write_bytes(payload)
    with SshTransport(target(server), timeout=10) as transport:
        transport.put(tmp_path / "artifact.bin", "~/work/ab/artifact.bin")
        assert (server.home / "work" / "ab" / "artifact.bin").read_bytes() == payload
        assert sorted(p.name for p in (server.home / "work" / "ab").iterdir()) == ["artifact.bin"]  # no partials
        transport.get("work/ab/artifact.bin", tmp_path / "back" / "copy.bin")
        assert (tmp_path / "back" / "copy.bin").read_bytes() == payload
        with pytest.raises(TransportError, match="work/missing.bin"):
            transport.get("work/missing.bin", tmp_path / "nothing.bin")
    assert not (tmp_path / "nothing.bin").exists()


ECHO_FRAMES = ("import pickle, struct, sys\n"
               "while True:\n"
               "    head = sys.stdin.buffer.read(8)\n"
               "    if len(head) < 8: break\n"
               "    data = pickle.loads(sys.stdin.buffer.read(struct.unpack('!Q', head)[0]))\n"
               "    out = pickle.dumps(('echo', data))\n"
               "    sys.stdout.buffer.write(struct.pack('!Q', len(out)) + out); sys.stdout.buffer.flush()\n")


def test_a_long_running_process_speaks_the_workers_frames_over_its_pipes(server, client_home, tmp_path):
    """What the worker will need on a device: frames in on stdin, frames out on a real, selectable fd."""
    (tmp_path / "echo.py").write_text(ECHO_FRAMES)
    with SshTransport(target(server), timeout=10) as transport:
        transport.put(tmp_path / "echo.py", "echo.py")
        process = transport.start(f"{sys.executable} echo.py")
        reader = FrameReader(process.stdout.fileno())
        for message in [("cell", 1), {"big": b"x" * 200_000}]:
            send_frame(process.stdin, message)
            assert reader.read(time.monotonic() + 10) == ("echo", message)
        assert process.poll() is None
        process.stdin.close()  # end of file there: the loop ends, as the worker's does
        assert process.wait(timeout=10) == 0
        with pytest.raises(EOFError):
            reader.read(time.monotonic() + 5)


def test_a_command_that_hangs_is_killed_at_the_timeout(server, client_home):
    with SshTransport(target(server), timeout=10) as transport:
        start = time.monotonic()
        with pytest.raises(TransportError, match=r"`sleep 30` did not finish within 1 s and was killed there"):
            transport.run("sleep 30", timeout=1)
        assert time.monotonic() - start < 4
        assert transport.run("echo still usable").stdout == b"still usable\n"
        # with the session still open: its channel was closed (and KILL asked for), so the command ended there
        deadline = time.monotonic() + 3
        while _commands_running(server, "sleep 30") and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _commands_running(server, "sleep 30") == []


def _commands_running(server, command: str) -> list:
    import psutil

    return [p for p in psutil.Process(server.process.pid).children(recursive=True)
            if " ".join(p.cmdline()) == command]


def test_the_server_stopping_mid_command_is_one_line_and_no_hang(keys, client_home, tmp_path, monkeypatch):
    doomed = Server(tmp_path, keys["root"] / "host_key", keys["root"] / "authorized_keys")
    try:
        host_key = keys["host"].export_public_key().decode().strip()
        (client_home / ".ssh" / "known_hosts").write_text(f"[127.0.0.1]:{doomed.port} {host_key}\n")
        with SshTransport(target(doomed), timeout=10) as transport:
            worker_like = transport.start("sleep 30")
            threading.Timer(0.5, doomed.stop).start()
            start = time.monotonic()
            with pytest.raises(TransportError, match="the connection to .*127.0.0.1.* was lost during `sleep 20`"):
                transport.run("sleep 20", timeout=15)
            assert time.monotonic() - start < 5
            assert worker_like.wait(timeout=5) == CONNECTION_LOST
            assert worker_like.stdout.read() == b""  # end of file, not a hang
            doomed.process.wait(timeout=10)  # gone for good (its socket too), as a device that is off
            with pytest.raises(ConnectError, match="refused the connection"):
                transport.run("echo again")  # it tries again (a rebooted device) and says why not
    finally:
        doomed.stop()


# ---- connecting: every fault one line --------------------------------------------------------------
def _connect_error(target_: Target, timeout: float = 5) -> str:
    with SshTransport(target_, timeout=timeout) as transport:
        with pytest.raises(ConnectError) as raised:
            transport.connect()
    message = str(raised.value)
    assert "\n" not in message and message.startswith(f"target {target_.name}: ")
    return message


def test_a_closed_port_is_refused(client_home):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    message = _connect_error(Target(name="gone", host="127.0.0.1", port=port))
    assert message == f"target gone: 127.0.0.1:{port} refused the connection: no SSH server listens on port {port} there"


def test_a_host_that_never_answers_times_out(client_home):
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen()  # the kernel accepts; nothing ever speaks SSH
    try:
        start = time.monotonic()
        message = _connect_error(Target(name="mute", host="127.0.0.1", port=silent.getsockname()[1]), timeout=1)
        assert time.monotonic() - start < 4
        assert "no SSH session with 127.0.0.1" in message and "within 1 s" in message
    finally:
        silent.close()


def test_a_key_the_server_does_not_accept_is_refused(server, client_home, keys):
    message = _connect_error(target(server, identity_file=str(keys["root"] / "stranger_key")))
    assert "refused identity_file" in message and "ssh-copy-id -p" in message


def test_an_unknown_host_key_is_refused_with_the_command_to_add_it(server, client_home, keys):
    known_hosts = client_home / ".ssh" / "known_hosts"
    for content in ("", f"[127.0.0.1]:{server.port} {keys['stranger'].export_public_key().decode()}"):  # unknown, changed
        known_hosts.write_text(content)
        message = _connect_error(target(server))
        assert f"ssh-keyscan -p {server.port} 127.0.0.1 >> ~/.ssh/known_hosts" in message
        assert "never accepts a host key by itself" in message
        assert known_hosts.read_text() == content  # nothing was added behind the user's back
    known_hosts.unlink()  # no known_hosts at all: still refused, never accepted
    assert "is not trusted" in _connect_error(target(server))


def test_a_config_that_turns_host_key_checking_off_is_refused(server, client_home):
    (client_home / ".ssh" / "config").write_text("Host 127.0.0.1\n  UserKnownHostsFile none\n")
    assert "turns host-key checking off" in _connect_error(target(server))


# ---- the probe and `deploybench targets` ----------------------------------------------------------------
def test_the_probe_reports_this_python_its_runtimes_and_the_machine(server, client_home):
    probe = probe_target(target(server, backends=("onnxruntime", "coreml")), timeout=20)
    assert probe.status == "ok", probe.error
    assert probe.facts["python"]["version"] == ".".join(map(str, sys.version_info[:3]))
    assert probe.facts["cores"] == os.cpu_count()
    import psutil

    assert probe.facts["memory_gib"] == pytest.approx(psutil.virtual_memory().total / 2**30, abs=0.1)
    found = {b.backend: b for b in probe.backends}
    assert found["onnxruntime"].version == version("onnxruntime") and found["onnxruntime"].usable
    assert found["coreml"].version == version("coremltools") and found["coreml"].note == "predicts on macOS only"
    assert probe.facts["workdir"] == {"path": str(server.home / ".cache" / "deploybench"), "exists": False,
                                      "writable": True}
    # the precisions follow this CPU's features, whichever answer it gives
    flags = set(Path("/proc/cpuinfo").read_text().split())
    assert set(probe.facts["cpu_flags"]) == {"avx512_bf16", "amx_bf16", "avx512_fp16", "amx_fp16"} & flags
    assert found["onnxruntime"].precisions == ("fp32", "fp16", "int8", "int8ac")


def test_the_probe_drops_the_precisions_a_cpu_cannot_run_and_says_why():
    def openvino_on(arch: str, *flags: str):
        return _precisions_on("openvino", {"arch": arch, "cpu_flags": list(flags)})

    assert openvino_on("x86_64", "avx512_bf16", "avx512_fp16") == (("fp32", "fp16", "bf16", "int8", "int8ac"), "")
    # the AMD EPYC of this machine: BF16, no FP16
    assert openvino_on("x86_64", "avx512_bf16") == (("fp32", "bf16", "int8", "int8ac"), "runs no fp16 there: the "
                                                    "CPU has no AVX512-FP16 or AMX-FP16 (its cells are skipped)")
    assert openvino_on("x86_64", "amx_bf16")[0] == ("fp32", "bf16", "int8", "int8ac")  # AMX alone will do
    precisions, why = openvino_on("x86_64")  # an AVX2-only CPU
    assert precisions == ("fp32", "int8", "int8ac") and "no fp16" in why and "no bf16" in why
    # on ARM the rule is not known here: the backend's own list, each cell checked when it loads
    assert openvino_on("aarch64") == (("fp32", "fp16", "bf16", "int8", "int8ac"), "")
    assert _precisions_on("onnxruntime", {"arch": "x86_64", "cpu_flags": []})[1] == ""


def test_a_target_without_deploybench_is_told_what_to_install(server, client_home, tmp_path):
    bare = tmp_path / "bare-venv"
    venv.create(bare, with_pip=False)  # a device Python with nothing installed
    python = str(bare / "bin" / "python")
    probe = probe_target(Target(name="pi", host="127.0.0.1", port=server.port, python=python,
                                backends=("onnxruntime", "tflite")), timeout=20)
    assert probe.status == "ok", probe.error
    assert [b.version for b in probe.backends] == [None, None]
    assert probe.hints[0] == f"pi: to run onnxruntime, tflite there, run on it: {python} -m pip install onnxruntime " \
                             "ai-edge-litert"
    assert "deploybench is not installed" in probe.hints[1]
    assert not any(p.name.startswith(("onnxruntime", "ai_edge")) for p in (bare / "lib").rglob("*"))


def test_a_missing_remote_python_is_one_line(server, client_home):
    probe = probe_target(target(server, python="/opt/nowhere/python3"), timeout=10)
    assert probe.status == "no python", probe.error
    assert probe.error.startswith("target box: no `/opt/nowhere/python3` on the device (")
    assert probe.error.endswith('set python = "/path/to/python3" for the target')


@pytest.mark.skipif(not shutil.which("ssh-agent"), reason="needs OpenSSH's ssh-agent and ssh-add")
def test_a_key_held_only_by_the_users_agent_is_used(server, client_home, keys, tmp_path, monkeypatch):
    (client_home / ".ssh" / "id_ed25519").unlink()  # no key file: only the agent has it
    socket_path = tmp_path / "agent.sock"
    agent = subprocess.Popen(["ssh-agent", "-D", "-a", str(socket_path)], stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while not socket_path.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        env = {**os.environ, "SSH_AUTH_SOCK": str(socket_path)}
        subprocess.run(["ssh-add", str(keys["root"] / "user_key")], env=env, check=True, capture_output=True)
        monkeypatch.setenv("SSH_AUTH_SOCK", str(socket_path))
        with SshTransport(target(server), timeout=10) as transport:
            assert transport.run("echo via agent").stdout == b"via agent\n"
        monkeypatch.delenv("SSH_AUTH_SOCK")
        assert "refused the keys of your ssh agent" in _connect_error(target(server))
    finally:
        agent.kill()
        agent.wait()


def test_a_probe_that_hangs_is_a_failed_row_at_the_timeout(server, client_home):
    start = time.monotonic()
    probe = probe_target(target(server, python="sleep 30; python3"), timeout=2)
    assert time.monotonic() - start < 6
    assert probe.status == "failed"
    assert probe.error == "target box: `sleep 30; python3 -` did not finish within 2 s and was killed there; " \
                          "raise --timeout for a slow device"


def test_targets_command_probes_a_config_alias_and_exits_by_the_worst(server, client_home, tmp_path, monkeypatch,
                                                                     capsys, keys):
    """`ssh://devbox` is a Host alias of ~/.ssh/config (HostName, Port, IdentityFile), as with `ssh devbox`."""
    (client_home / ".ssh" / "id_ed25519").unlink()  # only the config names the key
    (client_home / ".ssh" / "config").write_text(
        f"Host devbox\n  HostName 127.0.0.1\n  Port {server.port}\n  IdentityFile {keys['root'] / 'user_key'}\n")
    project = tmp_path / "project"
    project.mkdir()
    (project / "pyproject.toml").write_text(f'[tool.deploybench.targets.box]\nhost = "devbox"\npython = "{sys.executable}"\n'
                                            '[tool.deploybench.targets.gone]\nhost = "127.0.0.1"\nport = 1\n')
    monkeypatch.chdir(project)
    assert main(["targets", "box", "--timeout", "20"]) == 0
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.startswith("box "))
    assert " ok " in row and f"onnxruntime {version('onnxruntime')}" in row and f"{os.cpu_count()} cores" in row

    assert main(["targets", "--timeout", "5"]) == 1  # one unreachable target: exit 1, one line for it
    out = capsys.readouterr().out
    assert "target gone: 127.0.0.1:1 refused the connection" in out and "Traceback" not in out


# ---- the same transport against OpenSSH's sshd, where it is installed (not in CI) ----------------------------
SSHD = shutil.which("sshd") or next((p for p in ("/usr/sbin/sshd",) if os.access(p, os.X_OK)), None)


@pytest.fixture(scope="module")
def openssh(keys, tmp_path_factory):
    """OpenSSH's sshd on a free port with the test's host key and authorized key; sessions log in as this
    user, so the tests below use absolute paths under their own temporary folders."""
    if SSHD is None:
        pytest.skip("OpenSSH's sshd is not installed (apt-get install openssh-server); asyncssh's server covers it")
    root = tmp_path_factory.mktemp("sshd")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    (root / "sshd_config").write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {keys['root'] / 'host_key'}\n"
        f"AuthorizedKeysFile {keys['root'] / 'authorized_keys'}\nPidFile none\nUsePAM no\nStrictModes no\n"
        "PasswordAuthentication no\nKbdInteractiveAuthentication no\nSubsystem sftp internal-sftp\nLogLevel ERROR\n")
    daemon = subprocess.Popen([SSHD, "-D", "-e", "-f", str(root / "sshd_config")], stderr=subprocess.PIPE,
                              start_new_session=True)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and daemon.poll() is None:
        with socket.socket() as knock:
            if knock.connect_ex(("127.0.0.1", port)) == 0:
                break
        time.sleep(0.05)
    if daemon.poll() is not None:
        pytest.skip(f"sshd would not start here: {daemon.stderr.read().decode().strip().splitlines()[:1]}")
    yield port
    os.killpg(daemon.pid, 9)
    daemon.wait()


def test_openssh_sshd_serves_the_same_transport_and_probe(openssh, keys, client_home, tmp_path):
    host_key = keys["host"].export_public_key().decode().strip()
    known_hosts = client_home / ".ssh" / "known_hosts"
    known_hosts.write_text(f"[127.0.0.1]:{openssh} {host_key}\n")
    device = Target(name="openssh", host="127.0.0.1", port=openssh, python=sys.executable)
    (tmp_path / "echo.py").write_text(ECHO_FRAMES)
    payload = os.urandom(200_000)
    (tmp_path / "artifact.bin").write_bytes(payload)
    with SshTransport(device, timeout=10) as transport:
        done = transport.run("cat; echo to-err >&2; exit 3", input=b"hello sshd")
        assert (done.exit_status, done.stdout, done.stderr) == (3, b"hello sshd", b"to-err\n")
        transport.put(tmp_path / "artifact.bin", str(tmp_path / "there" / "artifact.bin"))
        assert (tmp_path / "there" / "artifact.bin").read_bytes() == payload
        assert [p.name for p in (tmp_path / "there").iterdir()] == ["artifact.bin"]
        transport.get(str(tmp_path / "there" / "artifact.bin"), tmp_path / "back.bin")
        assert (tmp_path / "back.bin").read_bytes() == payload
        process = transport.start(f"{sys.executable} {tmp_path / 'echo.py'}")
        send_frame(process.stdin, ("cell", 7))
        assert FrameReader(process.stdout.fileno()).read(time.monotonic() + 10) == ("echo", ("cell", 7))
        process.stdin.close()
        assert process.wait(timeout=10) == 0
        start = time.monotonic()
        with pytest.raises(TransportError, match="did not finish within 1 s"):
            transport.run("sleep 5", timeout=1)  # (sshd refuses the KILL for a root login: sleep 5 ends itself)
        assert time.monotonic() - start < 4
    probe = probe_target(device, timeout=20)
    assert probe.status == "ok", probe.error
    assert probe.facts["python"]["version"] == ".".join(map(str, sys.version_info[:3]))
    assert {b.backend: b.version for b in probe.backends}["onnxruntime"] == version("onnxruntime")

    if shutil.which("ssh-keyscan") is None:
        return
    known_hosts.write_text("")  # the refusal's own advice, followed literally, is what lets it in
    advice = _connect_error(device)
    command = advice[advice.index("ssh-keyscan"):advice.index(" (a changed key")]
    subprocess.run(command.replace("~", str(client_home)), shell=True, check=True, capture_output=True, timeout=30)
    with SshTransport(device, timeout=10) as transport:
        assert transport.run("echo trusted now").stdout == b"trusted now\n"


def test_openssh_sshd_runs_cells_on_the_target_and_a_killed_worker_is_that_cells_failure(openssh, keys, client_home,
                                                                                          tmp_path):
    """The same run through OpenSSH's sshd: cells measured there, a device worker killed mid-cell reported with
    the signal (sshd sends it as exit-signal), and no device worker left behind when the run ends."""
    import psutil

    from deploybench.harness.pipeline.matrix import open_workers
    from deploybench.harness.pipeline.remote_worker import RemoteWorker, open_devices
    from deploybench.harness.pipeline.settings import RunSettings, TimingRules
    from deploybench.spec import Cell

    host_key = keys["host"].export_public_key().decode().strip()
    (client_home / ".ssh" / "known_hosts").write_text(f"[127.0.0.1]:{openssh} {host_key}\n")
    device = Target(name="openssh", host="127.0.0.1", port=openssh, python=sys.executable,
                    workdir=str(tmp_path / "device"))

    def device_workers():  # this test's own: their working folder is its device folder
        found = []
        for process in psutil.process_iter(["cmdline"]):
            try:
                if "--device" in (process.info["cmdline"] or []) and process.cwd() == str(tmp_path / "device"):
                    found.append(process)
            except psutil.Error:
                continue
        return found

    def kill_in_timing(stage):
        if stage == "time":
            for process in device_workers():
                process.kill()

    settings = RunSettings(timing=TimingRules(min_time_s=0.2, min_samples=10, warmup_count=3), timeout_s=60)
    (info, local), = open_workers(["digits_cnn"], settings)
    devices = open_devices([device], settings)
    remote = RemoteWorker(local, devices[0], settings)
    try:
        killed = remote.run_cell(Cell("digits_cnn", "onnx", "onnxruntime", "fp32", target="openssh"),
                                 on_stage=kill_in_timing)
        measured = remote.run_cell(Cell("digits_cnn", "onnx", "openvino", "int8", target="openssh"))
    finally:
        remote.close()
        local.close()
        devices[0].close()
    assert (killed.status, killed.reason) == ("failed", "time: worker killed by SIGKILL on openssh")
    assert measured.status == "ok", measured.reason
    assert measured.accuracy.reference == "torch fp32 eager" and measured.accuracy.metric_value > 0.9
    assert (tmp_path / "device" / "artifacts").is_dir()
    deadline = time.monotonic() + 10
    while device_workers() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not device_workers()
