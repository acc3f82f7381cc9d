"""Who may call what: TLS credentials of the gRPC port, bearer tokens (hashed at rest) with
roles, and the server interceptor that checks them."""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import os
import re
import secrets
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

import grpc

from tollgate.engine.errors import ConfigError
from tollgate.engine.ops.config import Config

log = logging.getLogger("tollgate.security")

TOKEN_PREFIX = "tgk_"
"""Tokens carry a prefix so that logs (engine/ops/logs.py) and secret scanners recognise them."""


class Role(StrEnum):
    GATEWAY = "gateway"
    OPERATOR = "operator"
    BILLING = "billing"


SERVICE_ROLES = {"tollgate.v1.Charging": Role.GATEWAY, "tollgate.v1.Billing": Role.BILLING}
"""Any other Tollgate service (Provisioning, Lifecycle, ...) is for operators."""

OPEN_SERVICES = frozenset({"grpc.health.v1.Health",
                           "grpc.reflection.v1alpha.ServerReflection",
                           "grpc.reflection.v1.ServerReflection"})
"""Load balancers and grpcurl need these without a token."""


def role_for(method: str) -> Role | None:
    """The role a call of `/package.Service/Method` needs; None = open to all."""
    service = method.lstrip("/").split("/", 1)[0]
    if service in OPEN_SERVICES:
        return None
    return SERVICE_ROLES.get(service, Role.OPERATOR)


# --- tokens --------------------------------------------------------------------------------


def token_hash(token: str) -> str:
    """Tokens are 256 random bits, so one SHA-256 is as strong as a slow password hash and
    costs microseconds per call (a slow hash would cost milliseconds on every request)."""
    return "sha256:" + hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class Client:
    name: str
    roles: frozenset[Role]


_NAME = re.compile(r"[A-Za-z0-9._@-]{1,64}")


def parse_tokens(text: str, where: str = "tokens file") -> dict[str, Client]:
    """`name role[,role...] sha256:hex` per line, `#` comments; -> hash -> client."""
    out: dict[str, Client] = {}
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        if len(parts) != 3 or not _NAME.fullmatch(parts[0]) or not re.fullmatch(
                r"sha256:[0-9a-f]{64}", parts[2]):
            raise ConfigError(f"{where} line {n}: expected 'NAME ROLE[,ROLE] sha256:HEX'")
        try:
            roles = frozenset(Role(r) for r in parts[1].split(","))
        except ValueError:
            raise ConfigError(f"{where} line {n}: roles are "
                              f"{', '.join(r.value for r in Role)}; got {parts[1]!r}") from None
        out[parts[2]] = Client(parts[0], roles)
    return out


