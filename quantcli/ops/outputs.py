"""Where outputs go, the checks that keep a user's files safe, and writing them whole.

Every output is all or nothing: a temp file in the destination folder renamed into place
when complete (a sharded output: every shard, then the index; a new output folder is built
hidden and renamed into place whole); stdout gets its bytes only once the whole output has
been made. Without ``force`` nothing is ever replaced, not even a file that another program
(another quant run with the same ``-o``) created while this one was writing: the last rename
cannot replace, and the run that loses the race fails as if the file had been there first.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import BinaryIO

from quantcli.errors import OutputConflictError, OutputError, UsageError
from quantcli.io.atomic import AtomicGroup, atomic_write

STDIO = "-"
# a stdout output is held in memory up to this size, in a temp file beyond it
_SPOOL_MEMORY = 64 << 20


def is_stdio(path) -> bool:
    return str(path) == STDIO


def strip_suffixes(path: Path) -> str:
    """``model.safetensors`` -> ``model``; ``model.safetensors.index.json`` -> ``model``."""
    name = path.name
    for suffix in (".safetensors.index.json", ".safetensors", ".npy", ".npz"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


# extensions of weight files and the like: as the last suffix of -o they name a file, never a
# folder (the suffixes a command writes come from its own table)
FILE_SUFFIXES = (
    ".safetensors",
    ".gguf",
    ".npz",
    ".npy",
    ".bin",
    ".pt",
    ".pth",
    ".ckpt",
    ".h5",
    ".onnx",
    ".json",
    ".pkl",
    ".msgpack",
)


def output_path(
    output: str | None,
    default: str,
    suffixes: dict[str, str],
    folder: bool,
    where: str,
    inputs: Sequence[Path] = (),
) -> str:
    """Where ``-o output`` writes, from its name; ``default`` when None.

    A folder output (``folder``: a sharded checkpoint, a model folder) is that folder, and a
    name with a file extension (``out.safetensors``) is refused. A file output takes the
    extension of one of ``suffixes`` (``{".safetensors": "quant's format", ...}``); a name
    ending in ``/`` means a folder to put it in, under the default's file name (the folder
    is made if missing); any other name is refused with the choices. ``where``: the
    command, for messages (``quant compress``); ``inputs``: the files never written over
    (that error comes first: it is the precise one).
    """
    if output is None or is_stdio(output):
        return output or default
    _refuse_input(Path(output), inputs)
    trailing = output.endswith(("/", os.sep))
    name = Path(output)
    suffix = name.suffix.lower()
    if folder:
        if not trailing and suffix in FILE_SUFFIXES:
            raise UsageError(
                f"a file name for a folder output in -o {output} ({where}): the input is a "
                f"sharded checkpoint or a model folder, whose output is a folder; name the "
                f"folder without {suffix}, e.g. -o {output[: -len(suffix)]}/"
            )
        return str(name)
    if trailing:
        return str(name / Path(default).name)
    if suffix not in suffixes:
        choices = [f"{ext} ({what})" for ext, what in suffixes.items()]
        listed = ", ".join(choices[:-1]) + " or " + choices[-1] if len(choices) > 1 else choices[0]
        given = f"extension {suffix}" if suffix else "no extension"
        stem = name.name[: -len(name.suffix)] if name.suffix else name.name
        raise UsageError(
            f"{given} in -o {output} ({where}): the output's extension chooses what is "
            f"written: {listed}, or a folder to write into (a name ending in /); rename it, "
            f"e.g. -o {name.with_name(stem + next(iter(suffixes)))}"
        )
    return output


def check_output(output: Path, inputs: list[Path], force: bool) -> None:
    """Refuse an output that is one of the inputs, that exists without ``force``, or whose
    folder is missing or is not a folder."""
    _refuse_input(output, inputs)
    if output.exists() and not force:
        raise _exists(output)
    _check_folder(output, output.parent)


def _refuse_input(output: Path, inputs: Sequence[Path]) -> None:
    for source in inputs:
        if _same_file(output, source):
            raise OutputConflictError(
                f"output is the input in {output}: quant never writes over its input; "
                "choose another -o path"
            )


def _exists(output: Path, meanwhile: bool = False) -> OutputConflictError:
    when = " (it appeared while quant was writing)" if meanwhile else ""
    return OutputConflictError(
        f"output exists in {output}{when}: quant does not overwrite files by default; "
        "pass --force to replace it, or choose another -o path"
    )


def _check_folder(output: Path, parent: Path) -> None:
    if not parent.is_dir():
        raise OutputError(
            f"missing output folder in {output}: {parent} does not exist; create it first"
        )
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(
            f"unwritable output folder in {output}: no permission to write in {parent}; "
            "choose a folder you can write to"
        )


def input_paths(input: str, source) -> list[Path]:
    """The files an output must never replace: the input (the file read, when a folder was
    given), and a sharded input's index and shards."""
    if is_stdio(input):
        return []
    # a folder input names the file found in it by its label (a file source's path)
    paths = [Path(input), Path(source.label)]
    index = getattr(source, "index_path", None)
    if index is not None:
        paths.append(Path(index))
        paths.extend(Path(index).parent / file for file, _ in source.groups())
    return paths


