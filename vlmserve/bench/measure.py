"""Clocks and memory gauges that mean the same on every device (CUDA work is synchronised before a clock is read),
and the load other processes put on the machine while a timing runs."""

import datetime
import gc
import os
import platform
import resource
import time
from typing import Self

import torch

BUSY_LIMIT = 0.15  # cores kept busy by other processes above which a timing counts as disturbed


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def now(device: torch.device) -> float:
    """A wall-clock reading taken once the device has finished the work queued so far."""
    synchronize(device)
    return time.perf_counter()


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory(device: torch.device) -> tuple[int, str]:
    """(bytes, what they are): CUDA's allocator peak since the last reset, or on the CPU the process's peak RSS
    since it started (it cannot be reset)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device), "CUDA max allocated"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "process peak RSS"


def copy_bandwidth(device: torch.device, num_bytes: int | None = None, iters: int = 10) -> float:
    """Bytes per second a device-to-device copy of a large tensor moves, counting the bytes read plus the bytes
    written (the convention behind the 3.0 TB/s usually quoted for an H100 80GB HBM3). 1 GiB on CUDA, 256 MiB
    elsewhere."""
    num_bytes = num_bytes or (1 << 30 if device.type == "cuda" else 1 << 28)
    source = torch.ones(num_bytes, dtype=torch.uint8, device=device)
    target = torch.empty_like(source)
    target.copy_(source)  # first touch and warm-up
    start = now(device)
    for _ in range(iters):
        target.copy_(source)
    elapsed = now(device) - start
    return 2 * num_bytes * iters / elapsed


def release_memory() -> None:
    """Free what the caller dropped (an engine and its KV pool) before the next model allocates."""
    gc.collect()
    torch.cuda.empty_cache()  # a no-op where CUDA was never initialised


def host() -> dict:
    """What a run's timings come from: the day, the processor, torch's thread count."""
    return {"date": datetime.date.today().isoformat(), "machine": platform.processor() or platform.machine(),
            "torch_threads": torch.get_num_threads()}


def _cpu_ticks() -> tuple[int, int]:
    """(busy clock ticks of the whole machine, clock ticks of this process), from Linux /proc."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    with open("/proc/self/stat") as f:
        own = f.read().rsplit(")", 1)[1].split()
    return sum(fields) - fields[3] - fields[4], int(own[11]) + int(own[12])  # less idle, iowait; utime + stime


class OtherLoad:
    """Cores kept busy by other processes while the block runs: `value`, None where /proc is missing. On a few
    cores a concurrent process can make a timing several times slower (torch's threads spin)."""

    def __enter__(self) -> Self:
        self.start, self.value = time.perf_counter(), None
        try:
            self.ticks = _cpu_ticks()
        except OSError:
            self.ticks = None
        return self

    def __exit__(self, *exc) -> None:
        if self.ticks is not None:
            (busy0, own0), (busy1, own1) = self.ticks, _cpu_ticks()
            seconds = time.perf_counter() - self.start
            self.value = max(0.0, ((busy1 - busy0) - (own1 - own0)) / os.sysconf("SC_CLK_TCK") / seconds)


def is_disturbed(other_busy_cores: float | None) -> bool:
    return other_busy_cores is not None and other_busy_cores > BUSY_LIMIT


def fastest_undisturbed(runs: list[dict]) -> dict:
    """Of runs holding `seconds` and `other_busy_cores`: the fastest that no other process disturbed, else the
    fastest."""
    clean = [run for run in runs if not is_disturbed(run["other_busy_cores"])]
    return min(clean or runs, key=lambda run: run["seconds"])
