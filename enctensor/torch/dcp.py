"""A ``torch.distributed.checkpoint`` (DCP) storage backend: :class:`EncWriter` and
:class:`EncReader` store a distributed checkpoint as encrypted, authenticated enctensor files::

    import torch.distributed.checkpoint as dcp
    from enctensor.torch.dcp import EncReader, EncWriter

    dcp.save(state_dict, storage_writer=EncWriter("ckpt", key=key))
    dcp.load(state_dict, storage_reader=EncReader("ckpt", key=key))

A checkpoint directory holds one file per rank that has something to write
(``__<rank>_0.enct``: its tensors, and its non-tensor items as uint8 tensors) and
``.metadata.enct``, written last by the coordinator: DCP's ``Metadata`` (``torch.save``
format, read back with torch's weights-only unpickler) as an encrypted uint8 tensor.

The files are one sharded set (spec/FORMAT.md, "Sharded sets and rollback"): each carries the
MAC'd ``enctensor.shard`` entry with the checkpoint id (fresh for every save), its position
and the names of all the files, the metadata file last. The coordinator of a load checks the
whole set with :func:`enctensor._sharded.bind` before any rank reads a byte, and every rank
checks the entry of each file it opens: a missing, swapped, renamed or rolled-back file (one
left from an earlier save, whose checkpoint id differs) is an :class:`IntegrityError`.

Reads decrypt only the chunks that cover each read item's byte range, straight into the
destination tensor when it is a contiguous CPU tensor of the stored dtype (through a bounded
staging buffer otherwise: other devices or dtypes, or boxes that are not one byte range).
"""

from __future__ import annotations

import dataclasses
import io
import math
import os
import pickle
import re
import uuid
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
import torch
from torch.distributed.checkpoint.filesystem import CURRENT_DCP_VERSION, FileSystem
from torch.distributed.checkpoint.metadata import (
    _MEM_FORMAT_ENCODING,
    BytesStorageMetadata,
    ChunkStorageMetadata,
    Metadata,
    MetadataIndex,
    StorageMeta,
    TensorProperties,
    TensorStorageMetadata,
)
from torch.distributed.checkpoint.planner import (
    LoadItemType,
    LoadPlan,
    LoadPlanner,
    ReadItem,
    SavePlan,
    SavePlanner,
    WriteItem,
)
from torch.distributed.checkpoint.storage import StorageReader, StorageWriter, WriteResult
from torch.futures import Future

from .. import _api
from .._api import DEFAULT_CHUNK_SIZE, DEFAULT_MAX_SCRYPT_LOG_N, DEFAULT_SCRYPT_LOG_N
from .._dtypes import numpy_dtype
from .._keys import (
    KeyArg,
    Passphrase,
    Recipient,
    SigningKey,
    VerifyKey,
    WriteKey,
    check_passphrase,
    verify_bytes,
)
from .._remote import UrlPath, as_path, url_filesystem
from .._sharded import (
    SHARD_KEY,
    ShardEntry,
    _fail,
    bind,
    check_expected_checkpoint,
    entry_text,
    new_checkpoint,
    parse_entry,
)
from ..errors import FormatError
from . import _FORMAT_NAMES, _bytes_of

__all__ = ["METADATA_FILE", "EncReader", "EncWriter"]

PathLike = str | os.PathLike[str]

#: The coordinator's file: DCP's metadata, last file of the set.
METADATA_FILE = ".metadata.enct"
_METADATA_TENSOR = "dcp.metadata"
#: A larger metadata tensor is refused before it is read (a few MB for models of 10^5 tensors).
_MAX_METADATA_BYTES = 1 << 30
#: Bytes staged at a time when a read item cannot be decrypted straight into its destination.
_STAGING_BYTES = 64 << 20
#: Tensor names are 1 to 4096 UTF-8 bytes (spec/FORMAT.md).
_MAX_NAME_BYTES = 4096
#: What DCP's metadata is made of, for torch's weights-only unpickler.
_DCP_CLASSES: tuple[type, ...] = (
    Metadata,
    MetadataIndex,
    StorageMeta,
    TensorStorageMetadata,
    BytesStorageMetadata,
    ChunkStorageMetadata,
    TensorProperties,
    _MEM_FORMAT_ENCODING,
)
_UNSUPPORTED_GLOBAL = re.compile(r"[Uu]nsupported (?:global: )?GLOBAL ([\w.]+)")

