"""``--web.config.file``: the Prometheus exporter-toolkit web configuration, parsed and validated.

Read by agent.exporter.webfront at start and on every reload (agent.exporter.tlsctx builds the TLS
context from it, agent.exporter.auth the basic-auth, header and rate-limit checks). The format is
the toolkit's (https://github.com/prometheus/exporter-toolkit/blob/master/docs/web-configuration.md)
with its semantics, so a node_exporter ``web-config.yml`` works unchanged:

- unknown keys are an error (the toolkit decodes with ``yaml.UnmarshalStrict``);
- TLS is on as soon as any of cert/key (inline or file), client CA or ``client_auth_type`` is set,
  and then needs both a certificate and a key; a file path wins over its inline variant;
- relative paths are relative to the directory of the web config file;
- ``client_auth_type`` is one of the toolkit's values; a client CA without a client auth policy
  is an error; ``client_allowed_sans`` needs RequireAnyClientCert or RequireAndVerifyClientCert;
- ``min_version``/``max_version`` TLS10..TLS13 (defaults TLS12, TLS13), ``cipher_suites`` and
  ``curve_preferences`` by Go's names, ``prefer_server_cipher_suites`` (default true);
- ``http_server_config.headers`` only the five security headers, with the toolkit's allowed
  values for X-Frame-Options and X-Content-Type-Options; ``http2`` (default true);
- ``basic_auth_users`` values must be bcrypt hashes (nothing else is accepted);
- ``rate_limit`` (interval, burst): a token bucket in front of every request.

Errors are :class:`WebConfigError`, one line naming the file, the line and the field.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator

from agent.structs.durations import parse_duration

CLIENT_AUTH_TYPES = (
    "NoClientCert",
    "RequestClientCert",
    "RequireAnyClientCert",
    "VerifyClientCertIfGiven",
    "RequireAndVerifyClientCert",
)
# "RequireClientCert" is the toolkit's old spelling of RequireAnyClientCert, still accepted.
_CLIENT_AUTH_ALIASES = {"": "NoClientCert", "RequireClientCert": "RequireAnyClientCert"}
TLS_VERSIONS = ("TLS10", "TLS11", "TLS12", "TLS13")
# Go's tls.CipherSuites() (the toolkit accepts exactly these names) -> OpenSSL's names. The
# TLS 1.3 suites are accepted and, as in Go, not configurable (both always offer all three).
CIPHER_SUITES: dict[str, str | None] = {
    "TLS_AES_128_GCM_SHA256": None,
    "TLS_AES_256_GCM_SHA384": None,
    "TLS_CHACHA20_POLY1305_SHA256": None,
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA": "ECDHE-ECDSA-AES128-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA": "ECDHE-ECDSA-AES256-SHA",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA": "ECDHE-RSA-AES128-SHA",
    "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA": "ECDHE-RSA-AES256-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256": "ECDHE-ECDSA-AES128-GCM-SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384": "ECDHE-ECDSA-AES256-GCM-SHA384",
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256": "ECDHE-RSA-AES128-GCM-SHA256",
    "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384": "ECDHE-RSA-AES256-GCM-SHA384",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-RSA-CHACHA20-POLY1305",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-ECDSA-CHACHA20-POLY1305",
}
# The toolkit's curve names -> OpenSSL's.
CURVES = {"CurveP256": "prime256v1", "CurveP384": "secp384r1", "CurveP521": "secp521r1",
          "X25519": "X25519"}
# The headers the toolkit lets a config set, and the values allowed (None = any).
SECURITY_HEADERS: dict[str, tuple[str, ...] | None] = {
    "Strict-Transport-Security": None,
    "X-Content-Type-Options": ("nosniff",),
    "X-Frame-Options": ("deny", "sameorigin"),
    "X-XSS-Protection": None,
    "Content-Security-Policy": None,
}
# What golang.org/x/crypto/bcrypt.Cost accepts and Python's bcrypt can check: $2a$/$2b$/$2y$,
# cost 04..31, 22 characters of salt and 31 of hash.
_BCRYPT = re.compile(r"^\$2[aby]\$(0[4-9]|[12][0-9]|3[01])\$[./A-Za-z0-9]{53}$")


def _bcrypt_hash(value: str) -> str:
    if not _BCRYPT.match(value):
        raise ValueError("not a bcrypt hash ($2y$10$... as htpasswd -nBC 10 prints it); "
                         "plain-text passwords are refused")
    return value


BcryptHash = Annotated[str, AfterValidator(_bcrypt_hash)]


class WebConfigError(Exception):
    """The web config file is invalid; the message is one line naming file, line and field."""


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)


class TLSServerConfig(_Strict):
    """``tls_server_config``."""

    cert: str = ""
    key: str = Field(default="", repr=False)
    client_ca: str = ""
    cert_file: str = ""
    key_file: str = ""
    client_auth_type: str = ""
    client_ca_file: str = ""
    cipher_suites: list[str] = Field(default_factory=list)
    curve_preferences: list[str] = Field(default_factory=list)
    min_version: str = "TLS12"
    max_version: str = "TLS13"
    prefer_server_cipher_suites: bool = True
    client_allowed_sans: list[str] | None = None

    @field_validator("client_auth_type")
    @classmethod
    def _auth_type(cls, v: str) -> str:
        v = _CLIENT_AUTH_ALIASES.get(v, v)
        if v not in CLIENT_AUTH_TYPES:
            raise ValueError(f"invalid ClientAuth {v!r}; one of {', '.join(CLIENT_AUTH_TYPES)}")
        return v

    @field_validator("min_version", "max_version")
    @classmethod
    def _version(cls, v: str) -> str:
        if v not in TLS_VERSIONS:
            raise ValueError(f"unknown TLS version {v!r}; one of {', '.join(TLS_VERSIONS)}")
        return v

    @field_validator("cipher_suites")
    @classmethod
    def _ciphers(cls, v: list[str]) -> list[str]:
        for name in v:
            if name not in CIPHER_SUITES:
                raise ValueError(f"unknown cipher {name!r} (Go's tls.CipherSuites() names)")
        return v

    @field_validator("curve_preferences")
    @classmethod
    def _curves(cls, v: list[str]) -> list[str]:
        for name in v:
            if name not in CURVES:
                raise ValueError(f"unknown curve {name!r}; one of {', '.join(CURVES)}")
        return v

    @property
    def enabled(self) -> bool:
        """The toolkit's TLSConfig.IsEnabled: any TLS field set turns TLS on."""
        return bool(self.cert or self.key or self.cert_file or self.key_file or self.client_ca
                    or self.client_ca_file or self.client_auth_type)


