"""The transport over SSH, with asyncssh (``pip install 'deploybench[remote]'``); no protocol code here.

The user's ordinary set-up applies as it does for ``ssh``: ``~/.ssh/config`` (Host aliases, HostName,
User, Port, IdentityFile, UserKnownHostsFile), the agent, ``~/.ssh/id_*``, and host keys checked against
known_hosts. An unknown or changed host key is refused with the command that adds it after the user has
checked it; a config that turns checking off (``UserKnownHostsFile none``) is refused too, since
asyncssh would then accept any key without a word.

asyncssh is asynchronous and deploybench is not: each transport runs its own event loop in a daemon
thread and every step waits on it with a deadline. A long-running process gets two OS pipes bridged by
asyncssh itself, so its stdin and stdout are ordinary file descriptors here (what the worker's frame
reader selects on).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import posixpath
import secrets
import socket
import subprocess
import threading
from pathlib import Path
from typing import Any, BinaryIO

from deploybench.harness.remote.targets import Target
from deploybench.harness.remote.transport import (DEFAULT_TIMEOUT_S, CommandResult, ConnectError, Transport,
                                                  TransportError)
from deploybench.spec import DeployBenchError

# What a process whose channel closed without an exit status reports: the code `ssh` itself exits with.
CONNECTION_LOST = 255
# A step's own deadline is enforced inside the loop; this margin only guards against a stuck loop.
LOOP_MARGIN_S = 5.0


def _asyncssh():
    try:
        import asyncssh
    except ImportError:
        raise DeployBenchError("SSH targets need asyncssh: pip install 'deploybench[remote]'") from None
    return asyncssh


def _short(command: str, limit: int = 60) -> str:
    line = " ".join(command.split())
    return line if len(line) <= limit else line[:limit - 3] + "..."


class SshTransport(Transport):
    """One SSH connection to one target, opened on first use and again after it was lost."""

    def __init__(self, target: Target, timeout: float = DEFAULT_TIMEOUT_S):
        super().__init__(target, timeout)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True,
                                        name=f"deploybench-ssh-{target.name}")
        self._thread.start()
        self._conn: Any = None
        self._where = target.address  # user@host:port once the ssh config has been read
        self._processes: list[SshProcess] = []

    # ---- the loop ----------------------------------------------------------------------
    def _call(self, coroutine, timeout: float):
        """Run ``coroutine`` on this transport's loop and wait for it (it bounds itself by ``timeout``)."""
        if self._loop.is_closed():
            raise TransportError(f"target {self.target.name}: the transport is closed")
        future = asyncio.run_coroutine_threadsafe(coroutine, self._loop)
        try:
            return future.result(timeout + LOOP_MARGIN_S)
        except TimeoutError:
            future.cancel()
            raise TransportError(f"target {self.target.name}: no answer from {self._where} within "
                                 f"{timeout:g} s") from None
        except BaseException:
            future.cancel()
            raise

    # ---- the session -------------------------------------------------------------------
    def _options(self):
        asyncssh, target = _asyncssh(), self.target
        kwargs: dict[str, Any] = {"connect_timeout": self.timeout, "login_timeout": self.timeout}
        if target.user:
            kwargs["username"] = target.user
        if target.port:
            kwargs["port"] = target.port
        if target.identity_file:
            identity = Path(target.identity_file).expanduser()
            if not identity.is_file():
                raise ConnectError(f"target {target.name}: identity_file {target.identity_file} does not exist here")
            kwargs["client_keys"] = [str(identity)]
        # ~/.ssh/config named explicitly: options built outside connect() would not read it otherwise
        config = Path("~", ".ssh", "config").expanduser()
        kwargs["config"] = [str(config)] if os.access(config, os.R_OK) else []
        try:
            options = asyncssh.SSHClientConnectionOptions(host=target.host, **kwargs)
        except (asyncssh.Error, ValueError, OSError) as exc:  # an unreadable key or ssh config
            raise ConnectError(f"target {target.name}: cannot use the ssh set-up for {target.host}: {exc}") from None
        user = f"{options.username}@" if options.username else ""
        self._where = f"{user}{options.host}:{options.port}"
        if options.known_hosts is None:
            raise ConnectError(f"target {target.name}: the ssh config turns host-key checking off for {target.host} "
                               "(UserKnownHostsFile none); deploybench only connects to a host whose key it "
                               "can verify: remove that line for this host")
        return options

    async def _session(self):
        if self._conn is not None and not self._conn.is_closed():
            return self._conn
        asyncssh, target = _asyncssh(), self.target
        options = self._options()
        host, port, user = options.host, options.port, options.username
        try:
            self._conn = await asyncio.wait_for(asyncssh.connect(target.host, options=options), self.timeout)
        except asyncssh.HostKeyNotVerifiable as exc:
            raise ConnectError(
                f"target {target.name}: the host key of {host}:{port} is not trusted ({exc.reason}): it is not in "
                f"your known_hosts, or it changed. Check it is the machine you mean, then add its key: "
                f"ssh-keyscan -p {port} {host} >> ~/.ssh/known_hosts (a changed key: ssh-keygen -R "
                f"'[{host}]:{port}' first). deploybench never accepts a host key by itself") from None
        except asyncssh.PermissionDenied:
            offered = f"identity_file {target.identity_file}" if target.identity_file else \
                "the keys of your ssh agent, ~/.ssh/config and ~/.ssh/id_*"
            raise ConnectError(f"target {target.name}: {user}@{host}:{port} refused {offered}: add your public key "
                               f"to ~/.ssh/authorized_keys there (ssh-copy-id -p {port} {user}@{host}), or set "
                               "identity_file") from None
        except asyncssh.KeyImportError as exc:
            raise ConnectError(f"target {target.name}: cannot use the key {target.identity_file or ''}: {exc} "
                               "(an encrypted key: add it to your agent with ssh-add)") from None
        except (asyncio.TimeoutError, TimeoutError):
            raise ConnectError(f"target {target.name}: no SSH session with {host}:{port} within {self.timeout:g} s "
                               "(the host is down, a firewall drops the packets, or it is not an SSH server); "
                               "raise --timeout for a slow link") from None
        except ConnectionRefusedError:
            raise ConnectError(f"target {target.name}: {host}:{port} refused the connection: no SSH server "
                               f"listens on port {port} there") from None
        except socket.gaierror as exc:
            raise ConnectError(f"target {target.name}: cannot resolve the host {host}: {exc.strerror}") from None
        except OSError as exc:
            raise ConnectError(f"target {target.name}: cannot reach {host}:{port}: {exc.strerror or exc}") from None
        except asyncssh.Error as exc:  # the server disconnected during the handshake, a protocol mismatch...
            raise ConnectError(f"target {target.name}: {host}:{port} ended the SSH handshake: {exc.reason}") from None
        return self._conn

    def connect(self) -> None:
        self._call(self._session(), 2 * self.timeout)

    def _lost(self, doing: str, exc: BaseException | None = None) -> TransportError:
        self._conn = None  # the next step connects again (a device that rebooted)
        why = f": {getattr(exc, 'reason', '') or exc}" if exc is not None and str(exc) else ""
        return TransportError(f"target {self.target.name}: the connection to {self._where} was lost during "
                              f"{doing}{why}")

    # ---- commands ----------------------------------------------------------------------
    def run(self, command: str, *, input: bytes | None = None, timeout: float | None = None) -> CommandResult:
        timeout = self.timeout if timeout is None else timeout
        return self._call(self._run(command, input, timeout), 2 * self.timeout + timeout)

    async def _run(self, command: str, input: bytes | None, timeout: float) -> CommandResult:
        asyncssh = _asyncssh()
        conn = await self._session()
        doing = f"`{_short(command)}`"
        process = None
        try:
            process = await asyncio.wait_for(conn.create_process(command, encoding=None), timeout)
            try:
                if input:
                    process.stdin.write(input)
                process.stdin.write_eof()
            except OSError:  # it ended before reading its input (a missing python: exit 127); wait() says how
                pass
            done = await process.wait(timeout=timeout)
        except asyncssh.TimeoutError:
            self._kill(process)
            raise TransportError(f"target {self.target.name}: {doing} did not finish within {timeout:g} s and was "
                                 "killed there; raise --timeout for a slow device") from None
        except asyncio.TimeoutError:  # the session would not even open a channel
            raise TransportError(f"target {self.target.name}: {self._where} did not start {doing} within "
                                 f"{timeout:g} s") from None
        except (asyncssh.Error, OSError) as exc:
            raise self._lost(doing, exc) from None
        if done.returncode is None:  # the channel closed without an exit status: the server went away
            raise self._lost(doing)
        return CommandResult(done.returncode, done.stdout or b"", done.stderr or b"")

    @staticmethod
    def _kill(process) -> None:
        """Ask for KILL and close the channel. Best effort: OpenSSH refuses signal requests for a root
        login (and before 7.9 for everyone); the command then ends at its next read or write on its
        closed pipes, not before. So what runs there must bound itself too: the probe sets an alarm,
        a worker ends at the end of its stdin."""
        if process is None:
            return
        with contextlib.suppress(Exception):
            process.kill()
        with contextlib.suppress(Exception):
            process.close()

    def start(self, command: str, *, stderr: BinaryIO | None = None) -> SshProcess:
        asyncssh = _asyncssh()
        stdin_read, stdin_write = os.pipe()
        stdout_read, stdout_write = os.pipe()
        # asyncssh closes what it is given when the stream ends; stderr is the caller's file, so give it a dup
        stderr_target = os.dup(stderr.fileno()) if stderr is not None else asyncssh.DEVNULL
        try:
            process = self._call(self._start(command, stdin_read, stdout_write, stderr_target), 3 * self.timeout)
        except BaseException:
            for fd in (stdin_read, stdin_write, stdout_read, stdout_write,
                       *([stderr_target] if isinstance(stderr_target, int) and stderr is not None else [])):
                with contextlib.suppress(OSError):
                    os.close(fd)
            raise
        started = SshProcess(self, process, os.fdopen(stdin_write, "wb"), os.fdopen(stdout_read, "rb"))
        self._processes.append(started)
        return started

    async def _start(self, command: str, stdin: int, stdout: int, stderr: Any):
        asyncssh = _asyncssh()
        conn = await self._session()
        try:
            return await asyncio.wait_for(conn.create_process(command, stdin=stdin, stdout=stdout, stderr=stderr,
                                                              encoding=None), self.timeout)
        except asyncio.TimeoutError:
            raise TransportError(f"target {self.target.name}: {self._where} did not start `{_short(command)}` "
                                 f"within {self.timeout:g} s") from None
        except (asyncssh.Error, OSError) as exc:
            raise self._lost(f"the start of `{_short(command)}`", exc) from None

    # ---- files -------------------------------------------------------------------------
    def put(self, local: Path, remote: str, *, timeout: float | None = None) -> None:
        if not Path(local).is_file():
            raise TransportError(f"target {self.target.name}: cannot send {local}: no such file here")
        self._call(self._copy("put", Path(local), _sftp_path(remote), timeout or self.timeout),
                   2 * self.timeout + (timeout or self.timeout))

    def get(self, remote: str, local: Path, *, timeout: float | None = None) -> None:
        self._call(self._copy("get", Path(local), _sftp_path(remote), timeout or self.timeout),
                   2 * self.timeout + (timeout or self.timeout))

    async def _copy(self, direction: str, local: Path, remote: str, timeout: float) -> None:
        asyncssh = _asyncssh()
        conn = await self._session()
        doing = f"the copy of {local} to {remote}" if direction == "put" else f"the copy of {remote} to {local}"
        try:
            await asyncio.wait_for(self._sftp_copy(conn, direction, local, remote), timeout)
        except asyncio.TimeoutError:
            raise TransportError(f"target {self.target.name}: {doing} did not finish within {timeout:g} s") from None
        except asyncssh.SFTPError as exc:
            raise TransportError(f"target {self.target.name}: {doing} failed there: {exc.reason}") from None
        except OSError as exc:
            raise TransportError(f"target {self.target.name}: {doing} failed: {exc.strerror or exc}") from None
        except asyncssh.Error as exc:
            raise self._lost(doing, exc) from None

    @staticmethod
    async def _sftp_copy(conn, direction: str, local: Path, remote: str) -> None:
        """Through a temporary name then a rename on the receiving side, so a copy cut short leaves no
        file that looks whole."""
        asyncssh = _asyncssh()
        partial = f"{secrets.token_hex(4)}.part"
        async with conn.start_sftp_client() as sftp:
            if direction == "put":
                folder = posixpath.dirname(remote)
                if folder:
                    await sftp.makedirs(folder, exist_ok=True)
                staged = posixpath.join(folder, f".{posixpath.basename(remote)}.{partial}")
                await sftp.put(str(local), staged)
                try:
                    await sftp.posix_rename(staged, remote)
                except asyncssh.SFTPOpUnsupported:  # a server without the OpenSSH extension
                    with contextlib.suppress(asyncssh.SFTPNoSuchFile):
                        await sftp.remove(remote)
                    await sftp.rename(staged, remote)
            else:
                local.parent.mkdir(parents=True, exist_ok=True)
                staged_local = local.with_name(f".{local.name}.{partial}")
                try:
                    await sftp.get(remote, str(staged_local))
                    os.replace(staged_local, local)
                finally:
                    staged_local.unlink(missing_ok=True)

    # ---- the end -----------------------------------------------------------------------
    def close(self) -> None:
        if self._loop.is_closed():
            return
        for process in self._processes:
            process.kill()
            for pipe in (process.stdin, process.stdout):  # this side's ends; asyncssh owns the others
                with contextlib.suppress(OSError):
                    pipe.close()
        with contextlib.suppress(Exception):
            self._call(self._close_session(), self.timeout)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(LOOP_MARGIN_S)
        if not self._thread.is_alive():
            self._loop.close()

    async def _close_session(self) -> None:
        """Close the connection, then end what asyncssh still has running, so no task dies with the loop."""
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(conn.wait_closed(), self.timeout)
        pending = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)


