"""torch's compute threads on the CPU: a fixed count applied and logged (the option, the environment variable),
and the adaptive count giving a core up while another process keeps it busy, then taking it back."""

import logging
import subprocess
import sys
import time

import pytest
import torch

from vlmserve import cli
from vlmserve.engine.cpu_threads import ENV, CpuThreads


@pytest.fixture(autouse=True)
def restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_cpu_threads_option_is_applied_and_logged(demo_model_dir, caplog):
    with caplog.at_level(logging.INFO, logger="vlmserve.engine"):
        status = cli.main(["generate", "--model", str(demo_model_dir), "--prompt", "Hi", "--max-tokens", "2",
                           "--device", "cpu", "--cpu-threads", "1"])
    assert status == 0 and torch.get_num_threads() == 1
    assert "CPU: 1 compute thread(s)" in caplog.text and "as asked" in caplog.text


def test_the_environment_variable_fixes_the_count(monkeypatch):
    monkeypatch.setenv(ENV, "1")
    assert CpuThreads().threads == torch.get_num_threads() == 1
    monkeypatch.setenv(ENV, "many")
    with pytest.raises(ValueError, match=ENV):
        CpuThreads()


def adjust_for(threads: CpuThreads, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        threads.adjust()
        time.sleep(0.01)


def test_a_core_another_process_keeps_busy_is_given_up_then_taken_back(caplog, monkeypatch):
    monkeypatch.delenv(ENV)  # tests/conftest.py fixes the count for every other test
    threads = CpuThreads(interval_s=0.3)
    assert threads.threads == threads.cores == torch.get_num_threads()
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        with caplog.at_level(logging.INFO, logger="vlmserve.engine"):
            adjust_for(threads, 1.5)
        assert threads.threads == torch.get_num_threads() == max(threads.cores - 1, 1)
    finally:
        busy.kill()
        busy.wait()
    adjust_for(threads, 1.0)
    assert threads.threads == torch.get_num_threads() == threads.cores
    if threads.cores > 1:
        assert f"busy: {threads.cores - 1} compute thread(s), was {threads.cores}" in caplog.text
