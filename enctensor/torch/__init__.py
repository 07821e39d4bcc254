"""PyTorch adapter, shaped like ``safetensors.torch``: ``save_file``, ``load_file``, ``save``,
``load``, ``save_model`` and ``load_model``.

Loading decrypts straight into memory torch owns: ``load_file`` allocates each tensor with
``torch.empty`` and the Rust core fills its bytes (all chunks of all tensors in parallel, with
the GIL released); ``load_model`` decrypts into the model's existing parameters and buffers,
so a model is loaded in one pass over the bytes with no intermediate tensor.

Importing this module imports torch; ``import enctensor`` alone does not.
"""

from __future__ import annotations

import itertools
import os
from collections import defaultdict
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

try:
    import torch
except ImportError as e:  # pragma: no cover - exercised in a subprocess by the tests
    raise ImportError(
        "enctensor.torch needs PyTorch, which is not installed: pip install '.[torch]' (from a clone of enctensor)"
    ) from e

from .. import _api
from .._alloc import small_destinations
from .._api import DEFAULT_MAX_SCRYPT_LOG_N
from .._dtypes import numpy_dtype
from .._frameworks import register
from .._keys import KeyArg, Passphrase, VerifyKey, WriteKey
from ..errors import FormatError

__all__ = ["load", "load_file", "load_model", "save", "save_file", "save_model"]

PathLike = str | os.PathLike[str]
Device = str | int | torch.device
# (index of a tensor in the file, writable uint8 buffer it is decrypted into)
Job = tuple[int, Any]

#: Format dtype name -> torch dtype: every dtype the format has (safetensors' names).
TORCH_DTYPES: dict[str, torch.dtype] = {
    "BOOL": torch.bool,
    "U8": torch.uint8,
    "I8": torch.int8,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
    "I16": torch.int16,
    "U16": torch.uint16,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I32": torch.int32,
    "U32": torch.uint32,
    "F32": torch.float32,
    "I64": torch.int64,
    "U64": torch.uint64,
    "F64": torch.float64,
}
_FORMAT_NAMES: dict[torch.dtype, str] = {dt: name for name, dt in TORCH_DTYPES.items()}

# Pinned staging for device="cuda": at most this many bytes are held in page-locked host
# memory at once (a single larger tensor gets a staging buffer of its own size).
_PINNED_BATCH = 256 << 20
_ALIGN = 64


def _format_dtype(name: str, dtype: torch.dtype) -> str:
    try:
        return _FORMAT_NAMES[dtype]
    except KeyError:
        supported = ", ".join(str(d) for d in TORCH_DTYPES.values())
        raise TypeError(
            f"tensor {name!r} has dtype {dtype}, which enctensor cannot store (supported: {supported})"
        ) from None


def _torch_dtype(name: str, dtype: str) -> torch.dtype:
    try:
        return TORCH_DTYPES[dtype]
    except KeyError:
        raise FormatError(f"tensor {name!r} has dtype {dtype}, which has no torch equivalent") from None


def _bytes_of(t: torch.Tensor) -> np.ndarray:
    """A uint8 numpy array aliasing the bytes of ``t`` (CPU, contiguous): no copy. bf16, fp8
    and bool go through ``.view(torch.uint8)``, which numpy can hold."""
    if not t.numel():
        return np.empty(0, dtype=np.uint8)
    # as_strided, not reshape: a contiguous tensor may still carry any stride on a dimension of
    # size 1, which reshape keeps and .view(torch.uint8) refuses.
    return t.detach().as_strided((t.numel(),), (1,)).view(torch.uint8).numpy()


def _to_device(device: Device) -> torch.device:
    # Like safetensors: a bare integer names a CUDA device.
    return torch.device("cuda", device) if isinstance(device, int) else torch.device(device)


# ---------------------------------------------------------------------------------------------
# Shared storage (the same rules as safetensors.torch, so files and models interoperate).


def _storage_key(t: torch.Tensor) -> tuple[torch.device, int, int] | None:
    if t.device.type == "meta":
        return None
    storage = t.untyped_storage()
    if storage.data_ptr() == 0 or storage.nbytes() == 0:
        return None
    return (t.device, storage.data_ptr(), storage.nbytes())


def _end_ptr(t: torch.Tensor) -> int:
    """One past the last byte ``t`` touches (from its strides, so any layout works)."""
    if not t.nelement():
        return t.data_ptr()
    last = sum((size - 1) * stride for size, stride in zip(t.shape, t.stride(), strict=True))
    return t.data_ptr() + (last + 1) * t.element_size()


def _find_shared_tensors(tensors: Mapping[str, torch.Tensor]) -> list[set[str]]:
    """Groups of names whose tensors overlap in memory (a group of one is not shared)."""
    by_storage: dict[tuple[torch.device, int, int], set[str]] = defaultdict(set)
    for name, t in tensors.items():
        key = _storage_key(t)
        if key is not None:
            by_storage[key].add(name)
    groups: list[set[str]] = []
    for names in sorted(by_storage.values(), key=sorted):
        if len(names) < 2:
            groups.append(names)
            continue
        # Tensors of one storage that do not overlap (e.g. halves of a flat buffer) are distinct.
        areas = sorted((tensors[n].data_ptr(), _end_ptr(tensors[n]), n) for n in names)
        _, last_stop, first = areas[0]
        groups.append({first})
        for start, stop, n in areas[1:]:
            if start >= last_stop:
                groups.append({n})
            else:
                groups[-1].add(n)
            last_stop = max(last_stop, stop)
    return groups


def _is_complete(t: torch.Tensor) -> bool:
    storage = t.untyped_storage()
    return t.data_ptr() == storage.data_ptr() and t.nelement() * t.element_size() == storage.nbytes()


def _remove_duplicate_names(
    state_dict: Mapping[str, torch.Tensor], *, preferred_names: Iterable[str] = ()
) -> dict[str, list[str]]:
    """For each group of tensors that share memory, the name to keep -> the names to drop
    (safetensors' rule: the sorted-first name covering the whole storage, preferring names in
    ``preferred_names``, e.g. those a file already holds)."""
    preferred = set(preferred_names)
    to_remove: dict[str, list[str]] = defaultdict(list)
    for shared in _find_shared_tensors(state_dict):
        if len(shared) < 2:
            continue
        complete = {n for n in shared if _is_complete(state_dict[n])}
        if not complete:
            raise RuntimeError(
                f"tensors {sorted(shared)} share memory but none of them covers the whole storage; "
                "refusing to save or load them (save each one .clone()d instead)"
            )
        keep = min(preferred & complete or complete)
        to_remove[keep].extend(n for n in sorted(shared) if n != keep)
    return dict(to_remove)


# ---------------------------------------------------------------------------------------------
# Saving


