"""Atomic output: a file appears complete under its name, or not at all.

Data is written to a hidden temp file in the destination folder, flushed to disk, then
renamed to the destination (atomic on POSIX and Windows within one folder). Three reasons:

- an interrupted or failed run (Ctrl-C, SIGTERM, full disk) never leaves a half-written
  weight file that looks valid, and never destroys the previous file of that name;
- the input may be memory-mapped while the output is written; replacing the file gives the
  output a new inode, whereas writing into the mapped file would corrupt the input;
- unless replacing was asked for, a file that appeared under the name while the output was
  being written (another run with the same output) is not replaced: the rename is one that
  cannot replace (``rename_no_replace``), and the loser gets OutputConflictError.

A new folder of outputs (a sharded checkpoint) is built as a hidden temp folder beside its
destination and renamed into place whole, so it too appears complete or not at all.
"""

from __future__ import annotations

import errno
import functools
import os
import secrets
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import BinaryIO

from quantcli.errors import OutputConflictError, OutputError


@dataclass
class _Pending:
    """One output being written: its destination, its temp file and that file's handle."""

    path: str
    temp: str = ""  # "" until the temp file exists
    prefix: str = ""  # the temp file's path up to mkstemp's random part
    file: BinaryIO | None = None
    identity: tuple[int, int] = (0, 0)  # the temp file's (st_dev, st_ino)
    done: bool = False
    published: bool = False  # renamed to its destination (into the temp folder for a new one)


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

    ``replace``: a destination that exists at commit is replaced (the default, as
    ``os.replace`` does); with False the commit raises OutputConflictError instead, after
    removing the files it had already put in place, so that a run racing another for the
    same names never mixes its files with the other's.

    ``new_folder``: every file goes into this folder, which does not exist yet. The files are
    written into a hidden temp folder beside it, which is renamed to ``new_folder`` at commit:
    the folder appears whole or not at all. If a folder of that name appeared meanwhile, its
    files are replaced one by one in opening order with ``replace``, and the commit raises
    OutputConflictError without. The error's ``path`` is the destination that appeared.

    If renaming itself fails part-way (rare: the folder vanished), the files renamed so far
    stay and the rest are removed; the error says so.
    """

    def __init__(self, replace: bool = True, new_folder: str | os.PathLike | None = None) -> None:
        self._pending: list[_Pending] = []
        self._closed = False
        self._replace = replace
        self._folder = os.path.abspath(new_folder) if new_folder is not None else ""
        self._staging = ""  # the hidden temp folder of a new folder, once made
        self._staging_prefix = ""  # its path up to mkdtemp's random part

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
        if self._folder:
            if folder != self._folder:
                raise ValueError(f"{path} is not in the group's new folder {self._folder}")
            folder = self._staging_folder()
        elif os.path.isdir(path):
            raise OutputError(
                f"output is a folder in {path}: a file cannot replace a folder; choose a file name"
            )
        elif not os.path.isdir(folder):
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
            info = os.fstat(fd)
            pending.identity = (info.st_dev, info.st_ino)
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
        with _folder_errors(pending.path, folder):
            fd, pending.temp = tempfile.mkstemp(
                dir=folder, prefix=os.path.basename(pending.prefix), suffix=".tmp"
            )
        return fd

    def _staging_folder(self) -> str:
        """The hidden temp folder a new folder's files are written into; made on first use."""
        if self._staging:
            return self._staging
        parent, name = os.path.split(self._folder)
        if not os.path.isdir(parent):
            raise OutputError(
                f"missing folder in {self._folder}: {parent} is not an existing folder; create "
                "it first"
            )
        self._staging_prefix = os.path.join(parent, f".{name}.{secrets.token_hex(4)}.")
        with _folder_errors(self._folder, parent):
            self._staging = tempfile.mkdtemp(
                dir=parent, prefix=os.path.basename(self._staging_prefix), suffix=".tmp"
            )
        # mkdtemp makes it private (0o700); the output folder gets what mkdir would give it
        os.chmod(self._staging, 0o777 & ~_umask())
        return self._staging

    def commit(self) -> None:
        """Rename every completed temp file into place, in opening order (then, for a new
        folder, the folder). OutputConflictError if a destination appeared meanwhile and
        the group does not replace."""
        if self._closed:
            return
        unfinished = [p.path for p in self._pending if not p.done]
        if unfinished:
            self.abort()
            raise ValueError(f"outputs still open at commit: {', '.join(unfinished)}")
        self._closed = True
        try:
            for pending in self._pending:
                if self._folder:  # inside the group's own temp folder: nothing to protect
                    os.replace(pending.temp, self._staged(pending))
                elif self._replace:
                    os.replace(pending.temp, pending.path)
                else:
                    rename_no_replace(pending.temp, pending.path)
                pending.published = True
            if self._folder:
                self._publish_folder()
        except BaseException as exc:
            # a signal may strike here too: no temp file is left whatever the reason
            self._remove_temps()
            failed = next((p.path for p in self._pending if not p.published), self._folder)
            if isinstance(exc, FileExistsError) and not self._replace:
                self._unpublish()
                conflict = OutputConflictError(
                    f"output exists in {failed}: it appeared while this output was being "
                    "written, and the group does not replace; nothing of this group was kept"
                )
                conflict.path = failed
                raise conflict from exc
            if not isinstance(exc, OSError):
                raise
            done = [p.path for p in self._pending if p.published and not self._folder]
            raise OutputError(
                f"rename failed in {failed}: {exc.strerror or exc} (already in place: "
                f"{', '.join(done) or 'nothing'}); check the output folder and run again"
            ) from exc
        folders = {os.path.dirname(os.path.abspath(p.path)) for p in self._pending}
        if self._folder:  # the new folder's own entry is in its parent
            folders.add(os.path.dirname(self._folder))
        for folder in folders:
            _fsync_folder(folder)

    def _staged(self, pending: _Pending) -> str:
        return os.path.join(self._staging, os.path.basename(pending.path))

    def _publish_folder(self) -> None:
        _fsync_folder(self._staging)
        try:
            rename_no_replace(self._staging, self._folder)
        except FileExistsError:
            if not self._replace:
                raise
            # the folder appeared meanwhile and replacing was asked for: its files are
            # replaced one by one, index last like the rest
            for pending in self._pending:
                os.replace(self._staged(pending), pending.path)
            os.rmdir(self._staging)
        self._staging = ""  # it is the output folder now

    def _unpublish(self) -> None:
        """Remove the files this group put in place, where they are still its own."""
        for pending in self._pending:
            if pending.published and not self._folder:
                try:
                    info = os.stat(pending.path)
                except OSError:
                    continue
                if (info.st_dev, info.st_ino) == pending.identity:
                    _remove(pending.path)

    def _remove_temps(self) -> None:
        for pending in self._pending:
            if pending.file is not None:
                try:
                    pending.file.close()
                except OSError:
                    pass  # a failed flush of data that is being thrown away anyway
            if pending.temp and not pending.published:
                _remove(pending.temp)
            elif pending.prefix and not pending.temp:
                # interrupted inside mkstemp: find the file by its prefix
                _remove_prefixed(pending.prefix)
        if self._staging:
            shutil.rmtree(self._staging, ignore_errors=True)
            self._staging = ""
        elif self._staging_prefix:  # interrupted inside mkdtemp
            _remove_prefixed(self._staging_prefix)

    def abort(self) -> None:
        """Close and remove every temp file (and temp folder); destinations are left untouched."""
        self._closed = True
        self._remove_temps()


