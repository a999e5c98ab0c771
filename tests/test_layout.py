"""The code's shape, as docs/architecture.md draws it: small modules, udfs/ apart from jobs/, jobs apart
from each other, no sys.path tricks."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODULES = sorted([*(ROOT / "jobs").rglob("*.py"), *(ROOT / "udfs").rglob("*.py")])
JOBS = ("score", "shadow", "promote")  # entry points: each plugs into jobs.runner, none imports another


def _imports(path: Path, *, top_level_only: bool = False) -> set[str]:
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    found: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
    return found


def test_no_module_is_longer_than_400_lines() -> None:
    long = {str(p.relative_to(ROOT)): n for p in MODULES if (n := len(p.read_text().splitlines())) > 400}
    assert not long, long


def test_udfs_never_import_jobs_nor_pyspark_at_module_level() -> None:
    for path in (ROOT / "udfs").glob("*.py"):
        anywhere = _imports(path)
        assert not {m for m in anywhere if m.startswith(("batchscore.jobs", "jobs"))}, path.name
        top = _imports(path, top_level_only=True)
        assert not {m for m in top if m.split(".")[0] in ("pyspark", "torch", "mlflow")}, path.name


def test_no_job_imports_another_job() -> None:
    for job in JOBS:
        imported = _imports(ROOT / "jobs" / f"{job}.py")
        others = {f"batchscore.jobs.{other}" for other in JOBS if other != job}
        assert not imported & others, (job, imported & others)


def test_everything_imports_the_installed_namespace() -> None:
    """The wheel installs ``batchscore.jobs`` and ``batchscore.udfs`` (no clash with a user's own ``jobs``);
    importing the repository's folders by their bare names would load a second copy of each module."""
    others = ("tests", "bench", "airflow_dags", "notebooks")
    python = [*MODULES, *(p for d in others for p in (ROOT / d).rglob("*.py"))]
    for path in python:
        bare = {m for m in _imports(path) if m.split(".")[0] in ("jobs", "udfs")}
        assert not bare, (str(path.relative_to(ROOT)), bare)
    for notebook in (ROOT / "notebooks").glob("*.ipynb"):
        assert "from jobs." not in notebook.read_text() and "import udfs" not in notebook.read_text()


def test_the_namespace_is_the_repository_folders() -> None:
    for name in ("jobs", "udfs", "conf", "airflow_dags"):
        link = ROOT / "batchscore" / name
        assert link.is_symlink() and link.resolve() == ROOT / name, link


def _is_sys_path(node: ast.AST) -> bool:
    if isinstance(node, ast.Subscript):  # sys.path[:] = ...
        node = node.value
    return isinstance(node, ast.Attribute) and node.attr == "path" and getattr(node.value, "id", "") == "sys"


MUTATORS = {"append", "insert", "extend", "remove", "pop", "clear"}


def _changes_sys_path(node: ast.AST) -> bool:
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
        return node.func.attr in MUTATORS and _is_sys_path(node.func.value)
    if isinstance(node, ast.Assign):
        return any(_is_sys_path(t) for t in node.targets)
    if isinstance(node, ast.AugAssign | ast.AnnAssign):
        return _is_sys_path(node.target)
    return False


def test_nothing_changes_sys_path() -> None:
    """Reading it is allowed (a model server gets its worker's import path); changing it is not."""
    for path in MODULES:
        for node in ast.walk(ast.parse(path.read_text())):
            assert not _changes_sys_path(node), f"{path.relative_to(ROOT)}:{node.lineno} changes sys.path"


def test_the_sys_path_check_finds_changes_and_allows_reads() -> None:
    def flagged(source: str) -> bool:
        return any(_changes_sys_path(node) for node in ast.walk(ast.parse(source)))

    for source in ("sys.path.insert(0, 'x')", "sys.path = []", "sys.path[:] = []", "sys.path += ['x']"):
        assert flagged(source), source
    assert not flagged("env = os.pathsep.join(sys.path)")


def test_entry_points_stay_thin() -> None:
    sizes = {job: len((ROOT / "jobs" / f"{job}.py").read_text().splitlines()) for job in JOBS}
    assert all(size < 200 for size in sizes.values()), sizes
