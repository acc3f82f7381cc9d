"""Settings that cannot work are refused at load, naming the setting."""

from __future__ import annotations

import pytest

from tollgate.engine.errors import ConfigError
from tollgate.engine.ops.config import load_config


@pytest.mark.parametrize("name", ["stream_stall_s", "shared_batch", "stream_max_rate"])
def test_a_negative_stream_limit_is_refused(name: str) -> None:
    with pytest.raises(ConfigError, match=name):
        load_config(None, env={}, **{name: -1})
    assert getattr(load_config(None, env={}, **{name: 0}), name) == 0  # 0: off
