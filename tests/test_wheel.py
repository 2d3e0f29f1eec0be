"""What ``pip install mergekit-led`` installs is the product: the wheel, built offline from
this tree, holds the ``mergekit_led`` package and the startup hook, and none of the studies
(``studies/``, run from a clone: ``make demo``, ``make real-study``)."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    # The build backend, installed by the dev extra; --no-build-isolation keeps it offline.
    pytest.importorskip("hatchling", reason="the dev extra installs hatchling")
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation"]
        + ["--wheel-dir", str(out), str(ROOT)],
        check=True,
        capture_output=True,
    )
    (built,) = out.glob("mergekit_led-*.whl")
    return built


@pytest.fixture(scope="module")
def wheel_files(wheel) -> list:
    with zipfile.ZipFile(wheel) as archive:
        return archive.namelist()


@pytest.mark.slow
def test_the_wheel_holds_the_product_and_no_study(wheel_files):
    top = {name.split("/")[0] for name in wheel_files}
    info = {name for name in top if name.endswith(".dist-info")}
    assert top - info == {"mergekit_led", "_mergekit_led_startup.py", "mergekit_led_startup.pth"}
    for module in (
        "mergekit_led/merge.py",
        "mergekit_led/method/led_merging.py",
        "mergekit_led/cli/__init__.py",
        "mergekit_led/plotting.py",
    ):
        assert module in wheel_files
    studies = [
        name
        for name in wheel_files
        if "/demo/" in name or "/realmodel/" in name or name.startswith("studies")
    ]
    assert studies == []
    assert "mergekit_led/cli/demo.py" not in wheel_files


@pytest.mark.slow
def test_the_wheel_installs_one_command(wheel, wheel_files):
    """``mergekit-led`` and nothing else: the studies are not a console script either."""
    import configparser

    (name,) = [name for name in wheel_files if name.endswith(".dist-info/entry_points.txt")]
    with zipfile.ZipFile(wheel) as archive:
        parser = configparser.ConfigParser()
        parser.read_string(archive.read(name).decode())
    assert dict(parser["console_scripts"]) == {"mergekit-led": "mergekit_led.cli:main"}