@contextmanager
def atomic_write(path: str | os.PathLike, replace: bool = True) -> Iterator[BinaryIO]:
    """Yield a binary file whose content replaces ``path`` only if the block succeeds.

    On any exception (KeyboardInterrupt too) the temp file is removed, ``path`` is left as
    it was, and the exception propagates; an OSError from writing becomes OutputError.
    With ``replace=False`` a file that appeared at ``path`` meanwhile is kept and
    OutputConflictError raised.
    """
    with AtomicGroup(replace=replace) as group, group.open(path) as file:
        yield file


def rename_no_replace(src: str, dst: str) -> None:
    """Rename the file or folder ``src`` to ``dst``; FileExistsError if ``dst`` exists, be it
    a file, a symlink, an empty folder or a full one. Both must be in the same folder tree.

    Linux's renameat2(RENAME_NOREPLACE) does it in one step. Where it is missing (another OS,
    an old kernel or C library, a file system without it) a file is hard-linked to ``dst``
    (a link never replaces) and its old name removed; a folder is renamed onto an empty folder
    made for it (mkdir never replaces, and renaming a folder onto an empty one is allowed).
    On a file system without hard links the check and the rename are two steps.
    """
    rename = _renameat2()
    if rename is not None:
        err = rename(os.fsencode(src), os.fsencode(dst))
        if err == 0:
            return
        if err not in _NO_RENAMEAT2:
            raise OSError(err, os.strerror(err), src, None, dst)
    if os.name == "nt":
        os.rename(src, dst)  # Windows' rename never replaces
        return
    if os.path.isdir(src):
        os.mkdir(dst)
        try:
            os.rename(src, dst)
        except OSError as exc:
            _rmdir(dst)
            if exc.errno in (errno.ENOTEMPTY, errno.EEXIST):  # filled by another meanwhile
                raise _exists(src, dst) from exc
            raise
        return
    try:
        os.link(src, dst)
    except FileExistsError:
        raise
    except OSError as exc:
        if exc.errno not in _NO_HARD_LINKS:
            raise
        if os.path.lexists(dst):
            raise _exists(src, dst) from exc
        os.rename(src, dst)
        return
    _remove(src)


