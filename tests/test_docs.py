"""The project's documents: the method reference ships with the repository and every
citation of it points at a section that exists."""
import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
METHOD = ROOT / "docs" / "METHOD.md"


def project_files():
    """The repository's files: tracked or not ignored (run outputs under ignored folders, such
    as notes in runs/, are not the project's); every file when git is not available."""
    try:
        listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                                capture_output=True, text=True, check=True).stdout.splitlines()
        paths = [ROOT / name for name in listed]
    except (OSError, subprocess.CalledProcessError):
        paths = [path for path in ROOT.rglob("*") if ".git" not in path.parts and "_cache" not in str(path)]
    for path in paths:
        if path.suffix in (".py", ".md", ".txt") and path.is_file():
            yield path


def test_citations_point_at_sections_of_the_method_document():
    sections = set(re.findall(r"^#{2,3} (\d+(?:\.\d+)?)\.? ", METHOD.read_text(), flags=re.M))
    cited = {}
    for path in project_files():
        for number in re.findall(r"METHOD\.md §(\d+(?:\.\d+)?)", path.read_text(errors="replace")):
            cited.setdefault(number, path.relative_to(ROOT))
    assert cited, "nothing cites docs/METHOD.md"
    missing = {number: str(path) for number, path in cited.items() if number not in sections}
    assert not missing, f"citations of sections docs/METHOD.md does not have: {missing}"


def test_nothing_points_outside_the_repository():
    """A clone has no ../shared folder: the method document must be the project's own."""
    offenders = [str(path.relative_to(ROOT)) for path in project_files() if path != Path(__file__)
                 and re.search(r"\.\./shared|SPEC §|SPEC\.md", path.read_text(errors="replace"))]
    assert not offenders
    assert "docs/METHOD.md" in (ROOT / "README.md").read_text()
