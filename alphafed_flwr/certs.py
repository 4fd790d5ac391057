"""``python -m alphafed_flwr.certs``: development TLS certificates and SuperNode keys.

Writes, with the ``cryptography`` package:

- ``ca.pem`` / ``ca.key``: a self-signed certificate authority (EC P-256);
- ``server.pem`` / ``server.key``: the SuperLink's certificate, signed by the CA, with the
  given host names and IP addresses as subject alternative names;
- ``node-<i>`` / ``node-<i>.pub``: SuperNode key pairs in OpenSSH format (EC P-384), the
  private key for ``python -m alphafed_flwr.client --node-key``, the public one for
  ``python -m alphafed_flwr.server --node-public-key``.

Private keys are created 0600 from the start, never through a symbolic link, and existing
files are kept unless ``--force`` is given. For development and tests: production
deployments use certificates from their own CA.
"""

from __future__ import annotations

import argparse
import datetime
import ipaddress
import os
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from alphafed_flwr.api.errors import ConfigError
from alphafed_flwr.api.log import logger
from alphafed_flwr.cli import exit_with

VALID_DAYS = 365


def _write(path: Path, data: bytes, private: bool = False) -> None:
    """Create ``path`` as a new file, 0600 from the start if ``private``; never through a link."""
    mode = 0o600 if private else 0o644
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    with os.fdopen(fd, "wb") as handle:
        os.fchmod(handle.fileno(), mode)  # exactly this mode, whatever the umask
        handle.write(data)


def output_names(nodes: int) -> list[str]:
    """The files :func:`make_certificates` writes."""
    names = ["ca.pem", "ca.key", "server.pem", "server.key"]
    for i in range(1, nodes + 1):
        names += [f"node-{i}", f"node-{i}.pub"]
    return names


def _clear(out: Path, nodes: int, force: bool) -> None:
    """Refuse to overwrite existing files (links included) unless ``force``; then remove them."""
    existing = [out / n for n in output_names(nodes) if os.path.lexists(out / n)]
    if existing and not force:
        raise ConfigError(
            f"{', '.join(str(p) for p in existing)} already exist(s); pass --force to replace them "
            "(keys already handed out stop working), or choose another --out"
        )
    for path in existing:
        if path.is_dir() and not path.is_symlink():
            raise ConfigError(f"{path} is a folder; remove it or choose another --out")
        path.unlink()  # a link itself, never what it points to


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _san(names: Sequence[str]) -> x509.SubjectAlternativeName:
    entries: list[x509.GeneralName] = []
    for name in names:
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            entries.append(x509.DNSName(name))
    return x509.SubjectAlternativeName(entries)


def make_certificates(out: Path, hosts: Sequence[str], nodes: int, force: bool = False) -> dict[str, Path]:
    """Write the CA, the server certificate and ``nodes`` SuperNode key pairs to ``out``.

    Private keys are created with mode 0600 (never readable by others, not even briefly);
    no file is written through a symbolic link, and existing files are replaced only with
    ``force``.
    """
    if not hosts:
        raise ConfigError("give at least one --server-host (a name or an IP address)")
    out.mkdir(parents=True, exist_ok=True)
    _clear(out, nodes, force)
    now = datetime.datetime.now(datetime.timezone.utc)
    start, end = now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=VALID_DAYS)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "alphafed-flwr development CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
        .sign(ca_key, hashes.SHA256())
    )
    server_key = ec.generate_private_key(ec.SECP256R1())
    server_cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
        .issuer_name(ca_name)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(_san(hosts), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    paths = {
        "ca": out / "ca.pem",
        "server-cert": out / "server.pem",
        "server-key": out / "server.key",
    }
    _write(paths["ca"], ca_cert.public_bytes(serialization.Encoding.PEM))
    _write(out / "ca.key", _pem_key(ca_key), private=True)
    _write(paths["server-cert"], server_cert.public_bytes(serialization.Encoding.PEM))
    _write(paths["server-key"], _pem_key(server_key), private=True)
    for i in range(1, nodes + 1):
        key = ec.generate_private_key(ec.SECP384R1())
        private = out / f"node-{i}"
        _write(
            private,
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
            ),
            private=True,
        )
        _write(
            out / f"node-{i}.pub",
            key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
            + f" node-{i}\n".encode(),
        )
        paths[f"node-{i}"] = private
    return paths


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code."""
    parser = argparse.ArgumentParser(
        prog="python -m alphafed_flwr.certs",
        description="Generate a development CA, a SuperLink certificate and SuperNode keys.",
    )
    parser.add_argument("--out", default="certs", help="output folder (default: certs)")
    parser.add_argument("--server-host", action="append", default=None,
                        help="name or IP address clients use to reach the server (repeat); "
                             "default: 127.0.0.1 and localhost")
    parser.add_argument("--nodes", type=int, default=2, help="SuperNode key pairs to make (default 2)")
    parser.add_argument("--force", action="store_true", help="replace files that already exist")
    args = parser.parse_args(argv)
    hosts = args.server_host or ["127.0.0.1", "localhost"]
    paths = make_certificates(Path(args.out), hosts, args.nodes, force=args.force)
    logger.info("Wrote %s (server names: %s)", ", ".join(str(p) for p in paths.values()), ", ".join(hosts))
    return 0


if __name__ == "__main__":
    exit_with(main)
