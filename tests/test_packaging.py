"""A non-editable install works: the wheel carries every data file the library reads at run time."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_wheel_holds_every_data_file(tmp_path: Path) -> None:
    source = tmp_path / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(ROOT / "explorer", source / "explorer", ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run(
        [
            *(sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation"),
            *("--no-index", "--wheel-dir", str(tmp_path / "dist"), str(source)),
        ],
        check=True,
        capture_output=True,
    )
    (wheel,) = (tmp_path / "dist").glob("refusal_explorer-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    data = sorted(
        str(p.relative_to(ROOT))
        for p in (ROOT / "explorer").rglob("*")
        if p.is_file() and p.suffix not in (".py", ".pyc")
    )
    assert "explorer/prompts/refusals.json" in data  # the safety fine-tune's refusal replies
    assert [name for name in data if name not in names] == []
    modules = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "explorer").rglob("*.py"))
    assert [name for name in modules if name not in names] == []
