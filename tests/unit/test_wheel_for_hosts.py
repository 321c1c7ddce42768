"""The wheel every host installs carries only what runs there (issue 12, "ship only what runs").

The development tools (benchmarks, the chaos suite, the demos, the lab's controller side) are
ftds-tools, in tools/: not in the ftds wheel, and an edit to them must not change the package id
the hosts compare (the hash of the wheelhouse's requirements.txt, which pins each wheel by its
sha256), or every replica would roll-restart for a benchmark's sake. The wheel is built the way
build_wheelhouse.py builds it (its own ``pip_wheel``), without the dependencies' wheels.
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[2]
FILES = REPO / "ansible" / "roles" / "ftds_common" / "files"
CONSTRAINTS = FILES / "constraints.txt"
# Copied for the builds: the wheel's inputs and what must stay out of the wheel.
COPIED = ("pyproject.toml", "README.md", "ftds", "tools")
TOOLING = ("bench", "chaos", "demo", "labdemo", "labenv", "ftds_tools")


def load_builder() -> ModuleType:
    spec = importlib.util.spec_from_file_location("build_wheelhouse", FILES / "build_wheelhouse.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


builder = load_builder()
HOSTS = builder.Target.parse("3.11-x86_64-glibc2.36")  # the lab's hosts (Debian 12)


def copy_checkout(dest: Path, source: Path = REPO) -> Path:
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info")
    dest.mkdir(exist_ok=True)
    for name in COPIED:
        if (source / name).is_dir():
            shutil.copytree(source / name, dest / name, ignore=ignore)
        else:
            shutil.copy2(source / name, dest / name)
    return dest


def build(source: Path, out: Path) -> Path:
    out.mkdir()
    proc = builder.pip_wheel(source, out, deps=False)
    assert proc.returncode == 0, proc.stdout
    (wheel,) = out.glob("ftds-*.whl")
    return wheel


@pytest.fixture(scope="module")
def snapshot(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The checkout as it is now, so that both builds below see the same sources even while
    the working tree changes."""
    return copy_checkout(tmp_path_factory.mktemp("checkout"))


