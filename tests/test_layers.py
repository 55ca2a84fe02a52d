"""The house of the backup code, read from the source's own imports and assignments (issue 11).

- the server side of backup (``pycertsrv.backup``) never imports the backup set (``pycertsrv.backupset``);
- the backup set reaches a session only through ``pycertsrv.client``: of ``pycertsrv.backup`` it uses the local
  restore API (``pycertsrv.backup.restore``) alone;
- the client never imports the server side of backup;
- the spec's constants are assigned in ``pycertsrv.spec`` only, the ``W`` aliases in ``pycertsrv.certbcli`` only;
- no import cycle touches backup, backupset, client, cli, certbcli or spec; no sqlite3 in those packages.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pycertsrv

SRC = Path(pycertsrv.__file__).parent
OURS = ("pycertsrv.backup", "pycertsrv.backupset", "pycertsrv.client", "pycertsrv.cli", "pycertsrv.certbcli",
        "pycertsrv.spec")


def _modules() -> dict[str, Path]:
    out = {}
    for p in SRC.rglob("*.py"):
        parts = list(p.relative_to(SRC.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = p
    return out


MODS = _modules()


def _imports(name: str) -> set[str]:
    """Every module ``name`` imports (inside functions and TYPE_CHECKING blocks too), as absolute names."""
    path = MODS[name]
    pkg = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            found.add(mod)
            found.update(f"{mod}.{a.name}" for a in node.names if f"{mod}.{a.name}" in MODS)
    return found


def _in(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def test_server_backup_never_imports_the_backup_set() -> None:
    bad = [(m, t) for m in MODS if _in(m, "pycertsrv.backup") for t in _imports(m) if _in(t, "pycertsrv.backupset")]
    assert bad == []


def test_backup_set_uses_only_the_local_restore_api_of_the_server_side() -> None:
    bad = [(m, t) for m in MODS if _in(m, "pycertsrv.backupset") for t in _imports(m)
           if _in(t, "pycertsrv.backup") and t != "pycertsrv.backup.restore"]
    assert bad == []


def test_client_never_imports_the_server_side_of_backup() -> None:
    bad = [(m, t) for m in MODS if _in(m, "pycertsrv.client") for t in _imports(m) if _in(t, "pycertsrv.backup")]
    assert bad == []


def _assigned(pattern: str) -> dict[str, list[str]]:
    """Module -> names matching ``pattern`` it assigns at its top level."""
    out: dict[str, list[str]] = {}
    for m, p in MODS.items():
        for node in ast.parse(p.read_text()).body:
            targets = node.targets if isinstance(node, ast.Assign) else (
                [node.target] if isinstance(node, ast.AnnAssign) else [])
            names = [t.id for t in targets if isinstance(t, ast.Name) and re.fullmatch(pattern, t.id)]
            if names:
                out.setdefault(m, []).extend(names)
    return out


def test_spec_constants_are_defined_once_in_spec() -> None:
    where = _assigned(r"(CSBFT|CSBACKUP|CSRESTORE|CSCONTROL)_[A-Z_]+|JET_bit\w+|wsz[A-Z]+")
    assert set(where) == {"pycertsrv.spec"}, where


def test_w_aliases_are_defined_once_in_certbcli() -> None:
    where = _assigned(r"CertSrv\w+W|CSEDB_RSTMAPW")
    assert set(where) == {"pycertsrv.certbcli"}, where
    import pycertsrv.certbcli as cb

    for alias in where["pycertsrv.certbcli"]:
        assert getattr(cb, alias) is getattr(cb, alias[:-1]), alias


def test_no_import_cycle_touches_the_backup_client_or_cli_code() -> None:
    graph = {m: {t for t in _imports(m) if t in MODS and t != m and not t.startswith(m + ".")} for m in MODS}
    cycles: list[list[str]] = []
    state: dict[str, int] = {}
    stack: list[str] = []

    def dfs(u: str) -> None:
        state[u] = 1
        stack.append(u)
        for v in sorted(graph[u]):
            if state.get(v) == 1:
                cycles.append([*stack[stack.index(v):], v])
            elif v not in state:
                dfs(v)
        stack.pop()
        state[u] = 2

    for m in sorted(graph):
        if m not in state:
            dfs(m)
    ours = [c for c in cycles if any(_in(n, pkg) for n in c for pkg in OURS)]
    assert ours == []


def test_no_sqlite3_in_the_backup_client_or_cli_code() -> None:
    bad = [m for m in MODS if any(_in(m, pkg) for pkg in OURS) and "sqlite3" in _imports(m)]
    assert bad == []


def test_no_module_imports_its_own_package_back() -> None:
    """A package's ``__init__`` imports its modules (the cli registers its verbs so); a module importing the package
    back is the registration cycle the house-check's package rule cannot see."""
    packages = [m for m, p in MODS.items() if p.name == "__init__.py" and any(_in(m, pkg) for pkg in OURS)]
    bad = [(m, pkg) for pkg in packages for m in MODS if m.startswith(pkg + ".") and pkg in _imports(m)]
    assert bad == []
