"""Apache TVM adapter: encrypted parameter dicts for the Relax VM.

``save(params, path, key=...)`` takes a dict of ``tvm.runtime.Tensor`` or numpy arrays (what
``tvm.runtime.save_param_dict`` takes); ``load(path, key=...)`` returns a dict of
``tvm.runtime.Tensor`` ready to pass to a ``relax.VirtualMachine``. Loading allocates each
tensor with TVM and decrypts straight into its memory (seen as bytes through DLPack), so no
byte is copied after it is decrypted. ``load_tensor_cache(dir, key=...)`` loads an encrypted
TVM / MLC-LLM tensor cache (see :mod:`enctensor.convert.tvm_cache`) as
``tvm.contrib.tvmjs.load_tensor_cache`` loads the plaintext one.
``safe_open(..., framework="tvm")`` goes the other way:
TVM adopts the decrypted numpy buffer (64-byte aligned, as TVM's ``from_dlpack`` requires);
bf16 and fp8, which numpy cannot export through DLPack, are adopted as bytes and re-typed
with a TVM tensor view.

Importing this module imports TVM; ``import enctensor`` alone does not.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

try:
    import tvm
    import tvm.runtime
except ImportError as e:  # pragma: no cover - exercised in a subprocess by the tests
    raise ImportError(
        "enctensor.tvm needs Apache TVM, which is not installed: pip install '.[tvm]' (from a clone of enctensor)"
    ) from e

from pathlib import Path

from . import _api
from ._alloc import aligned_empty, small_destinations
from ._api import DEFAULT_MAX_SCRYPT_LOG_N
from ._dtypes import numpy_dtype
from ._frameworks import register
from ._keys import KeyArg, Passphrase, VerifyKey, WriteKey
from .convert._common import about
from .convert.tvm_cache import CACHE_FILES, FORMAT_NAMES, TVM_DTYPES, Record, index_name, open_cache
from .errors import FormatError

__all__ = ["load", "load_bytes", "load_tensor_cache", "save", "save_bytes"]

PathLike = str | os.PathLike[str]
Params = Mapping[str, "tvm.runtime.Tensor | np.ndarray"]

# numpy exports these through DLPack itself; the others (ml_dtypes) go through a byte view.
_DLPACK_NATIVE = {"BOOL", "U8", "I8", "I16", "U16", "F16", "I32", "U32", "F32", "I64", "U64", "F64"}
_ALIGN = 64
_KDL_CPU = 1


def _tvm_dtype(name: str, dtype: str) -> str:
    try:
        return TVM_DTYPES[dtype]
    except KeyError:
        raise FormatError(f"tensor {name!r} has dtype {dtype}, which has no TVM equivalent") from None


def _device(device: Any) -> tvm.runtime.Device:
    return tvm.device(device) if isinstance(device, str) else device


def _is_cpu(device: tvm.runtime.Device) -> bool:
    return int(device.dlpack_device_type()) == _KDL_CPU


def _adopt(buf: np.ndarray, dtype: str, shape: Iterable[int]) -> tvm.runtime.Tensor:
    """A TVM tensor over ``buf`` (uint8, C-contiguous, 64-byte aligned, exactly the tensor's
    bytes) without copying it; TVM keeps ``buf`` alive."""
    shape = tuple(int(d) for d in shape)
    if buf.nbytes == 0:
        # Nothing to adopt, and an empty numpy array's address need not be aligned.
        return tvm.runtime.empty(shape, TVM_DTYPES[dtype])
    if dtype in _DLPACK_NATIVE:
        return tvm.runtime.from_dlpack(buf.view(numpy_dtype(dtype)).reshape(shape))
    return tvm.runtime.from_dlpack(buf)._create_view(shape, TVM_DTYPES[dtype])


def _bytes_of(t: tvm.runtime.Tensor, nbytes: int) -> np.ndarray:
    """A writable uint8 numpy array over the memory of ``t`` (host, compact), via DLPack."""
    if nbytes == 0:
        return np.empty(0, dtype=np.uint8)
    return np.from_dlpack(t._create_view((nbytes,), "uint8"))


def _read_all(reader: _api.Reader, device: Any) -> dict[str, tvm.runtime.Tensor]:
    rows = reader.tensors()
    # Large tensors: TVM allocates each one (64-byte aligned, plain pages) and the core
    # decrypts straight into it: measured 3-6x faster on first touch than adopting numpy's
    # huge-page buffers (benches/bench_adapters.py), and still no copy. Small ones: TVM
    # adopts views of shared numpy blocks (``destinations``), ~2.5 us a tensor instead of ~22 us for
    # tvm.runtime.empty plus the DLPack view the core writes through.
    packed = small_destinations([row[4] for row in rows])
    out: dict[str, tvm.runtime.Tensor] = {}
    jobs: list[tuple[int, Any]] = []
    for i, (name, dtype, shape, _, nbytes) in enumerate(rows):
        tvm_dtype = _tvm_dtype(name, dtype)
        buf = packed.get(i)
        if buf is not None:
            out[name] = _adopt(buf, dtype, shape)
        else:
            out[name] = tvm.runtime.empty(shape, tvm_dtype)
            buf = _bytes_of(out[name], nbytes)
        jobs.append((i, buf))
    reader.read_many_into(jobs)
    if device is not None and not _is_cpu(dev := _device(device)):
        out = {name: t.copyto(dev) for name, t in out.items()}
    return out


def load(
    path: PathLike,
    *,
    key: KeyArg | None = None,
    passphrase: Passphrase | None = None,
    device: Any = None,
    verify_with: VerifyKey | None = None,
    expect_metadata: Mapping[str, str] | None = None,
    max_scrypt_log_n: int = DEFAULT_MAX_SCRYPT_LOG_N,
    storage_options: Mapping[str, Any] | None = None,
) -> dict[str, tvm.runtime.Tensor]:
    """Decrypts and verifies every tensor of ``path`` into ``tvm.runtime.Tensor``s (file order).

    With ``device`` unset (or a CPU device) each tensor is allocated by TVM and decrypted into
    in place; another device (``tvm.cuda(0)``, ``"cuda:0"``) gets a copy of each. ``key``,
    ``passphrase``, ``verify_with``, ``expect_metadata`` and ``max_scrypt_log_n`` are those of
    :func:`enctensor.load`.
    Raises :class:`enctensor.WrongKeyError` if the key does not open the file and
    :class:`enctensor.IntegrityError` if any byte was modified.
    ``path`` may be a URL (``storage_options`` as for :func:`enctensor.load`).
    """
    reader = _api._open(
        path,
        key,
        passphrase,
        verify_with,
        expect_metadata=expect_metadata,
        max_scrypt_log_n=max_scrypt_log_n,
        storage_options=storage_options,
    )
    return _read_all(reader, device)


def load_bytes(
    data: bytes | bytearray | memoryview,
    *,
    key: KeyArg | None = None,
    passphrase: Passphrase | None = None,
    device: Any = None,
    verify_with: VerifyKey | None = None,
    expect_metadata: Mapping[str, str] | None = None,
    max_scrypt_log_n: int = DEFAULT_MAX_SCRYPT_LOG_N,
) -> dict[str, tvm.runtime.Tensor]:
    """Like :func:`load`, from the bytes of a file."""
    reader = _api._open_bytes(
        data,
        key,
        passphrase,
        verify_with,
        expect_metadata=expect_metadata,
        max_scrypt_log_n=max_scrypt_log_n,
    )
    return _read_all(reader, device)


def _cache_index(path: PathLike) -> Path:
    """The encrypted index of the cache at ``path``: the directory's, or ``path`` itself."""
    p = Path(path)
    if not p.is_dir():
        return p
    found = [p / index_name(f) for f in CACHE_FILES if (p / index_name(f)).exists()]
    if len(found) != 1:
        names = " or ".join(index_name(f) for f in CACHE_FILES)
        raise FileNotFoundError(
            f"{p}: " + (f"no encrypted tensor cache ({names}) in it" if not found else f"holds both {names}")
        )
    return found[0]


