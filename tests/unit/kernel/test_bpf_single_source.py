"""The kill logic exists once (issue 19): bpf/kill_logic.h, built by both backends. Held here, on the
source text, so that divergence cannot creep back in:

- the two entry-point files (oomkill.bpf.c for libbpf, oomkill.bcc.c for BCC) include their access
  layer and the shared logic and nothing else, and every program in them is one call into it;
- the two access layers offer the same names, so the logic means the same on both;
- every program the agent loads or attaches by name exists under that name, the bcc program's under
  the CO-RE program's name for the same hook.
Pure: reads the files, compiles nothing (tests/e2e/test_bcc_program.py and the QEMU matrix do).
"""
from __future__ import annotations

import re
from pathlib import Path

from otel_oom.kernel import bcc, probe

BPF = Path(__file__).resolve().parents[3] / "bpf"
INCLUDE = re.compile(r'^#include\s+"([^"]+)"', re.M)
FUNCTION = re.compile(r"^(?:SEC\(\"[^\"]+\"\)\n)?int (?:BPF_\w+\()?(\w+)[^{]*\n\{\n(.*?)^\}", re.M | re.S)
SEC = re.compile(r'^SEC\("[^"]+"\)\nint (?:BPF_\w+\()?(\w+)', re.M)
# what a program may do besides calling into the logic: read the classic tracepoint's record
ALLOWED = (re.compile(r"return oo_\w+\([\w&, ()=\[\]]*\)"), re.compile(r"struct mark_victim_fields f = \{\}"),
           re.compile(r"read_mark_victim_fields\(args, &f\)"))


def _text(name: str) -> str:
    return (BPF / name).read_text()


def _code(text: str) -> str:
    return re.sub(r"/\*.*?\*/|//[^\n]*", "", text, flags=re.S)


def _programs(name: str) -> dict[str, str]:
    return {m.group(1): m.group(2) for m in FUNCTION.finditer(_code(_text(name)))}


def _defined(name: str) -> set[str]:
    code = _code(_text(name))
    macros = set(re.findall(r"^#define (\w+)", code, re.M))
    functions = set(re.findall(r"^static __always_inline [\w *]+?\b(\w+)\(", code, re.M))
    return {n for n in macros | functions if not n.startswith("OTEL_OOM_")}  # include guards


def test_each_entry_file_is_its_access_layer_plus_the_shared_logic():
    assert INCLUDE.findall(_text("oomkill.bpf.c")) == ["access_core.h", "kill_logic.h"]
    assert INCLUDE.findall(_text("oomkill.bcc.c")) == ["access_bcc.h", "kill_logic.h"]
    for layer in ("access_core.h", "access_bcc.h"):
        assert "kill_types.h" in INCLUDE.findall(_text(layer)), layer  # the maps: declared once
    assert INCLUDE.findall(_text("kill_logic.h")) == []


def test_every_program_is_one_call_into_the_shared_logic():
    for name in ("oomkill.bpf.c", "oomkill.bcc.c"):
        programs = _programs(name)
        assert len(programs) >= 11, (name, sorted(programs))
        for program, body in programs.items():
            statements = [s.strip() for s in body.split(";") if s.strip()]
            assert statements and all(any(p.fullmatch(s) for p in ALLOWED) for s in statements), (name, program, body)


def test_both_access_layers_offer_the_same_names():
    core, bcc_layer = _defined("access_core.h"), _defined("access_bcc.h")
    assert core - {"OO_MAP_DEF"} == bcc_layer, (core ^ bcc_layer)
    logic = _code(_text("kill_logic.h"))
    for name in sorted(bcc_layer):
        assert re.search(rf"\b{name}\b", logic) or name.startswith("MAP_") or name == "read_mark_victim_fields", name


def test_the_programs_the_agent_names_exist_under_those_names():
    core = set(SEC.findall(_code(_text("oomkill.bpf.c"))))
    wanted = {p for names in (*probe.PROGRAMS.values(), *probe.TASK_PROGRAMS.values()) for p in names}
    assert wanted | set(probe.SIGNAL_PROGRAMS) | set(probe.RECLAIM_PROGRAMS) <= core
    on_bcc = set(_programs("oomkill.bcc.c"))
    attached = {"mark_victim_tp", "oom_kill_kprobe", "oom_kill_kretprobe", "mark_oom_victim_kprobe",
                bcc.SIGNAL_PROGRAM[1], bcc.EXIT_MMAP_PROGRAM[1], *(p for _, p in bcc.RECLAIM_PROGRAMS)}
    assert attached == on_bcc <= core  # the same hook, the same name on both backends


def test_the_bcc_text_is_one_file_with_the_shared_logic_inlined_once():
    text = bcc.program_text()
    assert not INCLUDE.search(text)  # BCC rewrites map operations only in its main file
    for header in ("access_bcc.h", "kill_logic.h", "kill_types.h", "oomkill.h"):
        assert text.count(f'#line 1 "{header}"') == 1, header
    assert "oo_mark_victim_tracepoint(args, &f)" in text


def test_the_bcc_backend_compiles_the_checked_sources():
    """bcc.py compiles the package's copies (what a wheel ships), the checks above read bpf/: the
    copies must be today's (`make -C bpf`), else the backends could run two versions of the logic."""
    variables = dict(re.findall(r"^(SHARED|BCC_SOURCES) := (.+)$", _text("Makefile"), re.M))
    sources = variables["BCC_SOURCES"].replace("$(SHARED)", variables["SHARED"]).split()
    assert {"oomkill.bcc.c", "access_bcc.h", "kill_logic.h", "kill_types.h", "oomkill.h"} <= set(sources)
    for name in sources:
        copy = bcc.SOURCE.parent / name
        assert copy.is_file() and copy.read_text() == _text(name), f"{copy} is stale: make -C bpf"
