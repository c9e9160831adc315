"""Atomic output: a file appears complete under its name, or not at all.

Data is written to a hidden temp file in the destination folder, flushed to disk, then
renamed over the destination with ``os.replace`` (atomic on POSIX and Windows within one
folder). Two reasons:

- an interrupted or failed run (Ctrl-C, full disk) never leaves a half-written weight file
  that looks valid, and never destroys the previous file of that name;
- the input may be memory-mapped while the output is written; replacing the file gives the
  output a new inode, whereas writing into the mapped file would corrupt the input.
"""

from __future__ import annotations

import os
import secrets
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import BinaryIO

from quantcli.errors import OutputError


@dataclass
class _Pending:
    """One output being written: its destination, its temp file and that file's handle."""

    path: str
    temp: str = ""  # "" until the temp file exists
    prefix: str = ""  # the temp file's path up to mkstemp's random part
    file: BinaryIO | None = None
    done: bool = False
    published: bool = False


class AtomicGroup:
    """Several output files (a sharded checkpoint) that are renamed into place together.

    Files are renamed in the order they were opened, only after all of them are complete;
    open the index last so that it never names shards that are not in place yet. On any
    exception, including KeyboardInterrupt, every temp file is removed and no destination
    is touched::

        with AtomicGroup() as group:
            for shard in shards:
                with group.open(out / shard) as f:
                    write_shard(f)
            with group.open(out / "model.safetensors.index.json") as f:
                f.write(index)

    If renaming itself fails part-way (rare: the folder vanished), the files renamed so far
    stay and the rest are removed; the error says so.
    """

    def __init__(self) -> None:
        self._pending: list[_Pending] = []
        self._closed = False

    def __enter__(self) -> AtomicGroup:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *rest: object) -> None:
        if exc_type is not None:
            self.abort()
            return
        self.commit()

    @contextmanager
    def open(self, path: str | os.PathLike) -> Iterator[BinaryIO]:
        """Yield a binary file to write ``path``'s content to; it is flushed to disk at the
        end of the ``with`` block and renamed into place when the group commits.

        OutputError if the folder is missing or not writable; an OSError while writing
        (ENOSPC, EIO, ...) becomes an OutputError naming ``path``, after cleanup.
        """
        if self._closed:
            raise ValueError("the AtomicGroup has already been committed or aborted")
        try:
            pending = self._create(os.fspath(path))
        except BaseException:
            self.abort()
            raise
        try:
            yield pending.file
            _flush_to_disk(pending.file)
            pending.file.close()
            pending.done = True
        except OSError as exc:
            self.abort()
            raise OutputError(
                f"write failed in {pending.path}: {exc.strerror or exc}; free disk space or "
                "choose another output folder"
            ) from exc
        except BaseException:
            self.abort()
            raise

    def _create(self, path: str) -> _Pending:
        if any(p.path == path for p in self._pending):
            raise ValueError(f"{path} is opened twice in one AtomicGroup")
        folder, name = os.path.split(os.path.abspath(path))
        if os.path.isdir(path):
            raise OutputError(
                f"output is a folder in {path}: a file cannot replace a folder; choose a file name"
            )
        if not os.path.isdir(folder):
            raise OutputError(
                f"missing folder in {path}: {folder} is not an existing folder; create it first"
            )
        # The temp file's name is recorded before the file is made: a signal turned into an
        # exception (Ctrl-C, SIGTERM) can strike between any two steps, and ``abort`` must
        # then still know what to remove.
        pending = _Pending(path)
        self._pending.append(pending)
        fd = self._make_temp(pending, folder, name)
        try:
            if hasattr(os, "fchmod"):  # POSIX only; Windows has no mode bits to fix
                os.fchmod(fd, _new_file_mode(path))
        except BaseException:
            os.close(fd)
            raise
        pending.file = os.fdopen(fd, "wb")
        return pending

    @staticmethod
    def _make_temp(pending: _Pending, folder: str, name: str) -> int:
        """Create ``pending``'s hidden temp file in ``folder``; returns its descriptor."""
        # mkstemp's name is known only once it returns; a prefix of our own, unique to this
        # output, lets ``abort`` find the file even if a signal strikes before that
        pending.prefix = os.path.join(folder, f".{name}.{secrets.token_hex(4)}.")
        try:
            fd, pending.temp = tempfile.mkstemp(
                dir=folder, prefix=os.path.basename(pending.prefix), suffix=".tmp"
            )
        except PermissionError as exc:
            raise OutputError(
                f"cannot write in {pending.path}: the folder {folder} is not writable; choose "
                "another output folder or fix its permissions"
            ) from exc
        except OSError as exc:
            raise OutputError(
                f"cannot write in {pending.path}: {exc.strerror or exc}; choose another output "
                "folder"
            ) from exc
        return fd

    def commit(self) -> None:
        """Rename every completed temp file into place, in opening order."""
        if self._closed:
            return
        unfinished = [p.path for p in self._pending if not p.done]
        if unfinished:
            self.abort()
            raise ValueError(f"outputs still open at commit: {', '.join(unfinished)}")
        self._closed = True
        try:
            for pending in self._pending:
                os.replace(pending.temp, pending.path)
                pending.published = True
        except BaseException as exc:
            # a signal may strike here too: no temp file is left whatever the reason
            for rest in self._pending:
                if not rest.published:
                    _remove(rest.temp)
            if not isinstance(exc, OSError):
                raise
            failed = next(p.path for p in self._pending if not p.published)
            done = [p.path for p in self._pending if p.published]
            raise OutputError(
                f"rename failed in {failed}: {exc.strerror or exc} (already in place: "
                f"{', '.join(done) or 'nothing'}); check the output folder and run again"
            ) from exc
        for folder in {os.path.dirname(os.path.abspath(p.path)) for p in self._pending}:
            _fsync_folder(folder)

    def abort(self) -> None:
        """Close and remove every temp file; destinations are left untouched."""
        self._closed = True
        for pending in self._pending:
            if pending.file is not None:
                try:
                    pending.file.close()
                except OSError:
                    pass  # a failed flush of data that is being thrown away anyway
            if pending.temp:
                _remove(pending.temp)
            elif pending.prefix:  # interrupted inside mkstemp: find the file by its prefix
                _remove_prefixed(pending.prefix)


