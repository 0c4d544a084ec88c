"""The package installs as a user installs it: `pip install .` into a fresh virtual environment gives the console
commands `sparsity-explorer` (the sub-commands of `python -m dsa_core`) and `sparsity-explorer-app`, running the
installed copy, not the source tree. The fresh environment borrows this one's installed dependencies through a
.pth file (installing torch again would take minutes and gigabytes) and its pip and setuptools, so the build
needs no network."""

import shutil
import site
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_pip_install_gives_the_console_commands(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "requirements.txt", "app.py", "README.md"):
        shutil.copy(ROOT / name, src / name)
    for package in ("dsa_core", "ui", "storage", "cli"):
        shutil.copytree(ROOT / package, src / package, ignore=shutil.ignore_patterns("__pycache__"))
    env = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env)], check=True)
    python = env / "bin" / "python"
    fresh_site = subprocess.run([python, "-c", "import site; print(site.getsitepackages()[0])"], check=True,
                                capture_output=True, text=True).stdout.strip()
    Path(fresh_site, "borrowed.pth").write_text(site.getsitepackages()[0] + "\n")
    install = subprocess.run([python, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", str(src)],
                             capture_output=True, text=True, timeout=600)
    assert install.returncode == 0, install.stderr[-2000:]
    run = lambda *a: subprocess.run([*a], capture_output=True, text=True, timeout=120, cwd=tmp_path)  # noqa: E731
    evaluate = run(env / "bin" / "sparsity-explorer", "evaluate", "--help")
    assert evaluate.returncode == 0 and evaluate.stdout.startswith("usage: sparsity-explorer evaluate")
    assert "search" in run(env / "bin" / "sparsity-explorer", "--help").stdout
    assert run(env / "bin" / "sparsity-explorer-app", "--help").returncode == 0
    module = run(python, "-m", "dsa_core", "evaluate", "--help")
    assert module.returncode == 0 and module.stdout.startswith("usage: python -m dsa_core evaluate")
    for package in ("dsa_core", "cli"):
        where = run(python, "-c", f"import {package}, ui, storage; print({package}.__file__)").stdout.strip()
        assert where.startswith(fresh_site) and "src" not in Path(where).relative_to(fresh_site).parts
