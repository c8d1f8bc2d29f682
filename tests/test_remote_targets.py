"""Targets: ssh:// URLs, [tool.deploybench.targets] and targets files; each bad definition is one line naming
the target and the field; `deploybench targets` without a network (--no-probe, usage errors, no target)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from deploybench.cli import main
from deploybench.harness.remote.targets import (DEFAULT_PYTHON, DEFAULT_WORKDIR, Target, defined_targets,
                                                resolve_targets, target_from_url)
from deploybench.spec import DeployBenchError


def test_an_ssh_url_names_user_host_and_port():
    target = target_from_url("ssh://pi@raspberrypi.local:2222")
    assert (target.name, target.user, target.host, target.port) == ("ssh://pi@raspberrypi.local:2222", "pi",
                                                                      "raspberrypi.local", 2222)
    assert (target.python, target.workdir, target.backends) == (DEFAULT_PYTHON, DEFAULT_WORKDIR, ())
    bare = target_from_url("ssh://devbox")  # user and port left to ~/.ssh/config, as `ssh devbox` does
    assert (bare.user, bare.host, bare.port) == (None, "devbox", None)
    assert target_from_url("ssh://me@[::1]:22").address == "ssh://me@[::1]:22"


@pytest.mark.parametrize("url, message", [
    ("adb://phone", "target adb://phone: transport 'adb' is unknown; known: ssh"),
    ("ssh://pi@host/home/pi", "only ssh://user@host:port is understood here"),
    ("ssh://pi@host:99999", "target ssh://pi@host:99999: Port out of range"),
    ("ssh://pi@:22", "no host"),
])
def test_a_bad_url_is_one_line(url, message):
    with pytest.raises(DeployBenchError, match=message.replace("?", r"\?")) as raised:
        target_from_url(url)
    assert "\n" not in str(raised.value)


def _project(tmp_path, targets_toml: str):
    (tmp_path / "pyproject.toml").write_text("[tool.deploybench]\nmodels = [\"digits_cnn\"]\n"
                                             + textwrap.dedent(targets_toml))
    return tmp_path / "pyproject.toml"


def test_pyproject_targets_carry_every_field(tmp_path):
    pyproject = _project(tmp_path, """
        [tool.deploybench.targets.pi]
        host = "raspberrypi.local"
        user = "pi"
        port = 2222
        identity_file = "~/.ssh/pi"
        python = "~/venv/bin/python3"
        workdir = "bench"
        backends = ["onnxruntime", "tflite"]
        [tool.deploybench.targets.mac]
        host = "mac.lan"
        backends = "coreml,onnxruntime"
    """)
    targets = defined_targets(pyproject)
    assert targets["pi"] == Target(name="pi", host="raspberrypi.local", user="pi", port=2222,
                                   identity_file="~/.ssh/pi", python="~/venv/bin/python3", workdir="bench",
                                   backends=("onnxruntime", "tflite"))
    assert targets["mac"].backends == ("coreml", "onnxruntime") and targets["mac"].user is None
    assert [t.name for t in resolve_targets([], targets)] == ["pi", "mac"]
    assert [t.name for t in resolve_targets(["mac", "ssh://x@y"], targets)] == ["mac", "ssh://x@y"]


@pytest.mark.parametrize("table, message", [
    ('port = "22"', "target pi (in {}): port '22' must be a number from 1 to 65535, e.g. port = 22"),
    ("port = 0", "target pi (in {}): port 0 must be a number from 1 to 65535"),
    ('hostname = "x"', "target pi (in {}): unknown field hostname; known fields: host, user, port"),
    ('backends = ["onnxruntime", "ncnn"]', "target pi (in {}): backends ncnn unknown; known: torch, onnxruntime"),
    ('backends = [1]', "target pi (in {}): backends [1] must be a list of names"),
    ('python = ""', "target pi (in {}): python '' must be a non-empty one-line string"),
    ('user = "pi@box"', "target pi (in {}): user 'pi@box' must be a login name"),
    ('transport = "adb"', "target pi (in {}): transport 'adb' is unknown; known: ssh"),
])
def test_a_bad_field_is_one_line_naming_target_and_field(tmp_path, table, message):
    pyproject = _project(tmp_path, f'[tool.deploybench.targets.pi]\nhost = "pi.local"\n{table}\n')
    with pytest.raises(DeployBenchError) as raised:
        defined_targets(pyproject)
    assert str(raised.value).startswith(message.format(pyproject))
    assert "\n" not in str(raised.value)


def test_a_missing_host_and_a_target_that_is_not_a_table(tmp_path):
    with pytest.raises(DeployBenchError, match=r"target pi \(in .*\): host is missing"):
        defined_targets(_project(tmp_path, '[tool.deploybench.targets.pi]\nuser = "pi"\n'))
    with pytest.raises(DeployBenchError, match=r"target pi \(in .*\) must be a table of fields"):
        defined_targets(_project(tmp_path, '[tool.deploybench.targets]\npi = "ssh://pi@host"\n'))


def test_a_targets_file_adds_targets_and_refuses_a_name_defined_twice(tmp_path):
    pyproject = _project(tmp_path, '[tool.deploybench.targets.pi]\nhost = "pi.local"\n')
    extra = tmp_path / "targets.toml"
    extra.write_text('[jetson]\nhost = "jetson.lan"\nbackends = ["tensorrt", "onnxruntime"]\n')
    assert list(defined_targets(pyproject, extra)) == ["pi", "jetson"]
    assert defined_targets(None, extra)["jetson"].defined_in == str(extra)
    extra.write_text('[pi]\nhost = "other.local"\n')
    with pytest.raises(DeployBenchError, match=f"target pi is defined in both {pyproject} and {extra}; rename one"):
        defined_targets(pyproject, extra)
    with pytest.raises(DeployBenchError, match="targets file .*nowhere.toml does not exist"):
        defined_targets(None, tmp_path / "nowhere.toml")
    extra.write_text("[pi\n")
    with pytest.raises(DeployBenchError, match="targets.toml is not valid TOML"):
        defined_targets(None, extra)


def test_an_unknown_name_says_how_to_define_it():
    with pytest.raises(DeployBenchError, match=r"unknown target pi \(none is defined\); name one as "
                                               r"ssh://user@host\[:port\] or define it in \[tool.deploybench.targets.pi\]"):
        resolve_targets(["pi"], {})


def test_targets_command_lists_definitions_and_reports_usage_errors(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["targets"]) == 3  # nothing defined, nothing named
    assert "no target is defined" in capsys.readouterr().err
    _project(tmp_path, '[tool.deploybench.targets.pi]\nhost = "pi.local"\nuser = "pi"\nbackends = ["tflite"]\n')
    (tmp_path / "sub").mkdir()
    monkeypatch.chdir(tmp_path / "sub")  # the nearest pyproject.toml above is the project's
    assert main(["targets", "--no-probe"]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("pi "))
    assert row.split()[:5] == ["pi", "ssh://pi@pi.local", "python3", ".cache/deploybench", "tflite"]
    assert main(["targets", "nope"]) == 2
    assert capsys.readouterr().err.startswith("deploybench: error: unknown target nope (defined: pi)")
    assert main(["targets", "--timeout", "0"]) == 2
    assert "is not a positive number of seconds" in capsys.readouterr().err


def test_without_asyncssh_the_command_says_which_extra_to_install(tmp_path):
    """The remote modules import without asyncssh; connecting then names the extra (one line, exit 2)."""
    code = textwrap.dedent("""
        import sys
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] == "asyncssh":
                    raise ImportError("blocked for this test")
        sys.meta_path.insert(0, Block())
        import deploybench.harness.remote.ssh, deploybench.harness.remote.command
        from deploybench.cli import main
        sys.exit(main(["targets", "ssh://pi@127.0.0.1:1", "--timeout", "2"]))
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip() == "deploybench: error: SSH targets need asyncssh: pip install 'deploybench[remote]'"
