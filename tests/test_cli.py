import json
import subprocess
import sys

import pytest

from ptft_engine import cli
from ptft_engine.commands import env


def test_env_reports_backends_truthfully():
    report = env.collect()
    cpu = report["backends"]["cpu"]
    assert cpu["reference"] is None
    assert (cpu["cpu"] is None) == (report["native_extension"] == "ok")
    assert "CUDA tensors" in cpu["cuda"]  # a CPU tensor can never use the cuda backend
    if not report["cuda_available"]:
        assert report["backends"]["cuda"]["cuda"] == "no CUDA device visible to torch"


@pytest.mark.slow  # a CLI subprocess
def test_env_json_is_valid():
    out = subprocess.run([sys.executable, "-m", "ptft_engine.cli", "env", "--json"],
                         capture_output=True, text=True, check=True)
    assert json.loads(out.stdout)["torch"]


def test_unknown_command_is_one_line_error(capsys):
    try:
        cli.main(["frobnicate"])
    except SystemExit as exc:
        assert exc.code == 2
    assert "unknown command 'frobnicate'" in capsys.readouterr().err


def test_help_lists_every_command(capsys):
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in cli.COMMANDS:
        assert name in out


def test_ctrl_c_outside_training_is_one_line_and_exit_130(capsys, monkeypatch):
    """A Ctrl-C while a command starts (imports, sharding) ends it without a traceback."""
    def interrupted(args):
        raise KeyboardInterrupt
    monkeypatch.setattr(env, "run", interrupted)
    assert cli.main(["env"]) == 130
    assert capsys.readouterr().err.strip() == "ptft env: interrupted"
