"""The Diameter front's settings, read and checked from the configuration's diameter_* keys."""

from __future__ import annotations

import socket
import ssl
from dataclasses import dataclass

from tollgate.engine.diameter.avps import SubscriptionIdType
from tollgate.engine.errors import ConfigError
from tollgate.engine.ops.config import Config

ANY_PEER = "*"


@dataclass(frozen=True, slots=True)
class Settings:
    host: str
    port: int
    origin_host: str
    origin_realm: str
    peers: dict[str, frozenset[str]]
    """Allowed Origin-Host -> the source addresses it may connect from (empty: any)."""
    any_peer: bool
    subscription_id_type: SubscriptionIdType
    watchdog_s: float
    max_in_flight: int
    grace_s: float
    tls: ssl.SSLContext | None
    zones: dict[str, str]
    """MCC-MNC, MCC or "*" -> rating zone (3GPP-SGSN-MCC-MNC of the serving network)."""

    @classmethod
    def of(cls, config: Config) -> Settings:
        listen = config.diameter_listen
        host, _, port = listen.rpartition(":")
        if not host or not port.isdigit():
            raise ConfigError(f"diameter_listen must be HOST:PORT (got {listen!r})")
        origin_host = config.diameter_origin_host or socket.getfqdn()
        realm = config.diameter_origin_realm or origin_host.partition(".")[2] or origin_host
        try:
            kind = SubscriptionIdType[config.diameter_subscription_id_type.upper()]
        except KeyError:
            raise ConfigError(
                "diameter_subscription_id_type must be one of "
                f"{', '.join(t.name.lower() for t in SubscriptionIdType)} "
                f"(got {config.diameter_subscription_id_type!r})") from None
        if not config.diameter_peers:
            raise ConfigError('diameter_peers: list the Origin-Host of each gateway allowed to '
                              'connect (or "*" for any)')
        if config.diameter_watchdog_s <= 0:
            raise ConfigError("diameter_watchdog_s must be positive")
        peers: dict[str, set[str]] = {}
        for entry in config.diameter_peers:
            if entry == ANY_PEER:
                continue
            name, _, address = entry.partition("@")
            addresses = peers.setdefault(name.lower(), set())
            if address:
                addresses.add(address.strip("[]"))
        return cls(host.strip("[]"), int(port), origin_host, realm,
                   {k: frozenset(v) for k, v in peers.items()}, ANY_PEER in config.diameter_peers,
                   kind, config.diameter_watchdog_s, config.stream_max_in_flight,
                   config.shutdown_grace_s, _tls(config) if config.diameter_tls else None,
                   _zones(config.diameter_zones))

    def allows(self, origin_host: str, address: str) -> bool:
        if self.any_peer:
            return True
        addresses = self.peers.get(origin_host.lower())
        return addresses is not None and (not addresses or address in addresses)


def _zones(entries: tuple[str, ...]) -> dict[str, str]:
    zones = {}
    for entry in entries:
        network, sep, zone = entry.partition("=")
        if not sep or not (network == ANY_PEER or (network.isdigit()
                                                   and len(network) in (3, 5, 6))):
            raise ConfigError(f"diameter_zones: {entry!r} is not MCCMNC=ZONE, MCC=ZONE or "
                              "*=ZONE")
        zones[network] = zone
    return zones


def _tls(config: Config) -> ssl.SSLContext:
    if not (config.tls_cert and config.tls_key):
        raise ConfigError("diameter_tls needs tls_cert and tls_key (tls_client_ca to require "
                          "gateways' certificates)")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(config.tls_cert, config.tls_key)
        if config.tls_client_ca:
            context.load_verify_locations(config.tls_client_ca)
            context.verify_mode = ssl.CERT_REQUIRED
    except (OSError, ssl.SSLError) as e:
        raise ConfigError(f"diameter_tls: cannot use the TLS files: {e}") from e
    return context
