"""The documentation states what the code does: option and parameter lists are checked
against their one source, so they fail here instead of drifting."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
LOCATE_DOC = ROOT / "docs" / "locate.md"
# Issue 7: a README of about 8 KB for a newcomer, the rest in docs/; issue 16 added the
# sweep -> merge -> evaluate journey (about 1 KB).
README_LIMIT = 10 * 1024


def _generator():
    spec = importlib.util.spec_from_file_location(
        "gen_locate_options", ROOT / "docs" / "gen_locate_options.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_locate_options_table_is_generated_from_locate_options():
    generator = _generator()
    text = LOCATE_DOC.read_text(encoding="utf-8")
    assert generator.render(text) == text, (
        "docs/locate.md's options table is stale: run python docs/gen_locate_options.py"
    )


def test_a_stale_options_table_is_detected():
    generator = _generator()
    text = LOCATE_DOC.read_text(encoding="utf-8")
    stale = text.replace("| `--seed` |", "| `--random-seed` |")
    assert stale != text
    assert generator.render(stale) == text


def test_every_locate_option_of_the_cli_is_documented():
    from mergekit_led.cli.locate import command

    text = LOCATE_DOC.read_text(encoding="utf-8")
    for parameter in command.params:
        for option in (*parameter.opts, *parameter.secondary_opts):
            assert f"`{option}`" in text, (
                f"{option} of mergekit-led locate is not in docs/locate.md"
            )


def _readme_row(name: str) -> str:
    rows = [
        line
        for line in README.read_text(encoding="utf-8").splitlines()
        if line.startswith(f"| `{name}` |")
    ]
    assert len(rows) == 1, f"README.md needs one parameter table row for `{name}`"
    return rows[0]


def _documented_default(default) -> str:
    if isinstance(default, bool):
        return f"`{str(default).lower()}`"
    if isinstance(default, str):
        return f"`{default}`"
    return str(default)


def test_readme_parameter_table_matches_the_merge_method():
    from mergekit.merge_methods.registry import registered_methods

    import mergekit_led

    mergekit_led.register()
    (method,) = [m for m in registered_methods() if m.spec.name == "led_merging"]
    for parameter in method.spec.parameters:
        if parameter.name.startswith("locate_"):  # one row for locate's options
            row, expected = _readme_row("locate_*"), "locate's"
        elif parameter.name == "importance_data":  # the alternative to the two stores
            row, expected = _readme_row(parameter.name), "–"
        else:
            row = _readme_row(parameter.name)
            has_default = isinstance(parameter.default, (bool, int, float, str))
            expected = _documented_default(parameter.default) if has_default else "required"
        assert expected in row, f"README.md row of `{parameter.name}` should say {expected}"


def test_readme_stays_short():
    size = len(README.read_bytes())
    assert size <= README_LIMIT, f"README.md is {size} bytes; move reference material to docs/"


def test_the_readme_real_model_table_is_generated_from_the_committed_report():
    """README's headline numbers come from docs/real_model_report.json, via
    docs/gen_real_model_results.py, never typed by hand."""
    report = ROOT / "docs" / "real_model_report.json"
    if not report.exists():
        pytest.skip("the real-model study's report is not committed")
    spec = importlib.util.spec_from_file_location(
        "gen_real_model_results", ROOT / "docs" / "gen_real_model_results.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    summary = module.read_summary(report)
    assert module.readme_table(summary) in README.read_text(encoding="utf-8"), (
        "README.md's real-model table is stale: run python docs/gen_real_model_results.py OUT"
    )


def test_architecture_names_every_module_of_the_product():
    """docs/architecture.md's tables name every module a newcomer may look for (the
    subcommand modules of cli/ are described as one rule; the studies are not the
    product)."""
    text = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    package = ROOT / "mergekit_led"
    skipped = {"cli", "demo", "realmodel"}
    missing = [
        str(path.relative_to(package))
        for path in sorted(package.rglob("*.py"))
        if path.name not in ("__init__.py", "__main__.py")
        and path.relative_to(package).parts[0] not in skipped
        and f"`{path.name}`" not in text
    ]
    assert missing == [], f"docs/architecture.md does not name: {', '.join(missing)}"
