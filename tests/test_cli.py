"""The `vlmserve` command: make-tiny writes a loadable checkpoint; generate answers with an image; options with no
command are serve's; `python -m vlmserve` is the same command."""

import subprocess
import sys
from pathlib import Path

import pytest

from vlmserve import cli

REPO = Path(__file__).parents[1]


def run_cli(*args: str, env_home: Path) -> subprocess.CompletedProcess:
    import os

    env = dict(os.environ, VLMSERVE_HOME=str(env_home))
    return subprocess.run([sys.executable, "-m", "vlmserve.cli", *args], capture_output=True, text=True, env=env,
                          cwd=REPO, timeout=300, check=False)


def test_make_tiny_then_generate_with_image(tmp_path):
    model = tmp_path / "tiny"
    made = run_cli("make-tiny", str(model), env_home=tmp_path)
    assert made.returncode == 0, made.stderr
    assert {"config.json", "model.safetensors", "tokenizer.json", "preprocessor_config.json"} <= {
        p.name for p in model.iterdir()}
    out = run_cli("generate", "--model", str(model), "--image", str(REPO / "assets" / "demo.png"),
                  "--prompt", "Describe this image.", "--max-tokens", "5", "--dtype", "float32", env_home=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "5 tokens" in out.stderr or "finish_reason=stop" in out.stderr


def test_generate_without_model_uses_labelled_demo(tmp_path):
    out = run_cli("generate", "--prompt", "Hi", "--max-tokens", "3", env_home=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "RANDOM weights" in out.stderr
    assert (tmp_path / "tiny-mllama-random" / "RANDOM_WEIGHTS.txt").is_file()


def test_bad_image_path_is_a_clear_error(tmp_path):
    out = run_cli("generate", "--prompt", "Hi", "--image", str(tmp_path / "missing.png"), env_home=tmp_path)
    assert out.returncode == 2
    assert "missing.png" in out.stderr and "Traceback" not in out.stderr


def test_python_m_vlmserve_is_the_vlmserve_command():
    out = subprocess.run([sys.executable, "-m", "vlmserve", "--help"], capture_output=True, text=True, cwd=REPO,
                         timeout=120, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("usage: vlmserve") and "make-tiny" in out.stdout


@pytest.mark.parametrize("argv, expected", [
    (["--port", "8001"], ["serve", "--port", "8001"]),
    (["-tp", "2"], ["serve", "-tp", "2"]),
    (["eval", "--list-tasks"], ["eval", "--list-tasks"]),
    (["--help"], ["--help"]),
    (["-h"], ["-h"]),
    ([], []),
])
def test_options_with_no_command_are_serve_options(argv, expected):
    assert cli.default_to_serve(argv) == expected


def test_options_alone_run_serve(monkeypatch):
    served = []
    monkeypatch.setattr(cli, "cmd_serve", lambda args: served.append(args) or 0)
    assert cli.main(["--port", "8001"]) == 0
    assert served[0].command == "serve" and served[0].port == 8001 and served[0].model is None
