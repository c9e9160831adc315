"""Hugging Face model folders: config.json, weights (one file or sharded), everything else.

A model folder is a folder holding ``config.json`` next to its safetensors weights, one
``*.safetensors`` file or shards listed in ``*.safetensors.index.json``. quant reads the
weights as any checkpoint, and writes a new folder with:

- every other entry of the input carried over (generation_config.json, tokenizer files,
  chat templates, sentence-transformers modules such as ``1_Pooling/``), except hidden
  entries (``.git``, ``.cache``) and other copies of the float weights (``*.bin``, ``*.pt``,
  ``*.pth``, ``*.h5``, ``*.msgpack``, ``*.ckpt`` and other ``*.safetensors`` files at the
  top level), which are listed as skipped;
- config.json as given by the caller (with its ``quantization_config``);
- the weights, in the same sharding, with their index.

The folder appears complete or not at all: everything is written into a hidden temp folder
beside the destination, flushed, and renamed into place; an existing destination (with
``force``) is moved aside first and removed only once the new folder is in place.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from quantcli.errors import FormatError, InputError, OutputConflictError, OutputError

CONFIG = "config.json"
INDEX_SUFFIX = ".safetensors.index.json"
# float weights in other formats: carrying them would ship an unquantized copy of the model
_OTHER_WEIGHTS = (".bin", ".pt", ".pth", ".h5", ".msgpack", ".ckpt", ".safetensors")
_MAX_CONFIG_SIZE = 50_000_000

# Writes one weight file into the file object; returns (stored name, bytes) of its tensors.
ShardWriter = Callable[[BinaryIO], list[tuple[str, int]]]


@dataclass
class ModelFolder:
    """A model folder as read: its path, parsed config.json, and what a copy carries.

    weights: top-level names of the weight files read (the file, or the index and shards);
    carried: other top-level entries, copied as they are; skipped: entries left out.
    """

    path: Path
    config: dict
    weights: set[str]
    carried: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    @property
    def label(self) -> str:
        return str(self.path / CONFIG)


def has_config(folder: str | os.PathLike) -> bool:
    return os.path.isfile(os.path.join(folder, CONFIG))


def load_config(path: str | os.PathLike) -> dict:
    """config.json's object; FormatError when it is not a JSON object."""
    label = os.fspath(path)
    try:
        with open(path, "rb") as f:
            raw = f.read(_MAX_CONFIG_SIZE + 1)
    except OSError as exc:
        raise InputError(
            f"unreadable config.json in {label}: {exc.strerror or exc}; check its permissions"
        ) from exc
    if len(raw) > _MAX_CONFIG_SIZE:
        raise FormatError(
            f"bad config.json in {label}: larger than {_MAX_CONFIG_SIZE} bytes; restore the "
            "model's config.json"
        )
    try:
        config = json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise FormatError(
            f"bad config.json in {label}: not valid JSON ({reason}); restore the model's "
            "config.json"
        ) from None
    if not isinstance(config, dict):
        raise FormatError(
            f"bad config.json in {label}: not a JSON object; restore the model's config.json"
        )
    return config


def read_model_folder(folder: str | os.PathLike, weight_files: list[str]) -> ModelFolder:
    """The model folder ``folder`` whose weights are ``weight_files`` (top-level names)."""
    path = Path(folder)
    config = load_config(path / CONFIG)
    result = ModelFolder(path, config, set(weight_files))
    try:
        names = sorted(os.listdir(path))
    except OSError as exc:
        raise InputError(
            f"unreadable folder in {path}: {exc.strerror or exc}; check its permissions"
        ) from exc
    for name in names:
        if name in result.weights or name == CONFIG:
            continue
        full = path / name
        if name.startswith(".") or (not full.is_dir() and name.endswith(_OTHER_WEIGHTS)):
            result.skipped.append(name)
        elif name.endswith(INDEX_SUFFIX) or name.endswith(".bin.index.json"):
            result.skipped.append(name)
        else:
            result.carried.append(name)
    return result


