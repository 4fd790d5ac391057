"""The deployment commands check task files in a child process and keep torch out of their own."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from alphafed_flwr.api.errors import ConfigError
from alphafed_flwr.deploy.task_check import check_task

TESTS = Path(__file__).parent


def test_the_commands_do_not_import_torch() -> None:
    code = "import sys, alphafed_flwr.server, alphafed_flwr.client; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.strip() == "False"


def test_a_host_file_reports_its_family() -> None:
    assert check_task({"check": "host", "ref": f"{TESTS / 'vertical_tasks.py'}:Host"})["family"] == "vertical"
    assert "family" not in check_task({"check": "collaborator", "ref": f"{TESTS / 'vertical_tasks.py'}:Collaborator"})


def test_a_wrong_class_is_the_loaders_config_error() -> None:
    with pytest.raises(ConfigError, match="HeteroNNCollaboratorScheduler"):
        check_task({"check": "collaborator", "ref": f"{TESTS / 'vertical_tasks.py'}:Host"})
    with pytest.raises(ConfigError, match="'Nope' is not defined"):
        check_task({"check": "host", "ref": f"{TESTS / 'vertical_tasks.py'}:Nope"})


def test_a_task_file_that_fails_at_import_keeps_its_message(tmp_path: Path) -> None:
    task = tmp_path / "broken.py"
    task.write_text("raise KeyError('no such column')\n")
    with pytest.raises(ConfigError, match="raised KeyError: 'no such column' at .*broken.py"):
        check_task({"check": "task", "ref": str(task)})


def test_a_data_checker_runs_in_the_child(tmp_path: Path) -> None:
    checker = tmp_path / "checker.py"
    checker.write_text(
        "import os\n"
        "from alphafed.scheduler import DataChecker\n"
        "class Check(DataChecker):\n"
        "    def verify_data(self):\n"
        "        return os.getpid() > 0, f'task {self.task_id} in pid {os.getpid()}'\n"
    )
    result = check_task({"check": "data-checker", "ref": f"{checker}:Check", "task_id": "t9", "data_dir": None})
    assert result["passed"] is True
    assert result["message"].startswith("task t9 in pid ") and not result["message"].endswith(f" {__import__('os').getpid()}")


def test_a_crashing_child_is_a_config_error_with_its_output(tmp_path: Path) -> None:
    task = tmp_path / "exits.py"
    task.write_text("import sys\nprint('bye from the task', file=sys.stderr)\nsys.exit(7)\n")
    with pytest.raises(ConfigError, match=r"(?s)exit code 7.*bye from the task"):
        check_task({"check": "task", "ref": str(task)})
