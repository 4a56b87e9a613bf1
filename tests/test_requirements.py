"""What a new machine installs and runs (issue 28): every dependency has a range the suite has run at both
ends, .ci/lower-bounds.txt pins the lower ends that CI tests, and no test patches torch's process-wide
backend flags through monkeypatch (pytest 9.2 cannot undo a setattr on torch.backends.cuda.matmul)."""
import re
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parent.parent
FILES = ("requirements.txt", "requirements-viewer.txt")


def requirements(path):
    lines = (line.split("#")[0].strip() for line in path.read_text().splitlines())
    return [Requirement(line) for line in lines if line]


def bounds(requirement):
    """(lowest, highest) version the requirement's specifiers allow, both included, as written."""
    specs = {spec.operator: spec.version for spec in requirement.specifier}
    if "==" in specs:
        return specs["=="], specs["=="]
    return specs.get(">="), specs.get("<=")


def test_every_requirement_has_an_inclusive_lower_and_upper_bound():
    """Bounds the suite has run: ">=" the oldest tested, "<=" the newest tested (or "=="); an exclusive "<"
    would admit releases nobody has run."""
    for name in FILES:
        for requirement in requirements(ROOT / name):
            low, high = bounds(requirement)
            assert low and high, f"{name}: {requirement} needs >= and <= (or ==) bounds that a test run reached"
            assert {spec.operator for spec in requirement.specifier} <= {">=", "<=", "=="}, f"{name}: {requirement}"


def test_the_lower_bounds_file_pins_every_lower_bound():
    """.ci/run installs with -c .ci/lower-bounds.txt and runs the suite there: it must pin each range's
    lower end, no more and no less."""
    declared = {r.name.lower(): bounds(r)[0] for name in FILES for r in requirements(ROOT / name)}
    pinned = {r.name.lower(): str(r.specifier).removeprefix("==") for r in requirements(ROOT / ".ci" / "lower-bounds.txt")}
    assert pinned == declared


def test_no_test_patches_torch_backends_with_monkeypatch():
    pattern = re.compile(r"monkeypatch\s*\.\s*(setattr|delattr)\(\s*[\"']?torch\.backends")
    offenders = [f"{path.name}:{number}" for path in sorted((ROOT / "tests").glob("*.py")) if path != Path(__file__)
                 for number, line in enumerate(path.read_text().splitlines(), 1) if pattern.search(line)]
    assert not offenders, f"use torch's setters with try/finally (tests/test_step_numerics.py's full_float32): {offenders}"
