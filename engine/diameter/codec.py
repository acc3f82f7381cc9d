"""A strict Diameter codec (RFC 6733 §3-4): messages and AVPs to and from bytes.

Every malformation becomes a DiameterError carrying the Result-Code to answer with, a message
naming what was wrong and, where one AVP is to blame, that AVP for Failed-AVP; decoding never
raises anything else."""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass, field

from tollgate.engine.diameter.avps import DICTIONARY, FAILED_AVP, AvpDef, AvpType, Result

HEADER = struct.Struct(">B3sB3sIII")
"""version, length (24 bits), flags, command code (24 bits), application id, hop-by-hop,
end-to-end."""
AVP_HEADER = struct.Struct(">II")
"""code, flags << 24 | length"""
AVP_VENDOR_HEADER = struct.Struct(">III")
"""code, flags << 24 | length, vendor"""
U32 = struct.Struct(">I")
I32 = struct.Struct(">i")
U64 = struct.Struct(">Q")
I64 = struct.Struct(">q")


FLAG_REQUEST, FLAG_PROXIABLE, FLAG_ERROR, FLAG_RETRANSMIT = 0x80, 0x40, 0x20, 0x10
AVP_VENDOR, AVP_MANDATORY, AVP_PRIVATE = 0x80, 0x40, 0x20
MAX_DEPTH = 8
"""Grouped AVPs nested deeper than this are refused (no Gy AVP nests past 4)."""

AvpValue = int | str | bytes | tuple[int, bytes] | list["Avp"]
FIXED_SIZE = {AvpType.UNSIGNED32: 4, AvpType.INTEGER32: 4, AvpType.ENUMERATED: 4,
              AvpType.TIME: 4, AvpType.UNSIGNED64: 8, AvpType.INTEGER64: 8}
SIGNED = frozenset({AvpType.INTEGER32, AvpType.INTEGER64})
AS_BYTES, AS_INT, AS_GROUP, AS_TEXT, AS_ADDRESS = range(5)
"""How an AVP's data is read (an int: enum members hash in Python, per AVP)."""
_READ_AS = {AvpType.GROUPED: AS_GROUP, AvpType.UTF8: AS_TEXT, AvpType.IDENTITY: AS_TEXT,
            AvpType.ADDRESS: AS_ADDRESS}
DECODING: dict[tuple[int, int], tuple[AvpDef, int, int, bool]] = {
    key: (d, AS_INT if d.type in FIXED_SIZE else _READ_AS.get(d.type, AS_BYTES),
          FIXED_SIZE.get(d.type, 0), d.type in SIGNED)
    for key, d in DICTIONARY.items()}
"""(code, vendor) -> definition, how its data is read, fixed size (0: variable), signed: one
look-up per AVP."""
_NUMBERS = {(4, False): U32, (8, False): U64, (4, True): I32, (8, True): I64}
ENCODING: dict[tuple[int, int], struct.Struct] = {
    key: _NUMBERS[size, signed] for key, (_, how, size, signed) in DECODING.items()
    if how == AS_INT}
"""(code, vendor) -> how an integer AVP's data is written; an integer of an AVP not listed
(unknown, or not of an integer type) is written as an Unsigned32."""
ADDRESS_SIZE = {1: 4, 2: 16}
"""Address family (IANA: 1 IPv4, 2 IPv6) -> address length."""


class DiameterError(Exception):
    """A message or AVP Tollgate must refuse, with what to answer."""

    def __init__(self, result: Result, message: str, failed: Avp | None = None) -> None:
        super().__init__(message)
        self.result = result
        self.failed = failed
        self.header: Message | None = None
        """The message's header (its AVPs: those read before the error), when it was read."""


@dataclass(slots=True)
class Avp:
    code: int
    value: AvpValue
    vendor: int = 0
    flags: int = AVP_MANDATORY
    raw: bytes | None = None
    """The data as received (None for an AVP built here): Failed-AVP sends it back as is."""

    @property
    def definition(self) -> AvpDef | None:
        return DICTIONARY.get((self.code, self.vendor))

    @property
    def name(self) -> str:
        d = self.definition
        return d.name if d else f"AVP {self.code}" + (f"/{self.vendor}" if self.vendor else "")

    def find(self, d: AvpDef) -> Avp | None:
        return find(self.children, d)

    def all(self, d: AvpDef) -> list[Avp]:
        return find_all(self.children, d)

    @property
    def children(self) -> list[Avp]:
        return self.value if isinstance(self.value, list) else []


