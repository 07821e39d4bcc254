"""Hugging Face ``transformers`` models from an encrypted model directory.

An encrypted model directory is a Hugging Face model directory whose weights are enctensor
files, as ``enctensor encrypt MODEL_DIR OUT_DIR`` writes it (:mod:`enctensor.convert.directory`):
``model.safetensors`` is ``model.enct``, a sharded checkpoint's ``model.safetensors.index.json``
is ``model.enct.index.json`` (an encrypted sharded set, shards ``X.enct`` beside it), and
every other file (``config.json``, tokenizer files, ...) is a plaintext copy.
:func:`from_pretrained` builds the model on the meta device (no weight memory), gives its
parameters and buffers uninitialized CPU memory once (``to_empty``) and decrypts the
checkpoint straight into them (:func:`enctensor.torch.fill_model`, the in-place path of
:func:`enctensor.torch.load_model`), so the weights are in memory once, and in plaintext only
inside the model.

Only the weights are encrypted, but the plaintext copies (``config.json``,
``generation_config.json``, tokenizer files, remote code) are authenticated too: the
encrypted weights carry the directory's manifest (:mod:`enctensor.convert.manifest`), and
:func:`from_pretrained` checks the whole directory against it (every copied file's size and
SHA-256, no file missing or added) right after the weights are authenticated and before
anything else is read, so a changed config cannot change the model built around the genuine
weights. A directory without a manifest (assembled by hand rather than by
``enctensor.convert.encrypt_file``) is refused. The check is made once, at open: a writer
racing the load could still swap a file between the check and transformers reading it, so
keep the directory where only its owner can write. Check the directory with
:func:`enctensor.convert.verify_directory` before loading its tokenizer with transformers.

Needs ``transformers`` 5 or later and PyTorch. The loading follows transformers 5's own
loader and calls its helpers (key renaming, tied weights, initialization, the names it
ignores), so that a model comes out as transformers' ``from_pretrained`` makes it; a
transformers release that changes those helpers may need a change here.
"""

from __future__ import annotations

import copy
import logging
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

try:
    import transformers
except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError(
        "enctensor.transformers needs the transformers library, which is not installed: pip install transformers"
    ) from e

from . import _api
from ._api import DEFAULT_MAX_SCRYPT_LOG_N, PathLike
from ._keys import KeyArg, Passphrase, VerifyKey
from .convert.directory import check_loaded
from .torch import TORCH_DTYPES, fill_model

if int(transformers.__version__.split(".", 1)[0]) < 5:  # pragma: no cover - depends on the environment
    raise ImportError(
        f"enctensor.transformers needs transformers 5 or later (found {transformers.__version__}): pip install -U transformers"
    )

from transformers.conversion_mapping import get_model_conversion_mapping
from transformers.core_model_loading import (
    WeightConverter,
    WeightRenaming,
    build_glob_alternation,
    rename_source_key,
)

__all__ = ["INDEX_NAME", "WEIGHTS_NAME", "from_pretrained"]

#: The weights of a single-file encrypted model (``model.safetensors`` encrypted).
WEIGHTS_NAME = "model.enct"
#: The index of a sharded encrypted model (``model.safetensors.index.json`` encrypted).
INDEX_NAME = "model.enct.index.json"

logger = logging.getLogger(__name__)

# Arguments of transformers' from_pretrained about downloading, devices, quantization or
# other sources of weights, which this loader (local, CPU, one encrypted checkpoint) does not
# do; refused rather than silently ignored.
_UNSUPPORTED = frozenset(
    {
        "adapter_kwargs",
        "adapter_name",
        "cache_dir",
        "device_map",
        "device_mesh",
        "disable_mmap",
        "distributed_config",
        "force_download",
        "fusion_config",
        "gguf_file",
        "ignore_mismatched_sizes",
        "kernel_config",
        "max_memory",
        "offload_buffers",
        "offload_folder",
        "proxies",
        "quantization_config",
        "revision",
        "state_dict",
        "subfolder",
        "token",
        "tp_plan",
        "tp_size",
        "use_kernels",
        "use_safetensors",
        "variant",
        "weights_only",
    }
)
# Accepted and without effect here, as in transformers (or always true here: local files).
_IGNORED = ("local_files_only", "low_cpu_mem_usage", "_fast_init")


