"""Two runs, one output: a file or folder that appears while quant is writing is not replaced
without --force.

The process tests race two real quant processes deterministically: the first is frozen
mid-write (tests/processes.py), the second writes the same output to completion, then the
first goes on. The unit tests check the no-replace rename and AtomicGroup with Linux's
renameat2 and with the portable fallbacks (hard link; mkdir then rename for a folder; check
then rename on a file system without hard links).
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from pathlib import Path

import numpy as np
import pytest
from processes import (
    BIG_ROWS,
    finish,
    freeze_mid_write,
    make_big_npy,
    make_checkpoint,
    run,
    start,
    temp_files,
)
from safetensors import safe_open

import quantcli.io.atomic as atomic
from quantcli.errors import OutputConflictError
from quantcli.io.atomic import AtomicGroup, atomic_write, rename_no_replace

posix_only = pytest.mark.skipif(os.name != "posix", reason="SIGSTOP, POSIX renames")


@pytest.fixture(scope="module")
def big_npy(tmp_path_factory) -> Path:
    return make_big_npy(tmp_path_factory.mktemp("input") / "big.npy")


@pytest.fixture(scope="module")
def small_npy(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("input") / "small.npy"
    np.save(path, np.ones((8, 1024), np.float32))
    return path


@pytest.fixture(scope="module")
def big_checkpoint(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / "big", BIG_ROWS // 2)


@pytest.fixture(scope="module")
def small_checkpoint(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / "small", 8, seed=2)


def shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape of a safetensors file, read with the safetensors library."""
    with safe_open(path, "numpy") as f:
        return {name: tuple(f.get_slice(name).get_shape()) for name in f.keys()}


def one_error_line(err: str) -> str:
    assert err.count("\n") == 1 and err.startswith("Error: "), err
    return err.strip()


# ---------------------------------------------------------------------------------------
# two real processes


@posix_only
@pytest.mark.parametrize("force", [False, True])
def test_a_file_created_meanwhile_is_kept_unless_forced(tmp_path, big_npy, small_npy, force):
    out = tmp_path / "out.safetensors"
    first = start(["compress", big_npy, "-o", out, "-q", *(["--force"] if force else [])])
    freeze_mid_write(first, tmp_path, out)
    second = run(["compress", small_npy, "-o", out, "-q"])
    assert second.returncode == 0, second.stderr
    assert shapes(out) == {"small": (8, 1024), "small.scale": (8, 1)}
    stdout, err = finish(first)
    if force:
        assert first.returncode == 0, err
        assert shapes(out) == {"big": (BIG_ROWS, 1024), "big.scale": (BIG_ROWS, 1)}
    else:
        assert first.returncode == 2, err
        line = one_error_line(err)
        assert line.startswith(f"Error: output exists in {out} (it appeared while quant was ")
        assert "pass --force to replace it" in line
        assert shapes(out) == {"small": (8, 1024), "small.scale": (8, 1)}  # untouched
    assert stdout == ""
    assert [p.name for p in tmp_path.iterdir()] == ["out.safetensors"]  # no temp file


@posix_only
@pytest.mark.parametrize("force", [False, True])
def test_a_sharded_folder_created_meanwhile_is_kept_unless_forced(
    tmp_path, big_checkpoint, small_checkpoint, force
):
    out = tmp_path / "out"
    index = out / "model.safetensors.index.json"
    first = start(["compress", big_checkpoint, "-o", out, "-q", *(["--force"] if force else [])])
    freeze_mid_write(first, tmp_path, index)
    assert not out.exists()  # built hidden, beside it
    second = run(["compress", small_checkpoint, "-o", out, "-q"])
    assert second.returncode == 0, second.stderr
    rows_in_place = {"small": 8, "big": BIG_ROWS // 2}["big" if force else "small"]
    stdout, err = finish(first)
    if force:
        assert first.returncode == 0, err
    else:
        assert first.returncode == 2, err
        line = one_error_line(err)
        assert line.startswith(f"Error: output exists in {out} (it appeared while quant was ")
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(p.name for p in big_checkpoint.iterdir())
    for shard in names[:-1]:
        assert {shape[0] for shape in shapes(out / shard).values()} == {rows_in_place}
    assert temp_files(tmp_path) == [] and [p.name for p in tmp_path.iterdir()] == ["out"]


@posix_only
def test_an_empty_folder_created_meanwhile_is_a_conflict(tmp_path, big_checkpoint):
    """Renaming a folder onto an empty one would succeed silently: it must not."""
    out = tmp_path / "out"
    first = start(["compress", big_checkpoint, "-o", out, "-q"])
    freeze_mid_write(first, tmp_path, out / "model.safetensors.index.json")
    out.mkdir()
    stdout, err = finish(first)
    assert first.returncode == 2, err
    assert f"output exists in {out} (it appeared" in one_error_line(err)
    assert list(out.iterdir()) == [] and temp_files(tmp_path) == []


# ---------------------------------------------------------------------------------------
# rename_no_replace and AtomicGroup, with renameat2 and without


@pytest.fixture(params=["renameat2", "link", "no-links"])
def rename_way(request, monkeypatch):
    """Which way rename_no_replace works: Linux's renameat2, the hard-link fallback, or a
    file system without hard links (check, then rename)."""
    if request.param == "renameat2":
        if atomic._renameat2() is None:
            pytest.skip("no renameat2 here")
        return request.param
    monkeypatch.setattr(atomic, "_renameat2", lambda: None)
    if request.param == "no-links":

        def no_links(src, dst, **kwargs):
            raise PermissionError(errno.EPERM, os.strerror(errno.EPERM), src, None, dst)

        monkeypatch.setattr(os, "link", no_links)
    return request.param


def test_rename_no_replace_moves_a_file_to_a_free_name(tmp_path, rename_way):
    (tmp_path / "a").write_bytes(b"new")
    rename_no_replace(str(tmp_path / "a"), str(tmp_path / "b"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]
    assert (tmp_path / "b").read_bytes() == b"new"


@pytest.mark.parametrize("taken_by", ["file", "dangling symlink", "empty folder", "folder"])
@pytest.mark.parametrize("moving", ["file", "folder"])
def test_rename_no_replace_never_replaces(tmp_path, rename_way, taken_by, moving):
    src, dst = tmp_path / "src", tmp_path / "dst"
    if moving == "file":
        src.write_bytes(b"new")
    else:
        src.mkdir()
        (src / "inside").write_bytes(b"new")
    if taken_by == "file":
        dst.write_bytes(b"theirs")
    elif taken_by == "dangling symlink":
        dst.symlink_to(tmp_path / "nowhere")
    else:
        dst.mkdir()
        if taken_by == "folder":
            (dst / "theirs").write_bytes(b"theirs")
    before = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))
    with pytest.raises(FileExistsError):
        rename_no_replace(str(src), str(dst))
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == before


