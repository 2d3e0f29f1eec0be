"""What `mergekit-led locate` imports: its help never loads the model libraries, and a
locate run never loads mergekit's merge machinery (issue 28: start-up is a fixed cost
every locate pays before its first sample)."""

from __future__ import annotations

import json
import subprocess
import sys

from mergekit_led import load_importance
from mergekit_led.testing import build_family

# Modules `mergekit-led locate --help` must not import: the model libraries and every
# part of mergekit beyond the method registry the plugin registers itself in.
HELP_FORBIDDEN = (
    "transformers",
    "datasets",
    "peft",
    "mergekit.common",
    "mergekit.architecture",
    "mergekit.merge",
    "mergekit.plan",
    "mergekit.graph",
)
# Modules a locate run must not import: mergekit's merge driver, planner and executor.
RUN_FORBIDDEN = ("mergekit.merge", "mergekit.plan", "mergekit.graph", "mergekit.scripts")

_REPORT = "import json, sys; print(json.dumps(sorted(sys.modules)))"


def _imported(code: str, child_env) -> set:
    """The modules a child interpreter has imported after running ``code``."""
    done = subprocess.run(
        [sys.executable, "-c", code + "\n" + _REPORT],
        capture_output=True,
        text=True,
        env=child_env(),
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return set(json.loads(done.stdout.strip().splitlines()[-1]))


def _offenders(modules: set, forbidden) -> list:
    return sorted(m for m in modules if any(m == f or m.startswith(f + ".") for f in forbidden))


def test_locate_help_imports_no_model_library(child_env):
    code = (
        "import sys\n"
        "from mergekit_led.cli import main\n"
        "sys.argv = ['mergekit-led', 'locate', '--help']\n"
        "try:\n"
        "    main()\n"
        "except SystemExit as done:\n"
        "    assert done.code in (0, None), done.code\n"
    )
    modules = _imported(code, child_env)
    assert "mergekit_led.cli.locate" in modules  # the help really ran
    assert _offenders(modules, HELP_FORBIDDEN) == []


def test_a_locate_run_imports_no_merge_machinery(tmp_path, child_env):
    family = build_family(str(tmp_path / "family"), finetunes=0)
    data = tmp_path / "pairs.jsonl"
    rows = [{"prompt": "the cat sat on", "response": "the mat"}] * 2
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    out = tmp_path / "store"
    code = (
        "import mergekit_led\n"
        f"mergekit_led.locate({family.base!r}, {str(data)!r}, {str(out)!r}, progress=False, "
        "device='cpu', allow_bad_tokenization=True)\n"
    )
    modules = _imported(code, child_env)
    assert len(load_importance(str(out))) > 0  # the store was written, and reads back
    assert "mergekit.architecture" in modules  # the weight names came from mergekit
    assert _offenders(modules, RUN_FORBIDDEN) == []
