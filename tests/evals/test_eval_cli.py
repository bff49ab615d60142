"""`vlmserve eval`: listing tasks, a run against a stub endpoint, and bad arguments as clear exit-2 errors."""

import subprocess
import sys

import pytest

from tests.evals.stubs import StubEndpoint
from tests.evals.synthetic import write_dataset
from tests.test_cli import REPO
from vlmserve.cli import main
from vlmserve.evals.tasks import TASKS


def test_list_tasks_names_each_task_metric_and_layout(capsys):
    assert main(["eval", "--list-tasks"]) == 0
    out = capsys.readouterr().out
    for name, task in TASKS.items():
        assert f"{name}: {task.metric}" in out
        assert f"<--data>/{name}/ holding {task.layout}" in out


def test_run_against_a_stub_endpoint_writes_the_report(tmp_path, capsys, monkeypatch):
    write_dataset("textvqa", tmp_path / "data" / "textvqa", 4)
    stub = StubEndpoint(lambda body, number: "STOP")
    monkeypatch.setenv("VLMSERVE_EVAL_API_KEY", "sk-test")
    with stub.serve() as served:
        code = main(["eval", "--endpoint", served.url, "--model", "m", "--task", "textvqa", "--data",
                     str(tmp_path / "data"), "--output", str(tmp_path / "out"), "--limit", "3", "--concurrency", "2"])
    assert code == 0
    assert len(stub.requests) == 3 and set(stub.authorizations) == {"Bearer sk-test"}
    out = capsys.readouterr()
    assert "textvqa\tm\t" in out.out and "report.md" in out.err
    assert {"report.md", "results.json", "chart_textvqa.png"} <= {p.name for p in (tmp_path / "out").iterdir()}


@pytest.mark.parametrize("args, message", [
    (["--task", "nope", "--data", str(REPO)], "unknown eval task 'nope'"),
    (["--task", "vqav2", "--data", "/nonexistent"], "--data /nonexistent is not a directory"),
    (["--task", "vqav2"], "give --data DIR"),
    (["--task", "vqav2", "--model", "other"], "in pairs (got 1 endpoints and 2 models)"),
    (["--task", "vqav2", "--api-key", "a", "--api-key", "b"], "one --api-key per --endpoint"),
])
def test_bad_arguments_exit_2_with_a_message(capsys, args, message):
    assert main(["eval", "--endpoint", "http://127.0.0.1:9", "--model", "m", *args]) == 2
    assert message in capsys.readouterr().err


def test_missing_task_data_is_a_clear_error_without_traceback(tmp_path):
    """Through the real entry point: the data directory lacks the task's sub-directory."""
    result = subprocess.run([sys.executable, "-m", "vlmserve.cli", "eval", "--endpoint", "http://127.0.0.1:9",
                             "--model", "m", "--task", "docvqa", "--data", str(tmp_path), "--output",
                             str(tmp_path / "out")], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert result.returncode == 2
    assert "vlmserve: error:" in result.stderr and str(tmp_path / "docvqa") in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()  # nothing is asked or written before the data is known good
