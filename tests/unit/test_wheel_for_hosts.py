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
    spec.loader.exec_module(module)
    return module


builder = load_builder()


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
    before = builder.source_hash(source, CONSTRAINTS)
    # A benchmark edited, a new chaos module, the docs edited, and what an older build left in
    # build/lib (setuptools would pack that tree whole into a wheel built in the checkout).
    bench = source / "tools" / "ftds_tools" / "bench" / "core_bench.py"
    bench.write_text(bench.read_text() + "\n# tuned\n")
    (source / "tools" / "ftds_tools" / "chaos" / "new_nemesis.py").write_text("X = 1\n")
    (source / "README.md").write_text("# rewritten\n")
    stale = source / "build" / "lib" / "ftds" / "bench" / "core_bench.py"
    stale.parent.mkdir(parents=True)
    stale.write_text("X = 1\n")
    assert builder.source_hash(source, CONSTRAINTS) == before  # no rebuild is even asked for
    rebuilt = build(source, tmp_path / "out")
    # The same bytes: the same requirements.txt line, so the same package id on the hosts.
    assert builder.wheel_requirement(rebuilt) == builder.wheel_requirement(wheel)
    assert rebuilt.read_bytes() == wheel.read_bytes()

    # While an edit to the package itself is a new package (the hash can tell).
    lfd = source / "ftds" / "lfd.py"
    lfd.write_text(lfd.read_text() + "\n# changed\n")
    assert builder.source_hash(source, CONSTRAINTS) != before
