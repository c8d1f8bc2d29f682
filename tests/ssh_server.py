"""A real SSH server on 127.0.0.1 for the remote tests: OpenSSH's protocol, spoken by asyncssh's server.

Run as ``python tests/ssh_server.py HOST_KEY AUTHORIZED_KEYS HOME``: it listens on a free port, prints
``PORT <n>``, and runs each requested command in ``sh -c`` in HOME with a login-like environment (PATH,
HOME; none of the test's own variables), as sshd would; SFTP is served from HOME. When a client closes a
channel (the transport's kill on a timeout) the command and its children are killed, as sshd's closing
of their pipes and a signal would. The tests stop the server by killing this process.
"""

from __future__ import annotations

import asyncio
import os
import sys

import asyncssh
import psutil


def _kill_tree(pid: int) -> None:
    try:
        parent = psutil.Process(pid)
        for process in [*parent.children(recursive=True), parent]:
            process.kill()
    except psutil.Error:
        pass


async def run_command(process: asyncssh.SSHServerProcess, home: str) -> None:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": home, "LANG": "C.UTF-8"}
    local = await asyncio.create_subprocess_exec(
        "/bin/sh", "-c", process.command or "exit 0", cwd=home, env=env,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)

    async def feed_stdin():  # a signal request from the client arrives here as an exception: kill, as sshd does
        try:
            while data := await process.stdin.read(1 << 16):
                local.stdin.write(data)
                await local.stdin.drain()
            local.stdin.close()
        except asyncssh.SignalReceived:
            _kill_tree(local.pid)
        except (asyncssh.Error, OSError):
            pass

    async def copy(source, sink):
        try:
            while data := await source.read(1 << 16):
                sink.write(data)
                await sink.drain()
        except (asyncssh.Error, OSError):
            pass

    # asyncssh's own redirect() to these streams drops the whole connection when a channel closes early, so pump
    pumps = [asyncio.ensure_future(feed_stdin()), asyncio.ensure_future(copy(local.stdout, process.stdout)),
             asyncio.ensure_future(copy(local.stderr, process.stderr))]
    done = asyncio.ensure_future(asyncio.gather(local.wait(), *pumps[1:]))
    closed = asyncio.ensure_future(process.channel.wait_closed())
    await asyncio.wait([done, closed], return_when=asyncio.FIRST_COMPLETED)
    if not done.done():  # the client went away: end the command and its children, as sshd would
        _kill_tree(local.pid)
    await done
    pumps[0].cancel()
    closed.cancel()
    if not process.channel.is_closing():
        code = local.returncode
        process.exit(code if code >= 0 else 128 - code)


async def serve(host_key: str, authorized_keys: str, home: str) -> None:
    server = await asyncssh.create_server(
        asyncssh.SSHServer, "127.0.0.1", 0, server_host_keys=[host_key], authorized_client_keys=authorized_keys,
        process_factory=lambda process: run_command(process, home), encoding=None, line_editor=False,
        sftp_factory=lambda chan: asyncssh.SFTPServer(chan, chroot=None),
        password_auth=False, kbdint_auth=False)
    print("PORT", server.sockets[0].getsockname()[1], flush=True)
    await server.wait_closed()


if __name__ == "__main__":
    if os.environ.get("DEPLOYBENCH_SSH_SERVER_DEBUG"):  # asyncssh's own log on stderr
        import logging; logging.basicConfig(level=logging.DEBUG); asyncssh.set_debug_level(2)
    paths = [os.path.abspath(path) for path in sys.argv[1:4]]
    os.chdir(paths[2])  # SFTP paths are relative to the server's folder: the login folder
    asyncio.run(serve(*paths))
