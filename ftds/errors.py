"""The error a peer's message raises when it cannot be accepted.

Apart from the wire codec so that the decision cores (``ftds/rm/core.py``,
``ftds/replica/orderer.py``, ``ftds/replica/viewchange.py``) and ``ftds/view.py`` can refuse a
message without importing any I/O.
"""

from __future__ import annotations


class WireError(Exception):
    """A frame that cannot be accepted. ``code`` is what the peer is told."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail
