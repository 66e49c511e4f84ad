"""environment.yml's pip section mirrors pyproject.toml (dependencies + the dev extra).

No conda channel is reachable here, so the conda route is kept honest by this test
rather than by running conda (book/design.md, "Dependencies").
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]


def normalise(name: str) -> str:
    """PEP 503 normalised project name."""
    return re.sub(r"[-_.]+", "-", name).lower()


def requirements(lines: list[str]) -> dict[str, str]:
    """``{normalised name: specifier}`` for requirement strings (pip options skipped)."""
    reqs = [Requirement(line) for line in lines if not line.strip().startswith("-")]
    return {normalise(r.name): str(r.specifier) for r in reqs}


def pyproject_requirements() -> dict[str, str]:
    """pyproject.toml's runtime dependencies plus its ``dev`` extra."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return requirements(project["dependencies"] + project["optional-dependencies"]["dev"])


def environment_pip_requirements() -> dict[str, str]:
    """The ``pip:`` list of environment.yml."""
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip = [d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d]
    assert len(pip) == 1, "environment.yml needs exactly one pip section"
    return requirements(pip[0])


def test_same_names():
    ours, theirs = pyproject_requirements(), environment_pip_requirements()
    assert set(ours) == set(theirs), (
        f"only in pyproject.toml: {sorted(set(ours) - set(theirs))}; "
        f"only in environment.yml: {sorted(set(theirs) - set(ours))}")


def test_same_version_constraints():
    ours, theirs = pyproject_requirements(), environment_pip_requirements()
    diff = {n: (ours[n], theirs[n]) for n in set(ours) & set(theirs) if ours[n] != theirs[n]}
    assert not diff, f"constraints differ (pyproject, environment.yml): {diff}"


def test_python_pin_matches_requires_python():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pins = [d for d in env["dependencies"] if isinstance(d, str) and d.startswith("python")]
    assert pins == ["python=3.11"]
    requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    assert requires == ">=3.11"


def test_constraints_pin_every_installed_distribution():
    """constraints.txt is a lock: each distribution in this venv is pinned there at the version
    installed (a dependency added without re-locking fails here). Skipped in an unpinned venv
    (``make venv PIN=``), recognised by a torch other than the pinned 2.13.0."""
    from importlib import metadata

    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, _, version = line.partition("==")
            pins[normalise(name)] = version
    if not metadata.version("torch").startswith(pins.get("torch", "?")):
        pytest.skip("not the pinned environment (torch differs from constraints.txt)")
    unpinned, moved = [], []
    for dist in metadata.distributions():
        name = normalise(dist.metadata["Name"])
        if name in {"minigen", "pip", "setuptools", "wheel"}:
            continue
        if name not in pins:
            unpinned.append(name)
        elif dist.version.split("+")[0] != pins[name]:
            moved.append(f"{name} {dist.version} (pinned {pins[name]})")
    assert not unpinned and not moved, f"re-lock constraints.txt: unpinned {unpinned}, moved {moved}"