class HTTPServerConfig(_Strict):
    """``http_server_config``."""

    http2: bool = True
    headers: dict[str, str] = Field(default_factory=dict)

    @field_validator("headers")
    @classmethod
    def _headers(cls, v: dict[str, str]) -> dict[str, str]:
        for name, value in v.items():
            if name not in SECURITY_HEADERS:
                raise ValueError(f"HTTP header {name!r} can not be configured; only "
                                 + ", ".join(SECURITY_HEADERS))
            allowed = SECURITY_HEADERS[name]
            if allowed is not None and value not in allowed:
                raise ValueError(f"invalid value for {name}: expected one of {list(allowed)}, "
                                 f"got {value!r}")
        return v


class RateLimitConfig(_Strict):
    """``rate_limit``: ``interval`` between requests (0 = off) with ``burst`` extra."""

    interval: float = 0.0
    burst: int = Field(default=0, ge=0)

    @field_validator("interval", mode="before")
    @classmethod
    def _interval(cls, v: Any) -> float:
        if isinstance(v, int) and not isinstance(v, bool):
            return v / 1e9  # a bare YAML integer is a Go time.Duration: nanoseconds
        if isinstance(v, str):
            return parse_duration(v)
        raise ValueError("must be a duration like 1s")


class WebConfig(_Strict):
    """The whole file. ``path`` is where it was read from (None = no file: plain, open HTTP)."""

    tls_server_config: TLSServerConfig = Field(default_factory=TLSServerConfig)
    http_server_config: HTTPServerConfig = Field(default_factory=HTTPServerConfig)
    rate_limit: RateLimitConfig = Field(default_factory=RateLimitConfig)
    basic_auth_users: dict[str, BcryptHash] = Field(default_factory=dict, repr=False)