def _same_file(a: Path, b: Path) -> bool:
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
    except OSError:
        pass
    return a.resolve() == b.resolve()


# A shard writer: writes one shard's content into the file object and returns the
# (stored name, bytes) of every tensor it wrote.
ShardWriter = Callable[[BinaryIO], list[tuple[str, int]]]


def write_file(
    output: str, inputs: list[Path], force: bool, write: ShardWriter, make_folder: bool = False
) -> list[str]:
    """Write one output: to stdout for ``-``, else atomically to the path. Returns the files.

    make_folder: a missing folder of ``output`` is made with the file, whole or not at all
    (``-o newdir/``); without it a missing folder is an error (a typo in the path)."""
    if is_stdio(output):
        if sys.stdout.isatty():
            raise UsageError(
                "binary output to a terminal in -o -: a weight file would garble the screen; "
                "redirect it (> file) or pipe it (| quant decompress -)"
            )
        # all or nothing on stdout too: a failure half way (a NaN in the last tensor) must
        # not leave half a file in the pipe, so the output is spooled and copied when whole
        with tempfile.SpooledTemporaryFile(max_size=_SPOOL_MEMORY) as spool:
            write(spool)
            spool.seek(0)
            try:
                shutil.copyfileobj(spool, sys.stdout.buffer, 1 << 20)
                sys.stdout.buffer.flush()
            except BrokenPipeError as exc:
                raise OutputError(
                    "broken pipe in <stdout>: the program reading quant's output closed it "
                    "before the whole file was sent, so it has a truncated file; check the "
                    "command after the |"
                ) from exc
        return []
    path = Path(output)
    if make_folder and not path.parent.exists():
        _check_folder(path.parent, path.parent.parent)
        try:
            with AtomicGroup(replace=force, new_folder=path.parent) as group:
                with group.open(path) as f:
                    write(f)
        except OutputConflictError as exc:
            raise _exists(Path(getattr(exc, "path", output)), meanwhile=True) from exc
        return [output]
    check_output(path, inputs, force)
    try:
        with atomic_write(path, replace=force) as f:
            write(f)
    except OutputConflictError as exc:
        raise _exists(Path(getattr(exc, "path", output)), meanwhile=True) from exc
    return [output]


def write_sharded(
    folder: Path,
    index_name: str,
    inputs: list[Path],
    force: bool,
    shards: list[tuple[str, ShardWriter]],
    index_metadata: dict[str, str],
) -> list[str]:
    """Write a sharded checkpoint into ``folder``: every shard, then the index, all renamed
    into place only when complete. A new folder is built hidden beside its place and renamed
    into place whole; into an existing folder the files are renamed one by one."""
    if folder.exists() and not folder.is_dir():
        raise OutputError(
            f"output is not a folder in {folder}: a sharded checkpoint is written into a "
            "folder; choose a folder path with -o"
        )
    new = not folder.is_dir()
    if new:
        _check_folder(folder, folder.parent)
    else:
        for file in [f for f, _ in shards] + [index_name]:
            check_output(folder / file, inputs, force)
    weight_map: dict[str, str] = {}
    total = 0
    try:
        with AtomicGroup(replace=force, new_folder=folder if new else None) as group:
            for file, write in shards:
                with group.open(folder / file) as f:
                    written = write(f)
                weight_map.update(dict.fromkeys((name for name, _ in written), file))
                total += sum(nbytes for _, nbytes in written)
            index = {"metadata": {**index_metadata, "total_size": total}, "weight_map": weight_map}
            with group.open(folder / index_name) as f:
                f.write(json.dumps(index, indent=2).encode() + b"\n")
    except OutputConflictError as exc:
        raise _exists(folder if new else Path(getattr(exc, "path", folder)), True) from exc
    return [str(folder / file) for file, _ in shards] + [str(folder / index_name)]
