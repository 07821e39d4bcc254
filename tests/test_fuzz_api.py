"""Property tests of the public API: random tensors round-trip exactly; random mutations of
valid files give a typed error or, when semantically neutral, the very same tensors; and a
bounded byte-level fuzz loop over ``load_bytes`` / ``inspect_bytes`` (no atheris needed).

Any other outcome is a bug: a Rust panic surfaces as ``pyo3_runtime.PanicException``, which
derives from ``BaseException``, so the checks below catch ``BaseException``.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from conftest import ALL_DTYPES, KEY, OTHER_KEY, same, sample_array
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import enctensor
from enctensor import FormatError, IntegrityError, WrongKeyError

TYPED = (FormatError, WrongKeyError, IntegrityError)
CHUNK_SIZES = (4096, 8192, 16384, 1 << 20)

# Names and metadata: any Unicode scalar values (no lone surrogates: those are not UTF-8).
TEXT = st.text(st.characters(codec="utf-8"), max_size=12)
NAMES = st.text(st.characters(codec="utf-8"), min_size=1, max_size=12) | st.just(
    "ü" * 2048  # exactly 4096 UTF-8 bytes, the longest name allowed
)
SMALL_SHAPES = st.lists(st.integers(0, 6), min_size=0, max_size=4).map(tuple)
# Long enough to span several chunks of the smaller chunk sizes.
LONG_SHAPES = st.tuples(st.integers(1, 9000)) | st.tuples(st.integers(1, 300), st.integers(1, 60))
SHAPES = SMALL_SHAPES | LONG_SHAPES


@st.composite
def tensor_dicts(draw: st.DrawFn, max_tensors: int = 5) -> dict[str, np.ndarray]:
    names = draw(st.lists(NAMES, max_size=max_tensors, unique=True))
    return {
        name: sample_array(draw(st.sampled_from(ALL_DTYPES)), draw(SHAPES), draw(st.integers(0, 2**32 - 1)))
        for name in names
    }


def index_for(shape: tuple[int, ...], data: st.DataObject) -> tuple[Any, ...]:
    """A numpy-style basic index: a slice or an integer per dimension (or an ellipsis)."""
    items: list[Any] = []
    for n in shape:
        item: st.SearchStrategy[Any] = (
            st.one_of(st.slices(n), st.integers(-n, n - 1)) if n else st.just(slice(None))
        )
        items.append(data.draw(item))
    ellipsis: bool = data.draw(st.booleans())
    if items and ellipsis:
        cut = data.draw(st.integers(0, len(items) - 1))
        items = [*items[:cut], Ellipsis]
    return tuple(items)


def same_tensors(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> bool:
    return list(got) == list(want) and all(same(got[k], want[k]) for k in want)


# ---- round trips -----------------------------------------------------------------------------


@settings(max_examples=100, deadline=None)
@given(
    tensors=tensor_dicts(),
    metadata=st.dictionaries(TEXT, TEXT, max_size=6),
    chunk_size=st.sampled_from(CHUNK_SIZES),
    data=st.data(),
)
def test_save_bytes_load_bytes_round_trip(
    tensors: dict[str, np.ndarray], metadata: dict[str, str], chunk_size: int, data: st.DataObject
) -> None:
    plaintext = data.draw(st.lists(st.sampled_from(sorted(tensors)), unique=True)) if tensors else []
    blob = enctensor.save_bytes(
        tensors, key=KEY, metadata=metadata, chunk_size=chunk_size, plaintext=plaintext
    )
    assert same_tensors(enctensor.load_bytes(blob, key=KEY), tensors)
    info = enctensor.inspect_bytes(blob)
    assert info["metadata"] == metadata
    assert info["chunk_size"] == chunk_size and info["file_size"] == len(blob)
    assert [t["name"] for t in info["tensors"]] == list(tensors)
    for t in info["tensors"]:
        arr = tensors[t["name"]]
        assert tuple(t["shape"]) == arr.shape and t["nbytes"] == arr.nbytes
        assert t["encrypted"] == (t["name"] not in plaintext)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tensors=tensor_dicts(max_tensors=3), chunk_size=st.sampled_from(CHUNK_SIZES[:3]), data=st.data())
def test_safe_open_get_tensor_and_slices_round_trip(
    tmp_path_factory: pytest.TempPathFactory,
    tensors: dict[str, np.ndarray],
    chunk_size: int,
    data: st.DataObject,
) -> None:
    metadata = data.draw(st.dictionaries(TEXT, TEXT, max_size=3))
    path = tmp_path_factory.mktemp("rt") / "m.enct"
    enctensor.save(tensors, path, key=KEY, metadata=metadata, chunk_size=chunk_size)
    with enctensor.safe_open(path, key=KEY) as f:
        assert f.keys() == list(tensors)
        assert f.metadata() == metadata
        for name, arr in tensors.items():
            assert same(f.get_tensor(name), arr), name
            sl = f.get_slice(name)
            assert sl.get_shape() == list(arr.shape)
            for _ in range(3):
                idx = index_for(arr.shape, data)
                got = np.ascontiguousarray(sl[idx])
                want = np.ascontiguousarray(arr[idx])
                assert same(got, want), (name, arr.shape, idx)
    path.unlink()


def test_surrogates_and_bad_names_are_clean_errors() -> None:
    """Strings that are not UTF-8, and names the format forbids, are refused with an ordinary
    exception, never a Rust panic."""
    arr = np.arange(3, dtype=np.int8)
    bad: list[Callable[[], object]] = [
        lambda: enctensor.save_bytes({"a": arr}, key=KEY, metadata={"k": "\ud800"}),
        lambda: enctensor.save_bytes({"a": arr}, key=KEY, metadata={"\udfff": "v"}),
        lambda: enctensor.save_bytes({"\ud800": arr}, key=KEY),
        lambda: enctensor.save_bytes({"": arr}, key=KEY),
        lambda: enctensor.save_bytes({"ü" * 2049: arr}, key=KEY),
        lambda: enctensor.save_bytes({"a": arr}, key=KEY, chunk_size=4095),
        lambda: enctensor.save_bytes({"a": arr}, key=KEY, chunk_size=1 << 27),
        lambda: enctensor.save_bytes({"a": arr}, key=KEY, chunk_size=-1),
        lambda: enctensor.save_bytes({"a": arr}, passphrase="p", scrypt_log_n=40),
        lambda: enctensor.save_bytes({"a": arr}, passphrase="p", scrypt_log_n=300),
    ]
    for i, call in enumerate(bad):
        try:
            call()
        except (ValueError, TypeError, OverflowError):
            continue
        except BaseException as e:  # a PanicException is neither
            raise AssertionError(f"case {i}: {type(e).__module__}.{type(e).__name__}: {e}") from e
        raise AssertionError(f"case {i} was accepted")


# ---- mutations of valid files ------------------------------------------------------------------


def _base_files() -> list[tuple[bytes, dict[str, np.ndarray], dict[str, str]]]:
    """Small valid files (two keys, so that one stanza can be mutated harmlessly), each with
    encrypted and clear tensors, several chunks, an empty and a 0-d tensor."""
    out = []
    for seed in range(3):
        tensors = {
            "w": sample_array(np.float32, (40, 33), seed),
            "clear": sample_array(np.int16, (700,), seed + 10),
            "empty": np.zeros((0, 3), dtype=np.uint8),
            "s": np.array(seed, dtype=np.float64),
        }
        metadata = {"seed": str(seed), "ü": "ñ"}
        blob = enctensor.save_bytes(
            tensors, key=[KEY, OTHER_KEY], metadata=metadata, chunk_size=4096, plaintext=["clear"]
        )
        out.append((blob, tensors, metadata))
    return out


BASES = _base_files()
HEAD = 4096 + 600  # the preamble, stanza area, header, MAC and tags of the base files


def mutate(rng: random.Random, blob: bytes, other: bytes) -> bytes:
    """One random structural mutation: flip, insert, delete, truncate, splice or overwrite."""
    if not blob:
        return rng.randbytes(rng.randrange(1, 64))
    data = bytearray(blob)
    # Half of the positions in the first page and header, where most of the meaning is.
    pos = rng.randrange(min(HEAD, len(data))) if rng.random() < 0.5 else rng.randrange(len(data))
    kind = rng.choice(
        ["flip", "flip", "byte", "insert", "delete", "truncate", "splice", "crossover", "ascii"]
    )
    if kind == "flip":
        data[pos] ^= 1 << rng.randrange(8)
    elif kind == "byte":
        data[pos] = rng.randrange(256)
    elif kind == "insert":
        data[pos:pos] = rng.randbytes(rng.choice([1, 2, 16, 64, 4096]))
    elif kind == "delete":
        del data[pos : pos + rng.choice([1, 2, 16, 64, 4096])]
    elif kind == "truncate":
        del data[pos:]
    elif kind == "splice":  # a same-length piece of another valid file, at the same place
        n = rng.choice([1, 16, 64, 512])
        data[pos : pos + n] = other[pos : pos + n]
    elif kind == "crossover":
        data = data[:pos] + bytearray(other[pos:])
    else:  # an ASCII digit or JSON-ish character: keeps the header JSON plausible
        data[pos] = ord(rng.choice('0123456789abcdef{}[]",: -.eE\\'))
    return bytes(data)


def check_outcome(data: bytes) -> str:
    """Loads ``data``; returns the outcome's name, failing on anything but a typed error or
    the tensors and metadata of one of the genuine files (a crossover early in the file can
    swap in all of another genuine file, encrypted to the same keys; no mutation can make new
    content without a key). ``inspect_bytes`` must fail exactly when the load is a format
    failure (both run the same key-less checks)."""
    try:
        got = enctensor.load_bytes(data, key=KEY)
    except TYPED as e:
        outcome = next(t.__name__ for t in TYPED if isinstance(e, t))
    except BaseException as e:
        raise AssertionError(f"untyped {type(e).__module__}.{type(e).__name__}: {e}") from e
    else:
        matches = [i for i, (_, tensors, _) in enumerate(BASES) if same_tensors(got, tensors)]
        assert matches, "a mutated file loaded tensors that no genuine file holds"
        outcome = "loaded"
    try:
        info = enctensor.inspect_bytes(data)
    except FormatError:
        assert outcome == "FormatError", f"inspect failed but the load gave {outcome}"
    except BaseException as e:
        raise AssertionError(f"inspect: untyped {type(e).__module__}.{type(e).__name__}: {e}") from e
    else:
        assert outcome != "FormatError", "the load found a format failure that inspect did not"
        if outcome == "loaded":
            assert info["metadata"] == BASES[matches[0]][2]
    return outcome


@settings(max_examples=500, deadline=None)
@given(which=st.integers(0, len(BASES) - 1), seed=st.integers(0, 2**64 - 1), n=st.integers(1, 3))
def test_mutations_give_typed_errors_or_the_same_tensors(which: int, seed: int, n: int) -> None:
    data, other = BASES[which][0], BASES[(which + 1) % len(BASES)][0]
    rng = random.Random(seed)
    for _ in range(n):
        data = mutate(rng, data, other)
    check_outcome(data)


def test_neutral_mutations_load_the_same_tensors() -> None:
    """Mutations that change nothing a reader trusts still load: the other key's stanza."""
    blob = BASES[0][0]
    area = blob[32:4096]
    start = area.index(b'"body":"', area.index(b'"type":"key"', area.index(b'"type":"key"') + 1)) + 8
    for k in range(0, 96, 7):
        data = bytearray(blob)
        data[32 + start + k] = ord("0") if data[32 + start + k] != ord("0") else ord("1")
        assert check_outcome(bytes(data)) == "loaded"
        assert same_tensors(enctensor.load_bytes(bytes(data), key=KEY), BASES[0][1])
        # The file still opens with the key whose stanza is intact, and no longer with the other.
        with pytest.raises(WrongKeyError):
            enctensor.load_bytes(bytes(data), key=OTHER_KEY)


def test_byte_level_fuzz_loop() -> None:
    """A bounded, seeded fuzz loop: stacked random mutations of the valid base files."""
    rng = random.Random(20240615)
    outcomes: Counter[str] = Counter()
    iterations = 20_000
    for _ in range(iterations):
        which = rng.randrange(len(BASES))
        data, other = BASES[which][0], BASES[(which + 1) % len(BASES)][0]
        for _ in range(rng.choice([1, 1, 1, 2, 4, 8])):
            data = mutate(rng, data, other)
        outcomes[check_outcome(data)] += 1
    print(f"\nbyte-level fuzz: {iterations} mutated files: {dict(outcomes)}")
    assert sum(outcomes.values()) == iterations
    # The loop reaches every class of failure (and some neutral mutations).
    assert {"FormatError", "WrongKeyError", "IntegrityError"} <= set(outcomes)


def test_random_bytes_and_prefixes() -> None:
    """Pure noise, and noise after a valid preamble, never get past the format checks."""
    rng = random.Random(7)
    blob = BASES[0][0]
    for _ in range(500):
        n = rng.choice([0, 1, 31, 32, 33, 100, 4096, 10000])
        noise = rng.randbytes(n)
        for data in (noise, blob[: rng.randrange(1, 64)] + noise):
            with pytest.raises(FormatError):
                enctensor.load_bytes(data, key=KEY)
            with pytest.raises(FormatError):
                enctensor.inspect_bytes(data)