def _arrays(tensors: Mapping[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """numpy views of the tensors' bytes, with the numpy dtype of each format dtype (ml_dtypes
    for bf16 and fp8): what the numpy API saves. No copy for CPU tensors."""
    if not isinstance(tensors, Mapping):
        raise TypeError(f"expected a dict of str to torch.Tensor, not {type(tensors).__name__}")
    for name, t in tensors.items():
        if not isinstance(name, str):
            raise TypeError(f"tensor names must be str, not {type(name).__name__}")
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"tensor {name!r} must be a torch.Tensor, not {type(t).__name__}")
        if t.layout != torch.strided:
            raise ValueError(
                f"tensor {name!r} is sparse ({t.layout}); save t.to_dense() instead (it may be much larger)"
            )
        if t.device.type == "meta":
            raise ValueError(f"tensor {name!r} is on the meta device and has no data to save")
        _format_dtype(name, t.dtype)
    shared = [sorted(g) for g in _find_shared_tensors(tensors) if len(g) > 1]
    if shared:
        raise RuntimeError(
            f"some tensors share memory, which would store them twice and load them as separate "
            f"tensors: {shared}. Save the model with enctensor.torch.save_model, which keeps one of "
            "each, or save .clone()s"
        )
    arrays = {}
    for name, t in tensors.items():
        if not t.is_contiguous():
            raise ValueError(
                f"tensor {name!r} is not contiguous, which enctensor cannot save: save "
                "t.contiguous() instead (or, if it is a view of another tensor, save the whole "
                "tensor and slice it after loading)"
            )
        if t.device.type != "cpu":
            t = t.to("cpu")
        dtype = numpy_dtype(_format_dtype(name, t.dtype))
        arrays[name] = _bytes_of(t).view(dtype).reshape(t.shape)
    return arrays


def save_file(
    tensors: Mapping[str, torch.Tensor],
    path: PathLike,
    *,
    key: WriteKey | Iterable[WriteKey] | None = None,
    passphrase: Passphrase | None = None,
    metadata: Mapping[str, str] | None = None,
    **options: Any,
) -> None:
    """Encrypts a dict of torch tensors to ``path`` (atomically), like
    ``safetensors.torch.save_file``.

    Tensors must be dense and contiguous and must not share memory (use :func:`save_model`
    for a model with tied weights). Tensors on other devices are copied to the CPU first.
    ``key`` is 32 raw bytes or a ``pathlib.Path`` to a key file (or several, any of which
    opens the file; never a ``str``); ``passphrase`` (``str`` or UTF-8 bytes) derives a key
    with scrypt instead. ``options`` are those of :func:`enctensor.save`
    (``plaintext`` names tensors stored unencrypted but authenticated; ``recipients``,
    ``sign_with``, ``chunk_size``, ``scrypt_log_n``).
    """
    _api.save(_arrays(tensors), path, key=key, passphrase=passphrase, metadata=metadata, **options)


def save(
    tensors: Mapping[str, torch.Tensor],
    *,
    key: WriteKey | Iterable[WriteKey] | None = None,
    passphrase: Passphrase | None = None,
    metadata: Mapping[str, str] | None = None,
    **options: Any,
) -> bytes:
    """Like :func:`save_file`, returning the encrypted file as bytes."""
    return _api.save_bytes(_arrays(tensors), key=key, passphrase=passphrase, metadata=metadata, **options)


def save_model(
    model: torch.nn.Module,
    path: PathLike,
    *,
    key: WriteKey | Iterable[WriteKey] | None = None,
    passphrase: Passphrase | None = None,
    metadata: Mapping[str, str] | None = None,
    force_contiguous: bool = True,
    **options: Any,
) -> None:
    """Encrypts ``model.state_dict()`` to ``path``, like ``safetensors.torch.save_model``.

    Tensors that share memory (tied weights) are stored once, under the first name in sorted
    order that covers the whole storage; each dropped name is recorded in the metadata as
    ``dropped name -> kept name`` (unless ``metadata`` already has that key).
    :func:`load_model` restores the sharing by loading into the model's own storage.
    ``options`` are those of :func:`save_file`.
    """
    state_dict = model.state_dict()
    meta = dict(metadata) if metadata is not None else {}
    for kept, dropped in _remove_duplicate_names(state_dict).items():
        for name in dropped:
            meta.setdefault(name, kept)
            del state_dict[name]
    if force_contiguous:
        state_dict = {k: v.contiguous() for k, v in state_dict.items()}
    save_file(state_dict, path, key=key, passphrase=passphrase, metadata=meta or None, **options)


# ---------------------------------------------------------------------------------------------
# Loading


def _batches(sizes: list[int], limit: int) -> Iterable[list[int]]:
    """Positions of ``sizes`` in order, cut into runs of at most ``limit`` bytes (64-byte
    aligned each; a single larger item is a run of its own)."""
    batch: list[int] = []
    size = 0
    for i, nbytes in enumerate(sizes):
        n = -(-nbytes // _ALIGN) * _ALIGN
        if batch and size + n > limit:
            yield batch
            batch, size = [], 0
        batch.append(i)
        size += n
    if batch:
        yield batch


def _pinned_staging(
    rows: list[tuple[str, str, list[int], bool, int]],
) -> Iterable[list[tuple[int, torch.Tensor]]]:
    """Batches of ``(row index, pinned uint8 tensor)`` of at most ``_PINNED_BATCH`` bytes."""
    for batch in _batches([row[4] for row in rows], _PINNED_BATCH):
        yield _pinned_batch(rows, batch)


def _pinned_batch(
    rows: list[tuple[str, str, list[int], bool, int]], batch: list[int]
) -> list[tuple[int, torch.Tensor]]:
    offsets = []
    end = 0
    for i in batch:
        offsets.append(end)
        end += -(-rows[i][4] // _ALIGN) * _ALIGN
    # One page-locked allocation per batch; each tensor gets a 64-byte aligned slice of it.
    pinned = torch.empty(max(end, 1), dtype=torch.uint8, pin_memory=True)
    return [(i, pinned[o : o + rows[i][4]]) for i, o in zip(batch, offsets, strict=True)]


def _read_all(reader: _api.Reader, device: Device) -> dict[str, torch.Tensor]:
    dev = _to_device(device)
    rows = reader.tensors()
    dtypes = [_torch_dtype(name, dtype) for name, dtype, *_ in rows]
    if dev.type == "cuda":
        out: dict[str, torch.Tensor] = {}
        # Decrypt into page-locked host memory, then copy asynchronously to the device; the
        # caching host allocator keeps each staging block alive until its copy has run.
        for batch in _pinned_staging(rows):
            staged: list[Job] = [(i, _bytes_of(buf)) for i, buf in batch]
            reader.read_many_into(staged)
            for i, buf in batch:
                host = buf.view(dtypes[i]).reshape(rows[i][2])
                out[rows[i][0]] = host.to(dev, non_blocking=True)
        torch.cuda.synchronize(dev)
        return out
    # Large tensors: torch.empty (4 KiB pages, faulted in as the core writes) measured faster
    # here than numpy's huge-page allocations adopted with torch.from_numpy (see
    # benches/bench_adapters.py). Small ones share blocks (one allocation for many tensors).
    packed = small_destinations([row[4] for row in rows])
    tensors: list[torch.Tensor] = []
    jobs: list[Job] = []
    for i, ((_, _, shape, _, _), dt) in enumerate(zip(rows, dtypes, strict=True)):
        dest = packed.get(i)
        if dest is None:
            t = torch.empty(shape, dtype=dt)
            dest = _bytes_of(t)
        else:
            t = torch.from_numpy(dest).view(dt).reshape(shape)
        tensors.append(t)
        jobs.append((i, dest))
    reader.read_many_into(jobs)
    if dev.type != "cpu":
        tensors = [t.to(dev) for t in tensors]
    return {row[0]: t for row, t in zip(rows, tensors, strict=True)}


def load_file(
    path: PathLike,
    *,
    key: KeyArg | None = None,
    passphrase: Passphrase | None = None,
    device: Device = "cpu",
    verify_with: VerifyKey | None = None,
    expect_metadata: Mapping[str, str] | None = None,
    max_scrypt_log_n: int = DEFAULT_MAX_SCRYPT_LOG_N,
    storage_options: Mapping[str, Any] | None = None,
) -> dict[str, torch.Tensor]:
    """Decrypts and verifies every tensor of ``path`` into new torch tensors (file order),
    like ``safetensors.torch.load_file``.

    ``device`` is a torch device (an integer means ``cuda:N``). For CUDA the bytes are
    decrypted into pinned host memory and copied to the device; the tensors are on the device
    when this returns. ``key``, ``passphrase``, ``verify_with``, ``expect_metadata`` and
    ``max_scrypt_log_n`` are those of :func:`enctensor.load`. Raises :class:`enctensor.WrongKeyError` if the key does not open
    the file and :class:`enctensor.IntegrityError` if any byte was modified. ``path`` may be
    the index of an encrypted sharded checkpoint (``*.enct.index.json``): the tensors of all
    its shards are returned, after the set was checked to be whole, as :func:`enctensor.load`
    does.
    ``path`` may be a URL (``storage_options`` as for :func:`enctensor.load`).
    """
    readers, _ = _api._open_readers(
        path,
        key,
        passphrase,
        verify_with,
        expect_metadata=expect_metadata,
        max_scrypt_log_n=max_scrypt_log_n,
        storage_options=storage_options,
    )
    out: dict[str, torch.Tensor] = {}
    for reader in readers:
        out.update(_read_all(reader, device))
    return out


def load(
    data: bytes | bytearray | memoryview,
    *,
    key: KeyArg | None = None,
    passphrase: Passphrase | None = None,
    device: Device = "cpu",
    verify_with: VerifyKey | None = None,
    expect_metadata: Mapping[str, str] | None = None,
    max_scrypt_log_n: int = DEFAULT_MAX_SCRYPT_LOG_N,
) -> dict[str, torch.Tensor]:
    """Like :func:`load_file`, from the bytes of a file (as ``safetensors.torch.load``)."""
    reader = _api._open_bytes(
        data,
        key,
        passphrase,
        verify_with,
        expect_metadata=expect_metadata,
        max_scrypt_log_n=max_scrypt_log_n,
    )
    return _read_all(reader, device)


def _quoted(names: Iterable[str]) -> str:
    return ", ".join(f'"{n}"' for n in sorted(names))


def load_model(
    model: torch.nn.Module,
    path: PathLike,
    *,
    key: KeyArg | None = None,
    passphrase: Passphrase | None = None,
    strict: bool = True,
    verify_with: VerifyKey | None = None,
    expect_metadata: Mapping[str, str] | None = None,
    max_scrypt_log_n: int = DEFAULT_MAX_SCRYPT_LOG_N,
    storage_options: Mapping[str, Any] | None = None,
) -> tuple[list[str], list[str]]:
    """Decrypts ``path`` straight into the storage of ``model``'s parameters and buffers, like
    ``safetensors.torch.load_model``, and returns ``(missing, unexpected)``.

    ``missing`` are names of the model that the file does not hold, ``unexpected`` names in
    the file that were not loaded (including a tied weight's second name, whose storage the
    kept name fills). Tied weights saved once by :func:`save_model` come back shared, because
    the bytes go into the model's own (shared) storage.

    ``path`` may be the index of an encrypted sharded checkpoint (``*.enct.index.json``): the
    set is checked to be whole first (as :func:`enctensor.load` does), and ``missing`` and
    ``unexpected`` (and ``strict``) are computed over the tensors of all its shards together,
    as for one file holding them all.

    Everything is checked before any byte is written: with ``strict=True`` missing or
    unexpected names raise ``RuntimeError`` listing them, and a shape or dtype that differs
    from the model's always raises ``RuntimeError`` (no silent casting: convert the model or
    the checkpoint first). The model is then filled in one parallel pass over each file.
    Module ``_load_from_state_dict`` hooks are not called. If a chunk fails to verify,
    :class:`enctensor.IntegrityError` is raised and every tensor that was being loaded is left
    zeroed (those of shards already read too), so no unverified plaintext stays in the model.
    ``key``, ``passphrase``, ``verify_with``, ``expect_metadata`` and ``max_scrypt_log_n`` are
    those of :func:`enctensor.load`.
    ``path`` may be a URL (``storage_options`` as for :func:`enctensor.load`).
    """
    readers, _ = _api._open_readers(
        path,
        key,
        passphrase,
        verify_with,
        expect_metadata=expect_metadata,
        max_scrypt_log_n=max_scrypt_log_n,
        storage_options=storage_options,
    )
    return fill_model(model, readers, strict=strict)


#: Where a tensor of the checkpoint is: (position of its file among the readers, index in it).
Where = tuple[int, int]


def fill_model(
    model: torch.nn.Module,
    readers: list[_api.Reader],
    *,
    strict: bool = True,
    names: Mapping[str, str] | None = None,
    cast: bool = False,
) -> tuple[list[str], list[str]]:
    """:func:`load_model` from opened (authenticated) readers: the files of one checkpoint,
    whose tensor names are disjoint. ``names`` renames tensors of the checkpoint to names of
    the model (a tensor not in it keeps its name); ``unexpected`` holds the renamed names.
    With ``cast``, a tensor whose dtype differs from the model's is decrypted into a staging
    tensor and copied (and converted) into it, instead of being an error."""
    rows = [reader.tensors() for reader in readers]
    sources: dict[str, Where] = {}
    for f, file_rows in enumerate(rows):
        for i, row in enumerate(file_rows):
            name = names.get(row[0], row[0]) if names is not None else row[0]
            if name in sources:
                raise RuntimeError(
                    f"the checkpoint holds two tensors for {name!r} of the model; cannot load both"
                )
            sources[name] = (f, i)
    state = model.state_dict()
    aliases = {
        n for dropped in _remove_duplicate_names(state, preferred_names=sources).values() for n in dropped
    }
    missing = [n for n in state if n not in sources and n not in aliases]
    unexpected = [n for n in sources if n not in state or n in aliases]

    errors: list[str] = []
    if strict and missing:
        errors.append(f"Missing key(s) in state_dict: {_quoted(missing)}.")
    if strict and unexpected:
        errors.append(f"Unexpected key(s) in state_dict: {_quoted(unexpected)}.")
    targets: list[tuple[str, Where, torch.Tensor]] = []
    for name, t in state.items():
        where = sources.get(name)
        if where is None or name in aliases:
            continue
        _, dtype, shape, _, _ = rows[where[0]][where[1]]
        if torch.Size(shape) != t.shape:
            errors.append(
                f"size mismatch for {name}: copying a param with shape {torch.Size(shape)} from "
                f"checkpoint, the shape in current model is {t.shape}."
            )
        elif TORCH_DTYPES.get(dtype) != t.dtype and not (cast and dtype in TORCH_DTYPES):
            errors.append(
                f"dtype mismatch for {name}: the checkpoint holds {dtype} "
                f"({TORCH_DTYPES.get(dtype, 'no torch dtype')}), the tensor in current model is "
                f"{t.dtype}; convert one of them first."
            )
        elif t.device.type == "meta":
            errors.append(
                f"{name} is on the meta device: materialize the model first (e.g. model.to_empty(device='cpu'))."
            )
        else:
            targets.append((name, where, t))
    if errors:
        raise RuntimeError(
            f"Error(s) in loading state_dict for {type(model).__name__}:\n\t" + "\n\t".join(errors)
        )
    _check_disjoint([(n, _bytes_of(t)) for n, (f, i), t in targets if _in_place(t, rows[f][i])])
    try:
        for f, reader in enumerate(readers):
            _fill_from(reader, rows[f], [(i, t) for _, (g, i), t in targets if g == f])
    except BaseException:
        # No plaintext of a failed load stays in the model: not of this file's tensors (the
        # core zeroed those it was writing), nor of the files read before it.
        with torch.no_grad():
            for _, _, t in targets:
                t.zero_()
        raise
    return missing, unexpected


def _in_place(t: torch.Tensor, row: tuple[str, str, list[int], bool, int]) -> bool:
    """Whether ``t`` can be decrypted into directly: on the CPU, contiguous, of the file's dtype."""
    return t.device.type == "cpu" and t.is_contiguous() and TORCH_DTYPES.get(row[1]) == t.dtype


def _fill_from(
    reader: _api.Reader,
    rows: list[tuple[str, str, list[int], bool, int]],
    targets: list[tuple[int, torch.Tensor]],
) -> None:
    """Decrypts tensors ``i`` of ``reader`` into ``t`` for each ``(i, t)`` of ``targets``.
    Tensors on the CPU, contiguous and of the file's dtype are filled in place, all in one
    parallel pass; the others (another device, odd strides, another dtype) go through
    staging tensors and ``copy_()``, at most ``_PINNED_BATCH`` bytes of them at a time."""
    jobs: list[Job] = [(i, _bytes_of(t)) for i, t in targets if _in_place(t, rows[i])]
    reader.read_many_into(jobs)
    staged = [(i, t) for i, t in targets if not _in_place(t, rows[i])]
    for batch in _batches([rows[i][4] for i, _ in staged], _PINNED_BATCH):
        copies: list[tuple[torch.Tensor, torch.Tensor]] = []
        jobs = []
        for i, t in (staged[k] for k in batch):
            _, dtype, shape, _, _ = rows[i]
            buf = torch.empty(shape, dtype=TORCH_DTYPES[dtype], pin_memory=t.device.type == "cuda")
            jobs.append((i, _bytes_of(buf)))
            copies.append((t, buf))
        reader.read_many_into(jobs)
        with torch.no_grad():
            for t, buf in copies:
                t.copy_(buf)


def _check_disjoint(destinations: list[tuple[str, np.ndarray]]) -> None:
    """Refuses destinations that overlap: the core writes them in parallel."""
    spans = sorted((a.ctypes.data, a.ctypes.data + a.nbytes, name) for name, a in destinations if a.nbytes)
    for (_, end, first), (start, _, second) in itertools.pairwise(spans):
        if start < end:
            raise RuntimeError(
                f"tensors {first!r} and {second!r} of the model overlap in memory; cannot load both"
            )


# ---------------------------------------------------------------------------------------------
# safe_open(..., framework="pt")


def _from_numpy(a: np.ndarray, dtype: str) -> torch.Tensor:
    """A torch tensor over the bytes of ``a`` (no copy when ``a`` is contiguous and writable).
    bf16/fp8 arrays (ml_dtypes) are reinterpreted through uint8."""
    tdtype = _torch_dtype("", dtype)
    if a.size == 0:
        return torch.empty(a.shape, dtype=tdtype)  # numpy may give empty arrays any stride
    if not (a.flags.c_contiguous and a.flags.writeable):
        a = np.array(a, order="C")
    return torch.from_numpy(a.reshape(-1).view(np.uint8)).view(tdtype).reshape(a.shape)


def _move(t: torch.Tensor, device: Any) -> torch.Tensor:
    dev = _to_device(device)
    return t if dev.type == "cpu" else t.to(dev)


register(("pt", "torch"), _from_numpy, to_device=_move)