def from_pretrained(
    cls_or_auto: Any,
    directory: PathLike,
    *,
    key: KeyArg | None = None,
    passphrase: Passphrase | None = None,
    verify_with: VerifyKey | None = None,
    expect_metadata: Mapping[str, str] | None = None,
    max_scrypt_log_n: int = DEFAULT_MAX_SCRYPT_LOG_N,
    strict: bool = True,
    config: Any = None,
    dtype: Any = "auto",
    output_loading_info: bool = False,
    **kwargs: Any,
) -> Any:
    """Loads a ``transformers`` model from the encrypted model directory ``directory``, like
    ``cls_or_auto.from_pretrained(plaintext_directory, **kwargs)``.

    ``cls_or_auto`` is a model class (``BertModel``) or an auto class (``AutoModel``,
    ``AutoModelForCausalLM``, ...). The configuration is read from ``directory/config.json``
    (plaintext) unless ``config`` is given (a config object, or a directory or file to read
    it from); other keyword arguments override configuration attributes or go to the
    model's constructor, as in transformers (``attn_implementation``, ``trust_remote_code``,
    ``key_mapping`` too). ``dtype`` is as in transformers: ``"auto"`` (the default) takes
    the configuration's ``dtype``, else the checkpoint's; a ``torch.dtype`` or its name
    loads the weights converted to it. The weights are ``directory/model.enct`` or, if there
    is none, the sharded checkpoint ``directory/model.enct.index.json``.

    ``key``, ``passphrase``, ``verify_with``, ``expect_metadata`` and ``max_scrypt_log_n`` are
    those of :func:`enctensor.load` (for a sharded checkpoint they apply to every shard, and
    the set is checked to be whole). Every file is authenticated before the model is built:
    the weights, and every other file of the model directory against the manifest they carry
    (an :class:`~enctensor.IntegrityError` names a changed, missing or added file).

    The model is built on the meta device, its parameters and buffers then get CPU memory
    once (``to_empty``) and the checkpoint is decrypted straight into them: the weights are
    never allocated twice. Checkpoint names are mapped to the model's as transformers maps
    them (the base model prefix added or removed, its renamings; a checkpoint that needs
    transformers' tensor conversions, such as fused experts, is refused with
    ``NotImplementedError``). Tied weights are tied as transformers ties them, and buffers
    the checkpoint does not hold (non-persistent ones such as ``position_ids``) are set by
    the model's own initialization.

    With ``strict=True`` (the default) the checkpoint must fill the model: a weight of the
    model that the checkpoint lacks, or a tensor of the checkpoint that the model does not
    use, is a ``RuntimeError`` raised before anything is decrypted, except the names
    transformers itself ignores (a tied weight whose partner is present, the model's
    ``_keys_to_ignore_on_load_missing``/``_unexpected`` patterns, stale ``position_ids``
    and rotary ``inv_freq`` buffers). With ``strict=False`` missing weights are initialized
    by the model as transformers initializes them and unused tensors are skipped, both
    logged as warnings. A shape that differs from the model's is always a ``RuntimeError``.

    Returns the model in evaluation mode, or ``(model, loading_info)`` with
    ``output_loading_info=True``, where ``loading_info`` has transformers' keys
    ``missing_keys``, ``unexpected_keys``, ``mismatched_keys`` and ``error_msgs``.
    """
    if not isinstance(strict, bool):
        raise TypeError(f"strict must be a bool, not {type(strict).__name__}")
    auto = _is_auto_class(cls_or_auto)
    unsupported = sorted(_UNSUPPORTED & kwargs.keys())
    if unsupported:
        raise TypeError(
            f"enctensor.transformers.from_pretrained does not take {', '.join(unsupported)}: it loads the"
            " encrypted checkpoint of a local directory onto the CPU (move the model afterwards, e.g."
            " model.to('cuda'))"
        )
    for name in _IGNORED:
        kwargs.pop(name, None)
    torch_dtype = kwargs.pop("torch_dtype", None)  # transformers' older name for dtype
    if torch_dtype is not None and dtype == "auto":
        dtype = torch_dtype
    key_mapping = kwargs.pop("key_mapping", None)
    trust_remote_code = kwargs.pop("trust_remote_code", None)
    remote = {} if trust_remote_code is None else {"trust_remote_code": trust_remote_code}

    d = _model_directory(directory)
    weights = _weights_path(d)
    readers, _ = _api._open_readers(
        weights,
        key,
        passphrase,
        verify_with,
        expect_metadata=expect_metadata,
        max_scrypt_log_n=max_scrypt_log_n,
    )
    # Before transformers reads any file of the directory (config, generation config, code).
    check_loaded(weights, readers)
    rows = [row for reader in readers for row in reader.tensors()]

    config, model_kwargs = _config(cls_or_auto, auto, d, config, kwargs, remote)
    config.name_or_path = os.fspath(d)
    target_dtype = _resolve_dtype(dtype, config, rows)
    with torch.device("meta"):
        if auto:
            model = cls_or_auto.from_config(config, dtype=target_dtype, **remote, **model_kwargs)
        else:
            model = cls_or_auto._from_config(config, dtype=target_dtype, **model_kwargs)

    expected = model.state_dict()
    names = _checkpoint_names(model, [row[0] for row in rows], expected, key_mapping)
    loaded = {n for n in names.values() if n in expected}
    info = SimpleNamespace(
        missing_keys={n for n in expected if n not in loaded},
        unexpected_keys={n for n in names.values() if n not in expected},
        mismatched_keys=set(),
        error_msgs=[],
    )
    predicted = _after_tying(model, info)
    model._adjust_missing_and_unexpected_keys(predicted)
    if strict and (predicted.missing_keys or predicted.unexpected_keys):
        raise RuntimeError(_strictness_error(model, d, predicted))
    _keep_in_fp32(model, target_dtype, loaded)

    model.to_empty(device="cpu")
    # What transformers' loader does after reading the weights, in its order, except that
    # the model's initialization runs before the checkpoint is decrypted: it then sets only
    # what the checkpoint does not (flagged tensors are skipped by transformers' init
    # functions), and nothing it might write over a loaded weight survives.
    for name in loaded:
        model.get_parameter_or_buffer(name)._is_hf_initialized = True
    model.mark_tied_weights_as_initialized(info)
    model.initialize_weights()
    fill_model(model, readers, strict=False, names=names, cast=True)
    model.tie_weights(missing_keys=info.missing_keys, recompute_mapping=False)
    model._adjust_missing_and_unexpected_keys(info)
    if info.missing_keys or info.unexpected_keys:
        logger.warning(
            "%s from %s: initialized by the model, not from the checkpoint: %s; in the checkpoint"
            " but not used: %s",
            type(model).__name__,
            d,
            sorted(info.missing_keys) or "none",
            sorted(info.unexpected_keys) or "none",
        )
    model.eval()
    _load_generation_config(model, d)
    if output_loading_info:
        return model, {
            "missing_keys": info.missing_keys,
            "unexpected_keys": info.unexpected_keys,
            "mismatched_keys": info.mismatched_keys,
            "error_msgs": info.error_msgs,
        }
    return model


