"""The chaos run's hostile client process: ``python -m ftds_tools.chaos.hostile --config FILE ...``.

One normal session and one hostile session (``ftds.workload``, ``hostile=True``) recording into
one history, until SIGINT/SIGTERM; prints its summary as JSON, with per kind of hostile request
how many were sent, refused with an error, accepted (a bug) and left without an answer.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from typing import Any

from ftds.config import load_config
from ftds.workload import run_workload


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m ftds_tools.chaos.hostile")
    p.add_argument("--config", required=True)
    p.add_argument("--id", default="H")
    p.add_argument("--rate", type=float, default=20.0, help="normal session's requests/s")
    p.add_argument("--keys", type=int, default=6)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--prefix", default="")
    p.add_argument("--history", required=True)
    p.add_argument("--duration", type=float, default=86400.0)
    args = p.parse_args(argv)
    config = load_config(args.config)
    key = config.read_key()

    async def run() -> dict[str, Any]:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        return await run_workload(config, key, name=args.id, clients=1, rate=args.rate,
                                  duration=args.duration, keys=args.keys, history=args.history,
                                  mix="rw", seed=args.seed, stop=stop, prefix=args.prefix,
                                  hostile=True)

    summary = asyncio.run(run())
    summary.pop("latencies", None)
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
