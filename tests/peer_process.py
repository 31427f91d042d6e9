"""Processes and commands behind the test peers: spawn, readiness, stop, run.

Servers run in their own process group (so stopping one also ends its
children) with output in a log file whose tail goes into failure messages.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

import httpx

HOST = "127.0.0.1"
READY_TIMEOUT = 60.0
STOP_TIMEOUT = 10.0


class PeerUnavailable(Exception):
    """A peer could not be started or reached; the message says why."""


@dataclass
class Process:
    """A server this harness started; its whole process group is stopped."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        """Always reaps the process; escalates to SIGKILL after STOP_TIMEOUT."""
        for sig, wait in ((signal.SIGTERM, STOP_TIMEOUT), (signal.SIGKILL, STOP_TIMEOUT)):
            with suppress(ProcessLookupError):
                os.killpg(self.popen.pid, sig)
            try:
                self.popen.wait(timeout=wait)
                return
            except subprocess.TimeoutExpired:
                continue


def spawn(name: str, argv: list[str], log: Path, cwd: Path) -> Process:
    with log.open("ab") as out:
        popen = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                 cwd=cwd, start_new_session=True)
    return Process(name, popen, log)


def wait_ready(proc: Process, healthy: Callable[[], bool], timeout: float = READY_TIMEOUT) -> float:
    """Seconds until `healthy()`; PeerUnavailable (with the log) if the process dies or times out."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        code = proc.popen.poll()
        if code is not None:
            raise PeerUnavailable(f"{proc.name} exited with status {code} while starting; log {proc.log}:\n"
                                  f"{proc.log_tail()}")
        if healthy():
            return time.monotonic() - start
        time.sleep(0.05)
    raise PeerUnavailable(f"{proc.name} not ready after {timeout:.0f} s; log {proc.log}:\n{proc.log_tail()}")


def poll(check: Callable[[], bool], timeout: float) -> bool:
    """True as soon as `check()` is; False after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)
    return True


def port_open(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=1.0):
            return True
    except OSError:
        return False


def http_get(url: str, auth: tuple[str, str] | None = None) -> httpx.Response | None:
    """The response, or None if nothing answers HTTP there."""
    try:
        # trust_env=False: a CI proxy setting must not capture loopback requests.
        return httpx.get(url, auth=auth, timeout=3.0, trust_env=False)
    except httpx.HTTPError:
        return None


CREDENTIAL_FLAGS = frozenset({"--user", "-u", "--creds", "--src-creds", "--dest-creds"})


def redact(argv: list[str]) -> list[str]:
    """argv with the password part of `user:password` credential arguments masked."""
    out = list(argv)
    for i in range(1, len(out)):
        flag, _, inline = out[i - 1].partition("=")
        if flag in CREDENTIAL_FLAGS and not inline and ":" in out[i]:
            out[i] = out[i].split(":", 1)[0] + ":***"
    for i, arg in enumerate(out):
        flag, eq, value = arg.partition("=")
        if eq and flag in CREDENTIAL_FLAGS and ":" in value:
            out[i] = f"{flag}={value.split(':', 1)[0]}:***"
    return out


class CommandFailed(subprocess.CalledProcessError):
    """CalledProcessError whose message carries stderr and hides credentials."""

    def __str__(self) -> str:
        argv = redact([str(a) for a in self.cmd])
        return (f"{' '.join(argv)} exited with status {self.returncode}\n"
                f"stderr: {(self.stderr or '').strip()}\nstdout: {(self.output or '').strip()}")


def run(*argv: str, check: bool = True, timeout: float = 600.0) -> subprocess.CompletedProcess[str]:
    """Run a command capturing text output; with check, a non-zero exit raises CommandFailed."""
    done = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, check=False)
    if check and done.returncode != 0:
        raise CommandFailed(done.returncode, list(argv), done.stdout, done.stderr)
    return done