def _check_tls(tls: TLSServerConfig, base: Path) -> TLSServerConfig:
    """The toolkit's validateTLSPaths/ConfigToTLSConfig rules; paths made absolute."""
    if not tls.enabled:
        return tls
    if not (tls.cert_file or tls.cert):
        raise ValueError("missing one of cert or cert_file")
    if not (tls.key_file or tls.key):
        raise ValueError("missing one of key or key_file")
    auth = tls.client_auth_type or "NoClientCert"
    if (tls.client_ca_file or tls.client_ca) and auth == "NoClientCert":
        raise ValueError("client CA's have been configured without a Client Auth Policy")
    if tls.client_allowed_sans is not None and auth not in (
        "RequireAnyClientCert", "RequireAndVerifyClientCert"
    ):
        raise ValueError("client_allowed_sans requires client_auth_type to be one of "
                         "RequireAnyClientCert or RequireAndVerifyClientCert")
    if TLS_VERSIONS.index(tls.min_version) > TLS_VERSIONS.index(tls.max_version):
        raise ValueError(f"min_version {tls.min_version} is above max_version {tls.max_version}")

    def join(p: str) -> str:
        return str(base / p) if p and not Path(p).is_absolute() else p

    return tls.model_copy(update={"cert_file": join(tls.cert_file),
                                  "key_file": join(tls.key_file),
                                  "client_ca_file": join(tls.client_ca_file)})


def _line_of(root: yaml.Node | None, loc: tuple[int | str, ...]) -> int | None:
    """1-based line of the YAML node at ``loc`` (the deepest one that exists)."""
    node, line = root, None
    for part in loc:
        if not isinstance(node, yaml.MappingNode):
            break
        for k, v in node.value:
            if isinstance(k, yaml.ScalarNode) and k.value == str(part):
                line, node = k.start_mark.line + 1, v
                break
        else:
            break
    return line


def parse_web_config(text: str, path: Path) -> WebConfig:
    """Parse and validate ``text`` (read from ``path``); raise :class:`WebConfigError`."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}" if mark is not None else ""
        raise WebConfigError(f"{path}{where}: invalid YAML: "
                             f"{getattr(exc, 'problem', None) or exc}") from exc
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise WebConfigError(f"{path}: must be a mapping (tls_server_config, ...)")
    for key in ("tls_server_config", "http_server_config", "rate_limit"):
        if data.get(key, {}) is None:
            data[key] = {}  # "tls_server_config:" with nothing under it, as Go decodes it
    if data.get("basic_auth_users", {}) is None:
        data["basic_auth_users"] = {}
    try:
        cfg = WebConfig.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = tuple(err["loc"])
        line = _line_of(root, loc)
        field = ".".join(str(p) for p in loc) or "(top level)"
        msg = str(err["msg"]).removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key (the exporter-toolkit format has no such field)"
        raise WebConfigError(f"{path}{f':{line}' if line else ''}: {field}: {msg}") from exc
    try:
        tls = _check_tls(cfg.tls_server_config, path.parent)
    except ValueError as exc:
        line = _line_of(root, ("tls_server_config",))
        raise WebConfigError(f"{path}{f':{line}' if line else ''}: tls_server_config: {exc}") \
            from exc
    return cfg.model_copy(update={"tls_server_config": tls})


def load_web_config(path: Path) -> WebConfig:
    """Read and validate the file at ``path`` (blocking; callers run it in a thread)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise WebConfigError(f"--web.config.file={path}: cannot read: {exc.strerror or exc}") \
            from exc
    except UnicodeDecodeError as exc:
        raise WebConfigError(f"{path}: not UTF-8 text (byte {exc.start})") from exc
    return parse_web_config(text, path)