# Where a saved item is: (file name, tensor name in that file). The value of
# Metadata.storage_data, keyed by MetadataIndex.
_Location = tuple[str, str]
# (tensor index in a file, uint8 destination) for _core.Reader.read_many_into.
_Job = tuple[int, Any]


def _rank_file(rank: int) -> str:
    return f"__{rank}_0.enct"


def _done(value: Any) -> Future[Any]:
    fut: Future[Any] = Future()
    fut.set_result(value)
    return fut


def _as_list(value: Any) -> Any:
    """A one-shot iterable (generator) of keys or recipients as a list, so that every save
    sees all of it; anything else as given."""
    if isinstance(value, Iterable) and not isinstance(value, str | bytes | bytearray | memoryview | Sequence):
        return list(value)
    return value


@dataclasses.dataclass(frozen=True)
class _SetPart:
    """``SavePlan.storage_data`` from the coordinator: the set every rank's file joins."""

    checkpoint: str
    files: tuple[str, ...]
    #: This rank's position in ``files``; ``None`` when it has nothing to write.
    index: int | None


class _Directory:
    """What both backends share: the checkpoint directory, which ``reset`` may change."""

    path: Path | UrlPath
    #: fsspec's options when ``path`` is a URL.
    _storage_options: Mapping[str, Any] | None = None

    @property
    def checkpoint_id(self) -> Path | UrlPath:
        return self.path

    def reset(self, checkpoint_id: PathLike | None = None) -> None:
        if checkpoint_id:
            self.path = as_path(checkpoint_id)
        self._restart()

    def _exists(self, path: Path | UrlPath) -> bool:
        if isinstance(path, UrlPath):
            return bool(url_filesystem(os.fspath(path), self._storage_options)[0].exists(os.fspath(path)))
        return path.exists()

    def _restart(self) -> None:
        """Forgets the previous save or load."""
        raise NotImplementedError


class EncWriter(_Directory, StorageWriter):
    """Writes a DCP checkpoint into the directory ``path`` as encrypted enctensor files.

    Every rank writes its own file (in parallel, each encrypted on all cores); the
    coordinator writes ``.metadata.enct`` last. Whoever holds any of these can open the
    files, as for :func:`enctensor.save`: ``key`` (32 raw bytes or a ``pathlib.Path`` to a key
    file, or several), ``recipients`` (X25519 or RSA public keys; each rank can then load with
    its own private key), or ``passphrase``. ``sign_with`` (an Ed25519 private key or a
    ``Path`` to its PEM file) signs every file for ``EncReader(..., verify_with=...)``.
    ``chunk_size`` and ``scrypt_log_n`` are those of :func:`enctensor.save`. With
    ``overwrite=False`` a directory that already holds a checkpoint is a
    :class:`FileExistsError`.

    After a save, :attr:`checkpoint` is the set's checkpoint id, which
    ``EncReader(..., expect_checkpoint=...)`` pins.
    """

    def __init__(
        self,
        path: PathLike,
        *,
        key: WriteKey | Iterable[WriteKey] | None = None,
        passphrase: Passphrase | None = None,
        recipients: Recipient | Iterable[Recipient] = (),
        sign_with: SigningKey | None = None,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        scrypt_log_n: int = DEFAULT_SCRYPT_LOG_N,
        overwrite: bool = True,
        storage_options: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(overwrite, bool):
            raise TypeError(f"overwrite must be a bool, not {type(overwrite).__name__}")
        key, recipients = _as_list(key), _as_list(recipients)
        # Checked now, before any collective, rather than on every rank in the middle of a save.
        _api._write_args(key, passphrase, recipients, sign_with, None, chunk_size, scrypt_log_n)
        self.path = as_path(path)
        self._storage_options = storage_options
        self._save_options: dict[str, Any] = {
            "key": key,
            "passphrase": passphrase,
            "recipients": recipients,
            "sign_with": sign_with,
            "chunk_size": chunk_size,
            "scrypt_log_n": scrypt_log_n,
            "storage_options": storage_options,
        }
        self._overwrite = overwrite
        self._restart()

    def __repr__(self) -> str:
        # Never the credentials: only which kinds were given.
        given = [k for k in ("key", "passphrase", "recipients", "sign_with") if self._save_options[k]]
        return f"EncWriter({os.fspath(self.path)!r}, {'+'.join(given)})"

    @property
    def checkpoint(self) -> str | None:
        """The checkpoint id of the last save (every rank knows it once its data is written)."""
        return self._set.checkpoint if self._set is not None else None

    def _restart(self) -> None:
        self._save_id = str(uuid.uuid4())
        self._set: _SetPart | None = None

    def set_up_storage_writer(self, is_coordinator: bool, *args: Any, **kwargs: Any) -> None:
        if kwargs.get("use_collectives", True) is False:
            raise ValueError(
                "EncWriter binds the files of all ranks into one checkpoint, which needs the ranks to"
                " coordinate: save with use_collectives=True (the default)"
            )

    def storage_meta(self) -> StorageMeta | None:
        return StorageMeta(checkpoint_id=os.fspath(self.path), save_id=self._save_id)

    def prepare_local_plan(self, plan: SavePlan) -> SavePlan:
        if isinstance(self.path, Path):  # object stores have no directories to make
            self.path.mkdir(parents=True, exist_ok=True)
        if not self._overwrite and self._exists(self.path / METADATA_FILE):
            raise FileExistsError(
                f"{self.path} already holds a checkpoint ({METADATA_FILE}); choose another directory or"
                " pass overwrite=True"
            )
        return plan

    def prepare_global_plan(self, plans: list[SavePlan]) -> list[SavePlan]:
        # Only ranks with items write a file, so that every file of the set holds something.
        writing = [rank for rank, plan in enumerate(plans) if plan.items]
        files = (*(_rank_file(rank) for rank in writing), METADATA_FILE)
        checkpoint = new_checkpoint()
        position = {rank: i for i, rank in enumerate(writing)}
        self._set = _SetPart(checkpoint, files, None)
        return [
            dataclasses.replace(plan, storage_data=_SetPart(checkpoint, files, position.get(rank)))
            for rank, plan in enumerate(plans)
        ]

    def write_data(self, plan: SavePlan, planner: SavePlanner) -> Future[list[WriteResult]]:
        part = plan.storage_data
        if not isinstance(part, _SetPart):
            raise TypeError("EncWriter.write_data got a plan that EncWriter.prepare_global_plan did not make")
        self._set = part
        if part.index is None:
            return _done([])
        file = part.files[part.index]
        arrays: dict[str, np.ndarray] = {}
        results: list[WriteResult] = []
        for item, name in zip(plan.items, _item_names(plan.items), strict=True):
            data = planner.resolve_data(item)
            if isinstance(data, io.BytesIO):  # a non-tensor item, pickled by the planner
                array = np.frombuffer(data.getbuffer(), dtype=np.uint8)
            else:
                array = _tensor_array(data)
            arrays[name] = array
            location: _Location = (file, name)
            results.append(WriteResult(index=item.index, size_in_bytes=array.nbytes, storage_data=location))
        self._save(arrays, file, part.index)
        return _done(results)

    def finish(self, metadata: Metadata, results: list[list[WriteResult]]) -> None:
        if self._set is None:
            raise RuntimeError("EncWriter.finish was called before EncWriter.prepare_global_plan")
        metadata.version = CURRENT_DCP_VERSION
        metadata.storage_data = {wr.index: wr.storage_data for rank in results for wr in rank}
        metadata.storage_meta = self.storage_meta()
        buf = io.BytesIO()
        torch.save(metadata, buf)
        tensor = np.frombuffer(buf.getbuffer(), dtype=np.uint8)
        self._save({_METADATA_TENSOR: tensor}, METADATA_FILE, len(self._set.files) - 1)

    def _save(self, arrays: dict[str, np.ndarray], file: str, index: int) -> None:
        assert self._set is not None
        entry = entry_text(self._set.checkpoint, index, self._set.files)
        _api.save(arrays, self.path / file, metadata={SHARD_KEY: entry}, **self._save_options)

    @classmethod
    def validate_checkpoint_id(cls, checkpoint_id: PathLike) -> bool:
        return FileSystem.validate_checkpoint_id(checkpoint_id)


def _item_names(items: Sequence[WriteItem]) -> list[str]:
    """Tensor names for a rank's items, unique in its file: the fqn (with the chunk's offsets
    when it is a shard not at the origin), readable by ``enctensor inspect``; ``#<n>`` when
    that is taken or not a valid name. The metadata maps each item to its name."""
    taken: set[str] = set()
    names = []
    for n, item in enumerate(items):
        offsets = item.index.offset
        name = item.index.fqn
        if offsets is not None and any(offsets):
            name += "@" + ",".join(str(o) for o in offsets)
        if name in taken or not _valid_name(name):
            name = f"#{n}"
            while name in taken:
                name = "#" + name
        taken.add(name)
        names.append(name)
    return names


def _valid_name(name: str) -> bool:
    try:
        return 0 < len(name.encode("utf-8")) <= _MAX_NAME_BYTES
    except UnicodeEncodeError:  # a lone surrogate
        return False


def _tensor_array(t: torch.Tensor) -> np.ndarray:
    """A numpy view of a write item's tensor in a dtype the format stores (its bytes as uint8
    for a dtype the format lacks, such as complex: DCP's metadata records the dtype)."""
    t = t.detach()
    if t.device.type != "cpu":
        t = t.cpu()
    t = t.contiguous()
    raw = _bytes_of(t)
    fmt = _FORMAT_NAMES.get(t.dtype)
    if fmt is None:
        return raw
    return raw.view(numpy_dtype(fmt)).reshape(t.shape)


class _UnreadableMetadata(Metadata):
    """What :meth:`EncReader.read_metadata` answers torch's retry after the checkpoint's
    metadata failed to open. torch's loader swallows the first call's exception (to try a
    rank-local metadata file) and would report only an ``AssertionError``; this raises the
    original error (``WrongKeyError``, ``IntegrityError``, ...) wherever it is used."""

    _FIELDS = frozenset(f.name for f in dataclasses.fields(Metadata))

    def __init__(self, error: BaseException) -> None:  # no super().__init__: nothing to hold
        object.__setattr__(self, "_error", error)

    def __getattribute__(self, name: str) -> Any:
        if name in _UnreadableMetadata._FIELDS:
            raise object.__getattribute__(self, "_error")
        return object.__getattribute__(self, name)


class EncReader(_Directory, StorageReader):
    """Reads a DCP checkpoint written by :class:`EncWriter` from the directory ``path``.

    ``key`` (32 raw bytes, an X25519 or RSA private key, a ``pathlib.Path`` to a key file, a
    :class:`enctensor.FileKey` or a key provider) or ``passphrase`` opens the files, as for
    :func:`enctensor.load`; each rank may use its own identity. ``verify_with`` requires
    every file to carry a valid publisher signature (:class:`enctensor.SignatureError`
    otherwise). ``expect_checkpoint`` (an id from :attr:`EncWriter.checkpoint`) pins the
    whole set, so that a checkpoint rolled back as a whole is refused too.
    ``max_scrypt_log_n`` is that of :func:`enctensor.load`. ``safe_globals`` lists classes a
    custom planner stored in the metadata (DCP's own are allowed).

    Before any rank reads, the coordinator checks that the files are one whole set; a
    missing, swapped, renamed, rolled-back or modified file is an
    :class:`enctensor.IntegrityError`, a wrong key an :class:`enctensor.WrongKeyError`. In a
    distributed load, torch reports them in a ``CheckpointException`` whose ``failures`` map
    each failing rank to its error.
    """

    def __init__(
        self,
        path: PathLike,
        *,
        key: KeyArg | None = None,
        passphrase: Passphrase | None = None,
        verify_with: VerifyKey | None = None,
        expect_checkpoint: str | None = None,
        max_scrypt_log_n: int = DEFAULT_MAX_SCRYPT_LOG_N,
        safe_globals: Iterable[Any] = (),
        storage_options: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if (key is None) == (check_passphrase(passphrase) is None):
            raise ValueError("give either a key or a passphrase to open the checkpoint")
        self.path = as_path(path)
        self._storage_options = storage_options
        self._key = key
        self._passphrase = passphrase
        self._verify_key = verify_bytes(verify_with)
        self._max_scrypt_log_n = _api.check_max_scrypt_log_n(max_scrypt_log_n)
        self._expect_checkpoint = check_expected_checkpoint(expect_checkpoint)
        self._safe_globals = [*_DCP_CLASSES, *safe_globals]
        self._restart()

    def _restart(self) -> None:
        self.load_id = str(uuid.uuid4())
        self._failure: BaseException | None = None
        self._entry: ShardEntry | None = None
        self._metadata_header: _Header | None = None
        self._locations: dict[MetadataIndex, _Location] = {}
        self._chunks: dict[tuple[str, tuple[int, ...]], tuple[tuple[int, ...], torch.dtype]] = {}

    def __repr__(self) -> str:
        how = "passphrase" if self._passphrase is not None else "key"
        signed = ", verify_with" if self._verify_key is not None else ""
        return f"EncReader({os.fspath(self.path)!r}, {how}{signed})"

    def _open(self, path: Path | UrlPath) -> _api.Reader:
        return _api._open_file(
            os.fspath(path),
            self._key,
            self._passphrase,
            self._verify_key,
            expect_metadata=None,
            max_scrypt_log_n=self._max_scrypt_log_n,
            storage_options=self._storage_options,
        )

    # -- metadata --------------------------------------------------------------------------

    def read_metadata(self, *args: Any, **kwargs: Any) -> Metadata:
        """Opens and authenticates ``.metadata.enct`` and returns DCP's metadata."""
        if kwargs.get("rank") is not None and self._failure is not None:
            # torch's retry after the global metadata failed (see _UnreadableMetadata).
            return _UnreadableMetadata(self._failure)
        self._restart()
        try:
            return self._read_metadata()
        except Exception as e:
            self._failure = e
            raise

    def _read_metadata(self) -> Metadata:
        path = self.path / METADATA_FILE
        reader = self._open(path)
        entry = parse_entry(path, dict(reader.metadata()))
        if entry.files[-1] != METADATA_FILE or entry.index != entry.count - 1:
            raise _fail(
                path,
                f"this is file {entry.index + 1} of {entry.count} ({entry.files[entry.index]}) of its set, not"
                " the metadata of a DCP checkpoint: files were renamed",
            )
        if self._expect_checkpoint is not None and entry.checkpoint != self._expect_checkpoint:
            raise _fail(
                path,
                f"this checkpoint is {entry.checkpoint}, but checkpoint {self._expect_checkpoint} was"
                " expected (an older or another save?)",
            )
        rows = reader.tensors()
        if [(name, dtype) for name, dtype, *_ in rows] != [(_METADATA_TENSOR, "U8")]:
            raise FormatError(
                f"{path}: not the metadata of a DCP checkpoint (no single U8 {_METADATA_TENSOR!r})"
            )
        nbytes = rows[0][4]
        if nbytes > _MAX_METADATA_BYTES:
            raise FormatError(
                f"{path}: the checkpoint metadata is {nbytes} bytes, over the {_MAX_METADATA_BYTES}-byte limit"
            )
        buf = bytearray(nbytes)
        reader.read_into(0, buf)
        metadata = self._unpickle(path, buf)
        if metadata.storage_meta is None:
            metadata.storage_meta = StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        self._entry, self._metadata_header = entry, _Header.of(reader)
        return metadata

    def _unpickle(self, path: Path | UrlPath, data: bytearray) -> Metadata:
        """DCP's metadata through torch's weights-only unpickler: anyone who knows a recipient's
        public key can write a file that opens, so the bytes are not trusted to run code."""
        try:
            with torch.serialization.safe_globals(self._safe_globals):
                obj = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:
            found = _UNSUPPORTED_GLOBAL.search(str(e))
            what = f"a {found.group(1)}" if found else "an object"
            raise FormatError(
                f"{path}: the checkpoint metadata holds {what}, which the safe unpickler refuses; if a"
                " custom planner stored it, pass its classes as EncReader(..., safe_globals=[...])"
            ) from None
        except (RuntimeError, ValueError, EOFError) as e:
            raise FormatError(f"{path}: the checkpoint metadata is not readable: {e}") from None
        if not isinstance(obj, Metadata):
            raise FormatError(f"{path}: holds a {type(obj).__name__}, not DCP's Metadata")
        return obj

    def set_up_storage_reader(
        self, metadata: Metadata, is_coordinator: bool, *args: Any, **kwargs: Any
    ) -> None:
        if self._failure is not None:
            raise self._failure
        if self._entry is None:
            raise RuntimeError("EncReader.set_up_storage_reader was called before read_metadata")
        self._locations = self._check_locations(metadata.storage_data)
        self._chunks = self._chunk_table(metadata.state_dict_metadata)

    def _chunk_table(
        self, state_dict_metadata: object
    ) -> dict[tuple[str, tuple[int, ...]], tuple[tuple[int, ...], torch.dtype]]:
        """(fqn, chunk offsets) -> (chunk shape, dtype), the layout of every saved chunk."""
        table = {}
        try:
            for fqn, tmd in state_dict_metadata.items():  # type: ignore[attr-defined]
                if isinstance(tmd, TensorStorageMetadata):
                    dtype = tmd.properties.dtype
                    if not isinstance(dtype, torch.dtype):
                        raise TypeError(f"{fqn!r} has dtype {type(dtype).__name__}")
                    for chunk in tmd.chunks:
                        shape, offsets = tuple(map(int, chunk.sizes)), tuple(map(int, chunk.offsets))
                        if len(shape) != len(offsets) or min(shape, default=0) < 0:
                            raise ValueError(f"{fqn!r} has a chunk of shape {list(shape)} at {list(offsets)}")
                        table[(fqn, offsets)] = (shape, dtype)
        except (AttributeError, TypeError, ValueError) as e:
            raise FormatError(f"{self.path / METADATA_FILE}: malformed DCP metadata: {e}") from None
        return table

    def _check_locations(self, storage_data: object) -> dict[MetadataIndex, _Location]:
        assert self._entry is not None
        path = self.path / METADATA_FILE
        if not isinstance(storage_data, dict):
            raise FormatError(f"{path}: the metadata's storage_data is not EncWriter's (a dict of locations)")
        rank_files = set(self._entry.files[:-1])
        for index, location in storage_data.items():
            if not (
                isinstance(index, MetadataIndex)
                and isinstance(location, tuple)
                and len(location) == 2
                and all(isinstance(part, str) for part in location)
            ):
                raise FormatError(
                    f"{path}: the metadata's storage_data is not EncWriter's (a dict of locations)"
                )
            if location[0] not in rank_files:
                raise _fail(
                    path,
                    f"the metadata places {index.fqn!r} in {location[0]}, which is not a file of this checkpoint",
                )
        return storage_data

    # -- planning --------------------------------------------------------------------------

    def prepare_local_plan(self, plan: LoadPlan) -> LoadPlan:
        return plan

    def prepare_global_plan(self, plans: list[LoadPlan]) -> list[LoadPlan]:
        self._bind_set()
        return plans

    def _bind_set(self) -> None:
        """The coordinator checks that the files are one whole set (every file there,
        authenticated, with this checkpoint's entry at its position, holding exactly the
        tensors the metadata places in it) before the plan reaches any rank."""
        listed: dict[str, list[str]] = {METADATA_FILE: [_METADATA_TENSOR]}  # first: bind's anchor
        for file, name in self._locations.values():
            listed.setdefault(file, []).append(name)

        def open_file(path: Path | UrlPath) -> _Header:
            if path.name == METADATA_FILE and self._metadata_header is not None:
                return self._metadata_header
            # Only the header is kept: one open file at a time, however many ranks wrote.
            return _Header.of(self._open(path))

        bind(self.path / METADATA_FILE, listed, open_file, expect_checkpoint=self._expect_checkpoint)

    # -- reading ---------------------------------------------------------------------------

    def read_data(self, plan: LoadPlan, planner: LoadPlanner) -> Future[None]:
        by_file: dict[str, list[ReadItem]] = {}
        for item in plan.items:
            by_file.setdefault(self._locations[item.storage_index][0], []).append(item)
        for file, items in by_file.items():
            self._read_file(self._open_member(file), file, items, planner)
        return _done(None)

    def _open_member(self, file: str) -> _api.Reader:
        """Opens a file of the set and checks its entry against the metadata's: the
        coordinator checked the set, but the file may have been replaced since."""
        assert self._entry is not None
        files = self._entry.files
        i = files.index(file)
        path = self.path / file
        try:
            reader = self._open(path)
        except FileNotFoundError:
            raise _fail(
                path, f"file {i + 1} of {len(files)} of this checkpoint is missing (no such file)"
            ) from None
        entry = parse_entry(path, dict(reader.metadata()))
        if (entry.checkpoint, entry.files) != (self._entry.checkpoint, files):
            raise _fail(
                path,
                f"this file belongs to another checkpoint ({entry.checkpoint}) than {METADATA_FILE}"
                f" ({self._entry.checkpoint}): a file of another or an earlier save (rolled back)",
            )
        if entry.index != i:
            raise _fail(
                path,
                f"this file is file {entry.index + 1} of {entry.count} ({files[entry.index]}), but it is"
                f" named as file {i + 1} ({file}): files were swapped or renamed",
            )
        return reader

    def _read_file(self, reader: _api.Reader, file: str, items: list[ReadItem], planner: LoadPlanner) -> None:
        rows = {row[0]: (i, row[4]) for i, row in enumerate(reader.tensors())}
        whole: list[_Job] = []
        done: list[tuple[ReadItem, torch.Tensor]] = []
        for item in items:
            name = self._locations[item.storage_index][1]
            if name not in rows:
                raise _fail(
                    self.path / file, f"this file holds no tensor {name!r}, which the metadata places in it"
                )
            index, nbytes = rows[name]
            if item.type == LoadItemType.BYTE_IO:
                buf = bytearray(nbytes)
                reader.read_into(index, buf)
                planner.load_bytes(item, io.BytesIO(buf))
                continue
            shape, dtype = self._chunk(item.storage_index)
            if math.prod(shape) * dtype.itemsize != nbytes:
                raise _fail(
                    self.path / file,
                    f"tensor {name!r} holds {nbytes} bytes, but the metadata describes {list(shape)} {dtype}",
                )
            dest = planner.resolve_tensor(item).detach()
            box = _Box(shape, dtype, tuple(item.storage_offsets), tuple(item.lengths))
            if tuple(dest.shape) != box.lengths:
                raise ValueError(
                    f"{item.storage_index.fqn}: the planner's destination has shape {list(dest.shape)},"
                    f" the read item {list(box.lengths)}"
                )
            direct = dest.device.type == "cpu" and dest.dtype == dtype and dest.is_contiguous()
            if direct and box.is_whole():
                whole.append((index, _bytes_of(dest)))  # all whole tensors of the file in one call
                done.append((item, dest))
                continue
            start = box.contiguous_start() if direct else None
            if start is not None:
                reader.read_range_into(index, start * dtype.itemsize, _bytes_of(dest))
            else:
                box.read_staged(reader, index, nbytes, dest)
            planner.commit_tensor(item, dest)
        if whole:
            reader.read_many_into(whole)
        for item, dest in done:
            planner.commit_tensor(item, dest)

    def _chunk(self, index: MetadataIndex) -> tuple[tuple[int, ...], torch.dtype]:
        offsets = tuple(index.offset) if index.offset is not None else ()
        try:
            return self._chunks[(index.fqn, offsets)]
        except KeyError:
            _no_chunk(self.path / METADATA_FILE, index)

    @classmethod
    def validate_checkpoint_id(cls, checkpoint_id: PathLike) -> bool:
        return "://" not in os.fspath(checkpoint_id) and (Path(checkpoint_id) / METADATA_FILE).is_file()


@dataclasses.dataclass(frozen=True)
class _Header:
    """What :func:`enctensor._sharded.bind` reads of an opened file: its authenticated
    metadata and tensor rows."""

    entries: list[tuple[str, str]]
    rows: list[tuple[str, str, list[int], bool, int]]

    @classmethod
    def of(cls, reader: _api.Reader) -> _Header:
        return cls(reader.metadata(), reader.tensors())

    def metadata(self) -> list[tuple[str, str]]:
        return self.entries

    def tensors(self) -> list[tuple[str, str, list[int], bool, int]]:
        return self.rows


def _no_chunk(path: Path | UrlPath, index: MetadataIndex) -> NoReturn:
    raise FormatError(
        f"{path}: the metadata has no chunk of {index.fqn!r} at offsets {list(index.offset or ())}"
    )


@dataclasses.dataclass(frozen=True)
class _Box:
    """The part of a stored chunk (C order, ``shape``) that a read item asks for."""

    shape: tuple[int, ...]
    dtype: torch.dtype
    offsets: tuple[int, ...]
    lengths: tuple[int, ...]

    def __post_init__(self) -> None:
        if len(self.offsets) != len(self.shape) or len(self.lengths) != len(self.shape):
            raise ValueError(f"a read of {len(self.offsets)} dimensions from a chunk of {len(self.shape)}")
        for o, n, s in zip(self.offsets, self.lengths, self.shape, strict=True):
            if not (0 <= o and 0 <= n and o + n <= s):
                raise ValueError(
                    f"a read of {list(self.lengths)} at {list(self.offsets)} is outside a chunk of {list(self.shape)}"
                )

    def strides(self) -> tuple[int, ...]:
        out, step = [], 1
        for s in reversed(self.shape):
            out.append(step)
            step *= s
        return tuple(reversed(out))

    def first(self) -> int:
        """Element offset of the box's first element in the chunk."""
        return sum(o * s for o, s in zip(self.offsets, self.strides(), strict=True))

    def is_whole(self) -> bool:
        return self.lengths == self.shape

    def contiguous_start(self) -> int | None:
        """Element offset of the box when it is one run of the chunk's bytes, else ``None``:
        singleton dimensions, then one partial dimension, then whole ones."""
        partial = next((d for d, n in enumerate(self.lengths) if n != 1), len(self.shape))
        if self.lengths[partial + 1 :] != self.shape[partial + 1 :]:
            return None
        return self.first()

    def read_staged(self, reader: _api.Reader, index: int, nbytes: int, dest: torch.Tensor) -> None:
        """Decrypts the chunks under the box, a block of rows at a time (at most about
        ``_STAGING_BYTES``, at least one row), and copies the box out of them into ``dest``
        (any device, dtype or layout)."""
        if math.prod(self.lengths) == 0:
            return
        box = self if self.shape else _Box((1,), self.dtype, (0,), (1,))
        dest = dest if self.shape else dest.reshape(1)
        el, cs = self.dtype.itemsize, reader.chunk_size
        strides = box.strides()
        first = box.first()
        row = box.lengths[0]
        rows_per_block = max(1, _STAGING_BYTES // (strides[0] * el))
        # Elements from a row's first element of the box to one past its last.
        span = 1 + sum((n - 1) * s for n, s in zip(box.lengths[1:], strides[1:], strict=True))
        for r0 in range(0, row, rows_per_block):
            r1 = min(row, r0 + rows_per_block)
            begin = first + r0 * strides[0]
            end = begin + (r1 - r0 - 1) * strides[0] + span
            # Whole chunks: the core decrypts them in place, with no scratch buffer.
            lo = begin * el // cs * cs
            hi = min(-(-end * el // cs) * cs, nbytes)
            stage = torch.empty(hi - lo, dtype=torch.uint8)
            reader.read_range_into(index, lo, _bytes_of(stage))
            src = stage.view(self.dtype).as_strided(
                (r1 - r0, *box.lengths[1:]), strides, (begin * el - lo) // el
            )
            dest[r0:r1].copy_(src)
