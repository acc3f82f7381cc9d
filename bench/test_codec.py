"""The wire codec against upb, in the same run (pytest-benchmark; ./dev.sh bench -k codec).

Each benchmark handles one message of `size` requests or answers; requests/s = size / mean.
upb's FromString decodes into its arena and builds Python objects only on access, so the
`upb_read` case adds what the Python path does next: reading every field once."""

from __future__ import annotations

import random

import numpy as np
import pytest

from tollgate.engine.charging.wire import (
    A_CHARGED,
    A_ERROR,
    A_GRANTS_HI,
    A_GRANTS_LO,
    A_NUMBER,
    A_RESULT,
    A_ROWS,
    A_SESSION_LEN,
    A_SESSION_OFF,
    G_AMOUNT,
    G_FINAL,
    G_HOLDING,
    G_RATING_GROUP,
    G_RESULT,
    G_ROWS,
    G_UNIT,
    G_VALIDITY,
    G_VOLUME_THRESHOLD,
    R_SESSION,
    Strings,
    encode_answers,
    parse_batch,
    warm_up,
)
from tollgate.v1 import charging_pb2 as pb

SIZES = [1, 1000]
SUCCESS = 2001


def requests(size: int, seed: int = 1) -> pb.ChargeBatchRequest:
    """Data sessions as a gateway sends them: Diameter-style session ids, an MSISDN, one or
    two rating groups with usage and a quota request."""
    rnd = random.Random(seed)
    batch = pb.ChargeBatchRequest()
    for i in range(size):
        r = batch.requests.add(
            session_id=f"pgw1.example.net;{rnd.getrandbits(32)};{i}", request_number=3,
            type=pb.UPDATE, subscriber_id=f"4479{rnd.randrange(10**8):08d}",
            origin="pgw1.example.net", event_time_ms=1_760_000_000_000 + i)
        for rg in range(rnd.choice([1, 1, 2])):
            r.units.add(rating_group=10 + rg, requested=pb.Units(),
                        used=pb.Units(total_octets=rnd.randrange(10**7)),
                        reporting_reason=pb.QUOTA_EXHAUSTED)
    return batch


def answers(size: int) -> tuple[bytes, tuple, pb.ChargeBatchAnswer]:
    """The answers to requests(size) as the codec's tables and as upb's message."""
    data = requests(size).SerializeToString()
    parsed = parse_batch(data)
    n = parsed.requests.shape[1]
    table = np.zeros((A_ROWS, n), np.int64)
    table[A_SESSION_OFF] = parsed.requests[R_SESSION]
    table[A_SESSION_LEN] = parsed.requests[R_SESSION + 1]
    table[A_NUMBER], table[A_RESULT], table[A_ERROR] = 3, SUCCESS, -1
    table[A_CHARGED] = np.arange(n) * 1000
    table[A_GRANTS_LO], table[A_GRANTS_HI] = np.arange(n), np.arange(n) + 1
    grants = np.zeros((G_ROWS, n), np.int64)
    grants[G_RATING_GROUP], grants[G_RESULT], grants[G_UNIT] = 10, SUCCESS, 1
    grants[G_AMOUNT], grants[G_VALIDITY], grants[G_HOLDING] = 10_000_000, 3600, 300
    grants[G_VOLUME_THRESHOLD], grants[G_FINAL] = 8_000_000, -1
    batch = pb.ChargeBatchAnswer()
    for i in range(n):
        a = batch.answers.add(session_id=parsed.text(R_SESSION, i), request_number=3,
                              result=SUCCESS, charged_micros=i * 1000)
        a.grants.add(rating_group=10, result=SUCCESS, granted=pb.Units(total_octets=10_000_000),
                     validity_time_s=3600, quota_holding_time_s=300,
                     volume_threshold_octets=8_000_000)
    return data, (np.frombuffer(data, np.uint8), table, grants, Strings.of([])), batch


def read_all(data: bytes) -> int:
    """upb's parse plus one read of each field, as engine.charging.decode does."""
    n = 0
    for r in pb.ChargeBatchRequest.FromString(data).requests:
        n += len(r.session_id) + r.request_number + r.type + len(r.subscriber_id)
        n += r.event_time_ms + len(r.zone) + len(r.origin) + len(r.destination)
        for su in r.units:
            n += su.rating_group + su.service_id + su.reporting_reason
            n += su.used.total_octets + su.requested.total_octets
    return n


@pytest.mark.parametrize("size", SIZES)
def test_parse_codec(benchmark, size):
    warm_up()
    data = requests(size).SerializeToString()
    benchmark.extra_info["requests"] = size
    parsed = benchmark(parse_batch, data)
    assert parsed.requests.shape[1] == size


@pytest.mark.parametrize("size", SIZES)
def test_parse_upb(benchmark, size):
    data = requests(size).SerializeToString()
    benchmark.extra_info["requests"] = size
    assert len(benchmark(pb.ChargeBatchRequest.FromString, data).requests) == size


@pytest.mark.parametrize("size", SIZES)
def test_parse_upb_read(benchmark, size):
    data = requests(size).SerializeToString()
    benchmark.extra_info["requests"] = size
    assert benchmark(read_all, data) > 0


@pytest.mark.parametrize("size", SIZES)
def test_encode_codec(benchmark, size):
    warm_up()
    _, tables, expected = answers(size)
    benchmark.extra_info["requests"] = size
    out, _ = benchmark(encode_answers, *tables)
    assert out.tobytes() == expected.SerializeToString()


@pytest.mark.parametrize("size", SIZES)
def test_encode_upb(benchmark, size):
    _, _, message = answers(size)
    benchmark.extra_info["requests"] = size
    assert benchmark(message.SerializeToString)
