"""The import contract: data -> models -> metrics -> training -> tracking -> app -> segment /
ops -> report. A module imports only from its own layer or layers to its left, function-local
imports included, and only ``app`` reads Hydra config (hydra / omegaconf)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "temseg_ablation"

#: Layer rank of each subpackage (or top-level module); higher may import lower, never upward.
RANK = {"data": 0, "models": 1, "metrics": 2, "training": 3, "tracking": 4, "app": 5,
        "segment": 6, "ops": 6, "report": 7, "preview": 7, "__main__": 7, "__init__": 0}
#: Deprecation aliases that keep an old command path working; each names where it moved.
ALLOWED_UPWARD = {("tracking.server", "ops")}
#: Packages whose modules may import hydra / omegaconf.
CONFIG_READERS = {"app"}


#: Modules allowed past the size limit, with the one job that keeps them together.
LARGE_ONE_JOB = {
    "data.readers": "one reader per microscope file format behind one read_frames",
}
MAX_LINES = 450


def _modules(package: Path = PACKAGE) -> list[Path]:
    return sorted(p for p in package.rglob("*.py") if "conf" not in p.relative_to(package).parts)


def _dotted(path: Path, package: Path = PACKAGE) -> str:
    parts = list(path.relative_to(package).with_suffix("").parts)
    return ".".join(parts)


def _layer(dotted: str) -> str:
    return dotted.split(".")[0]


def imports_of(path: Path, root: Path = PACKAGE) -> list[tuple[int, str]]:
    """``(line, absolute module)`` of every import in ``path``, function-local ones included."""
    tree = ast.parse(path.read_text(), str(path))
    package = ["temseg_ablation", *_dotted(path, root).split(".")][:-1]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
                if not node.module:  # ``from . import x``: each name is a module or an attribute
                    found += [(node.lineno, f"{mod}.{a.name}") for a in node.names]
                    continue
            else:
                mod = node.module or ""
            found.append((node.lineno, mod))
    return found


def _violations(root: Path = PACKAGE) -> tuple[list[str], list[str]]:
    upward, config = [], []
    for path in _modules(root):
        me = _dotted(path, root)
        my_layer = _layer(me)
        if my_layer not in RANK:
            upward.append(f"{path}: layer {my_layer!r} is not in the contract (add it to RANK)")
            continue
        for line, target in imports_of(path, root):
            top = target.split(".")[0]
            if top in ("hydra", "omegaconf") and my_layer not in CONFIG_READERS:
                config.append(f"{path}:{line}: imports {target} (only app/ reads Hydra config)")
            if top != "temseg_ablation" or target == "temseg_ablation":
                continue
            their_layer = target.split(".")[1]
            if their_layer not in RANK:
                continue  # a name imported from the package root
            if RANK[their_layer] > RANK[my_layer] and (me, their_layer) not in ALLOWED_UPWARD:
                upward.append(f"{path}:{line}: {my_layer} imports {target} (upward: "
                              f"{their_layer} is above {my_layer})")
    return upward, config


def test_no_module_imports_upward():
    upward, _ = _violations()
    assert not upward, "import contract broken:\n" + "\n".join(upward)


def test_only_app_reads_hydra_config():
    _, config = _violations()
    assert not config, "\n".join(config)


def test_the_checker_sees_function_local_and_relative_imports(tmp_path):
    root = tmp_path / "temseg_ablation"
    (root / "data").mkdir(parents=True)
    (root / "app").mkdir()
    (root / "data" / "probe.py").write_text(
        "def f():\n    from ..app import build  # noqa\n    import omegaconf  # noqa\n"
        "    from temseg_ablation.data import store  # noqa\n")
    (root / "app" / "ok.py").write_text("from ..data import probe\nimport hydra\n")
    upward, config = _violations(root)
    assert len(upward) == 1 and "probe.py:2" in upward[0] and "temseg_ablation.app" in upward[0]
    assert len(config) == 1 and "probe.py:3" in config[0]


@pytest.mark.parametrize("path", _modules(), ids=lambda p: _dotted(p))
def test_modules_stay_small(path):
    lines = len(path.read_text().splitlines())
    name = _dotted(path)
    assert lines <= MAX_LINES or name in LARGE_ONE_JOB, (
        f"{path} has {lines} lines (limit {MAX_LINES}): split it by job")
