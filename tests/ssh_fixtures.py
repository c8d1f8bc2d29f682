"""The SSH server the remote tests measure through: tests/ssh_server.py (asyncssh's server) in its own
process on 127.0.0.1, with a temporary host key and user key, and a client HOME that trusts it.
tests/conftest.py offers its fixtures (``keys``, ``server``, ``client_home``) to every test module; asyncssh is
imported only when a fixture is used, so a run without it still collects."""

from __future__ import annotations

import os
import select
import subprocess
import sys
from pathlib import Path

import pytest

from deploybench.harness.remote.targets import Target

SERVER = Path(__file__).with_name("ssh_server.py")


def _key(path: Path):
    asyncssh = pytest.importorskip("asyncssh", reason="needs asyncssh: pip install 'deploybench[remote]'")
    key = asyncssh.generate_private_key("ssh-ed25519")
    key.write_private_key(str(path))
    path.chmod(0o600)  # as ssh-keygen leaves it; ssh-add refuses a key others can read
    key.write_public_key(str(path) + ".pub")
    return key


class Server:
    """tests/ssh_server.py in its own process: ``port``, ``home`` (its login folder), ``stop()``."""

    def __init__(self, root: Path, host_key: Path, authorized: Path):
        self.home = root / "device-home"
        self.home.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen([sys.executable, str(SERVER), str(host_key), str(authorized), str(self.home)],
                                        stdout=subprocess.PIPE, start_new_session=True)
        ready, _, _ = select.select([self.process.stdout], [], [], 20)
        line = self.process.stdout.readline().decode() if ready else ""
        if not line.startswith("PORT "):
            self.stop()
            raise RuntimeError(f"the test SSH server did not start: {line!r}")
        self.port = int(line.split()[1])

    def stop(self) -> None:
        try:
            os.killpg(self.process.pid, 9)  # the server and every command it started
        except ProcessLookupError:
            pass
        self.process.wait()


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    root = tmp_path_factory.mktemp("ssh-keys")
    host, user, stranger = _key(root / "host_key"), _key(root / "user_key"), _key(root / "stranger_key")
    (root / "authorized_keys").write_bytes(user.export_public_key())
    return dict(root=root, host=host, user=user, stranger=stranger)


@pytest.fixture(scope="module")
def server(keys):
    running = Server(keys["root"], keys["root"] / "host_key", keys["root"] / "authorized_keys")
    yield running
    running.stop()


@pytest.fixture
def client_home(tmp_path, monkeypatch, keys, server):
    """A user's HOME with ~/.ssh/id_ed25519 and a known_hosts that trusts the server; no agent."""
    home = tmp_path / "client-home"
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh" / "id_ed25519").write_bytes((keys["root"] / "user_key").read_bytes())
    (home / ".ssh" / "id_ed25519").chmod(0o600)
    host_key = keys["host"].export_public_key().decode().strip()
    (home / ".ssh" / "known_hosts").write_text(f"[127.0.0.1]:{server.port} {host_key}\n")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    return home


def target(server, **fields) -> Target:
    fields.setdefault("python", sys.executable)
    return Target(name=fields.pop("name", "box"), host="127.0.0.1", port=server.port, **fields)
