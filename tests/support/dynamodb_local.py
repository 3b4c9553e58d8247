"""DynamoDB Local as the tests' real lease store, unreachable from outside this machine.

moto's DynamoDB checks a ``ConditionExpression`` and then writes without a lock, so two
concurrent conditional writes to one item can both succeed; the lease fencing relies on
DynamoDB never allowing that. DynamoDB Local (AWS's own jar, shipped in the npm package
``amplify-dynamodb-simulator``, which ``scripts/test`` unpacks into ``.work/npm``) is the real
thing, on the machine's Java 17.

It binds every interface and has no option to change that, so it must never listen in the
machine's network namespace. It runs inside a private one (``unshare --net``; as a non-root user
``unshare --user --map-root-user --net``) that holds only loopback, and is bridged out through a
UNIX socket file (file system paths are shared across network namespaces)::

    test / replica ──TCP──▶ 127.0.0.1:<free port>  (outside bridge, machine namespace)
                  ──UNIX──▶ <tmp>/ddb.sock          (inside bridge, private namespace)
                  ──TCP──▶ 127.0.0.1:P              DynamoDB Local, private namespace

This module is also the bridges' program: ``python -m tests.support.dynamodb_local inside
SOCKET PORT JAR_DIR`` (starts the jar, serves the socket; exits, killing the jar, when its
stdin closes) and ``... outside PORT SOCKET``. It installs nothing itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

from tests.support.process import REPO, free_port

PACKAGE = REPO / ".work" / "npm" / "dynamodb-local" / "package" / "emulator"
_JAR = "DynamoDBLocal.jar"
_PR_SET_PDEATHSIG = 1
_shared: contextlib.ExitStack | None = None
_shared_url = ""
_shared_lock = threading.Lock()


class Unavailable(RuntimeError):
    """DynamoDB Local cannot run here (no jar, no Java, no private network namespace)."""


def unavailable_reason() -> str | None:
    """Why DynamoDB Local cannot run on this machine, or None if it can."""
    if not (PACKAGE / _JAR).exists():
        return f"DynamoDB Local is not installed at {PACKAGE}; run scripts/test, which installs it"
    if shutil.which("java") is None:
        return "DynamoDB Local needs Java 17 (java is not on PATH)"
    probe = subprocess.run(
        [*_unshare_command(), "true"], capture_output=True, text=True, check=False
    )
    if probe.returncode != 0:
        return f"cannot make a private network namespace for DynamoDB Local: {probe.stderr.strip()}"
    return None


def _unshare_command() -> list[str]:
    if os.geteuid() == 0:
        return ["unshare", "--net", "--"]
    return ["unshare", "--user", "--map-root-user", "--net", "--"]


@contextlib.contextmanager
def dynamodb_local() -> Iterator[str]:
    """Start DynamoDB Local in a private network namespace; yield its URL on the host's
    loopback (through the bridges). Raises :class:`Unavailable` if it cannot run here."""
    reason = unavailable_reason()
    if reason is not None:
        raise Unavailable(reason)
    with tempfile.TemporaryDirectory(prefix="ddb-local-") as tmp:
        sock = str(Path(tmp) / "ddb.sock")
        port = free_port()
        module = "tests.support.dynamodb_local"
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        inside = subprocess.Popen(
            [*_unshare_command(), sys.executable, "-m", module, "inside", sock, "8000"],
            stdin=subprocess.PIPE,
            env=env,
            cwd=REPO,
        )
        outside = subprocess.Popen(
            [sys.executable, "-m", module, "outside", str(port), sock],
            stdin=subprocess.PIPE,
            env=env,
            cwd=REPO,
        )
        url = f"http://127.0.0.1:{port}"
        try:
            _wait_answering(url, [inside, outside])
            yield url
        finally:
            for proc in (outside, inside):
                _stop(proc)


def shared_dynamodb_local() -> str:
    """The URL of one DynamoDB Local for the whole test session, started on first use (about
    3 s), stopped at exit. Raises :class:`Unavailable` if it cannot run here."""
    global _shared, _shared_url
    with _shared_lock:
        if _shared is None:
            import atexit

            stack = contextlib.ExitStack()
            _shared_url = stack.enter_context(dynamodb_local())
            atexit.register(stack.close)
            _shared = stack
    return _shared_url


def require_dynamodb_local() -> str:
    """:func:`shared_dynamodb_local` for a fixture: the test is skipped, with the reason, when
    DynamoDB Local cannot run here (on CI, as root, it always can)."""
    import pytest

    try:
        return shared_dynamodb_local()
    except Unavailable as unavailable:
        pytest.skip(str(unavailable))


def _wait_answering(url: str, procs: list[subprocess.Popen[bytes]], limit: float = 60) -> None:
    """Wait until an HTTP request through both bridges gets DynamoDB Local's answer."""
    deadline = time.monotonic() + limit
    while True:
        try:
            urllib.request.urlopen(url, timeout=2).close()
            return
        except urllib.error.HTTPError:
            return  # an HTTP error status is an answer: the jar is serving
        except OSError:
            dead = [p.args for p in procs if p.poll() is not None]
            if dead or time.monotonic() > deadline:
                raise RuntimeError(f"DynamoDB Local did not start (exited: {dead})") from None
            time.sleep(0.2)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """Close the bridge's stdin (its signal to stop), then make sure it is gone."""
    if proc.stdin is not None:
        with contextlib.suppress(OSError):
            proc.stdin.close()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


# -- the bridges (run as ``python -m tests.support.dynamodb_local``) ------------------------


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except OSError:
        pass
    finally:
        with contextlib.suppress(OSError):
            writer.close()


def _splice(
    connect: Callable[[], Awaitable[tuple[asyncio.StreamReader, asyncio.StreamWriter]]],
) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]:
    """A connection handler that opens ``connect()`` and copies bytes both ways."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await connect()
        except OSError:
            writer.close()  # the jar is not up yet: the caller sees a closed connection
            return
        await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))

    return serve


async def _until_stdin_closes() -> None:
    """Block until the parent closes our stdin (or dies): the bridges' stop signal."""
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.buffer.read)


def _die_with_parent() -> None:
    """In the jar's process: get SIGKILL when the inside bridge dies, whatever kills it."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def _start_jar(port: int) -> subprocess.Popen[bytes]:
    """Bring loopback up in this (private) namespace and start the jar on ``port``."""
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    return subprocess.Popen(
        [
            "java",
            "-Djava.library.path=./DynamoDBLocal_lib",
            "-jar",
            _JAR,
            "-inMemory",
            "-sharedDb",  # one database whatever credentials and region a client signs with
            "-disableTelemetry",
            "-port",
            str(port),
        ],
        cwd=PACKAGE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        preexec_fn=_die_with_parent,
    )


async def _inside(sock: str, port: int) -> None:
    server = await asyncio.start_unix_server(
        _splice(lambda: asyncio.open_connection("127.0.0.1", port)), path=sock
    )
    async with server:
        await _until_stdin_closes()


async def _outside(port: int, sock: str) -> None:
    server = await asyncio.start_server(
        _splice(lambda: asyncio.open_unix_connection(sock)), host="127.0.0.1", port=port
    )
    async with server:
        await _until_stdin_closes()


def main(argv: list[str]) -> None:
    if argv[0] == "inside":
        jar = _start_jar(int(argv[2]))
        try:
            asyncio.run(_inside(argv[1], int(argv[2])))
        finally:
            jar.kill()
            jar.wait()
    elif argv[0] == "outside":
        asyncio.run(_outside(int(argv[1]), argv[2]))
    else:
        raise SystemExit(f"unknown bridge {argv[0]!r}: expected inside or outside")


if __name__ == "__main__":
    main(sys.argv[1:])
