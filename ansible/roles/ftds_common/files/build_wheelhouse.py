#!/usr/bin/env python3
"""Build the ftds deployment wheelhouses on the controller, one per host platform, only when
the sources changed.

    build_wheelhouse.py --source REPO --wheelhouse DIR --constraints FILE \
        --target 3.11-x86_64-glibc2.36 [--target ...] [--check]

A target is a host's platform as the playbook's preflight reads it: its Python (major.minor),
its machine (``platform.machine()``) and its C library (glibc and version). Each target gets
its own directory ``DIR/<target>/`` holding the ftds wheel and every dependency wheel for that
platform, at the versions pinned in the constraints file, plus ``requirements.txt``
(``name==version --hash=sha256:...`` for each wheel, for ``pip install --no-index
--require-hashes``), ``SOURCE_HASH`` (a hash of the files the ftds wheel is built from,
``wheel_inputs``, of the constraints and of the target) and ``wheelhouse.tar`` (the wheels and
requirements.txt in one reproducible archive: one transfer per host instead of one per wheel).

The ftds wheel is pure Python, built once from a copy of its inputs alone, with
SOURCE_DATE_EPOCH fixed, so the same inputs give the same wheel bytes whatever the controller
runs, and so the same package id on the hosts (the hash of requirements.txt): nothing else in
the checkout (the development tools in tools/, tests, docs, an earlier build's leftovers in
build/) can reach the hosts or restart their daemons. The dependencies' wheels are fetched for
the target with ``pip download --platform/--python-version/--abi``, never built: a controller
on another Python, machine or distribution fetches the same wheels the hosts need, and a
dependency with no wheel for a target fails the build with a message naming both.

When a target's SOURCE_HASH still matches and every wheel is there, nothing is done for it.
Prints one line per target: ``unchanged ...``, ``built ...`` or (with --check, when the target's
wheelhouse exists) ``would build ...``; exit 0 unless a build failed (then the reason, on
stderr, names the target and what to change).
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
from dataclasses import dataclass
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


def source_hash(source: Path, constraints: Path, target: Target) -> str:
    digest = hashlib.sha256()
    for rel in wheel_inputs(source):
        digest.update(str(rel).encode() + b"\0")
        digest.update((source / rel).read_bytes() + b"\0")
    digest.update(b"constraints\0" + constraints.read_bytes())
    digest.update(f"target\0{target}".encode())
    return digest.hexdigest()


@dataclass(frozen=True)
class Target:
    """A host platform the wheels are for: CPython major.minor, machine, glibc version."""

    python: tuple[int, int]
    machine: str
    glibc: tuple[int, int]

    @classmethod
    def parse(cls, text: str) -> Target:
        m = TARGET_RE.fullmatch(text)
        if m is None:
            raise ValueError(f"target {text!r} is not PYTHON-MACHINE-glibcVERSION, "
                             "e.g. 3.11-x86_64-glibc2.36")
        major, minor, machine, gmajor, gminor = m.groups()
        return cls((int(major), int(minor)), machine, (int(gmajor), int(gminor)))

    def __str__(self) -> str:
        return (f"{self.python[0]}.{self.python[1]}-{self.machine}"
                f"-glibc{self.glibc[0]}.{self.glibc[1]}")

    @property
    def abi(self) -> str:
        return f"cp{self.python[0]}{self.python[1]}"

    def platforms(self) -> list[str]:
        """The manylinux tags a wheel may carry to run here, newest first (PEP 600: a
        manylinux_2_N wheel runs on glibc 2.N and later), with the legacy aliases of PEP 513,
        571 and 599. Pure wheels (``none-any``) need no tag: pip always takes them."""
        if self.glibc[0] != 2:
            return []
        tags = []
        for minor in range(self.glibc[1], 4, -1):
            tags.append(f"manylinux_2_{minor}_{self.machine}")
            alias = LEGACY_MANYLINUX.get((minor, self.machine))
            if alias:
                tags.append(f"{alias}_{self.machine}")
        return tags

    def describe(self) -> str:
        return (f"CPython {self.python[0]}.{self.python[1]} on {self.machine} with glibc "
                f"{self.glibc[0]}.{self.glibc[1]}")


TARGET_RE = re.compile(r"(\d+)\.(\d+)-([A-Za-z0-9_]+)-glibc(\d+)\.(\d+)")
# PEP 513/571/599 names for manylinux_2_5/_2_12/_2_17, and the machines each was defined for.
LEGACY_MANYLINUX = {
    **{(5, m): "manylinux1" for m in ("x86_64", "i686")},
    **{(12, m): "manylinux2010" for m in ("x86_64", "i686")},
    **{(17, m): "manylinux2014" for m in ("x86_64", "i686", "aarch64", "armv7l", "ppc64",
                                          "ppc64le", "s390x")},
}


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


def pip_download(ftds_wheel: Path, target: Target, dest: Path,
                 constraints: Path) -> subprocess.CompletedProcess[str]:
    """``pip download`` of the ftds wheel and every dependency's wheel for ``target`` (at the
    versions ``constraints`` pins) into ``dest``: binary wheels only, none built here."""
    # not --quiet: on failure, pip's explanation names the package without a wheel
    cmd = [sys.executable, "-m", "pip", "download", "--dest", str(dest),
           "--only-binary", ":all:", "--implementation", "cp",
           "--python-version", f"{target.python[0]}.{target.python[1]}", "--abi", target.abi]
    for tag in target.platforms():
        cmd += ["--platform", tag]
    cmd += ["--constraint", str(constraints.resolve()), str(ftds_wheel.resolve())]
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    return subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, check=False)


def download_failure(output: str, target: Target, constraints: Path) -> str:
    """What to tell the operator when pip found no wheel for a target: the package and the
    platform, and the ways out."""
    missing = re.findall(r"No matching distribution found for (\S+)", output)
    block = re.search(r"no matching distributions available for your environment:\n"
                      r"((?:[ \t]+\S+\n?)+)", output)
    if block:
        missing += block.group(1).split()
    if missing:
        names = ", ".join(dict.fromkeys(missing))
        return (f"no wheel of {names} for {target.describe()} (target {target}): pin a "
                f"version that publishes one in {constraints}, or put such a wheel where the "
                f"controller's pip finds it (PIP_FIND_LINKS)")
    return f"pip download for {target} failed:\n{output[-4000:]}"


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


def install_dir(tmp: Path, wheelhouse: Path) -> None:
    """Replace ``wheelhouse`` by the finished ``tmp`` (a rename: a reader sees one or the
    other, whole)."""
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


def build_target(ftds_wheel: Path, target: Target, wheelhouse: Path, constraints: Path,
                 stamp: str) -> str:
    """Fill ``wheelhouse`` (the target's directory) for ``target``; return the line to print.
    Raises RuntimeError with what to tell the operator."""
    wheelhouse.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{wheelhouse.name}-", dir=wheelhouse.parent))
    try:
        proc = pip_download(ftds_wheel, target, tmp, constraints)
        if proc.returncode != 0:
            raise RuntimeError(download_failure(proc.stdout, target, constraints))
        wheels = sorted(tmp.glob("*.whl"))
        (tmp / "requirements.txt").write_text(render_requirements(wheels))
        write_tar(tmp, wheels)
        (tmp / "SOURCE_HASH").write_text(stamp + "\n")
        install_dir(tmp, wheelhouse)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return f"built {wheelhouse}: {len(wheels)} wheels for {target.describe()}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--source", required=True, type=Path)
    ap.add_argument("--wheelhouse", required=True, type=Path)
    ap.add_argument("--constraints", required=True, type=Path)
    ap.add_argument("--target", action="append", required=True, metavar="TARGET",
                    help="a host platform, PYTHON-MACHINE-glibcVERSION (repeatable)")
    ap.add_argument("--check", action="store_true",
                    help="only say whether a build is needed (a missing wheelhouse is built)")
    args = ap.parse_args()
    try:
        targets = sorted({Target.parse(t) for t in args.target}, key=str)
    except ValueError as e:
        print(f"build_wheelhouse: {e}", file=sys.stderr)
        return 2
    source = args.source.resolve()
    root = args.wheelhouse.resolve()
    todo: list[tuple[Target, Path, str]] = []
    for target in targets:
        wheelhouse = root / str(target)
        want = source_hash(source, args.constraints, target)
        stamp = wheelhouse / "SOURCE_HASH"
        if stamp.is_file() and stamp.read_text().strip() == want and complete(wheelhouse):
            print(f"unchanged {wheelhouse} (sources {want[:12]})")
        elif args.check and wheelhouse.exists():
            print(f"would build {wheelhouse} (sources {want[:12]})")
        else:
            todo.append((target, wheelhouse, want))
    if not todo:
        return 0
    with tempfile.TemporaryDirectory(prefix="ftds-wheel-") as tmp:
        proc = pip_wheel(source, Path(tmp), deps=False)
        if proc.returncode != 0:
            print(f"pip wheel of ftds failed (exit {proc.returncode}):\n{proc.stdout[-4000:]}",
                  file=sys.stderr)
            return 1
        (ftds_wheel,) = Path(tmp).glob("ftds-*.whl")
        failed = False
        for target, wheelhouse, want in todo:
            try:
                print(build_target(ftds_wheel, target, wheelhouse, args.constraints, want))
            except RuntimeError as e:
                print(f"build_wheelhouse: {e}", file=sys.stderr)
                failed = True
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
