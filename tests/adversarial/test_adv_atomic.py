"""Killed and concurrent writes (issue 12, weak spots): staging folders of dead
writers are cleaned or reported by the next write to the same target, a live
writer's never; a folder is replaced in one step, and a replacement a kill
interrupted is finished by the next writer.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest

from mergekit_led import atomic

from .support import hidden_leftovers, run_cli


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def fake_area(target, pid, host=None, *, content=None):
    """A staging area beside ``target`` as a writer ``pid`` on ``host`` leaves it."""
    parent, name = os.path.split(str(target))
    folder = os.path.join(parent, f".{name}.partial-0123abcd-{pid}@{host or atomic._host()}")
    os.makedirs(os.path.join(folder, name))
    open(os.path.join(folder, atomic.LOCK_NAME), "w").close()
    if content is not None:
        with open(os.path.join(folder, name, "payload"), "w") as f:
            f.write(content)
    return folder


def run_python(code: str, **kwargs):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        **kwargs,
    )


def test_killed_write_is_cleaned_by_the_next_write(tmp_path):
    """A writer SIGKILLed mid-write leaves its temporary file, named by its process; the
    next write to the same target removes it (older versions left theirs for good)."""
    target = tmp_path / "state.json"
    killed = run_python(f"""
        import os, signal
        from mergekit_led.atomic import write_file

        def write(path):
            with open(path, "w") as f:
                f.write("half")
            os.kill(os.getpid(), signal.SIGKILL)

        write_file({str(target)!r}, write)
    """)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert not target.exists()
    assert len(hidden_leftovers(tmp_path, "state.json")) == 1
    atomic.write_text(str(target), "whole")
    assert target.read_text() == "whole"
    assert hidden_leftovers(tmp_path, "state.json") == []


def test_a_file_is_written_beside_its_target_and_flushed(tmp_path, monkeypatch):
    """One temporary file in the target's folder (no staging folder per file), renamed
    over the target; the file is flushed before the rename, its folder after."""
    target = tmp_path / "record.json"
    target.write_text("old")
    flushed, seen = [], []
    real_fsync = os.fsync

    def fsync(descriptor):
        flushed.append(os.readlink(f"/proc/self/fd/{descriptor}"))
        real_fsync(descriptor)

    if os.path.isdir("/proc/self/fd"):
        monkeypatch.setattr(os, "fsync", fsync)

    def write(path):
        seen.append(path)
        assert os.path.dirname(path) == str(tmp_path)
        assert os.path.basename(path).startswith(".record.json.partial-")
        assert path.endswith(f"-{os.getpid()}@{atomic._host()}.tmp")
        with open(path, "w") as f:
            f.write("new")

    atomic.write_file(str(target), write)
    assert target.read_text() == "new"
    assert hidden_leftovers(tmp_path, "record.json") == []
    if os.path.isdir("/proc/self/fd"):
        assert flushed == [seen[0], str(tmp_path)]


def test_a_failed_file_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "record.json"
    target.write_text("old")

    def write(path):
        with open(path, "w") as f:
            f.write("half")
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError):
        atomic.write_file(str(target), write)
    assert target.read_text() == "old"
    assert hidden_leftovers(tmp_path, "record.json") == []


def test_a_published_folder_is_flushed_whole(tmp_path, monkeypatch):
    """replace_directory flushes every file and folder of the new content, then the
    folder that holds the target (the rename)."""
    source = tmp_path / ".out.partial-x" / "out"
    (source / "sub").mkdir(parents=True)
    (source / "a").write_text("a")
    (source / "sub" / "b").write_text("b")
    flushed = []
    monkeypatch.setattr(atomic, "_fsync_path", flushed.append)
    atomic.replace_directory(str(source), str(tmp_path / "out"))
    expected = {str(source / "a"), str(source / "sub" / "b"), str(source), str(source / "sub")}
    if os.name == "posix":
        assert set(flushed[:-1]) == expected and flushed[-1] == str(tmp_path)
    assert (tmp_path / "out" / "sub" / "b").read_text() == "b"


def test_only_dead_writers_areas_are_removed(tmp_path):
    """Dead writer on this host: removed. Live writer (another process holding its
    lock), a writer on another host, an older version's folder: kept and the last
    two reported."""
    target = tmp_path / "store"
    dead = fake_area(target, dead_pid())
    other_host = fake_area(target, dead_pid(), host="some-other-host")
    legacy = tmp_path / ".store.partial-89abcdef"
    legacy.mkdir()
    live = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(f"""
            import sys
            from mergekit_led.atomic import staging_area
            with staging_area({str(target)!r}) as area:
                print(area.folder, flush=True)
                sys.stdin.readline()
        """),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)),
    )
    try:
        live_folder = live.stdout.readline().strip()
        assert os.path.isdir(live_folder)
        messages = atomic.clean_stale_staging(str(target))
        assert not os.path.exists(dead)
        assert os.path.isdir(live_folder)
        assert os.path.isdir(other_host) and os.path.isdir(legacy)
        assert any(other_host in m and "some-other-host" in m for m in messages), messages
        assert any(str(legacy) in m for m in messages), messages
        assert not any(live_folder in m for m in messages), messages
    finally:
        live.communicate("done\n", timeout=60)
    assert not os.path.exists(live_folder)  # its writer cleaned up after itself


def test_area_whose_lock_is_held_is_kept_even_if_its_pid_looks_dead(tmp_path):
    """A writer in another PID namespace (a container on this host) shows a process
    id this process cannot see; its lock still proves it alive."""
    target = tmp_path / "out"
    folder = fake_area(target, dead_pid())
    lock = atomic._hold_lock(os.path.join(folder, atomic.LOCK_NAME))
    try:
        assert atomic.clean_stale_staging(str(target)) == []
        assert os.path.isdir(folder)
    finally:
        lock.release()
    atomic.clean_stale_staging(str(target))
    assert not os.path.exists(folder)


def test_interrupted_replacement_is_finished_by_the_next_writer(tmp_path):
    """Killed between the two renames of a replacement (filesystems without an
    atomic exchange): no folder at the path, both copies in the staging area. The
    next write finishes the replacement."""
    target = tmp_path / "store"
    folder = fake_area(target, dead_pid(), content="new")
    os.makedirs(os.path.join(folder, "store.old"))
    messages = atomic.clean_stale_staging(str(target))
    assert (target / "payload").read_text() == "new"
    assert not os.path.exists(folder)
    assert any("Finished the replacement" in m for m in messages), messages


def test_replacement_is_one_step(tmp_path, monkeypatch):
    """No moment without a folder at the path: the old and new folders are exchanged
    (main renamed the old one away first)."""
    target, source = tmp_path / "target", tmp_path / ".target.partial-x" / "target"
    target.mkdir()
    (target / "old").write_text("old")
    source.mkdir(parents=True)
    (source / "new").write_text("new")
    probe = tmp_path / "probe-a"
    probe.mkdir()
    (tmp_path / "probe-b").mkdir()
    if not atomic._exchange(str(probe), str(tmp_path / "probe-b")):
        pytest.skip("this filesystem has no atomic exchange (the two-rename path is used)")
    real_rename = os.rename

    def rename_keeping_target(src, dst, *args, **kwargs):
        real_rename(src, dst, *args, **kwargs)
        assert os.path.isdir(target), "the target path was left without a folder"

    monkeypatch.setattr(os, "rename", rename_keeping_target)
    atomic.replace_directory(str(source), str(target))
    assert os.listdir(target) == ["new"]


def test_two_rename_fallback_restores_the_old_folder_when_the_second_fails(tmp_path, monkeypatch):
    target, source = tmp_path / "target", tmp_path / "area" / "target"
    target.mkdir()
    (target / "old").write_text("old")
    source.mkdir(parents=True)
    monkeypatch.setattr(atomic, "_exchange", lambda a, b: False)
    real_rename = os.rename
    calls = []

    def failing_second_rename(src, dst):
        calls.append((src, dst))
        if len(calls) == 2:
            raise OSError(28, "No space left on device", str(dst))
        real_rename(src, dst)

    monkeypatch.setattr(os, "rename", failing_second_rename)
    with pytest.raises(OSError):
        atomic.replace_directory(str(source), str(target))
    assert (target / "old").read_text() == "old"


def test_merge_removes_a_killed_merges_staging_folder(
    tmp_path, llama_family, task_stores, yaml_writer, led_model_entries
):
    """The next merge to the same OUT removes what a killed merge left beside it."""
    config = yaml_writer(
        tmp_path / "c.yml", base=llama_family.base, models=led_model_entries(task_stores, 1)
    )
    stale = fake_area(tmp_path / "out", dead_pid(), content="half a merge")
    result = run_cli("merge", config, tmp_path / "out", "--no-copy-tokenizer")
    assert result.exit_code == 0, result.text
    assert not os.path.exists(stale)
    assert hidden_leftovers(tmp_path, "out") == []