def _is_auto_class(cls: Any) -> bool:
    """``True`` for an auto class, ``False`` for a model class; ``TypeError`` otherwise."""
    if isinstance(cls, type) and issubclass(cls, transformers.PreTrainedModel):
        return False
    if isinstance(cls, type) and hasattr(cls, "from_config") and hasattr(cls, "_model_mapping"):
        return True
    raise TypeError(
        "from_pretrained needs a transformers model class (e.g. BertModel) or auto class (e.g. AutoModel),"
        f" not {cls!r}"
    )


def _model_directory(directory: PathLike) -> Path:
    d = Path(directory)
    if not d.exists():
        raise FileNotFoundError(2, "no such directory: give an encrypted model directory", os.fspath(d))
    if not d.is_dir():
        raise NotADirectoryError(
            20,
            "not a directory: give the encrypted model directory (with config.json and model.enct"
            " or model.enct.index.json)",
            os.fspath(d),
        )
    return d


def _weights_path(d: Path) -> Path:
    """``model.enct``, else ``model.enct.index.json`` (the order in which transformers looks
    for ``model.safetensors`` and its index)."""
    for name in (WEIGHTS_NAME, INDEX_NAME):
        if (d / name).is_file():
            return d / name
    plain = [n for n in ("model.safetensors", "model.safetensors.index.json") if (d / n).is_file()]
    hint = (
        f" It holds unencrypted weights ({plain[0]}): load it with transformers, or encrypt it with"
        f" `enctensor encrypt {d} OUT_DIR`."
        if plain
        else ""
    )
    raise FileNotFoundError(
        2, f"no {WEIGHTS_NAME} or {INDEX_NAME}: not an encrypted model directory.{hint}", os.fspath(d)
    )


