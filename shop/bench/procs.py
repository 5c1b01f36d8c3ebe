"""Worker processes of a benchmark: start, stop, and what they cost, read from /proc.

/proc is read directly (no psutil) because the numbers needed are two fields: CPU time (utime+stime of
/proc/<pid>/stat) and peak resident memory (VmHWM of /proc/<pid>/status). A solo-pool celery worker does its work in
the process itself, so its own counters are the whole cost.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from shop.supervisor import stop_process_group, stop_process_groups

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of one process so far (0.0 once it is gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    # The command name (field 2) may contain spaces; every field after its closing parenthesis is numeric.
    fields = stat[stat.rindex(")") + 2 :].split()
    utime, stime = int(fields[11]), int(fields[12])  # fields 14 and 15 of proc(5), counted from field 3
    return (utime + stime) / CLOCK_TICKS


def peak_rss_mib(pid: int) -> float:
    """VmHWM: the largest resident set the process ever had, in MiB (0.0 if unknown)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def rss_mib(pid: int) -> float:
    """VmRSS: the resident set of the process now, in MiB (0.0 if unknown)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def own_cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system


@dataclass
class WorkerGroup:
    """Worker processes started by the benchmark, each in its own session so that stopping one never touches
    anything else on the machine."""

    env: dict[str, str]
    log_dir: Path
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)

    def start(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> subprocess.Popen:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.log_dir / f"{name}.log", "ab")  # noqa: SIM115 - the child owns it from here
        process = subprocess.Popen(argv, env={**self.env, **(env or {})}, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)
        log.close()
        self.processes[name] = process
        return process

    def pids(self, names: list[str] | None = None) -> dict[str, int]:
        return {name: p.pid for name, p in self.processes.items() if names is None or name in names}

    def check_alive(self) -> None:
        dead = {name: p.returncode for name, p in self.processes.items() if p.poll() is not None}
        if dead:
            raise RuntimeError(f"benchmark workers exited: {dead} (see logs in {self.log_dir})")

    def stop(self, name: str, timeout: float = 10.0) -> None:
        process = self.processes.pop(name, None)
        if process is not None:
            stop_process_group(process, timeout)

    def stop_all(self, timeout: float = 10.0) -> None:
        """Every worker at once: one by one, a run of twenty workers would pay each one's shutdown in turn."""
        processes, self.processes = list(self.processes.values()), {}
        stop_process_groups(processes, timeout)


def python_module(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]


def machine_busy_seconds() -> float:
    """CPU seconds spent by everything on the machine (all cores, not idle nor iowait): with the benchmark's own
    processes subtracted, what other tenants used during a run — the noise figure reported beside each result."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    return (sum(values[:8]) - idle) / CLOCK_TICKS