def _exists(src: str, dst: str) -> FileExistsError:
    return FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), src, None, dst)


# renameat2 failing with these means "not here", not "failed": use the portable way
_NO_RENAMEAT2 = {errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP}
# os.link failing with these means the file system has no hard links (FAT, some shares)
_NO_HARD_LINKS = {errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS, errno.EMLINK}
_AT_FDCWD = -100
_RENAME_NOREPLACE = 1


@functools.cache
def _renameat2() -> Callable[[bytes, bytes], int] | None:
    """``rename(src, dst) -> errno`` (0 on success) with RENAME_NOREPLACE, or None where the
    C library has no renameat2 (not Linux, glibc before 2.28, ...)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        function = ctypes.CDLL(None, use_errno=True).renameat2
    except (ImportError, OSError, AttributeError):
        return None
    function.argtypes = (
        ctypes.c_int,
        ctypes.c_char_p,
        ctypes.c_int,
        ctypes.c_char_p,
        ctypes.c_uint,
    )
    function.restype = ctypes.c_int

    def rename(src: bytes, dst: bytes) -> int:
        if function(_AT_FDCWD, src, _AT_FDCWD, dst, _RENAME_NOREPLACE) == 0:
            return 0
        return ctypes.get_errno()

    return rename


@contextmanager
def _folder_errors(path: str, folder: str) -> Iterator[None]:
    """Creating a temp file or folder in ``folder`` for ``path``: OSError -> OutputError."""
    try:
        yield
    except PermissionError as exc:
        raise OutputError(
            f"cannot write in {path}: the folder {folder} is not writable; choose another "
            "output folder or fix its permissions"
        ) from exc
    except OSError as exc:
        raise OutputError(
            f"cannot write in {path}: {exc.strerror or exc}; choose another output folder"
        ) from exc


def _flush_to_disk(file: BinaryIO) -> None:
    file.flush()
    os.fsync(file.fileno())


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass  # already gone, or cannot be removed: nothing better to do during cleanup


def _rmdir(path: str) -> None:
    try:
        os.rmdir(path)
    except OSError:
        pass  # not empty (someone else's files), or gone


def _remove_prefixed(prefix: str) -> None:
    """Remove the temp file or folder whose path starts with ``prefix``, unique to one
    output."""
    folder, start = os.path.split(prefix)
    try:
        names = os.listdir(folder)
    except OSError:
        return
    for name in names:
        if name.startswith(start) and name.endswith(".tmp"):
            path = os.path.join(folder, name)
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path, ignore_errors=True)
            else:
                _remove(path)


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
