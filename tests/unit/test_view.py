"""A view from the wire: what any replica, the RM or an operator's tool may be sent."""

from __future__ import annotations

import pytest

from ftds.errors import WireError
from ftds.view import View


def wire(**fields):
    return {"epoch": 3, "version": 0, "primary": "S1", "members": ["S1", "S2"], **fields}


def test_a_good_view_is_taken():
    view = View.from_wire(wire())
    assert (view.epoch, view.primary, view.members) == (3, "S1", ("S1", "S2"))


@pytest.mark.parametrize("fields", [
    {"members": ["S1", "S2", "S2"]},  # `ftds ctl members S1,S1,S1` was taken as "ready S1, S1, S1"
    {"members": ["S1", "S1"]},
    {"epoch": 2**63},  # one more and the codec cannot carry the next epoch
    {"version": 2**64 - 1},
    {"epoch": 0},
])
def test_a_view_the_cluster_cannot_act_on_is_malformed(fields):
    with pytest.raises(WireError):
        View.from_wire(wire(**fields))
