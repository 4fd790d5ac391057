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
import os
import re
import shutil
import stat
import tempfile
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

# `app = ...`, not `import ... as app`: `flwr run` (1.42) looks for an assignment to `app`.
SERVER_APP = '"""ServerApp of this bundle (see alphafed_flwr.deploy.apps)."""\n\nfrom alphafed_flwr.deploy import apps\n\napp = apps.server_app\n'
CLIENT_APP = '"""ClientApp of this bundle (see alphafed_flwr.deploy.apps)."""\n\nfrom alphafed_flwr.deploy import apps\n\napp = apps.client_app\n'


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


MAX_MANIFEST_BYTES = 1024 * 1024
MAX_TASK_FILES = 10_000
_STORED_NAME = re.compile(r"f[0-9]{1,6}\.py")
_BAD_CHARS = ("/", "\\", "\x00", ":")


def _refuse(problem: str) -> ConfigError:
    return ConfigError(f"refused the app bundle: {problem} (a bundle built by alphafed-flwr never has this)")


def _plain_file(path: Path, what: str) -> None:
    """Refuse anything but a regular file (a link, a folder, a device...)."""
    try:
        mode = os.lstat(path).st_mode
    except OSError as exc:
        raise _refuse(f"{what} '{path.name}' is missing ({exc.strerror})") from None
    if not stat.S_ISREG(mode):
        raise _refuse(f"{what} '{path.name}' is not a regular file (links are refused)")


def _original_name(name: Any) -> str:
    if not isinstance(name, str) or not 0 < len(name) <= 255 or not name.endswith(".py"):
        raise _refuse(f"task file name {name!r} is not a .py file name")
    if any(c in name for c in _BAD_CHARS) or name.startswith(".") or not name.isprintable():
        raise _refuse(f"task file name {name!r} is not a plain file name (no folders, '..' or absolute paths)")
    return name


def parse_manifest(data: bytes) -> dict[str, Any]:
    """Validate a bundle's ``task/manifest.json``; ``ConfigError`` naming what is wrong.

    Original names must be plain ``.py`` file names (no ``/``, ``\\``, ``..``, absolute
    paths, hidden or unprintable names), stored names ``f<i>.py``, and the entry one of
    the files.
    """
    if len(data) > MAX_MANIFEST_BYTES:
        raise _refuse(f"the manifest is over {MAX_MANIFEST_BYTES} bytes")
    try:
        manifest = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise _refuse(f"the manifest is not JSON ({type(exc).__name__})") from None
    if not isinstance(manifest, dict) or set(manifest) != {"files", "entry", "name"}:
        raise _refuse("the manifest must be an object with exactly 'files', 'entry' and 'name'")
    files, entry, name = manifest["files"], manifest["entry"], manifest["name"]
    if not isinstance(files, dict) or not 0 < len(files) <= MAX_TASK_FILES:
        raise _refuse(f"'files' must map 1..{MAX_TASK_FILES} names")
    for original, stored in files.items():
        _original_name(original)
        if not isinstance(stored, str) or not _STORED_NAME.fullmatch(stored):
            raise _refuse(f"stored name {stored!r} is not f<i>.py")
    if len(set(files.values())) != len(files):
        raise _refuse("two task files share a stored name")
    if not isinstance(entry, str) or entry not in files:
        raise _refuse(f"entry {entry!r} is not one of the task files")
    if name is not None and not (isinstance(name, str) and all(p.isidentifier() for p in name.split("."))):
        raise _refuse(f"object name {name!r} is not a Python name")
    return manifest


def read_manifest(app_dir: Path) -> dict[str, Any]:
    """The validated manifest of an installed bundle."""
    folder = app_dir / TASK_FOLDER
    if folder.is_symlink() or not folder.is_dir():
        raise _refuse(f"'{TASK_FOLDER}' is not a folder")
    _plain_file(app_dir / MANIFEST, "the manifest")
    return parse_manifest((app_dir / MANIFEST).read_bytes())


def _write_new(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)


def materialize(app_dir: Path) -> Path:
    """Restore the task files under their own names; return their folder (idempotent).

    Only regular files inside the bundle's ``task/`` folder are read, and only plain names
    are written, each as a new file in a fresh folder (never through a link).
    """
    manifest = read_manifest(app_dir)
    target = app_dir / "task_files"
    marker = target / ".complete"
    if target.is_symlink():
        raise _refuse("'task_files' is a link")
    if not marker.exists():
        tmp = Path(tempfile.mkdtemp(prefix="task_files.tmp", dir=app_dir))
        try:
            for original, stored in manifest["files"].items():
                source = app_dir / TASK_FOLDER / stored
                _plain_file(source, "task file")
                _write_new(tmp / original, source.read_bytes())
            _write_new(tmp / ".complete", b"ok")
            tmp.rename(target)
        except OSError:  # another process was faster
            if not marker.exists():
                raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def task_ref_in(app_dir: Path) -> str:
    """``path[:name]`` of the task file in an installed bundle."""
    manifest = read_manifest(app_dir)
    path = materialize(app_dir) / manifest["entry"]
    return f"{path}:{manifest['name']}" if manifest.get("name") else str(path)