def _config(
    cls: Any, auto: bool, d: Path, config: Any, kwargs: dict[str, Any], remote: dict[str, Any]
) -> tuple[Any, dict[str, Any]]:
    """The configuration (from ``config``, or read from the directory) and the keyword
    arguments left for the model's constructor, as transformers' from_pretrained splits them."""
    if isinstance(config, transformers.PreTrainedConfig):
        return copy.deepcopy(config), kwargs
    if config is not None and not isinstance(config, str | os.PathLike):
        raise TypeError(
            f"config must be a transformers config or the path of one, not {type(config).__name__}"
        )
    source = d if config is None else config
    loaded: tuple[Any, dict[str, Any]]
    if auto:
        loaded = transformers.AutoConfig.from_pretrained(
            source, return_unused_kwargs=True, local_files_only=True, **remote, **kwargs
        )
    else:
        loaded = cls.config_class.from_pretrained(
            source, return_unused_kwargs=True, local_files_only=True, **kwargs
        )
    return loaded


def _resolve_dtype(
    dtype: Any, config: Any, rows: Iterable[tuple[str, str, list[int], bool, int]]
) -> torch.dtype:
    """transformers' rule: ``"auto"`` is the configuration's dtype, else that of the first
    floating-point tensor of the checkpoint (not fp8), else float32; ``None`` is torch's
    default dtype; a name is that torch dtype."""
    if dtype == "auto":
        configured = getattr(config, "dtype", None)
        if configured is not None and configured != "auto":
            return _resolve_dtype(configured, config, ())
        for _, name, _, _, _ in rows:
            t = TORCH_DTYPES.get(name)
            if t is not None and t.is_floating_point and t.itemsize > 1:
                return t
        return torch.float32
    if dtype is None:
        return torch.get_default_dtype()
    if isinstance(dtype, torch.dtype):
        return dtype
    if isinstance(dtype, str) and isinstance(getattr(torch, dtype, None), torch.dtype):
        return getattr(torch, dtype)  # type: ignore[no-any-return]
    raise ValueError(
        f"dtype must be 'auto', a torch.dtype or the name of one (e.g. 'float16'), not {dtype!r}"
    )


def _checkpoint_names(
    model: Any, names: list[str], expected: dict[str, torch.Tensor], key_mapping: dict[str, str] | None
) -> dict[str, str]:
    """Checkpoint name -> model name, as transformers renames keys on loading (its renamings
    for this model, then the base model prefix added or removed where that names a weight of
    the model). A weight that would need one of transformers' tensor conversions (splitting,
    fusing, ...) cannot be decrypted in place: ``NotImplementedError``."""
    transforms = get_model_conversion_mapping(model, key_mapping)
    renamings = [t for t in transforms if isinstance(t, WeightRenaming)]
    converters = [t for t in transforms if isinstance(t, WeightConverter)]
    prefix = model.base_model_prefix
    out: dict[str, str] = {}
    converted: list[str] = []
    for name in names:
        renamed, pattern = rename_source_key(name, renamings, converters, prefix, expected)
        if renamed not in expected and name in expected:
            renamed, pattern = rename_source_key(name, [], [], prefix, expected)
        if pattern is not None and renamed in expected:
            converted.append(name)
        out[name] = renamed
    if converted:
        raise NotImplementedError(
            f"{type(model).__name__} loads {len(converted)} tensor(s) of this checkpoint through transformers'"
            f" weight conversions (e.g. {converted[0]!r}), which enctensor cannot decrypt in place: decrypt the"
            " directory with `enctensor decrypt` and load the plaintext copy with transformers"
        )
    return out


def _after_tying(model: Any, info: SimpleNamespace) -> SimpleNamespace:
    """``info`` as it will be after transformers' ``tie_weights(missing_keys=...)``: a tied
    weight is not missing when a weight of its group (same source) is in the checkpoint."""
    tied: Mapping[str, str] = getattr(model, "all_tied_weights_keys", None) or {}
    groups: dict[str, set[str]] = {}
    for target, source in tied.items():
        groups.setdefault(source, {source}).add(target)
    filled = {n for group in groups.values() if any(m not in info.missing_keys for m in group) for n in group}
    return SimpleNamespace(
        missing_keys=info.missing_keys - filled,
        unexpected_keys=set(info.unexpected_keys),
        mismatched_keys=set(),
        error_msgs=[],
    )


def _strictness_error(model: Any, d: Path, info: SimpleNamespace) -> str:
    problems = []
    if info.missing_keys:
        problems.append(
            f"weights of the model that the checkpoint does not hold: {_listing(info.missing_keys)}"
        )
    if info.unexpected_keys:
        problems.append(
            f"tensors of the checkpoint that the model does not use: {_listing(info.unexpected_keys)}"
        )
    return (
        f"{d}: the checkpoint does not fit {type(model).__name__}: "
        + "; ".join(problems)
        + ". Nothing was decrypted. Load the class the checkpoint was saved from, or pass strict=False to"
        " initialize the missing weights and skip the unused tensors, as transformers.from_pretrained does"
    )


def _listing(names: Iterable[str], shown: int = 8) -> str:
    ordered = sorted(names)
    text = ", ".join(ordered[:shown])
    return text + (f", ... ({len(ordered)} in all)" if len(ordered) > shown else "")


def _keep_in_fp32(model: Any, dtype: torch.dtype, loaded: set[str]) -> None:
    """The model's ``_keep_in_fp32_modules`` (when loading in float16) and
    ``_keep_in_fp32_modules_strict`` (float16 or bfloat16): their weights from the checkpoint
    are loaded in float32, as transformers loads them; the meta tensors are converted before
    any memory is given to them."""
    plan = model._get_dtype_plan(dtype)
    if not plan:
        return
    pattern, groups, _ = build_glob_alternation(list(plan))
    for name in loaded:
        match = pattern.search(name)
        if match is None or match.lastgroup is None:
            continue
        wanted = plan[groups[match.lastgroup]]
        module_name, _, leaf = name.rpartition(".")
        module = model.get_submodule(module_name)
        if leaf in module._parameters:
            old = module._parameters[leaf]
            module._parameters[leaf] = torch.nn.Parameter(old.to(wanted), requires_grad=old.requires_grad)
        elif leaf in module._buffers:
            module._buffers[leaf] = module._buffers[leaf].to(wanted)


def _load_generation_config(model: Any, d: Path) -> None:
    """A generative model's ``generation_config.json`` (plaintext in the directory), as
    transformers reads it."""
    if model.can_generate() and (d / "generation_config.json").is_file():
        model.generation_config = transformers.GenerationConfig.from_pretrained(d, local_files_only=True)
