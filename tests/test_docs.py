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
    assert "docs/METHOD.md" in (ROOT / "README.md").read_text()  # the front page sends readers to it


def test_links_and_pictures_of_the_documents_exist():
    """The README is a front page that sends readers to docs/: every relative link and picture of
    the README and docs/*.md must exist in the repository."""
    broken = []
    for document in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        text = document.read_text()
        targets = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text) + re.findall(r'<img src="([^"]+)"', text)
        for target in targets:
            if "://" in target or target.startswith("mailto:"):
                continue
            if not (document.parent / target).exists():
                broken.append(f"{document.relative_to(ROOT)} -> {target}")
    assert not broken, broken


def test_readme_starts_with_the_install_and_run_command_then_the_test_command():
    blocks = re.findall(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)
    assert blocks[0].strip() == ("pip install -r requirements.txt && "
                                 "python main.py --curriculum OneCritter --output_dir runs/demo --threads 1")
    assert blocks[1].strip() == "python -m pytest -q"
    ci = (ROOT / ".ci" / "run").read_text().strip().splitlines()
    assert ci[-1] == blocks[1].strip(), "CI must run the README's test command"


def test_the_readme_first_command_trains_the_default_and_writes_what_it_promises(tmp_path):
    """The README's training command, as written, for two steps: the grids, metrics.jsonl and checkpoint.pth
    it promises, of the curriculum it names, which a script then reads."""
    import shlex

    import main
    from generators.pretrained import load_model

    command = re.findall(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)[0]
    argv = shlex.split(command.split("&&")[1])
    assert argv[:2] == ["python", "main.py"]
    argv = argv[2:]
    argv[argv.index("--output_dir") + 1] = str(tmp_path / "demo")
    assert main.main(argv + ["--max_steps", "2", "--no_progress"]) == 0
    run = tmp_path / "demo"
    assert {"checkpoint.pth", "metrics.jsonl", "real.png"} <= {p.name for p in run.iterdir()}
    assert any(p.name.endswith("_fixed_ema.png") for p in run.iterdir())
    model = load_model(run, device="cpu")
    assert model.step == 2 and model.metadata["dataset"] == "Critters" and model.metadata["synthetic_objects"] == 1
