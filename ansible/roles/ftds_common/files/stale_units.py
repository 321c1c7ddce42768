#!/usr/bin/python3
"""Which of the given systemd units run older software or unit files than are installed.

    stale_units.py MARKER UNIT...

Prints a JSON object: {"stale": [units], "units": {unit: {...details}}}. A unit is stale when
it is active and its main process started before the last change of MARKER (the installed
wheelhouse id) or of its unit file / drop-ins. Inactive units are never stale: they run the
new software when they start (the RM relaunching a replica, say). Read-only.
"""

import json
import os
import subprocess
import sys
import time


def show(unit):
    out = subprocess.run(
        ["systemctl", "show", "-p", "ActiveState", "-p", "ExecMainStartTimestampMonotonic",
         "-p", "FragmentPath", "-p", "DropInPaths", "-p", "MainPID", unit],
        check=True, capture_output=True, text=True).stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def mtime(path):
    try:
        return os.stat(path).st_mtime
    except OSError:
        return 0.0


def main(argv):
    marker, units = argv[1], argv[2:]
    # CLOCK_MONOTONIC (systemd's *Monotonic timestamps) -> wall clock, in seconds
    offset = time.time() - time.clock_gettime(time.CLOCK_MONOTONIC)
    result = {"stale": [], "units": {}}
    for unit in units:
        props = show(unit)
        started_mono = int(props.get("ExecMainStartTimestampMonotonic") or 0) / 1e6
        started = offset + started_mono if started_mono else 0.0
        files = [props.get("FragmentPath", ""), *props.get("DropInPaths", "").split()]
        changed = max([mtime(marker)] + [mtime(f) for f in files if f])
        active = props.get("ActiveState") == "active"
        stale = active and started_mono > 0 and started < changed
        result["units"][unit] = {"active": active, "started": round(started, 6),
                                 "changed": round(changed, 6), "pid": props.get("MainPID"),
                                 "stale": stale}
        if stale:
            result["stale"].append(unit)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
