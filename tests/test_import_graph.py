"""The layout a newcomer would draw is the import graph: primitives, platform, core, shell, stand-ins.

Layers, lowest first. A module may import its own layer and the layers below it, never one above:

* ``skr.errors``, ``skr.primitives`` — the exception tree and one module per shared primitive;
* ``skr.snp`` — the SEV-SNP platform layer (report ABI, certificate table, verification, device);
* ``skr.core`` — the release core (MAA, identity, Key Vault, collateral, unwrapping, single flight);
* ``skr.shell`` — the sidecar shell (HTTP API, CLI, init container, configuration, logs, wiring);
* ``skr_dev.simulated`` — the SIMULATED AMD platform (a separate distribution, never in production);
* ``skr_dev.emulators`` — the Azure emulators, built on the simulated platform;
* ``skr_dev.devstack``, ``skr_dev.bench``, ``skr_dev.pytest_plugin`` — ``skr dev``, ``skr bench``, fixtures.

The only name-level reach from production into the stand-ins is the CLI's ``_load_stand_in`` for the
explicit developer commands, done with ``importlib`` at run time; the second test proves that loading
every production module leaves the stand-ins unloaded.
"""

from __future__ import annotations

import ast
import json
import pkgutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

import skr
import skr_dev

LAYERS: tuple[tuple[str, ...], ...] = (
    ("skr.errors", "skr.primitives", "skr"),
    ("skr.snp",),
    ("skr.core",),
    ("skr.shell", "skr.__main__"),
    ("skr_dev.simulated", "skr_dev"),
    ("skr_dev.emulators",),
    ("skr_dev.devstack", "skr_dev.bench", "skr_dev.pytest_plugin"),
)


def _layer_of(module: str) -> int | None:
    best: tuple[int, int] | None = None  # (length of the matching prefix, layer)
    for index, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and (best is None or len(prefix) > best[0]):
                best = (len(prefix), index)
    return None if best is None else best[1]


def _modules(package_dir: Path, package: str) -> dict[str, Path]:
    found = {package: package_dir / "__init__.py"}
    for path in package_dir.rglob("*.py"):
        rel = path.relative_to(package_dir).with_suffix("")
        parts = [p for p in rel.parts if p != "__init__"]
        found[".".join([package, *parts])] = path
    return found


def _imports(path: Path, module: str) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")[: -node.level if path.name != "__init__.py" else len(module.split("."))]
                if path.name == "__init__.py" and node.level > 1:
                    base = module.split(".")[: -(node.level - 1)]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            names.add(prefix)
            names.update(f"{prefix}.{alias.name}" for alias in node.names)
    return {n for n in names if n.split(".")[0] in {"skr", "skr_dev"}}


ALL_MODULES = {
    **_modules(Path(skr.__file__).parent, "skr"),
    **_modules(Path(skr_dev.__file__).parent, "skr_dev"),
}


def test_every_module_has_a_layer() -> None:
    assert [m for m in ALL_MODULES if _layer_of(m) is None] == []


@pytest.mark.parametrize("module", sorted(ALL_MODULES))
def test_imports_point_down(module: str) -> None:
    own = _layer_of(module)
    assert own is not None
    upward = sorted(
        name
        for name in _imports(ALL_MODULES[module], module)
        if name in ALL_MODULES and (layer := _layer_of(name)) is not None and layer > own
    )
    assert upward == [], f"{module} (layer {LAYERS[own][0]}) imports upward: {upward}"


def test_the_rule_catches_an_upward_import(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("from skr.shell.config import Settings\nimport skr_dev.emulators.maa\n")
    imports = _imports(bad, "skr.core.bad")
    assert {"skr.shell.config", "skr_dev.emulators.maa"} <= imports
    assert _layer_of("skr.shell.config") > _layer_of("skr.core.bad")  # type: ignore[operator]


def test_production_never_loads_the_stand_ins() -> None:
    production = sorted(
        info.name for info in pkgutil.walk_packages(skr.__path__, "skr.") if not info.name.endswith("__main__")
    )
    assert "skr.shell.cli" in production and "skr.core.release" in production
    code = (
        "import importlib, json, sys\n"
        f"for m in {production!r}: importlib.import_module(m)\n"
        "print(json.dumps(sorted(m for m in sys.modules if m == 'skr_dev' or m.startswith('skr_dev.'))))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(result.stdout) == []


def test_production_distribution_has_no_stand_ins() -> None:
    """The distribution that ships (``pip install .``, the image) packages ``skr`` and nothing of the stand-ins."""
    root = Path(skr.__file__).parent.parent
    production = tomllib.loads((root / "pyproject.toml").read_text())
    assert production["tool"]["setuptools"]["packages"]["find"]["include"] == ["skr", "skr.*"]
    assert "entry-points" not in production["project"]  # the pytest plugin belongs to skr-dev
    assert not any("cbor2" in dep for dep in production["project"]["dependencies"])
    stand_ins = tomllib.loads((root / "devstack" / "pyproject.toml").read_text())
    assert stand_ins["project"]["entry-points"]["pytest11"] == {"skr_emulators": "skr_dev.pytest_plugin"}
    # The image's default target copies the production venv only (tests/container checks the stages).