def _cache_tensor(record: Record) -> tuple[tvm.runtime.Tensor, np.ndarray, bool]:
    """The CPU tensor TVM's loader makes for ``record``, the buffer its stored bytes are
    decrypted into (the tensor's own memory when they are its values as they are), and
    whether the buffer is a staging buffer to finish with :func:`_finish_cache_tensor`."""
    if record.typed_as() is None:
        # The shape comes from the file: never allocate more than the bytes it holds describe.
        dt = tvm.runtime.DataType(record.dtype)
        if math.prod(record.shape) * dt.bits * dt.lanes > 8 * record.nbytes:
            raise FormatError(
                f"record {record.name!r}: shape {record.shape} of {record.dtype} needs more than the"
                f" {record.nbytes} bytes it holds"
            )
    t = tvm.runtime.empty(record.shape, record.dtype)
    if record.typed_as() is not None and not record.bf16_encoded:
        return t, _bytes_of(t, record.nbytes), False
    return t, aligned_empty(record.nbytes), True


def _finish_cache_tensor(t: tvm.runtime.Tensor, record: Record, buf: np.ndarray) -> None:
    """Fills ``t`` from the decrypted bytes of a record stored other than as its values."""
    if record.bf16_encoded and record.typed_as() == "BF16":
        # bfloat16 is the upper half of a float32: widen as TVM's loader does.
        wide = _bytes_of(t, buf.nbytes * 2).view(np.uint32)
        np.left_shift(buf.view(np.uint16), 16, out=wide, dtype=np.uint32)
    else:
        # Bytes of a dtype enctensor has no name for (float4, ...): read as TVM's loader
        # reads them, failing where it fails.
        t.copyfrom(np.frombuffer(buf, dtype=record.dtype).reshape(record.shape))


