"""Runs the shop's processes in the foreground, as a small process supervisor would: restart what dies (with a
backoff that grows when a process keeps dying), report it, and stop everything cleanly on Ctrl-C."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field


def stop_process_group(process: subprocess.Popen, timeout: float = 10.0) -> None:
    """SIGTERM the process and its children (a celery worker then returns its unacknowledged messages; the
    monolith drains its queue), SIGKILL if they will not go. Children run in sessions of their own for this."""
    if process.poll() is not None:
        return
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    except ProcessLookupError:
        pass


def stop_process_groups(processes: list[subprocess.Popen], timeout: float = 10.0) -> None:
    """`stop_process_group` for several at once: SIGTERM to all, then one shared deadline, so their shutdowns overlap
    instead of adding up."""
    for process in processes:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for process in processes:
        try:
            process.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def shop_command(*args: str) -> list[str]:
    """The command line of a shop process; the compose file runs the same `shop ...` commands."""
    return [sys.executable, "-m", "shop", *args]


@dataclass
class Child:
    name: str
    argv: list[str]
    process: subprocess.Popen | None = None
    restarts: int = 0
    started_at: float = 0.0
    restart_at: float | None = None
    failures_in_a_row: int = 0
    held: bool = False
    """stopped on purpose (`Supervisor.stop_child`): not restarted until `start_child`"""
    log: list[str] = field(default_factory=list)


class Supervisor:
    def __init__(
        self,
        children: dict[str, list[str]],
        env: dict[str, str] | None = None,
        report: Callable[[str], None] = print,
        backoff: float = 0.5,
        max_backoff: float = 10.0,
    ) -> None:
        self.children = {name: Child(name, argv) for name, argv in children.items()}
        self.env = {**os.environ, **(env or {})}
        self.report = report
        self.backoff, self.max_backoff = backoff, max_backoff
        self.stopping = False
        self._lock = threading.RLock()
        """`poll` runs in the foreground loop, `stop_child`/`start_child` in the console's threads"""

    def start(self) -> None:
        with self._lock:
            for child in self.children.values():
                self._spawn(child)

    def stop_child(self, name: str, timeout: float = 10.0) -> None:
        """Stop one child (its process group, as `stop` does) and hold it stopped: `poll` does not restart a child
        stopped on purpose. KeyError for a name it does not supervise."""
        with self._lock:
            child = self.children[name]
            child.held, child.restart_at = True, None
            if child.process is not None:
                stop_process_group(child.process, timeout)
            self.report(f"stopped {name} (held until started again)")

    def start_child(self, name: str) -> None:
        """Start a child held by `stop_child` (a running child is left as it is)."""
        with self._lock:
            child = self.children[name]
            child.held, child.failures_in_a_row = False, 0
            if not self.stopping and (child.process is None or child.process.poll() is not None):
                self._spawn(child)

    def _spawn(self, child: Child) -> None:
        child.process = subprocess.Popen(child.argv, env=self.env, start_new_session=True)
        child.started_at, child.restart_at = time.monotonic(), None
        self.report(f"started {child.name} (pid {child.process.pid})")

    def poll(self) -> None:
        """Restart children that exited; call this in the foreground loop."""
        with self._lock:
            self._poll(time.monotonic())

    def _poll(self, now: float) -> None:
        for child in self.children.values():
            if self.stopping or child.process is None or child.held:
                continue
            if child.restart_at is not None:
                if now >= child.restart_at:
                    child.restarts += 1
                    self._spawn(child)
                continue
            code = child.process.poll()
            if code is None:
                if now - child.started_at > 30:
                    child.failures_in_a_row = 0
                continue
            child.failures_in_a_row += 1
            delay = min(self.backoff * 2 ** (child.failures_in_a_row - 1), self.max_backoff)
            child.restart_at = now + delay
            self.report(f"{child.name} exited with code {code}; restarting in {delay:.1f}s")

    def alive(self) -> dict[str, bool]:
        return {name: c.process is not None and c.process.poll() is None for name, c in self.children.items()}

    def held(self) -> list[str]:
        """The children stopped on purpose."""
        return [name for name, child in self.children.items() if child.held]

    def run_forever(self, should_stop: Callable[[], bool] = lambda: False) -> None:
        """Until Ctrl-C or SIGTERM (`docker stop`, a service manager): both stop every child before returning."""
        signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
        try:
            while not should_stop():
                self.poll()
                time.sleep(0.2)
        except KeyboardInterrupt:
            pass
        finally:
            self.stop()

    def stop(self, timeout: float = 10.0) -> None:
        with self._lock:
            self._stop_all(timeout)

    def _stop_all(self, timeout: float) -> None:
        self.stopping = True
        running = [(c.name, c.process) for c in self.children.values()
                   if c.process is not None and c.process.poll() is None]
        stop_process_groups([process for _, process in running], timeout)
        if running:
            self.report(f"stopped {', '.join(name for name, _ in running)}")


def _raise_keyboard_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt
