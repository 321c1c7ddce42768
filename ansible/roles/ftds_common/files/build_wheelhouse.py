#!/usr/bin/env python3
"""Build the ftds deployment wheelhouse on the controller, only when the sources changed.

    build_wheelhouse.py --source REPO --wheelhouse DIR --constraints FILE [--check]

The wheelhouse holds the ftds wheel and every dependency wheel at the versions pinned in the
constraints file, plus ``requirements.txt`` (``name==version --hash=sha256:...`` for each
wheel, for ``pip install --no-index --require-hashes``), ``SOURCE_HASH`` (a hash of the files
the ftds wheel is built from, ``wheel_inputs``, and of the constraints) and ``wheelhouse.tar``
(the wheels and requirements.txt in one reproducible archive: one transfer per host instead of
one per wheel).
When SOURCE_HASH still matches and every wheel is there, nothing is done. Prints one line:
``unchanged ...``, ``built ...`` or (with --check) ``would build ...``; exit 0 unless the
build failed.

Uses the interpreter it runs under (the controller's venv) for ``pip wheel``. The ftds wheel
is built from a copy of its inputs alone, with SOURCE_DATE_EPOCH fixed, so the same inputs give
the same wheel bytes, and so the same package id on the hosts (the hash of requirements.txt):
nothing else in the checkout (the development tools in tools/, tests, docs, an earlier build's
leftovers in build/) can reach the hosts or restart their daemons.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

# What the ftds wheel is built from. Everything the wheel holds comes from these files, and
# only these are copied for the build, so SOURCE_HASH covers exactly what goes into the wheel.
# (setuptools adds license files of these names by itself, when there are any.)
WHEEL_INPUTS = ("pyproject.toml", "setup.cfg", "setup.py", "ftds/**/*.py", "ftds/**/*.typed",
                "LICEN[CS]E*", "COPYING*", "NOTICE*", "AUTHORS*")


def wheel_inputs(source: Path) -> list[Path]:
    """The files the ftds wheel is built from, relative to ``source``, sorted."""
    files: set[Path] = set()
    for pattern in WHEEL_INPUTS:
        files.update(p.relative_to(source) for p in source.glob(pattern)
                     if p.is_file() and "__pycache__" not in p.parts)
    return sorted(files)


def stage_source(source: Path, dest: Path) -> None:
    """Copy the wheel's inputs alone into ``dest``, to build from there.

    A build in the checkout would pack whatever an earlier build left in build/lib too
    (setuptools copies that tree whole into the wheel), modules since moved or removed
    included."""
    for rel in wheel_inputs(source):
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source / rel, target)


def source_hash(source: Path, constraints: Path) -> str:
    digest = hashlib.sha256()
    for rel in wheel_inputs(source):
        digest.update(str(rel).encode() + b"\0")
        digest.update((source / rel).read_bytes() + b"\0")
    digest.update(b"constraints\0" + constraints.read_bytes())
    digest.update(f"python{sys.version_info.major}.{sys.version_info.minor}".encode())
    return digest.hexdigest()


def pip_wheel(source: Path, wheel_dir: Path, constraints: Path | None = None,
              deps: bool = True) -> subprocess.CompletedProcess[str]:
    """``pip wheel`` of ftds, built from a staged copy of its inputs, into ``wheel_dir``; with
    ``deps``, every dependency's wheel too (at the versions ``constraints`` pins)."""
    with tempfile.TemporaryDirectory(prefix="ftds-source-") as tmp:
        staged = Path(tmp) / "ftds"
        stage_source(source, staged)
        env = {**os.environ, "SOURCE_DATE_EPOCH": "315532800",
               "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
        cmd = [sys.executable, "-m", "pip", "wheel", "--quiet", "--wheel-dir", str(wheel_dir)]
        if constraints is not None:
            cmd += ["--constraint", str(constraints.resolve())]
        if not deps:
            cmd.append("--no-deps")
        # An absolute path: a bare directory name could be taken for a project on an index.
        cmd += ["--only-binary", ":all:", "--no-binary", "ftds", str(staged.resolve())]
        return subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, check=False)


def wheel_requirement(wheel: Path) -> str:
    # name-version(-build)?-pyver-abi-plat.whl; names are normalised (PEP 427/503)
    name, version = wheel.name.split("-")[:2]
    sha = hashlib.sha256(wheel.read_bytes()).hexdigest()
    return f"{re.sub(r'[-_.]+', '-', name).lower()}=={version} --hash=sha256:{sha}"


def write_tar(directory: Path, wheels: list[Path]) -> None:
    """wheelhouse.tar: sorted members, fixed owner, mode and mtime (same input, same bytes)."""
    with tarfile.open(directory / "wheelhouse.tar", "w", format=tarfile.GNU_FORMAT) as tar:
        for path in [*wheels, directory / "requirements.txt"]:
            info = tar.gettarinfo(str(path), arcname=path.name)
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            info.mode = 0o644
            info.mtime = 315532800
            with open(path, "rb") as fh:
                tar.addfile(info, fh)


def complete(wheelhouse: Path) -> bool:
    req = wheelhouse / "requirements.txt"
    if not req.is_file() or not (wheelhouse / "wheelhouse.tar").is_file():
        return False
    wheels = sorted(wheelhouse.glob("*.whl"))
    return bool(wheels) and req.read_text() == render_requirements(wheels)


def render_requirements(wheels: list[Path]) -> str:
    lines = ["# Generated by build_wheelhouse.py: every wheel of this wheelhouse, pinned by hash."]
    lines += [wheel_requirement(w) for w in wheels]
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--source", required=True, type=Path)
    ap.add_argument("--wheelhouse", required=True, type=Path)
    ap.add_argument("--constraints", required=True, type=Path)
    ap.add_argument("--check", action="store_true", help="only say whether a build is needed")
    args = ap.parse_args()
    source = args.source.resolve()
    wheelhouse = args.wheelhouse.resolve()
    want = source_hash(source, args.constraints)
    stamp = wheelhouse / "SOURCE_HASH"
    if stamp.is_file() and stamp.read_text().strip() == want and complete(wheelhouse):
        print(f"unchanged {wheelhouse} (sources {want[:12]})")
        return 0
    if args.check:
        print(f"would build {wheelhouse} (sources {want[:12]})")
        return 0
    wheelhouse.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".wheelhouse-", dir=wheelhouse.parent))
    try:
        proc = pip_wheel(source, tmp, args.constraints)
        if proc.returncode != 0:
            print(f"pip wheel failed (exit {proc.returncode}):\n{proc.stdout[-4000:]}",
                  file=sys.stderr)
            return 1
        wheels = sorted(tmp.glob("*.whl"))
        (tmp / "requirements.txt").write_text(render_requirements(wheels))
        write_tar(tmp, wheels)
        (tmp / "SOURCE_HASH").write_text(want + "\n")
        for path in tmp.iterdir():
            path.chmod(0o644)
        tmp.chmod(0o755)
        old = wheelhouse.with_name(wheelhouse.name + ".old")
        if old.exists():
            shutil.rmtree(old)
        if wheelhouse.exists():
            wheelhouse.rename(old)
        tmp.rename(wheelhouse)
        if old.exists():
            shutil.rmtree(old)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    print(f"built {wheelhouse}: {len(wheels)} wheels (sources {want[:12]})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