@dataclass(slots=True)
class Message:
    code: int
    app_id: int
    flags: int
    hop_by_hop: int
    end_to_end: int
    avps: list[Avp] = field(default_factory=list)

    @property
    def is_request(self) -> bool:
        return bool(self.flags & FLAG_REQUEST)

    @property
    def is_retransmission(self) -> bool:
        return bool(self.flags & FLAG_RETRANSMIT)

    def find(self, d: AvpDef) -> Avp | None:
        return find(self.avps, d)

    def all(self, d: AvpDef) -> list[Avp]:
        return find_all(self.avps, d)

    def answer(self, avps: list[Avp], error: bool = False) -> Message:
        """The answer to this request: same command, application and identifiers."""
        flags = (self.flags & FLAG_PROXIABLE) | (FLAG_ERROR if error else 0)
        return Message(self.code, self.app_id, flags, self.hop_by_hop, self.end_to_end, avps)


def find(avps: list[Avp], d: AvpDef) -> Avp | None:
    for a in avps:
        if a.code == d.code and a.vendor == d.vendor:
            return a
    return None


def find_all(avps: list[Avp], d: AvpDef) -> list[Avp]:
    return [a for a in avps if a.code == d.code and a.vendor == d.vendor]


def avp(d: AvpDef, value: AvpValue) -> Avp:
    """An AVP to send, flagged as its definition says (V for a vendor's, M where mandatory)."""
    return Avp(d.code, value, d.vendor, d.flags)


def missing(d: AvpDef) -> Avp:
    """The Failed-AVP of a missing AVP: its header with a zero-filled payload of the least
    length its type allows (RFC 6733 §7.5)."""
    a = avp(d, b"")
    a.raw = bytes(FIXED_SIZE.get(d.type, 0))
    return a


# --- decoding -----------------------------------------------------------------------------

def message_length(first4: bytes) -> int:
    """The length a message's first four bytes announce (framing on a stream)."""
    return int.from_bytes(first4[1:4], "big")


def decode(data: bytes) -> Message:
    """The message in `data` (exactly one), or DiameterError."""
    if len(data) < HEADER.size:
        raise DiameterError(Result.INVALID_MESSAGE_LENGTH,
                            f"a message is at least 20 bytes (got {len(data)})")
    version, length, flags, code, app_id, hop, e2e = HEADER.unpack_from(data)
    msg = Message(int.from_bytes(code, "big"), app_id, flags, hop, e2e)
    try:
        if version != 1:
            raise DiameterError(Result.UNSUPPORTED_VERSION,
                                f"Diameter version {version} is not supported (only 1)")
        length = int.from_bytes(length, "big")
        if length != len(data) or length % 4:
            raise DiameterError(Result.INVALID_MESSAGE_LENGTH,
                                f"message length {length} is not a multiple of 4 or not the "
                                f"{len(data)} bytes received")
        if flags & 0x0F or (flags & FLAG_REQUEST and flags & FLAG_ERROR):
            raise DiameterError(Result.INVALID_HDR_BITS,
                                f"invalid command flags 0x{flags:02x} (reserved bits set, or "
                                "E on a request)")
        _decode_avps(data, HEADER.size, len(data), msg.avps, 0)
    except DiameterError as e:
        e.header = msg
        raise
    return msg


def open_group(a: Avp) -> list[Avp]:
    """The AVPs inside an opaque group (Service-Information...), read as strictly as any,
    except that unknown AVPs with the M flag pass: Tollgate reads one or two AVPs in there
    and leaves the rest to whoever needs them."""
    if isinstance(a.value, list):
        return a.value
    assert isinstance(a.value, bytes), a
    out: list[Avp] = []
    _decode_avps(a.value, 0, len(a.value), out, 1, strict=False)
    return out