@contextmanager
def atomic_write(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """Yield a binary file whose content replaces ``path`` only if the block succeeds.

    On any exception (KeyboardInterrupt too) the temp file is removed, ``path`` is left as
    it was, and the exception propagates; an OSError from writing becomes OutputError.
    """
    with AtomicGroup() as group, group.open(path) as file:
        yield file


def _flush_to_disk(file: BinaryIO) -> None:
    file.flush()
    os.fsync(file.fileno())


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass  # already gone, or cannot be removed: nothing better to do during cleanup


def _remove_prefixed(prefix: str) -> None:
    """Remove the temp file whose path starts with ``prefix``, unique to one output."""
    folder, start = os.path.split(prefix)
    try:
        names = os.listdir(folder)
    except OSError:
        return
    for name in names:
        if name.startswith(start) and name.endswith(".tmp"):
            _remove(os.path.join(folder, name))


def _fsync_folder(folder: str) -> None:
    """Make the renames durable. Best effort: not every OS or file system supports it."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _new_file_mode(path: str) -> int:
    """The permission bits the output should get.

    mkstemp creates files readable by the owner only; a replaced file keeps its old mode,
    and a new file gets the usual 0o666 minus the umask, as ``open(path, "w")`` would.
    """
    try:
        return os.stat(path).st_mode & 0o7777
    except OSError:
        return 0o666 & ~_umask()


def _umask() -> int:
    # Linux exposes the umask without changing it; elsewhere set and restore it.
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask
