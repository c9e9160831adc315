"""Sharded safetensors checkpoints: ``model.safetensors.index.json`` plus its shard files.

The index (the Hugging Face layout) maps every tensor to the shard file that holds it:

    {"metadata": {"total_size": 28966928384},
     "weight_map": {"lm_head.weight": "model-00002-of-00002.safetensors", ...}}

Shard names come from the file, so they are treated as hostile: only relative paths that
stay inside the index's folder are opened. Symlinked shards are allowed, because the
Hugging Face cache stores snapshots as symlinks into a blobs folder.
"""

from __future__ import annotations

import json
import os
import posixpath
from pathlib import PurePosixPath, PureWindowsPath

import numpy as np

from quantcli.errors import FormatError, InputError, UnsafeInputError
from quantcli.io.safetensors_file import SafetensorsReader
from quantcli.io.source import TensorInfo, TensorSource

INDEX_SUFFIX = ".safetensors.index.json"
# An index lists names, not data; anything this large is not an index.
_MAX_INDEX_SIZE = 100_000_000
_CORRUPT = "the index is corrupt, download or export it again"


def safe_shard_name(name: object, label: str) -> str:
    """Return ``name`` normalised (``./a`` -> ``a``) if it is a relative path inside the folder.

    Raises UnsafeInputError for absolute paths, drive letters, ``..`` components and
    backslashes, FormatError for anything that is not a non-empty string.
    """
    if not isinstance(name, str) or not name:
        raise FormatError(
            f"bad index in {label}: shard name {name!r} is not a file name; {_CORRUPT}"
        )
    windows = PureWindowsPath(name)
    if (
        "\\" in name
        or "\0" in name
        or PurePosixPath(name).is_absolute()
        or windows.drive
        or windows.root
        or ".." in PurePosixPath(name).parts
    ):
        raise UnsafeInputError(
            f"unsafe shard path in {label}: {name!r} points outside the index's folder; "
            "shard names must be plain file names next to the index, fix the index"
        )
    return posixpath.normpath(name)


def _stringify(value: object) -> str:
    return value if isinstance(value, str) else json.dumps(value)


class ShardedReader(TensorSource):
    """A sharded checkpoint, opened through its ``*.safetensors.index.json``.

    Every shard's header is validated on construction, and the index must agree with the
    shards exactly: each tensor in the index is in the shard it names, and each tensor in a
    shard is in the index. Tensors are listed shard by shard (shards sorted by name), in
    header order within a shard.
    """

    def __init__(self, index_path: str | os.PathLike, label: str | None = None) -> None:
        self.label = label if label is not None else os.fspath(index_path)
        #: The index file, as given; shard files are in its folder.
        self.index_path = os.fspath(index_path)
        self._shards: dict[str, SafetensorsReader] = {}
        index = self._load_index(index_path)
        self.metadata = self._parse_metadata(index.get("metadata"))
        weight_map = self._parse_weight_map(index.get("weight_map"))
        folder = os.path.dirname(os.path.abspath(index_path))
        try:
            self._open_shards(folder, weight_map)
        except BaseException:
            self.close()
            raise

    def _load_index(self, index_path: str | os.PathLike) -> dict:
        try:
            with open(index_path, "rb") as f:
                raw = f.read(_MAX_INDEX_SIZE + 1)
        except OSError as exc:
            raise InputError(
                f"unreadable index in {self.label}: {exc.strerror or exc}; check the path and its "
                "permissions"
            ) from exc
        if len(raw) > _MAX_INDEX_SIZE:
            raise FormatError(
                f"bad index in {self.label}: the file is larger than {_MAX_INDEX_SIZE} bytes; "
                f"{_CORRUPT}"
            )
        try:
            index = json.loads(raw.decode("utf-8"))
        except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError too
            raise FormatError(
                f"bad index in {self.label}: not valid UTF-8 JSON ({exc}); {_CORRUPT}"
            ) from exc
        if not isinstance(index, dict):
            raise FormatError(f"bad index in {self.label}: not a JSON object; {_CORRUPT}")
        return index

    def _parse_metadata(self, metadata: object) -> dict[str, str]:
        if metadata is None:
            return {}
        if not isinstance(metadata, dict):
            raise FormatError(f'bad index in {self.label}: "metadata" is not an object; {_CORRUPT}')
        # safetensors metadata is str -> str; the index often holds numbers (total_size).
        return {str(k): _stringify(v) for k, v in metadata.items()}

    def _parse_weight_map(self, weight_map: object) -> dict[str, str]:
        if not isinstance(weight_map, dict) or not weight_map:
            raise FormatError(
                f'bad index in {self.label}: "weight_map" must be a non-empty object mapping '
                f"tensor names to shard files; {_CORRUPT}"
            )
        return {name: safe_shard_name(shard, self.label) for name, shard in weight_map.items()}

    def _open_shards(self, folder: str, weight_map: dict[str, str]) -> None:
        self._by_tensor: dict[str, SafetensorsReader] = {}
        self._groups: list[tuple[str, list[TensorInfo]]] = []
        for shard in sorted(set(weight_map.values())):
            path = os.path.join(folder, shard)
            if not os.path.exists(path):
                raise InputError(
                    f"missing shard in {self.label}: {shard!r} is listed in the index but "
                    f"there is no such file in {folder}; download the missing shard"
                )
            reader = SafetensorsReader(path, label=os.path.join(os.path.dirname(self.label), shard))
            self._shards[shard] = reader
            for info in reader.infos():
                mapped = weight_map.get(info.name)
                if mapped != shard:
                    where = "is not in the index" if mapped is None else f"is mapped to {mapped!r}"
                    raise FormatError(
                        f"index mismatch in {self.label}: tensor {info.name!r} is in shard "
                        f"{shard!r} but {where}; {_CORRUPT}"
                    )
                self._by_tensor[info.name] = reader
            self._groups.append((shard, reader.infos()))
        for name, shard in weight_map.items():
            if name not in self._by_tensor:
                raise FormatError(
                    f"index mismatch in {self.label}: tensor {name!r} is mapped to shard "
                    f"{shard!r} but that shard does not hold it; {_CORRUPT}"
                )

    def infos(self) -> list[TensorInfo]:
        return [info for _, infos in self._groups for info in infos]

    def groups(self) -> list[tuple[str, list[TensorInfo]]]:
        return [(shard, list(infos)) for shard, infos in self._groups]

    def read(self, name: str) -> np.ndarray:
        reader = self._by_tensor.get(name)
        if reader is None:
            raise self._unknown_tensor(name)
        return reader.read(name)

    def close(self) -> None:
        for reader in self._shards.values():
            reader.close()