def _sftp_path(remote: str) -> str:
    """SFTP paths are relative to the login folder; ``~/x`` means the same there."""
    return remote[2:] if remote.startswith("~/") else remote


class SshProcess:
    """A command on the target with local pipes: ``subprocess.Popen``'s shape (see ``RemoteProcess``)."""

    def __init__(self, transport: SshTransport, process: Any, stdin: BinaryIO, stdout: BinaryIO):
        self._transport, self._process = transport, process
        self.stdin, self.stdout = stdin, stdout

    @property
    def returncode(self) -> int | None:
        """The exit status, -signal, ``CONNECTION_LOST`` (255) if the channel closed without either (the
        connection dropped, or ``kill`` closed it and the server did not report a signal), or None while
        it runs."""
        code = self._process.returncode
        if code is None and self._process.channel.is_closing():
            return CONNECTION_LOST
        return code

    def poll(self) -> int | None:
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        """Wait for the end; ``subprocess.TimeoutExpired`` after ``timeout`` seconds, as Popen does."""
        limit = timeout if timeout is not None else 24 * 3600.0

        async def closed():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._process.wait_closed(), limit)

        self._transport._call(closed(), limit)
        if self.returncode is None:
            raise subprocess.TimeoutExpired(self._process.command or "", timeout)
        return self.returncode

    def kill(self) -> None:
        """KILL it there and close its channel; the pipes here then see end-of-file."""
        loop = self._transport._loop
        if not loop.is_closed():
            loop.call_soon_threadsafe(SshTransport._kill, self._process)


__all__ = ["CONNECTION_LOST", "SshProcess", "SshTransport"]
