"""How many threads torch computes with on the CPU, following what other processes leave free.

torch's OpenMP threads meet at a barrier after every operation, so a decode step is as slow as its most
descheduled thread: with another process busy on one of two cores, two compute threads run 2-7x slower than
themselves alone, while one thread on the free core loses only the second core's share. So unless the count is
fixed (`cpu_threads`, or $VLMSERVE_CPU_THREADS), the engine measures, once per `interval_s` of stepping, how
many of its cores other processes kept busy (from /proc/stat: the busy time of the CPUs it may run on, less
its own), and computes with the cores they leave: all of them on a quiet machine, one fewer per busy core, at least one.
"""

import logging
import math
import os
import time

import torch

logger = logging.getLogger("vlmserve.engine")

ENV = "VLMSERVE_CPU_THREADS"
INTERVAL_S = 1.0
IGNORED_LOAD = 0.25  # cores of others' work that do not cost a thread (daemons, a test harness)
_BUSY_FIELDS = (0, 1, 2, 5, 6, 7)  # /proc/stat cpu: user, nice, system, irq, softirq, steal


def requested_threads(cpu_threads: int | None) -> int | None:
    """The fixed count asked for: `cpu_threads`, else $VLMSERVE_CPU_THREADS, else None (adapt)."""
    if cpu_threads is not None:
        return cpu_threads
    value = os.environ.get(ENV)
    if value is None:
        return None
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"${ENV} must be a whole number >= 1, got {value!r}")
    return int(value)


class CpuThreads:
    def __init__(self, cpu_threads: int | None = None, interval_s: float = INTERVAL_S):
        self.cpus = os.sched_getaffinity(0)
        self.cores = len(self.cpus)
        self.fixed = requested_threads(cpu_threads)
        self.interval_s = interval_s
        self.threads = self.fixed or self.cores
        torch.set_num_threads(self.threads)
        self._last = None
        if self.fixed:
            logger.info("CPU: %d compute thread(s) on %d core(s), as asked (--cpu-threads / $%s)", self.threads,
                        self.cores, ENV)
        else:
            logger.info("CPU: %d compute thread(s) on %d core(s), one fewer per core other processes keep busy "
                        "(--cpu-threads / $%s fixes the count)", self.threads, self.cores, ENV)

    def adjust(self) -> None:
        """Before a step, on the engine's thread: follow the other processes' load, at most once per interval."""
        if self.fixed:
            return
        now = time.monotonic()
        if self._last is not None and now - self._last[0] < self.interval_s:
            return
        sample = (now, _busy_s(self.cpus), _own_busy_s())
        if self._last is not None:
            self._follow(self.other_cores(self._last, sample))
        self._last = sample

    @staticmethod
    def other_cores(earlier: tuple[float, float, float], later: tuple[float, float, float]) -> float:
        """Cores other processes kept busy between two samples of (time, all CPU time, this process's)."""
        elapsed = later[0] - earlier[0]
        return max((later[1] - earlier[1]) - (later[2] - earlier[2]), 0.0) / elapsed

    def _follow(self, other_cores: float) -> None:
        target = min(max(self.cores - math.ceil(other_cores - IGNORED_LOAD), 1), self.cores)
        if target != self.threads:
            logger.info("CPU: other processes keep %.1f core(s) busy: %d compute thread(s), was %d", other_cores,
                        target, self.threads)
            self.threads = target
            torch.set_num_threads(target)


def _busy_s(cpus: set[int]) -> float:
    """Seconds the CPUs this process may run on have been busy (with anyone's work) since boot."""
    ticks = 0
    with open("/proc/stat") as stat:
        for line in stat:
            name, *fields = line.split()
            if name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in cpus:
                ticks += sum(int(fields[i]) for i in _BUSY_FIELDS)
    return ticks / os.sysconf("SC_CLK_TCK")


def _own_busy_s() -> float:
    times = os.times()
    return times.user + times.system
