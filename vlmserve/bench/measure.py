"""Clocks and memory gauges that mean the same on every device: CUDA work is synchronised before a clock is read."""

import resource
import time

import torch


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
