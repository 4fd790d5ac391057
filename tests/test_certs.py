"""python -m alphafed_flwr.certs: private keys 0600 from the start, no links followed, no silent overwrite."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from alphafed_flwr.api.errors import ConfigError
from alphafed_flwr.certs import main, make_certificates, output_names

PRIVATE = ("ca.key", "server.key", "node-1")


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def test_private_keys_are_0600_without_a_later_chmod(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_chmod(*args: object, **kwargs: object) -> None:
        raise AssertionError("keys must be created 0600, not changed to it afterwards")

    monkeypatch.setattr(os, "chmod", no_chmod)
    old = os.umask(0)  # the most permissive umask: modes come from the code alone
    try:
        paths = make_certificates(tmp_path / "certs", ["127.0.0.1"], nodes=1)
    finally:
        os.umask(old)
    for name in PRIVATE:
        assert _mode(tmp_path / "certs" / name) == 0o600, name
    assert _mode(paths["ca"]) == 0o644
    cert = x509.load_pem_x509_certificate(paths["server-cert"].read_bytes())
    assert cert.issuer.rfc4514_string().endswith("alphafed-flwr development CA")
    serialization.load_ssh_private_key(paths["node-1"].read_bytes(), password=None)


def test_a_planted_link_is_not_followed(tmp_path: Path) -> None:
    out = tmp_path / "certs"
    out.mkdir()
    victim = tmp_path / "victim"
    victim.write_text("do not touch")
    (out / "node-1").symlink_to(victim)
    with pytest.raises(ConfigError, match="already exist.*--force"):
        make_certificates(out, ["127.0.0.1"], nodes=1)
    assert victim.read_text() == "do not touch"
    make_certificates(out, ["127.0.0.1"], nodes=1, force=True)
    assert victim.read_text() == "do not touch"
    assert not (out / "node-1").is_symlink() and _mode(out / "node-1") == 0o600


def test_existing_files_are_kept_without_force(tmp_path: Path) -> None:
    out = tmp_path / "certs"
    assert main(["--out", str(out), "--nodes", "1"]) == 0
    before = {n: (out / n).read_bytes() for n in output_names(1)}
    with pytest.raises(ConfigError, match="pass --force"):
        main(["--out", str(out), "--nodes", "1"])
    assert {n: (out / n).read_bytes() for n in output_names(1)} == before
    assert main(["--out", str(out), "--nodes", "1", "--force"]) == 0
    assert (out / "ca.key").read_bytes() != before["ca.key"]