@pytest.fixture(scope="module")
def wheel(snapshot: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build(snapshot, tmp_path_factory.mktemp("wheel") / "out")


def test_the_hosts_wheel_holds_the_package_and_no_tool(wheel: Path, snapshot: Path) -> None:
    archive = zipfile.ZipFile(wheel)
    names = archive.namelist()
    modules = sorted(n for n in names if not n.startswith("ftds-0.1.0.dist-info/"))
    package = sorted(str(p) for p in builder.wheel_inputs(snapshot) if p.parts[0] == "ftds")
    assert "ftds/lfd.py" in modules and "ftds/replica/server.py" in modules
    assert modules == package  # the ftds package's sources, nothing else
    tooling = [n for n in names if set(Path(n).with_suffix("").parts) & set(TOOLING)]
    assert tooling == []
    tools = [p.relative_to(snapshot / "tools" / "ftds_tools")
             for p in (snapshot / "tools" / "ftds_tools").rglob("*.py")]
    assert len(tools) > 10
    for rel in tools:  # no tool under any name
        if rel.name != "__init__.py":
            assert not [n for n in names if n.endswith("/" + rel.name)], rel
    assert archive.read("ftds-0.1.0.dist-info/top_level.txt").decode().split() == ["ftds"]


def test_the_wheel_inputs_are_the_package_and_its_metadata(snapshot: Path) -> None:
    inputs = builder.wheel_inputs(snapshot)
    assert Path("pyproject.toml") in inputs and Path("ftds/lfd.py") in inputs
    assert [p for p in inputs if p.parts[0] not in ("pyproject.toml", "ftds")] == []


def test_edits_beside_the_package_leave_the_package_id(snapshot: Path, wheel: Path,
                                                       tmp_path: Path) -> None:
    source = copy_checkout(tmp_path / "checkout", snapshot)
    before = builder.source_hash(source, CONSTRAINTS, HOSTS)
    # A benchmark edited, a new chaos module, the docs edited, and what an older build left in
    # build/lib (setuptools would pack that tree whole into a wheel built in the checkout).
    bench = source / "tools" / "ftds_tools" / "bench" / "core_bench.py"
    bench.write_text(bench.read_text() + "\n# tuned\n")
    (source / "tools" / "ftds_tools" / "chaos" / "new_nemesis.py").write_text("X = 1\n")
    (source / "README.md").write_text("# rewritten\n")
    stale = source / "build" / "lib" / "ftds" / "bench" / "core_bench.py"
    stale.parent.mkdir(parents=True)
    stale.write_text("X = 1\n")
    assert builder.source_hash(source, CONSTRAINTS, HOSTS) == before  # no rebuild is even asked for
    rebuilt = build(source, tmp_path / "out")
    # The same bytes: the same requirements.txt line, so the same package id on the hosts.
    assert builder.wheel_requirement(rebuilt) == builder.wheel_requirement(wheel)
    assert rebuilt.read_bytes() == wheel.read_bytes()

    # While an edit to the package itself is a new package (the hash can tell).
    lfd = source / "ftds" / "lfd.py"
    lfd.write_text(lfd.read_text() + "\n# changed\n")
    assert builder.source_hash(source, CONSTRAINTS, HOSTS) != before


# ------------------------------------------ the hosts' platform, not the controller's ----
# build_wheelhouse.py takes each host's Python, machine and glibc as a target, asks pip for the
# wheels a host of that kind can install, and names the package and the target when one has no
# wheel. Fetching real wheels for a foreign target is shown on the lab (tests/lab/test_e2e.py,
# a controller on another Python).
Target = builder.Target


def test_a_target_reads_and_prints_as_the_preflight_writes_it() -> None:
    target = Target.parse("3.12-aarch64-glibc2.36")
    assert (target.python, target.machine, target.glibc) == ((3, 12), "aarch64", (2, 36))
    assert str(target) == "3.12-aarch64-glibc2.36"
    assert target.abi == "cp312"
    assert target.describe() == "CPython 3.12 on aarch64 with glibc 2.36"


@pytest.mark.parametrize("text", ["3.11-x86_64", "3.11-x86_64-musl1.2", "py3.11-x86_64-glibc2.36",
                                  "3.11-x86 64-glibc2.36", ""])
def test_a_target_that_is_not_one_is_refused_with_the_expected_form(text: str) -> None:
    with pytest.raises(ValueError, match="PYTHON-MACHINE-glibcVERSION"):
        Target.parse(text)


def test_a_host_takes_the_manylinux_wheels_of_its_glibc_and_every_older_one() -> None:
    tags = Target.parse("3.11-x86_64-glibc2.36").platforms()
    assert tags[0] == "manylinux_2_36_x86_64"  # its own glibc first
    assert "manylinux_2_34_x86_64" in tags  # bcrypt, cryptography and PyNaCl publish these
    assert "manylinux2014_x86_64" in tags and "manylinux1_x86_64" in tags  # legacy aliases
    assert tags[-2:] == ["manylinux_2_5_x86_64", "manylinux1_x86_64"]
    assert not any(t.startswith("manylinux_2_37") for t in tags)  # nothing newer than its own
    assert all(t.endswith("_x86_64") for t in tags)
    arm = Target.parse("3.11-aarch64-glibc2.17").platforms()
    assert arm == ["manylinux_2_17_aarch64", "manylinux2014_aarch64",
                   *[f"manylinux_2_{m}_aarch64" for m in range(16, 4, -1)]]


def test_each_target_has_its_own_source_hash(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text("[project]\nname = 'ftds'\n")
    (tmp_path / "ftds").mkdir()
    (tmp_path / "ftds" / "__init__.py").write_text("")
    hosts = {builder.source_hash(tmp_path, CONSTRAINTS, Target.parse(t))
             for t in ("3.11-x86_64-glibc2.36", "3.12-x86_64-glibc2.36",
                       "3.11-aarch64-glibc2.36", "3.11-x86_64-glibc2.31")}
    assert len(hosts) == 4


PIP_RESOLUTION_IMPOSSIBLE = (  # pip 26's words, for a riscv64 target
    "Processing ./wh/ftds-0.1.0-py3-none-any.whl\n"
    "ERROR: Cannot install ftds==0.1.0 because these package versions have conflicting "
    "dependencies.\n\nThe conflict is caused by:\n    ftds 0.1.0 depends on orjson>=3.9\n"
    "    The user requested (constraint) orjson==3.13.0\n\n"
    "Additionally, some packages in these conflicts have no matching distributions available "
    "for your environment:\n    orjson\n\nTo fix this you could try to:\n")
PIP_NO_MATCH = """\
ERROR: Could not find a version that satisfies the requirement uvloop==0.23.0 (from versions: none)
ERROR: No matching distribution found for uvloop==0.23.0
"""


@pytest.mark.parametrize(("output", "package"), [(PIP_RESOLUTION_IMPOSSIBLE, "orjson"),
                                                 (PIP_NO_MATCH, "uvloop==0.23.0")])
def test_a_missing_wheel_is_named_with_the_target_and_what_to_do(output: str,
                                                                package: str) -> None:
    target = Target.parse("3.11-riscv64-glibc2.36")
    said = builder.download_failure(output, target, CONSTRAINTS)
    assert said.startswith(f"no wheel of {package} for CPython 3.11 on riscv64 with glibc 2.36 "
                           "(target 3.11-riscv64-glibc2.36)")
    assert str(CONSTRAINTS) in said and "PIP_FIND_LINKS" in said


def test_the_builder_refuses_a_malformed_target_before_building(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, str(FILES / "build_wheelhouse.py"), "--source", ".",
                           "--wheelhouse", str(tmp_path / "wh"), "--constraints",
                           str(CONSTRAINTS), "--target", "3.11-x86_64-glibc2.36",
                           "--target", "x86_64"], capture_output=True, text=True, check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip() == ("build_wheelhouse: target 'x86_64' is not "
                                   "PYTHON-MACHINE-glibcVERSION, e.g. 3.11-x86_64-glibc2.36")
    assert not (tmp_path / "wh").exists()