def create_token(path: str | os.PathLike[str], name: str, roles: Sequence[str]) -> str:
    """Appends a new client to the tokens file (created 0600) and returns its token, which
    is shown once and stored nowhere."""
    line = f"{name} {','.join(roles)} "
    parse_tokens(line + token_hash(""), "new entry")  # validates name and roles
    file = Path(path)
    known = parse_tokens(file.read_text(), str(file)) if file.exists() else {}
    if any(c.name == name for c in known.values()):
        raise ConfigError(f"{file} already has a client named {name!r}")
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    fd = os.open(file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    with os.fdopen(fd, "a") as f:
        if f.tell() == 0:
            f.write("# Tollgate clients: NAME ROLE[,ROLE] sha256 of the token "
                    "(tollgate token create)\n")
        f.write(line + token_hash(token) + "\n")
    return token


class TokenFile:
    """The tokens file, read again when its content changes (adding or revoking needs no
    restart). It fails closed: while the file is missing, unreadable or malformed, no token
    is accepted; a malformed file is refused as a whole, never in part."""

    CHECK_EVERY_S = 2.0

    def __init__(self, path: str) -> None:
        self.path = Path(path)
        self._digest: bytes | None = None  # of the content read last; None = unreadable
        self._checked = 0.0
        self.clients: dict[str, Client] = {}
        self.refresh(force=True)

    def refresh(self, force: bool = False) -> None:
        """Reads the file (at most every CHECK_EVERY_S s) and parses it if its content changed:
        the modification time alone misses a rewrite within the clock's resolution or one
        that keeps it. Errors raise when forced (at start), else empty the clients."""
        now = time.monotonic()
        if not force and now - self._checked < self.CHECK_EVERY_S:
            return
        self._checked = now
        try:
            data = self.path.read_bytes()
        except OSError as e:
            if force:
                raise ConfigError(f"cannot read tokens file {self.path}: {e}") from e
            if self._digest is not None:  # once, when it goes
                log.error("tokens file unreadable: NO TOKEN IS ACCEPTED until it is back",
                          extra={"path": str(self.path), "error": str(e)})
            self._digest, self.clients = None, {}
            return
        digest = hashlib.sha256(data).digest()
        if digest == self._digest:
            return
        self._digest, self.clients = digest, {}
        try:
            # Bytes that are not UTF-8 make their line malformed (a comment's are harmless).
            self.clients = parse_tokens(data.decode(errors="replace"), str(self.path))
        except ConfigError as e:
            if force:
                raise
            log.error("tokens file refused: NO TOKEN IS ACCEPTED until it is fixed: %s", e)
            return
        log.info("tokens file read", extra={"path": str(self.path),
                                             "clients": len(self.clients)})

    def client(self, token: str) -> Client | None:
        self.refresh()
        return self.clients.get(token_hash(token))


def _bearer(metadata: Sequence[tuple[str, str | bytes]] | None) -> str | None:
    for key, value in metadata or ():
        if key == "authorization" and isinstance(value, str):
            scheme, _, token = value.partition(" ")
            if scheme.lower() == "bearer" and token:
                return token.strip()
    return None


Denial = tuple[grpc.StatusCode, str]


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """No or unknown token -> UNAUTHENTICATED; a token without the service's role ->
    PERMISSION_DENIED. Health checks and reflection stay open."""

    def __init__(self, tokens: TokenFile) -> None:
        self.tokens = tokens

    def check(self, method: str, metadata: Sequence[tuple[str, str | bytes]] | None
              ) -> Denial | None:
        need = role_for(method)
        if need is None:
            return None
        token = _bearer(metadata)
        if token is None:
            return grpc.StatusCode.UNAUTHENTICATED, (
                "missing bearer token: send metadata 'authorization: Bearer <token>'")
        client = self.tokens.client(token)
        if client is None:
            return grpc.StatusCode.UNAUTHENTICATED, "unknown bearer token"
        if need not in client.roles:
            log.warning("call refused: role missing", extra={
                "client": client.name, "method": method, "needs": need.value})
            return grpc.StatusCode.PERMISSION_DENIED, (
                f"client {client.name!r} lacks role {need.value!r} needed for {method}")
        return None

    async def intercept_service(
            self, continuation: Callable[[grpc.HandlerCallDetails],
                                         Awaitable[grpc.RpcMethodHandler]],
            details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        denial = self.check(details.method, details.invocation_metadata)
        handler = await continuation(details)
        if denial is None or handler is None:
            return handler
        return _refusing(handler, *denial)


def _refusing(handler: grpc.RpcMethodHandler, code: grpc.StatusCode,
              message: str) -> grpc.RpcMethodHandler:
    """A handler of the same shape as `handler` that ends every call with `code`."""
    async def refuse(_request: Any, context: grpc.aio.ServicerContext) -> None:
        await context.abort(code, message)

    make = {(False, False): grpc.unary_unary_rpc_method_handler,
            (False, True): grpc.unary_stream_rpc_method_handler,
            (True, False): grpc.stream_unary_rpc_method_handler,
            (True, True): grpc.stream_stream_rpc_method_handler}[
        (handler.request_streaming, handler.response_streaming)]
    return make(refuse, handler.request_deserializer,
                handler.response_serializer)


# --- the port --------------------------------------------------------------------------------


def _read(path: str, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise ConfigError(f"cannot read {what} {path}: {e}") from e


def server_credentials(config: Config) -> grpc.ServerCredentials | None:
    """TLS (mutual when tls_client_ca is set) from the configured PEM files; None = plain."""
    if not (config.tls_cert or config.tls_key or config.tls_client_ca):
        return None
    if not (config.tls_cert and config.tls_key):
        raise ConfigError("TLS needs both tls_cert and tls_key (tls_client_ca is optional)")
    ca = _read(config.tls_client_ca, "tls_client_ca") if config.tls_client_ca else None
    return grpc.ssl_server_credentials(
        [(_read(config.tls_key, "tls_key"), _read(config.tls_cert, "tls_cert"))],
        root_certificates=ca, require_client_auth=ca is not None)


def interceptors(config: Config) -> list[grpc.aio.ServerInterceptor]:
    return [AuthInterceptor(TokenFile(config.tokens_file))] if config.tokens_file else []


def bind(server: grpc.aio.Server, config: Config, address: str) -> int:
    creds = server_credentials(config)
    if creds is None:
        return server.add_insecure_port(address)
    return server.add_secure_port(address, creds)


def _loopback(host: str) -> bool:
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name (or 0.0.0.0 / [::] handled above as not loopback)


def exposure_warnings(config: Config) -> list[str]:
    """What is open to the network: a non-loopback listen address without tokens or TLS."""
    host = config.listen.rsplit(":", 1)[0]
    if _loopback(host):
        return _web_warnings(config)
    out = []
    if not config.tokens_file:
        out.append(f"listening on {config.listen} WITHOUT AUTHENTICATION: anyone who can "
                   "reach it may charge, provision and read billing data; set tokens_file")
    if not config.tls_cert:
        out.append(f"listening on {config.listen} WITHOUT TLS: requests, tokens and "
                   "subscriber ids cross the network in clear; set tls_cert and tls_key")
    return out + _web_warnings(config)


def _web_warnings(config: Config) -> list[str]:
    if not config.http_listen or _loopback(config.http_listen.rsplit(":", 1)[0]):
        return []
    out = []
    if not config.tokens_file:
        out.append(f"web pages on {config.http_listen} WITHOUT LOGIN: anyone who can reach "
                   "them may see and change subscribers; set tokens_file")
    if not config.tls_cert:
        out.append(f"web pages on {config.http_listen} WITHOUT TLS: browsers keep the login "
                   "cookie (Secure) only over https or on localhost; set tls_cert and tls_key")
    return out


# --- clients (CLI and tests) -----------------------------------------------------------------


@dataclass(frozen=True)
class ClientSettings:
    """How a client reaches a Tollgate: TOLLGATE_CLIENT_TOKEN, TOLLGATE_CLIENT_CA (TLS),
    TOLLGATE_CLIENT_CERT and TOLLGATE_CLIENT_KEY (mutual TLS) in the environment."""

    token: str = ""
    ca: str = ""
    cert: str = ""
    key: str = ""

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> ClientSettings:
        env = dict(os.environ) if env is None else env
        return cls(*(env.get(f"TOLLGATE_CLIENT_{k}", "") for k in ("TOKEN", "CA", "CERT",
                                                                    "KEY")))

    def metadata(self) -> list[tuple[str, str]]:
        return [("authorization", f"Bearer {self.token}")] if self.token else []

    def channel_credentials(self) -> grpc.ChannelCredentials | None:
        if not self.ca:
            return None
        key = _read(self.key, "client key") if self.key else None
        cert = _read(self.cert, "client certificate") if self.cert else None
        return grpc.ssl_channel_credentials(_read(self.ca, "CA certificate"), key, cert)

    def channel(self, address: str) -> grpc.Channel:
        creds = self.channel_credentials()
        if creds is None:
            return grpc.insecure_channel(address)
        return grpc.secure_channel(address, creds)