def _decode_avps(data: bytes, at: int, end: int, out: list[Avp], depth: int,
                 strict: bool = True) -> None:
    unpack, decoding, append = AVP_HEADER.unpack_from, DECODING, out.append
    while at < end:
        if end - at < 8:
            raise DiameterError(Result.INVALID_AVP_LENGTH,
                                f"{end - at} bytes at offset {at} are too few for an AVP header")
        code, word = unpack(data, at)
        flags, length = word >> 24, word & 0xFFFFFF
        vendor, head = 0, 8
        if flags & AVP_VENDOR:
            if end - at < 12:
                raise DiameterError(Result.INVALID_AVP_LENGTH,
                                    f"AVP {code} at offset {at} has the V flag but no Vendor-Id")
            vendor, head = U32.unpack_from(data, at + 8)[0], 12
        padded = (length + 3) & ~3
        if length < head or at + padded > end:
            failed = Avp(code, b"", vendor, flags, data[at + head:min(at + length, end)])
            raise DiameterError(
                Result.INVALID_AVP_LENGTH,
                f"{failed.name}: length {length} does not fit (header {head} bytes, "
                f"{end - at} bytes left)", failed)
        raw = data[at + head:at + length]
        a = Avp(code, raw, vendor, flags, raw)
        if flags & 0x1F:
            raise DiameterError(Result.INVALID_AVP_BITS,
                                f"{a.name}: reserved AVP flag bits set (0x{flags:02x})", a)
        known = decoding.get((code, vendor))
        if known is None:
            if flags & AVP_MANDATORY and strict:
                raise DiameterError(Result.AVP_UNSUPPORTED,
                                    f"{a.name} has the M flag and is not supported", a)
        else:
            d, how, size, signed = known
            if how == AS_INT:
                if length - head != size:
                    raise DiameterError(
                        Result.INVALID_AVP_LENGTH,
                        f"{d.name} ({d.type.value}) must be {size} bytes (got {length - head})",
                        a)
                a.value = int.from_bytes(raw, "big", signed=signed)
            elif how == AS_GROUP:
                if depth >= MAX_DEPTH:
                    raise DiameterError(Result.INVALID_AVP_VALUE, f"{d.name}: grouped AVPs "
                                        f"nested deeper than {MAX_DEPTH}", a)
                children: list[Avp] = []
                _decode_avps(data, at + head, at + length, children, depth + 1, strict)
                a.value = children
            elif how == AS_TEXT:
                try:
                    a.value = raw.decode()
                except UnicodeDecodeError as e:
                    raise DiameterError(Result.INVALID_AVP_VALUE,
                                        f"{d.name} is not valid UTF-8 ({e.reason})", a) from None
            elif how == AS_ADDRESS:
                a.value = _address(d, a, raw)
        append(a)
        at += padded


def _address(d: AvpDef, a: Avp, raw: bytes) -> AvpValue:
    n = len(raw)
    family = int.from_bytes(raw[:2], "big") if n >= 2 else -1
    want = ADDRESS_SIZE.get(family)
    if n < 2 or (want is not None and n - 2 != want):
        raise DiameterError(Result.INVALID_AVP_LENGTH,
                            f"{d.name}: {n} bytes is not an address of family {family}", a)
    return (family, raw[2:])


# --- encoding -----------------------------------------------------------------------------

def encode(msg: Message) -> bytes:
    out = bytearray(HEADER.size)
    for a in msg.avps:
        _encode_avp(a, out)
    HEADER.pack_into(out, 0, 1, len(out).to_bytes(3, "big"), msg.flags,
                     msg.code.to_bytes(3, "big"), msg.app_id, msg.hop_by_hop, msg.end_to_end)
    return bytes(out)


def encode_avp(a: Avp) -> bytes:
    out = bytearray()
    _encode_avp(a, out)
    return bytes(out)


def _encode_avp(a: Avp, out: bytearray) -> None:
    v, vendor = a.value, a.vendor
    flags = (a.flags | AVP_VENDOR) if vendor else (a.flags & ~AVP_VENDOR)
    head = 12 if vendor else 8
    if a.raw is None:
        if type(v) is int:
            number = ENCODING.get((a.code, vendor), U32)
            out += AVP_HEADER.pack(a.code, flags << 24 | (head + number.size))
            if vendor:
                out += U32.pack(vendor)
            out += number.pack(v)
            return
        if type(v) is list:  # grouped: children written in place, the length patched after
            start = len(out)
            out += (AVP_VENDOR_HEADER.pack(a.code, 0, vendor) if vendor
                    else AVP_HEADER.pack(a.code, 0))
            for child in v:
                _encode_avp(child, out)
            AVP_HEADER.pack_into(out, start, a.code, flags << 24 | (len(out) - start))
            return
    data = a.raw if a.raw is not None else _data(a)
    out += AVP_HEADER.pack(a.code, flags << 24 | (head + len(data)))
    if vendor:
        out += U32.pack(vendor)
    out += data
    out += bytes(-len(data) % 4)


def _data(a: Avp) -> bytes:
    """The data of a built AVP that is neither an integer nor grouped."""
    v = a.value
    if isinstance(v, str):
        d = DICTIONARY.get((a.code, a.vendor))
        if d is not None and d.type is AvpType.ADDRESS:
            ip = ipaddress.ip_address(v)
            return (1 if ip.version == 4 else 2).to_bytes(2, "big") + ip.packed
        return v.encode()
    if isinstance(v, tuple):
        return v[0].to_bytes(2, "big") + v[1]
    assert isinstance(v, bytes), a
    return v


def failed_avp(a: Avp) -> Avp:
    """The Failed-AVP that carries `a` (as received, when it was)."""
    return avp(FAILED_AVP, [a])
