"""The tree's own rules, checked: ruff and mypy clean, no import cycle, modules of a readable size,
and nothing of bench/ or tests/ inside the shipped package or its BPF object."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from conftest import REPO, require

PACKAGE = REPO / "otel_oom"
MAX_LINES = 400
# The modules allowed past MAX_LINES, each with why; the list stays short, and a module that shrinks
# back under the limit leaves it.
LONG_MODULES = {
    "otel_oom/delivery/spool.py": "one job (append, hand out, acknowledge, bound, repair one on-disk queue) "
                                  "and its crash-safety argument, which reads best whole",
}


def _tool(module: str, *args: str) -> subprocess.CompletedProcess:
    probe = subprocess.run([sys.executable, "-m", module, "--version"], capture_output=True, text=True)
    require(probe.returncode == 0, f"{module} is not installed (pip install '.[test]')")
    return subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, capture_output=True, text=True)


def test_ruff_is_clean():
    r = _tool("ruff", "check", "--no-cache", "otel_oom", "testing", "bench", "tests")
    assert r.returncode == 0, r.stdout + r.stderr


def test_mypy_is_clean():
    r = _tool("mypy", "--no-incremental")
    assert r.returncode == 0, r.stdout + r.stderr


def _module_name(path: Path) -> str:
    rel = path.relative_to(REPO).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    """Every otel_oom module `path` imports, at any depth: lazy imports and those under TYPE_CHECKING
    count too (a module that names another's types depends on it, whether Python imports it or not)."""
    tree = ast.parse(path.read_text())
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("otel_oom"))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if not target.startswith("otel_oom"):
                continue
            for alias in node.names:  # `from . import x` may name a module
                candidate = f"{target}.{alias.name}"
                found.add(candidate if _exists(candidate) else target)
    return {m for m in found if m != name}


def _exists(module: str) -> bool:
    path = REPO.joinpath(*module.split("."))
    return path.with_suffix(".py").exists() or (path / "__init__.py").exists()


def import_graph() -> dict[str, set[str]]:
    return {_module_name(p): _imports(p) for p in PACKAGE.rglob("*.py")}


def test_the_import_graph_has_no_cycle():
    graph = import_graph()
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                cycle = stack[stack.index(dep):] + [dep]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if dep not in state:
                visit(dep)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)


def test_only_the_otlp_package_imports_opentelemetry():
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        # in otlp/, the modules the worker and a console-only agent import must not load the SDK either
        if path.parent.name == "otlp" and path.name not in ("env.py", "spooled.py"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
            offenders += [f"{path.relative_to(REPO)}: {n}" for n in names if n.startswith("opentelemetry")]
    assert offenders == []


def test_modules_stay_readable_and_the_long_list_stays_short():
    sizes = {str(p.relative_to(REPO)): p.read_text().count("\n") for p in PACKAGE.rglob("*.py")}
    assert [f"{m}: {n} lines" for m, n in sorted(sizes.items()) if n > MAX_LINES and m not in LONG_MODULES] == []
    # an allowed module that no longer needs it leaves the list
    assert [m for m in LONG_MODULES if sizes.get(m, 0) <= MAX_LINES] == []


def test_every_test_file_is_collected():
    # make test runs tests/qemu in a pytest of its own: an import error there must fail here too,
    # where every test file of every room is imported
    r = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", "tests"],
                       cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]


def test_every_test_file_has_its_own_name():
    # pytest imports test files by basename (the test folders are not packages): two files of one
    # name in two rooms stop the whole run at collection
    seen: dict[str, list[str]] = {}
    for path in (REPO / "tests").rglob("test_*.py"):
        seen.setdefault(path.name, []).append(str(path.relative_to(REPO)))
    assert [paths for paths in seen.values() if len(paths) > 1] == []


def test_the_package_holds_no_bench_or_test_code():
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        text = path.read_text()
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                offenders += [f"{path.relative_to(REPO)} imports {n}" for n in names
                              if n.split(".")[0] in ("testing", "bench", "tests", "pytest", "conftest")]
        if "BENCH" in text or "bench_pin" in text:
            offenders.append(f"{path.relative_to(REPO)} mentions a benchmark hook")
    assert offenders == []


def test_the_shipped_bpf_object_has_no_bench_program():
    from otel_oom.kernel.probe import DEFAULT_OBJECT

    obj = DEFAULT_OBJECT
    require(obj.exists(), "BPF object not built: make -C bpf")
    out = subprocess.run(["llvm-objdump", "--section-headers", str(obj)], capture_output=True, text=True)
    require(out.returncode == 0, "llvm-objdump (llvm) is needed")
    sections = out.stdout
    assert "tp_btf/mark_victim" in sections  # the check reads real section names
    assert "raw_tp" not in sections and b"synthetic_events" not in obj.read_bytes()


def test_the_readme_performance_table_is_generated_from_bench_report_json():
    import json

    from bench.__main__ import README_BEGIN, README_END, readme_table

    report = json.loads((REPO / "bench" / "report.json").read_text())
    readme = (REPO / "README.md").read_text()
    assert README_BEGIN in readme and README_END in readme, "README.md lost its generated performance block"
    block = README_BEGIN + readme.split(README_BEGIN, 1)[1].split(README_END, 1)[0] + README_END
    # what `python3 -m bench --readme` writes from the committed report, to the character: a figure
    # edited by hand, or a report rerun without regenerating the README, fails here
    assert block == readme_table(report), "README.md's performance table is stale: run `python3 -m bench --readme`"
    summary = report["summary"]
    for key in ("startup_ms", "startup_ms_bpftrace", "idle_rss_mib", "idle_rss_mib_http", "bridge_events_per_s",
                "sdk_events_per_s", "bridge_ratio"):
        assert summary[key] is not None, f"bench/report.json has no {key}"
    assert summary["latency_ms"]["p50"] is not None and summary["storm"]["caused"] and summary["storm"]["delivered"]