def test_rename_no_replace_moves_a_folder_to_a_free_name(tmp_path, rename_way):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "f").write_bytes(b"x")
    rename_no_replace(str(tmp_path / "src"), str(tmp_path / "dst"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dst"]
    assert (tmp_path / "dst" / "f").read_bytes() == b"x"


def test_atomic_write_without_replace_keeps_a_file_that_appeared(tmp_path, rename_way):
    target = tmp_path / "out.bin"
    with pytest.raises(OutputConflictError) as caught:
        with atomic_write(target, replace=False) as f:
            f.write(b"ours")
            target.write_bytes(b"theirs")
    assert caught.value.path == str(target)
    assert target.read_bytes() == b"theirs"
    assert [p.name for p in tmp_path.iterdir()] == ["out.bin"]
    with atomic_write(tmp_path / "free.bin", replace=False) as f:
        f.write(b"ours")
    assert (tmp_path / "free.bin").read_bytes() == b"ours"


def test_a_group_without_replace_takes_back_what_it_put_in_place(tmp_path, rename_way):
    """A race lost on the second file removes the first: no mix of two runs' files."""
    a, b = tmp_path / "a", tmp_path / "b"
    with pytest.raises(OutputConflictError) as caught:
        with AtomicGroup(replace=False) as group:
            with group.open(a) as f:
                f.write(b"ours")
            with group.open(b) as f:
                f.write(b"ours")
            b.write_bytes(b"theirs")
    assert caught.value.path == str(b)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]
    assert b.read_bytes() == b"theirs"


@pytest.mark.skipif(os.name != "posix", reason="POSIX permission bits")
def test_a_new_folder_appears_whole(tmp_path, rename_way):
    out = tmp_path / "ckpt"
    with AtomicGroup(replace=False, new_folder=out) as group:
        for name in ("shard1", "shard2", "index"):
            with group.open(out / name) as f:
                f.write(name.encode())
            assert not out.exists()  # nothing visible under the name until the end
    assert sorted(p.name for p in out.iterdir()) == ["index", "shard1", "shard2"]
    assert (out / "shard2").read_bytes() == b"shard2"
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]  # the temp folder is gone
    umask = os.umask(0o022)
    os.umask(umask)
    assert stat.S_IMODE(out.stat().st_mode) == 0o777 & ~umask  # as mkdir would make it
    assert stat.S_IMODE((out / "index").stat().st_mode) == 0o666 & ~umask


@pytest.mark.parametrize("replace", [False, True])
def test_a_new_folder_that_appeared_meanwhile(tmp_path, rename_way, replace):
    out = tmp_path / "ckpt"
    group = AtomicGroup(replace=replace, new_folder=out)
    with pytest.raises(OutputConflictError) if not replace else contextlib.nullcontext():
        with group:
            for name in ("shard1", "index"):
                with group.open(out / name) as f:
                    f.write(b"ours")
            out.mkdir()
            (out / "index").write_bytes(b"theirs")
            (out / "extra").write_bytes(b"theirs")
    expected = {"index": b"ours", "shard1": b"ours"} if replace else {"index": b"theirs"}
    expected["extra"] = b"theirs"
    assert {p.name: p.read_bytes() for p in out.iterdir()} == expected
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]


def test_a_failed_new_folder_leaves_nothing(tmp_path, rename_way):
    out = tmp_path / "ckpt"
    with pytest.raises(KeyboardInterrupt):
        with AtomicGroup(new_folder=out) as group:
            with group.open(out / "shard1") as f:
                f.write(b"x")
            with group.open(out / "shard2"):
                raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []
