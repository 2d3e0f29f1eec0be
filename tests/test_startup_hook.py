"""The startup hook (.pth + _mergekit_led_startup): led_merging is registered whenever
mergekit's registry is imported, and interpreter start stays cheap and unbreakable."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import sysconfig
import textwrap


def run_python(code, env, *args, timeout=180):
    return subprocess.run(
        [sys.executable, *args, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )


def startup_module_dir() -> str:
    spec = importlib.util.find_spec("_mergekit_led_startup")
    assert spec is not None and spec.origin, "_mergekit_led_startup is not importable"
    return os.path.dirname(spec.origin)


def test_pth_file_is_installed():
    purelib = sysconfig.get_paths()["purelib"]
    pth = os.path.join(purelib, "mergekit_led_startup.pth")
    assert os.path.isfile(pth), pth
    content = open(pth, encoding="utf-8").read()
    assert "_mergekit_led_startup" in content


def test_interpreter_start_imports_neither_torch_nor_mergekit(child_env):
    proc = run_python(
        """
        import sys
        print(sorted(m for m in sys.modules
                     if m.split('.')[0] in ('torch', 'mergekit', 'mergekit_led',
                                            'transformers', 'safetensors', 'numpy')))
        print('_mergekit_led_startup' in sys.modules)
        """,
        child_env(),
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert lines[0] == "[]", f"imported at interpreter start: {lines[0]}"
    assert lines[1] == "True", "the .pth hook did not run at interpreter start"
    assert proc.stderr == ""


def test_registry_lookup_without_importing_mergekit_led(child_env):
    proc = run_python(
        """
        import sys
        import mergekit.merge_methods
        m = mergekit.merge_methods.get("led_merging")
        assert m.spec.name == "led_merging", m.spec
        assert m.spec.pretty_name == "LED-Merging"
        assert m.spec.reference_url == "https://arxiv.org/abs/2502.16770"
        names = [x.spec.name for x in mergekit.merge_methods.registered_methods()]
        assert names.count("led_merging") == 1, names
        # and importing the package afterwards does not register it twice
        import mergekit_led
        mergekit_led.register()
        names = [x.spec.name for x in mergekit.merge_methods.registered_methods()]
        assert names.count("led_merging") == 1, names
        print("OK")
        """,
        child_env(),
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "OK"
    assert "could not register" not in proc.stderr


def test_registry_module_imported_directly(child_env):
    proc = run_python(
        """
        from mergekit.merge_methods.registry import get
        print(get("led_merging").spec.name)
        """,
        child_env(),
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "led_merging"


def test_startup_module_imports_only_the_standard_library(child_env):
    """Importing the hook (what the .pth does in every interpreter) loads no other
    module than itself and the standard library it names: no torch, no mergekit, no
    mergekit_led. Counting modules does not depend on machine load, as timing would."""
    folder = startup_module_dir()
    code = f"""
        import sys
        sys.path.insert(0, {folder!r})
        assert "_mergekit_led_startup" not in sys.modules
        before = set(sys.modules)
        import _mergekit_led_startup
        print(sorted(set(sys.modules) - before))
    """
    proc = run_python(code, child_env(), "-S")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "['_mergekit_led_startup']"


def test_interpreter_start_imports_no_heavy_module(child_env):
    """With the .pth active, a bare interpreter has imported the hook and neither
    torch, mergekit nor mergekit_led."""
    code = """
        import sys
        assert "_mergekit_led_startup" in sys.modules, "the .pth did not run"
        print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'mergekit', 'mergekit_led')))
    """
    proc = run_python(code, child_env())
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def _fake_mergekit(root, registry_body, init_body="", merge_methods_init=""):
    pkg = root / "mergekit"
    (pkg / "merge_methods").mkdir(parents=True)
    (pkg / "__init__.py").write_text(init_body)
    (pkg / "merge_methods" / "__init__.py").write_text(merge_methods_init)
    (pkg / "merge_methods" / "registry.py").write_text(registry_body)
    return str(root)


def test_broken_mergekit_does_not_break_start_and_keeps_its_own_error(tmp_path, child_env):
    path = _fake_mergekit(
        tmp_path,
        registry_body="raise RuntimeError('fake mergekit: registry is broken')\n",
        init_body="import mergekit.merge_methods.registry\n",
    )
    env = child_env(PYTHONPATH=path)
    proc = run_python("print('started')", env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "started"
    assert proc.stderr == ""

    proc = run_python("import mergekit", env)
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert last == "RuntimeError: fake mergekit: registry is broken", proc.stderr
    assert "mergekit_led" not in last and "led_merging" not in proc.stderr


def test_fake_mergekit_without_register_api_only_warns(tmp_path, child_env):
    """A mergekit whose registry lacks what the plugin needs: mergekit still imports,
    the plugin at most warns."""
    path = _fake_mergekit(tmp_path, registry_body="VALUE = 42\n")
    env = child_env(PYTHONPATH=path)
    proc = run_python(
        """
        import mergekit.merge_methods.registry as r
        print(r.VALUE)
        """,
        env,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "42"
    assert "Traceback" not in proc.stderr


def test_mergekit_missing_does_not_break_start(tmp_path, child_env):
    """An empty `mergekit` shadowing the real one (as if it were missing its registry)."""
    (tmp_path / "mergekit").mkdir()
    (tmp_path / "mergekit" / "__init__.py").write_text("")
    env = child_env(PYTHONPATH=str(tmp_path))
    proc = run_python(
        """
        import mergekit
        try:
            import mergekit.merge_methods.registry
        except ModuleNotFoundError as e:
            print("missing:", e.name)
        """,
        env,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "missing: mergekit.merge_methods"
    assert "Traceback" not in proc.stderr
