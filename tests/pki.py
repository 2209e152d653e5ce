"""A throwaway PKI for the web security tests, made with the ``cryptography`` package.

``Pki(dir)`` writes a CA, a server certificate for 127.0.0.1/localhost, a client certificate
signed by the CA (SANs ``DNS:prometheus`` and ``URI:spiffe://test/prometheus``) and a client
certificate from a second, untrusted CA; ``bcrypt_hash`` hashes a password as htpasswd -B does.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

import bcrypt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


def bcrypt_hash(password: str, cost: int = 4) -> str:
    """A ``$2y$`` hash, as ``htpasswd -nBC COST`` writes it (cost 4 keeps the tests fast)."""
    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(cost)).decode().replace("$2b$", "$2y$")


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


@dataclass
class Issued:
    cert: Path
    key: Path
    serial: int


class _Ca:
    def __init__(self, cn: str) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        self.cert = (
            x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(_name(cn))
            .public_key(self.key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True,
                                         crl_sign=True, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False,
                                         decipher_only=False), critical=True)
            .sign(self.key, hashes.SHA256())
        )

    def issue(self, directory: Path, stem: str, cn: str, sans: list[x509.GeneralName],
              usage: x509.ObjectIdentifier) -> Issued:
        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        serial = x509.random_serial_number()
        cert = (
            x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(self.cert.subject)
            .public_key(key.public_key()).serial_number(serial)
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .sign(self.key, hashes.SHA256())
        )
        cert_path, key_path = directory / f"{stem}.crt", directory / f"{stem}.key"
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                               serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
        key_path.chmod(0o600)
        return Issued(cert_path, key_path, serial)


class Pki:
    """CA + server + client certificates under ``directory``."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        directory.mkdir(parents=True, exist_ok=True)
        self._ca = _Ca("nodemedic test CA")
        self.ca = directory / "ca.crt"
        self.ca.write_bytes(self._ca.cert.public_bytes(serialization.Encoding.PEM))
        self.server = self.issue_server("server")
        self.client = self._ca.issue(
            directory, "client", "prometheus",
            [x509.DNSName("prometheus"),
             x509.UniformResourceIdentifier("spiffe://test/prometheus")],
            ExtendedKeyUsageOID.CLIENT_AUTH)
        other = _Ca("someone else's CA")
        self.other_ca = directory / "other-ca.crt"
        self.other_ca.write_bytes(other.cert.public_bytes(serialization.Encoding.PEM))
        self.stranger = other.issue(directory, "stranger", "prometheus",
                                    [x509.DNSName("prometheus")],
                                    ExtendedKeyUsageOID.CLIENT_AUTH)

    def issue_server(self, stem: str) -> Issued:
        return self._ca.issue(
            self.dir, stem, "nodemedic",
            [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))],
            ExtendedKeyUsageOID.SERVER_AUTH)

    def issue_client(self, stem: str, sans: list[x509.GeneralName]) -> Issued:
        return self._ca.issue(self.dir, stem, "client", sans, ExtendedKeyUsageOID.CLIENT_AUTH)
