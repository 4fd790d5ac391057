"""The Flower app bundle (FAB) that carries a task to the SuperLink and the SuperNodes.

Layout::

    pyproject.toml                 [tool.flwr.app] components and the run's configuration
    alphafed_app/server_app.py     thin: the ServerApp of alphafed_flwr.deploy.apps
    alphafed_app/client_app.py     thin: the ClientApp of alphafed_flwr.deploy.apps
    task/manifest.json             original file names -> stored names, the entry file
    task/f<i>.py                   the task file and the .py files beside it

Flower's bundles leave out ``test_*.py`` and ``*_test.py``, keep only some file types and
cap the size at 10 MB. Task files are therefore stored under neutral names and restored
under their own names where they are loaded; after building, every stored file is checked
to be in the bundle, so a dropped file is a clear error here rather than a missing module
on the nodes. ``alphafed_flwr`` itself is not bundled: every machine installs it.
"""

from __future__ import annotations

import io
import json
import shutil
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import tomli_w

from alphafed_flwr.api.errors import ConfigError
from alphafed_flwr.loader import TaskRef

APP_PACKAGE = "alphafed_app"
TASK_FOLDER = "task"
MANIFEST = f"{TASK_FOLDER}/manifest.json"
MAX_TASK_BYTES = 8 * 1024 * 1024  # leaves room under Flower's 10 MB cap

SERVER_APP = '"""ServerApp of this bundle (see alphafed_flwr.deploy.apps)."""\n\nfrom alphafed_flwr.deploy.apps import server_app as app\n'
CLIENT_APP = '"""ClientApp of this bundle (see alphafed_flwr.deploy.apps)."""\n\nfrom alphafed_flwr.deploy.apps import client_app as app\n'


def task_files(ref: TaskRef) -> dict[str, Path]:
    """The task file and the ``.py`` files beside it (its helper modules)."""
    path = ref.path.resolve()
    if not path.is_file():
        raise ConfigError(f"task file '{path}' does not exist")
    files = {p.name: p for p in sorted(path.parent.glob("*.py")) if p.is_file()}
    files[path.name] = path
    size = sum(p.stat().st_size for p in files.values())
    if size > MAX_TASK_BYTES:
        raise ConfigError(
            f"the task's folder {path.parent} holds {size / 1e6:.1f} MB of .py files; Flower app "
            "bundles are capped at 10 MB: move the task file into a folder of its own"
        )
    return files


def build_fab(ref: TaskRef, config: Mapping[str, Any]) -> tuple[bytes, str]:
    """Build the bundle for ``ref`` with ``config`` as its run configuration.

    Returns the FAB's bytes and the task reference inside the bundle (``entry[:name]``).
    """
    from flwr.cli.build import build_fab_from_files  # pylint: disable=import-outside-toplevel

    files = task_files(ref)
    stored = {name: f"f{i}.py" for i, name in enumerate(sorted(files))}
    manifest = {"files": stored, "entry": ref.path.name, "name": ref.name}
    contents: dict[str, bytes] = {
        "pyproject.toml": _pyproject(config),
        f"{APP_PACKAGE}/__init__.py": b"",
        f"{APP_PACKAGE}/server_app.py": SERVER_APP.encode(),
        f"{APP_PACKAGE}/client_app.py": CLIENT_APP.encode(),
        MANIFEST: json.dumps(manifest, indent=1).encode(),
    }
    for name, path in files.items():
        contents[f"{TASK_FOLDER}/{stored[name]}"] = path.read_bytes()
    try:
        fab, _ = build_fab_from_files(contents)
    except ValueError as exc:
        raise ConfigError(f"cannot build the Flower app bundle: {exc}") from exc
    with zipfile.ZipFile(io.BytesIO(fab)) as archive:
        packed = set(archive.namelist())
    missing = [name for name in contents if name != "pyproject.toml" and name not in packed]
    if missing:
        originals = {f"{TASK_FOLDER}/{v}": k for k, v in stored.items()}
        raise ConfigError(
            "the Flower app bundle left out "
            + ", ".join(originals.get(m, m) for m in missing)
            + ": rename the file(s) or report this as a bug"
        )
    entry = ref.path.name + (f":{ref.name}" if ref.name else "")
    return fab, entry


def _pyproject(config: Mapping[str, Any]) -> bytes:
    document = {
        "build-system": {"requires": ["hatchling"], "build-backend": "hatchling.build"},
        "project": {
            "name": "alphafed-task",
            "version": "1.0.0",
            "description": "An AlphaFed task run by alphafed-flwr",
            "license": "Apache-2.0",
            "dependencies": ["alphafed-flwr"],
        },
        "tool": {
            "flwr": {
                "app": {
                    "publisher": "alphafed-flwr",
                    "components": {
                        "serverapp": f"{APP_PACKAGE}.server_app:app",
                        "clientapp": f"{APP_PACKAGE}.client_app:app",
                    },
                    "config": {k: v for k, v in config.items() if v is not None},
                }
            }
        },
    }
    return tomli_w.dumps(document).encode()


def materialize(app_dir: Path) -> Path:
    """Restore the task files under their own names; return their folder (idempotent)."""
    manifest = json.loads((app_dir / MANIFEST).read_text())
    target = app_dir / "task_files"
    marker = target / ".complete"
    if not marker.exists():
        tmp = app_dir / f"task_files.tmp{id(manifest)}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        for original, stored in manifest["files"].items():
            shutil.copyfile(app_dir / TASK_FOLDER / stored, tmp / original)
        (tmp / ".complete").write_text("ok")
        try:
            tmp.rename(target)
        except OSError:  # another process was faster
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def task_ref_in(app_dir: Path) -> str:
    """``path[:name]`` of the task file in an installed bundle."""
    manifest = json.loads((app_dir / MANIFEST).read_text())
    path = materialize(app_dir) / manifest["entry"]
    return f"{path}:{manifest['name']}" if manifest.get("name") else str(path)