def load_tensor_cache(
    path: PathLike,
    *,
    key: KeyArg | None = None,
    passphrase: Passphrase | None = None,
    device: Any = None,
    verify_with: VerifyKey | None = None,
    expect_metadata: Mapping[str, str] | None = None,
    expect_checkpoint: str | None = None,
    max_scrypt_log_n: int = DEFAULT_MAX_SCRYPT_LOG_N,
) -> tuple[dict[str, tvm.runtime.Tensor], Any]:
    """Decrypts an encrypted tensor cache (a directory holding ``tensor-cache.enct.index.json``,
    or that index) and returns what ``tvm.contrib.tvmjs.load_tensor_cache`` returns for the
    plaintext cache: ``(params, metadata)``, the tensors in the cache's order with its dtypes
    and shapes (``f32-to-bf16`` records widened back to float32, as TVM does) and the cache's
    ``metadata``.

    Every file of the set is opened and authenticated and the set checked whole before any
    tensor is decrypted (a missing, swapped or mixed-in shard is an
    :class:`enctensor.IntegrityError`). ``device`` (default CPU) is where the tensors go;
    ``key``, ``passphrase``, ``verify_with``, ``expect_metadata`` and ``max_scrypt_log_n`` are
    those of :func:`load` and apply to every file, ``expect_checkpoint`` pins the set's
    checkpoint id (see :func:`enctensor.load_sharded`).
    """

    def open_shard(shard: Path) -> _api.Reader:
        with about(shard):
            return _api._open(
                shard,
                key,
                passphrase,
                verify_with,
                expect_metadata=expect_metadata,
                max_scrypt_log_n=max_scrypt_log_n,
            )

    cache, readers = open_cache(_cache_index(path), open_shard, expect_checkpoint=expect_checkpoint)
    out: dict[str, tvm.runtime.Tensor] = {}
    for shard, (_, reader) in zip(cache.shards, readers, strict=True):
        staged: list[tuple[tvm.runtime.Tensor, Record, np.ndarray]] = []
        jobs: list[tuple[int, Any]] = []
        for i, record in enumerate(shard.records):
            t, buf, is_staged = _cache_tensor(record)
            out[record.name] = t
            jobs.append((i, buf))
            if is_staged:
                staged.append((t, record, buf))
        reader.read_many_into(jobs)
        for t, record, buf in staged:
            _finish_cache_tensor(t, record, buf)
    if device is not None and not _is_cpu(dev := _device(device)):
        out = {name: t.copyto(dev) for name, t in out.items()}
    return out, cache.metadata


def _array(name: str, value: Any) -> np.ndarray:
    """``value`` as a numpy array for the numpy API: numpy arrays as they are, TVM tensors as a
    view of their bytes with the matching numpy dtype (ml_dtypes for bf16 and fp8)."""
    if isinstance(value, np.ndarray):
        return value
    if not isinstance(value, tvm.runtime.Tensor):
        raise TypeError(
            f"tensor {name!r} must be a tvm.runtime.Tensor or a numpy array, not {type(value).__name__}"
        )
    tvm_dtype = str(value.dtype)
    if tvm_dtype not in FORMAT_NAMES:
        supported = ", ".join(TVM_DTYPES.values())
        raise TypeError(
            f"tensor {name!r} has dtype {tvm_dtype}, which enctensor cannot store (supported: {supported})"
        )
    if not value.is_contiguous():
        raise ValueError(
            f"tensor {name!r} is not contiguous, which enctensor cannot save: save a compact copy"
        )
    if not _is_cpu(value.device):
        value = value.copyto(tvm.cpu())
    shape = tuple(int(d) for d in value.shape)
    dtype = numpy_dtype(FORMAT_NAMES[tvm_dtype])
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    return _bytes_of(value, nbytes).view(dtype).reshape(shape)


def _arrays(params: Params) -> dict[str, np.ndarray]:
    if not isinstance(params, Mapping):
        raise TypeError(f"params must be a dict of name to tvm.runtime.Tensor, not {type(params).__name__}")
    return {name: _array(name, value) for name, value in params.items()}


def save(
    params: Params,
    path: PathLike,
    *,
    key: WriteKey | Iterable[WriteKey] | None = None,
    passphrase: Passphrase | None = None,
    metadata: Mapping[str, str] | None = None,
    **options: Any,
) -> None:
    """Encrypts a parameter dict (``tvm.runtime.Tensor`` or numpy values) to ``path``
    (atomically). Tensors on other devices are copied to the host first.

    ``key`` is 32 raw bytes or a ``pathlib.Path`` to a key file (or several, any of which
    opens the file; never a ``str``); ``passphrase`` (``str`` or UTF-8 bytes) derives a key
    with scrypt instead. ``options`` are those of :func:`enctensor.save`
    (``plaintext`` names tensors stored unencrypted but authenticated; ``recipients``,
    ``sign_with``, ``chunk_size``, ``scrypt_log_n``).
    """
    _api.save(_arrays(params), path, key=key, passphrase=passphrase, metadata=metadata, **options)


def save_bytes(
    params: Params,
    *,
    key: WriteKey | Iterable[WriteKey] | None = None,
    passphrase: Passphrase | None = None,
    metadata: Mapping[str, str] | None = None,
    **options: Any,
) -> bytes:
    """Like :func:`save`, returning the encrypted file as bytes."""
    return _api.save_bytes(_arrays(params), key=key, passphrase=passphrase, metadata=metadata, **options)


# ---------------------------------------------------------------------------------------------
# safe_open(..., framework="tvm")


def _from_numpy(a: np.ndarray, dtype: str) -> tvm.runtime.Tensor:
    """A TVM tensor over ``a``'s memory when TVM can adopt it (C-contiguous, writable, 64-byte
    aligned), else over an aligned copy."""
    if a.flags.c_contiguous and a.flags.writeable and a.ctypes.data % _ALIGN == 0:
        buf = a.reshape(-1).view(np.uint8)
    else:
        buf = aligned_empty(a.nbytes)
        buf.view(a.dtype).reshape(a.shape)[...] = a
    return _adopt(buf, dtype, a.shape)


def _move(t: tvm.runtime.Tensor, device: Any) -> tvm.runtime.Tensor:
    dev = _device(device)
    return t if _is_cpu(dev) else t.copyto(dev)


register(("tvm",), _from_numpy, to_device=_move)
