"""What `ftds ctl promote|members` say when they cannot act: the cause, not a wrong remedy."""

from __future__ import annotations

import asyncio

import pytest

from ftds import ctl, local
from ftds.config import load_config


@pytest.mark.parametrize("command", ["promote", "members"])
def test_with_every_replica_down_they_say_none_answers_not_bootstrap(tmp_path, command):
    config = load_config(local.write_cluster(tmp_path, 3, base=local.pick_base(3, 46000)))
    key = config.read_key()
    call = ctl.promote(config, key) if command == "promote" \
        else ctl.set_members(config, key, ["S1", "S2"])
    with pytest.raises(ctl.CtlError) as raised:
        asyncio.run(call)
    assert "no replica answers" in str(raised.value)
    assert "bootstrap" not in str(raised.value)