def write_model_folder(
    output: Path,
    source: ModelFolder,
    config: dict,
    weights: list[tuple[str, ShardWriter]],
    index: tuple[str, dict] | None,
    force: bool,
) -> list[str]:
    """Write the model folder ``output``: the carried entries of ``source``, ``config`` as
    config.json, each (file name, writer) of ``weights``, and, when ``index`` = (name,
    metadata) is given, the index mapping every stored tensor to its file. Returns the
    paths written (weights, index, config.json)."""
    _check_destination(output, source.path, force)
    try:
        temp = Path(tempfile.mkdtemp(dir=output.parent, prefix=f".{output.name}.", suffix=".tmp"))
    except OSError as exc:
        raise OutputError(
            f"cannot write in {output}: {exc.strerror or exc}; choose another output folder"
        ) from exc
    try:
        for name in source.carried:
            _copy(source.path / name, temp / name)
        weight_map: dict[str, str] = {}
        total = 0
        for file, write in weights:
            with open(temp / file, "wb") as f:
                written = write(f)
                _flush(f)
            weight_map.update(dict.fromkeys((name for name, _ in written), file))
            total += sum(nbytes for _, nbytes in written)
        if index is not None:
            name, metadata = index
            data = {"metadata": {**metadata, "total_size": total}, "weight_map": weight_map}
            _write_bytes(temp / name, json.dumps(data, indent=2).encode() + b"\n")
        _write_bytes(temp / CONFIG, (json.dumps(config, indent=2) + "\n").encode())
        os.chmod(temp, 0o777 & ~_umask())
        _move_into_place(temp, output)
    except OSError as exc:
        shutil.rmtree(temp, ignore_errors=True)
        raise OutputError(
            f"write failed in {output}: {exc.strerror or exc}; free disk space or choose "
            "another output folder"
        ) from exc
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise
    files = [str(output / file) for file, _ in weights]
    if index is not None:
        files.append(str(output / index[0]))
    return files + [str(output / CONFIG)]


def _check_destination(output: Path, input_folder: Path, force: bool) -> None:
    resolved, inside = output.resolve(), input_folder.resolve()
    if resolved == inside or inside in resolved.parents:
        raise OutputConflictError(
            f"output inside the input in {output}: a model folder is written beside the "
            f"model, never into {input_folder}; choose an -o path outside it"
        )
    if output.exists() or output.is_symlink():
        if not output.is_dir() or output.is_symlink():
            raise OutputError(
                f"output is not a folder in {output}: a model folder replaces only a folder; "
                "choose another -o path"
            )
        if not force:
            raise OutputConflictError(
                f"output exists in {output}: quant does not overwrite folders by default; "
                "pass --force to replace it, or choose another -o path"
            )
    parent = output.parent
    if not parent.is_dir():
        raise OutputError(
            f"missing output folder in {output}: {parent} does not exist; create it first"
        )
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(
            f"unwritable output folder in {output}: no permission to write in {parent}; "
            "choose a folder you can write to"
        )


def _copy(src: Path, dst: Path) -> None:
    """Copy a carried entry; symlinks (a Hugging Face cache snapshot) are followed."""
    if src.is_dir():
        shutil.copytree(src, dst, symlinks=False)
    else:
        shutil.copyfile(src, dst)


def _write_bytes(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        _flush(f)


def _flush(f: BinaryIO) -> None:
    f.flush()
    os.fsync(f.fileno())


def _move_into_place(temp: Path, output: Path) -> None:
    """Rename ``temp`` to ``output``; an existing ``output`` is moved aside first and
    removed once the new folder is in place (put back if the rename fails)."""
    if not output.exists():
        os.rename(temp, output)
        return
    old = Path(tempfile.mkdtemp(dir=output.parent, prefix=f".{output.name}.", suffix=".old"))
    os.rmdir(old)
    os.rename(output, old)
    try:
        os.rename(temp, output)
    except OSError:
        os.rename(old, output)
        raise
    shutil.rmtree(old, ignore_errors=True)


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask
