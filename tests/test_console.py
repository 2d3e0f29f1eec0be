"""What the commands print when their output is a log (a file or a pipe): no
progress bar, no library warning, one line per stage; and what ``--help`` loads."""

from __future__ import annotations

import json
import logging
import subprocess
import sys

import yaml

from mergekit_led.console import without_torch_dtype_warning
from mergekit_led.testing import build_family

ROWS = [
    {"prompt": "one two", "response": "three four"},
    {"prompt": "four", "response": "one"},
]
# What a tqdm bar leaves in a log, whoever draws it (ours, mergekit's, datasets',
# transformers').
BAR_MARKS = ("it/s]", "s/it]", "sample/s]", "%|")


def test_locate_help_loads_no_heavy_library(child_env):
    code = (
        "import json, sys\n"
        "from mergekit_led.cli import main\n"
        "try:\n"
        "    main(['locate', '--help'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "heavy = ('transformers', 'datasets', 'matplotlib', 'mergekit.merge')\n"
        "print(json.dumps([m for m in heavy if m in sys.modules]))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=child_env()
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert "--score [snip|wanda|magnitude|random]" in proc.stdout  # the table's kinds
    assert json.loads(lines[-1]) == []


def test_a_merge_and_a_locate_in_a_log_print_lines_not_bars(tmp_path, console_script, child_env):
    family = build_family(str(tmp_path / "family"), finetunes=2)
    data = tmp_path / "task.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in ROWS))
    config = {
        "merge_method": "led_merging",
        "base_model": family.base,
        "dtype": "float32",
        "models": [{"model": family.base}]
        + [
            {"model": model, "parameters": {"density": 0.5, "importance_data": str(data)}}
            for model in family.finetunes
        ],
    }
    config_file = tmp_path / "led.yml"
    config_file.write_text(yaml.safe_dump(config))

    def run(*args):
        proc = subprocess.run(
            [console_script("mergekit-led"), *map(str, args)],
            capture_output=True,
            text=True,
            env=child_env(),
        )
        assert proc.returncode == 0, proc.stderr
        return proc

    merge = run("merge", config_file, tmp_path / "out", "--cache-dir", tmp_path / "cache")
    locate = run("locate", "--model", family.base, "--data", data, "--out", tmp_path / "store")
    for proc in (merge, locate):
        log = proc.stdout + proc.stderr
        assert not [mark for mark in BAR_MARKS if mark in log], log
        assert "Generating train split" not in log, log
        assert "torch_dtype" not in log and "Traceback" not in log, log
    lines = merge.stderr.splitlines()
    assert lines[0] == f"importance stores: 3 (cache {tmp_path / 'cache'})"
    assert lines.count("locate snip: 2 samples") == 3
    assert lines[-1] == f"merging {config_file} into {tmp_path / 'out'}"
    assert locate.stderr.splitlines() == ["locate snip: 2 samples"]


def test_only_the_torch_dtype_warning_is_held_back():
    logger = logging.getLogger("transformers.configuration_utils")
    seen = []
    handler = logging.Handler()
    handler.emit = lambda record: seen.append(record.getMessage())
    logger.addHandler(handler)
    try:
        with without_torch_dtype_warning():
            logger.warning("`torch_dtype` is deprecated! Use `dtype` instead!")
            logger.warning("another warning")
        logger.warning("`torch_dtype` is deprecated! Use `dtype` instead!")
    finally:
        logger.removeHandler(handler)
    assert seen == ["another warning", "`torch_dtype` is deprecated! Use `dtype` instead!"]
