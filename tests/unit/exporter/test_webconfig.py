"""--web.config.file is read as the exporter toolkit reads it: same keys, defaults and refusals."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.exporter.webconfig import WebConfigError, load_web_config, parse_web_config

HASH = "$2y$10$X0h1gDsPszWURQaxFh.zoubFi6DXncSjhoQNJgRrnGs7EsimhC7zG"
# The toolkit's sample web-config.yml shape (docs/web-config.yml), with every TLS key set.
FULL = f"""\
tls_server_config:
  cert_file: server.crt
  key_file: server.key
  client_auth_type: RequireAndVerifyClientCert
  client_ca_file: /etc/ca.crt
  client_allowed_sans: [prometheus]
  min_version: TLS13
  max_version: TLS13
  cipher_suites: [TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256]
  curve_preferences: [X25519, CurveP256]
  prefer_server_cipher_suites: false
http_server_config:
  http2: false
  headers:
    X-Frame-Options: deny
    X-Content-Type-Options: nosniff
    Strict-Transport-Security: max-age=31536000
    Content-Security-Policy: default-src 'self'
    X-XSS-Protection: "1; mode=block"
basic_auth_users:
  alice: {HASH}
rate_limit:
  interval: 1s
  burst: 10
"""


def parse(text: str, path: Path = Path("/etc/nodemedic/web.yml")) -> object:
    return parse_web_config(text, path)


def err(text: str) -> str:
    with pytest.raises(WebConfigError) as exc:
        parse(text)
    msg = str(exc.value)
    assert "\n" not in msg
    return msg


def test_full_toolkit_file_is_accepted_with_relative_paths_from_its_directory() -> None:
    """Every key of the toolkit's format parses; relative paths are relative to the file."""
    cfg = parse_web_config(FULL, Path("/etc/nodemedic/web.yml"))
    tls = cfg.tls_server_config
    assert tls.enabled and tls.cert_file == "/etc/nodemedic/server.crt"
    assert tls.key_file == "/etc/nodemedic/server.key" and tls.client_ca_file == "/etc/ca.crt"
    assert tls.min_version == "TLS13" and tls.prefer_server_cipher_suites is False
    assert cfg.http_server_config.headers["X-Frame-Options"] == "deny"
    assert cfg.basic_auth_users == {"alice": HASH}
    assert cfg.rate_limit.interval == 1.0 and cfg.rate_limit.burst == 10


def test_defaults_match_the_toolkit() -> None:
    """An empty file: no TLS, TLS12..TLS13, server cipher preference, http2 on, no users."""
    cfg = parse("")
    tls = cfg.tls_server_config
    assert not tls.enabled
    assert (tls.min_version, tls.max_version, tls.prefer_server_cipher_suites) == \
        ("TLS12", "TLS13", True)
    assert cfg.http_server_config.http2 is True and cfg.basic_auth_users == {}


def test_unknown_key_is_an_error_with_file_line_and_field() -> None:
    """Strict YAML as in the toolkit: a typo is refused, naming the file, the line and the key."""
    msg = err("tls_server_config:\n  cert_file: a\n  key_file: b\n  client_auth: NoClientCert\n")
    assert msg.startswith("/etc/nodemedic/web.yml:4: tls_server_config.client_auth:")
    assert "unknown key" in msg


def test_plain_text_password_is_refused() -> None:
    """basic_auth_users only takes bcrypt hashes; a clear-text password never authenticates."""
    msg = err("basic_auth_users:\n  alice: secret\n")
    assert ":2: basic_auth_users.alice: not a bcrypt hash" in msg
    assert "secret" not in msg  # the error never echoes what may be a password


@pytest.mark.parametrize(("text", "expected"), [
    ("tls_server_config:\n  cert_file: a\n  key_file: b\n  client_auth_type: Verify\n",
     "invalid ClientAuth"),
    ("tls_server_config:\n  cert_file: a\n  key_file: b\n  client_ca_file: ca\n",
     "client CA's have been configured without a Client Auth Policy"),
    ("tls_server_config:\n  cert_file: a\n  key_file: b\n"
     "  client_auth_type: VerifyClientCertIfGiven\n  client_allowed_sans: [x]\n",
     "client_allowed_sans requires client_auth_type"),
    ("tls_server_config:\n  cert_file: a\n", "missing one of key or key_file"),
    ("tls_server_config:\n  client_auth_type: RequireAndVerifyClientCert\n",
     "missing one of cert or cert_file"),
    ("tls_server_config:\n  cert_file: a\n  key_file: b\n  min_version: TLS14\n",
     "unknown TLS version"),
    ("tls_server_config:\n  cert_file: a\n  key_file: b\n  cipher_suites: [RC4]\n",
     "unknown cipher"),
    ("tls_server_config:\n  cert_file: a\n  key_file: b\n  curve_preferences: [P256]\n",
     "unknown curve"),
    ("http_server_config:\n  headers:\n    X-Powered-By: me\n", "can not be configured"),
    ("http_server_config:\n  headers:\n    X-Frame-Options: allow\n", "invalid value for"),
    ("http_server_config:\n  http2: maybe\n", "http_server_config.http2"),
    ("- just a list\n", "must be a mapping"),
    ("tls_server_config: [\n", "invalid YAML"),
])
def test_invalid_settings_are_refused_as_the_toolkit_refuses_them(text: str,
                                                                  expected: str) -> None:
    assert expected in err(text)


def test_unreadable_file_names_the_flag(tmp_path: Path) -> None:
    with pytest.raises(WebConfigError, match=r"^--web.config.file=.*missing.yml: cannot read"):
        load_web_config(tmp_path / "missing.yml")
