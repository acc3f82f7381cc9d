"""Security of the gRPC port and of the Redis link, against the real server:

- TLS and mutual TLS (certificates from a throwaway CA made with `cryptography`);
- bearer tokens, hashed at rest, with roles: gateway -> Charging, operator -> Provisioning
  (and every other operator service), billing -> Billing; wrong role PERMISSION_DENIED, none or
  unknown UNAUTHENTICATED; health and reflection open; revocation without restart;
- Redis with a password (requirepass) and over TLS (rediss://) through REDIS_URL;
- logs mask subscriber ids and secrets unless log_sensitive; a loud warning when the port is
  open to the network without tokens or TLS.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from types import SimpleNamespace

import grpc
import pytest
import redis
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from tests.helpers import SMS_RG, Gateway, mscc, request, sample_plan
from tests.processes import ROOT
from tests.reliability.certs import CertificateAuthority
from tollgate.engine.billing.reconcile import reconcile
from tollgate.engine.errors import ConfigError
from tollgate.engine.ops import security
from tollgate.engine.ops.config import Config
from tollgate.engine.ops.logs import JsonFormatter, Redactor, mask_id, mask_secrets, setup_logging
from tollgate.engine.ops.security import ClientSettings, TokenFile, create_token, exposure_warnings
from tollgate.engine.storage.redis_server import RedisServer, free_port
from tollgate.server import Tollgate
from tollgate.v1 import billing_pb2, billing_pb2_grpc, charging_pb2_grpc, provisioning_pb2_grpc
from tollgate.v1 import charging_pb2 as cpb
from tollgate.v1 import provisioning_pb2 as ppb

DENIED = (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    folder = tmp_path_factory.mktemp("pki")
    ca = CertificateAuthority(folder / "ca")
    rogue = CertificateAuthority(folder / "rogue", "Rogue CA")
    return SimpleNamespace(ca=ca.pem, server=ca.issue("tollgate-server", server=True),
                           client=ca.issue("pgw-1", server=False),
                           intruder=rogue.issue("intruder", server=False))


def creds(pki: SimpleNamespace, client: object | None = None) -> grpc.ChannelCredentials:
    return ClientSettings(ca=str(pki.ca.cert),
                          cert=str(client.cert) if client else "",  # type: ignore[attr-defined]
                          key=str(client.key) if client else ""  # type: ignore[attr-defined]
                          ).channel_credentials()


async def health(channel: grpc.aio.Channel, metadata: list | None = None) -> int:
    reply = await health_pb2_grpc.HealthStub(channel).Check(
        health_pb2.HealthCheckRequest(), timeout=5, metadata=metadata)
    return reply.status


async def code_of(call: Awaitable[object]) -> grpc.StatusCode:
    try:
        await call
    except grpc.aio.AioRpcError as e:
        return e.code()
    return grpc.StatusCode.OK


# --- TLS -----------------------------------------------------------------------------------


async def test_tls_port_serves_tls_and_refuses_plaintext(config, pki):
    cfg = config.replace(tls_cert=str(pki.server.cert), tls_key=str(pki.server.key))
    async with Tollgate(cfg) as app:
        async with grpc.aio.secure_channel(app.address, creds(pki)) as channel:
            assert await health(channel) == health_pb2.HealthCheckResponse.SERVING
            ans = await charging_pb2_grpc.ChargingStub(channel).Charge(cpb.ChargeRequest(
                session_id="s", type=cpb.INITIAL, subscriber_id="nobody"))
            assert ans.result == cpb.USER_UNKNOWN
        async with grpc.aio.insecure_channel(app.address) as plain:
            assert await code_of(health(plain)) == grpc.StatusCode.UNAVAILABLE


async def test_mutual_tls_admits_only_clients_of_the_configured_ca(config, pki):
    cfg = config.replace(tls_cert=str(pki.server.cert), tls_key=str(pki.server.key),
                         tls_client_ca=str(pki.ca.cert))
    async with Tollgate(cfg) as app:
        async with grpc.aio.secure_channel(app.address, creds(pki, pki.client)) as channel:
            assert await health(channel) == health_pb2.HealthCheckResponse.SERVING
        for who in (None, pki.intruder):
            async with grpc.aio.secure_channel(app.address, creds(pki, who)) as channel:
                assert await code_of(health(channel)) == grpc.StatusCode.UNAVAILABLE


def test_tls_settings_must_be_complete_and_readable(tmp_path):
    with pytest.raises(ConfigError, match="both tls_cert and tls_key"):
        security.server_credentials(Config(tls_cert="x.pem"))
    with pytest.raises(ConfigError, match=r"cannot read tls_(cert|key)"):
        security.server_credentials(Config(tls_cert=str(tmp_path / "no.pem"),
                                           tls_key=str(tmp_path / "no.key")))


# --- tokens and roles ----------------------------------------------------------------------


@pytest.fixture
async def secured(config: Config, tmp_path: Path) -> AsyncIterator[SimpleNamespace]:
    path = tmp_path / "tokens"
    tokens = {role: create_token(path, f"{role}-client", [role])
              for role in ("gateway", "operator", "billing")}
    tokens["both"] = create_token(path, "ops-and-billing", ["operator", "billing"])
    async with Tollgate(config.replace(tokens_file=str(path))) as app, \
            grpc.aio.insecure_channel(app.address) as channel:
        yield SimpleNamespace(app=app, channel=channel, tokens=tokens, path=path)


def bearer(token: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {token}")]


async def charge_stream(channel: grpc.aio.Channel, metadata: list) -> None:
    call = charging_pb2_grpc.ChargingStub(channel).ChargeStream(metadata=metadata)
    await call.write(cpb.ChargeBatchRequest(requests=[cpb.ChargeRequest(
        session_id="s", type=cpb.INITIAL, subscriber_id="nobody")]))
    await call.done_writing()
    async for _ in call:
        pass


CALLS: dict[str, tuple[str, Callable[[grpc.aio.Channel, list], Awaitable[object]]]] = {
    "Charge": ("gateway", lambda ch, md: charging_pb2_grpc.ChargingStub(ch).Charge(
        cpb.ChargeRequest(session_id="s", type=cpb.INITIAL, subscriber_id="nobody"),
        metadata=md)),
    "ChargeStream": ("gateway", charge_stream),
    "GetPlan": ("operator", lambda ch, md: provisioning_pb2_grpc.ProvisioningStub(ch).GetPlan(
        ppb.GetPlanRequest(plan_id="none"), metadata=md)),
    "GetUsage": ("billing", lambda ch, md: billing_pb2_grpc.BillingStub(ch).GetUsage(
        billing_pb2.GetUsageRequest(account_id="none"), metadata=md)),
}


async def test_each_role_may_call_its_services_and_no_other(secured):
    roles = {"gateway": {"gateway"}, "operator": {"operator"}, "billing": {"billing"},
             "both": {"operator", "billing"}}
    for client, has in roles.items():
        for name, (needs, call) in CALLS.items():
            code = await code_of(call(secured.channel, bearer(secured.tokens[client])))
            if needs in has:
                assert code not in DENIED, (client, name, code)
            else:
                assert code == grpc.StatusCode.PERMISSION_DENIED, (client, name, code)


@pytest.mark.parametrize("metadata", [
    [], bearer("tgk_not-a-token"), [("authorization", "Basic dXNlcjpwdw==")],
    [("authorization", "Bearer ")]])
async def test_no_or_unknown_token_is_unauthenticated(secured, metadata):
    for name, (_, call) in CALLS.items():
        assert await code_of(call(secured.channel, metadata)) == (
            grpc.StatusCode.UNAUTHENTICATED), name


async def test_health_and_reflection_stay_open(secured):
    assert await health(secured.channel) == health_pb2.HealthCheckResponse.SERVING
    stub = reflection_pb2_grpc.ServerReflectionStub(secured.channel)
    replies = [reply async for reply in stub.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")]))]
    assert len(replies) == 1  # an empty stream must not pass
    names = {s.name for s in replies[0].list_services_response.service}
    assert "tollgate.v1.Charging" in names


async def test_tokens_are_stored_hashed_and_revoked_without_restart(secured, monkeypatch):
    text = secured.path.read_text()
    assert not any(token in text for token in secured.tokens.values())
    assert text.count("sha256:") == 4
    assert secured.path.stat().st_mode & 0o777 == 0o600
    gateway = bearer(secured.tokens["gateway"])
    assert await code_of(CALLS["Charge"][1](secured.channel, gateway)) == grpc.StatusCode.OK
    monkeypatch.setattr(TokenFile, "CHECK_EVERY_S", 0.0)
    kept = [line for line in text.splitlines() if not line.startswith("gateway-client ")]
    secured.path.write_text("\n".join(kept) + "\n")
    os.utime(secured.path, (1, 1))  # a different mtime even within the clock's resolution
    assert await code_of(CALLS["Charge"][1](secured.channel, gateway)) == (
        grpc.StatusCode.UNAUTHENTICATED)


async def not_refused(secured: SimpleNamespace) -> dict[tuple[str, str], grpc.StatusCode]:
    """The (token, service) pairs of the fixture not refused as unknown, with the code each
    got instead (none: every token is refused everywhere)."""
    codes = {(who, name): await code_of(call(secured.channel, bearer(token)))
             for who, token in secured.tokens.items() for name, (_, call) in CALLS.items()}
    return {k: c for k, c in codes.items() if c != grpc.StatusCode.UNAUTHENTICATED}


async def test_a_revocation_is_seen_when_the_rewrite_keeps_size_and_mtime(secured, monkeypatch):
    monkeypatch.setattr(TokenFile, "CHECK_EVERY_S", 0.0)
    gateway = bearer(secured.tokens["gateway"])
    assert await code_of(CALLS["Charge"][1](secured.channel, gateway)) == grpc.StatusCode.OK
    before = secured.path.stat()
    text = secured.path.read_text()
    line = next(x for x in text.splitlines() if x.startswith("gateway-client "))
    revoked = line.rsplit(" ", 1)[0] + " " + security.token_hash("tgk_revoked")

    secured.path.write_text(text.replace(line, revoked))
    os.utime(secured.path, ns=(before.st_atime_ns, before.st_mtime_ns))

    assert secured.path.stat().st_size == before.st_size
    assert await code_of(CALLS["Charge"][1](secured.channel, gateway)) == (
        grpc.StatusCode.UNAUTHENTICATED)
    operator = bearer(secured.tokens["operator"])
    assert await code_of(CALLS["GetPlan"][1](secured.channel, operator)) not in DENIED


async def test_a_deleted_tokens_file_admits_no_token(secured, monkeypatch, caplog):
    monkeypatch.setattr(TokenFile, "CHECK_EVERY_S", 0.0)
    caplog.set_level(logging.ERROR, "tollgate.security")
    text = secured.path.read_text()

    secured.path.unlink()

    assert await not_refused(secured) == {}
    assert any(r.name == "tollgate.security" and r.levelno == logging.ERROR
               and "NO TOKEN IS ACCEPTED" in r.getMessage() for r in caplog.records)
    secured.path.write_text(text)
    assert await code_of(CALLS["Charge"][1](secured.channel, bearer(
        secured.tokens["gateway"]))) == grpc.StatusCode.OK


async def test_a_malformed_tokens_file_admits_no_token_until_fixed(secured, monkeypatch,
                                                                   caplog):
    monkeypatch.setattr(TokenFile, "CHECK_EVERY_S", 0.0)
    caplog.set_level(logging.ERROR, "tollgate.security")
    text = secured.path.read_text()
    lines = text.splitlines()
    lines[3] = lines[3].replace("sha256:", "sha265:")  # line 4: the billing client's

    secured.path.write_text("\n".join(lines) + "\n")

    assert await not_refused(secured) == {}
    refused = [r.getMessage() for r in caplog.records if r.name == "tollgate.security"]
    assert len(refused) == 1 and "line 4" in refused[0], refused
    assert await not_refused(secured) == {}  # still refused, logged once
    assert len([r for r in caplog.records if r.name == "tollgate.security"]) == 1
    secured.path.write_text(text)
    for name, (role, call) in CALLS.items():
        code = await code_of(call(secured.channel, bearer(secured.tokens[role])))
        assert code not in DENIED, (name, code)


def test_token_file_rules(tmp_path):
    path = tmp_path / "tokens"
    create_token(path, "pgw-1", ["gateway"])
    with pytest.raises(ConfigError, match="already has a client named 'pgw-1'"):
        create_token(path, "pgw-1", ["gateway"])
    with pytest.raises(ConfigError, match="roles are gateway, operator, billing"):
        create_token(path, "x", ["admin"])
    path.write_text("pgw-2 gateway not-a-hash\n")
    with pytest.raises(ConfigError, match="line 1"):
        TokenFile(str(path))


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tollgate", *args], cwd=ROOT, text=True,
                          capture_output=True, timeout=120,
                          env={**os.environ, **(env or {})})


async def test_cli_creates_tokens_and_plans_load_uses_one(config, tmp_path):
    path = tmp_path / "tokens"
    made = await asyncio.to_thread(cli, "token", "create", "--file", str(path), "--name",
                                   "ops", "--role", "operator")
    assert made.returncode == 0, made.stderr
    token = made.stdout.strip()
    assert token.startswith("tgk_") and token not in path.read_text()
    plans = tmp_path / "plans.toml"
    shutil.copy(ROOT / "examples" / "plans.toml", plans)
    async with Tollgate(config.replace(tokens_file=str(path))) as app:
        refused = await asyncio.to_thread(cli, "plans", "load", str(plans), "--server",
                                          app.address)
        assert refused.returncode == 1 and "UNAUTHENTICATED" in refused.stderr
        loaded = await asyncio.to_thread(cli, "plans", "load", str(plans), "--server",
                                         app.address, env={"TOLLGATE_CLIENT_TOKEN": token})
        assert loaded.returncode == 0, loaded.stderr
        assert "version 1" in loaded.stdout


# --- Redis credentials ---------------------------------------------------------------------


async def test_redis_with_a_password_via_redis_url(config, tmp_path):
    store = RedisServer(tmp_path / "pw", appendonly=False, password="s3cret-pw").start()
    try:
        async with Tollgate(config.replace(redis_url=store.url)) as app, \
                grpc.aio.insecure_channel(app.address) as channel:
            gw = Gateway(channel)
            [sub] = await gw.setup()
            ans = await gw.charge(cpb.ChargeRequest(session_id="e", type=cpb.EVENT,
                                                    subscriber_id=sub, units=[
                cpb.ServiceUnits(rating_group=200, used=cpb.Units(service_units=1))]))
            assert ans.result == cpb.SUCCESS, ans
        assert reconcile(store.url, progress=False).ok
        for url in (store.url.replace("s3cret-pw", "wrong-pw"),
                    store.url.replace(":s3cret-pw@", "")):
            app = Tollgate(config.replace(redis_url=url))
            with pytest.raises(ConfigError) as e:
                await app.start()
            await app.stop()
            assert "cannot use Redis" in str(e.value)
            assert "pw" not in str(e.value).replace("***", ""), str(e.value)
    finally:
        store.stop()


@pytest.fixture
def tls_redis(tmp_path: Path, pki: SimpleNamespace):
    """A redis-server that speaks only TLS, with a password."""
    port = free_port()
    proc = subprocess.Popen(
        [shutil.which("redis-server") or "redis-server", "--port", "0", "--tls-port",
         str(port), "--bind", "127.0.0.1", "--tls-cert-file", str(pki.server.cert),
         "--tls-key-file", str(pki.server.key), "--tls-ca-cert-file", str(pki.ca.cert),
         "--tls-auth-clients", "no", "--requirepass", "tls-pw", "--save", "",
         "--appendonly", "no", "--dir", str(tmp_path)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"rediss://:tls-pw@127.0.0.1:{port}/0?ssl_ca_certs={pki.ca.cert}"
    client = redis.Redis.from_url(url)
    deadline = time.monotonic() + 10
    while True:
        try:
            client.ping()
            break
        except redis.ConnectionError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError("TLS redis-server did not start: "
                                     + proc.stderr.read().decode()) from None  # type: ignore[union-attr]
            time.sleep(0.05)
    client.close()
    yield url
    proc.terminate()
    proc.wait(10)


async def test_redis_over_tls_via_rediss_url(config, tls_redis):
    async with Tollgate(config.replace(redis_url=tls_redis)) as app, \
            grpc.aio.insecure_channel(app.address) as channel:
        gw = Gateway(channel)
        [sub] = await gw.setup()
        ans = await gw.charge(request("e", 0, cpb.EVENT, sub,
                                      mscc(SMS_RG, used=1, field="service_units")))
        assert ans.result == cpb.SUCCESS, ans
    books = reconcile(tls_redis, progress=False)
    # Books with a charge in them: reconciling an empty database proves nothing.
    assert (books.ok, books.accounts, books.totals.records) == (True, 1, 1), books.lines()


# --- logs and warnings ---------------------------------------------------------------------


def logged(sensitive: bool, *args: object, **extra: object) -> dict:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(JsonFormatter())
    if not sensitive:
        handler.addFilter(Redactor())
    log = logging.getLogger("tollgate.test-masking")
    log.addHandler(handler)
    log.propagate = False
    try:
        log.warning(*args, extra=extra)  # type: ignore[arg-type]
    finally:
        log.removeHandler(handler)
    return json.loads(out.getvalue())


def test_logs_mask_subscriber_ids_and_secrets_by_default():
    token = "tgk_" + "A" * 43
    line = logged(False, "cannot use %s with %s", "redis://admin:hunter2@db:6379/0", token,
                  subscriber_id="491701234567", password="pw", client="pgw-1")
    text = json.dumps(line)
    for secret in ("hunter2", token, "491701234567", '"pw"'):
        assert secret not in text, line
    assert line["subscriber_id"] == mask_id("491701234567") == "*********567"
    assert "redis://admin:***@db:6379/0" in line["msg"] and "tgk_***" in line["msg"]
    assert line["client"] == "pgw-1"
    shown = logged(True, "url %s", "redis://:hunter2@db", subscriber_id="491701234567")
    assert "hunter2" in shown["msg"] and shown["subscriber_id"] == "491701234567"
    assert mask_secrets("Authorization: Bearer abc.def") == "Authorization: Bearer ***"


def test_setup_logging_masks_unless_told_not_to():
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        setup_logging("INFO", "json")
        assert any(isinstance(f, Redactor) for f in root.handlers[0].filters)
        setup_logging("INFO", "json", sensitive=True)
        assert not root.handlers[0].filters
    finally:
        root.handlers[:], _ = saved
        root.setLevel(saved[1])


def test_an_open_port_without_tokens_or_tls_is_warned_about(pki, tmp_path):
    assert exposure_warnings(Config(listen="127.0.0.1:50051")) == []
    assert exposure_warnings(Config(listen="localhost:50051")) == []
    loud = exposure_warnings(Config(listen="0.0.0.0:50051"))
    assert len(loud) == 2 and "WITHOUT AUTHENTICATION" in loud[0] and "WITHOUT TLS" in loud[1]
    assert len(exposure_warnings(Config(listen="[::]:50051", tokens_file="t"))) == 1
    assert exposure_warnings(Config(listen="10.0.0.5:50051", tokens_file="t",
                                    tls_cert="c", tls_key="k")) == []


async def test_serve_logs_the_warning(config, caplog):
    caplog.set_level(logging.WARNING, "tollgate.server")
    async with Tollgate(config.replace(listen="0.0.0.0:0")):
        pass
    assert any("WITHOUT AUTHENTICATION" in r.getMessage() for r in caplog.records)


async def test_the_billing_example_consumes_with_a_billing_token(secured, monkeypatch):
    import examples.billing_client as example
    operator, gateway = bearer(secured.tokens["operator"]), bearer(secured.tokens["gateway"])
    prov = provisioning_pb2_grpc.ProvisioningStub(secured.channel)
    await prov.PutPlan(sample_plan(), metadata=operator)
    await prov.CreateAccount(ppb.CreateAccountRequest(account_id="a", plan_id="basic",
                                                      initial_money_micros=10**7),
                             metadata=operator)
    await prov.CreateSubscriber(ppb.Subscriber(subscriber_id="s", account_id="a"),
                                metadata=operator)
    ans = await charging_pb2_grpc.ChargingStub(secured.channel).Charge(cpb.ChargeRequest(
        session_id="e", type=cpb.EVENT, subscriber_id="s",
        units=[cpb.ServiceUnits(rating_group=200, used=cpb.Units(service_units=1))]),
        metadata=gateway)
    assert ans.result == cpb.SUCCESS, ans
    out = io.StringIO()
    monkeypatch.setenv("TOLLGATE_CLIENT_TOKEN", secured.tokens["gateway"])
    with pytest.raises(grpc.RpcError) as e:
        await asyncio.to_thread(example.consume, secured.app.address, "bss", "w1", out, 1)
    assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED  # type: ignore[attr-defined]
    monkeypatch.setenv("TOLLGATE_CLIENT_TOKEN", secured.tokens["billing"])
    n = await asyncio.to_thread(example.consume, secured.app.address, "bss", "w1", out, 1)
    assert n == 1 and ",e," in out.getvalue()
