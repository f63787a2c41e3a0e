"""One model loader for every evaluator and ``wit compare``: a model folder, or a PEFT adapter folder on top of
its base model."""

from __future__ import annotations

import json
import logging
from os import PathLike
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")
MODEL_FILES = ("config.json", "adapter_config.json")  # a model folder, or a PEFT adapter folder


def has_model(folder: str | PathLike[str]) -> bool:
    return any((Path(folder) / name).is_file() for name in MODEL_FILES)


def has_tokenizer(folder: str | PathLike[str]) -> bool:
    return any((Path(folder) / name).is_file() for name in TOKENIZER_FILES)


class ModelLoadError(ValueError):
    """A folder that holds no loadable model (the message names it)."""


def check_model_folder(path: str | PathLike[str]) -> Path:
    """``path`` if it is a folder that can hold a model, else :class:`ModelLoadError` naming it. Needs no framework,
    so a typo fails at once instead of after the imports, as a Hugging Face hub-id error."""
    folder = Path(path)
    if not folder.exists():
        raise ModelLoadError(f"no model folder at {folder}")
    if not folder.is_dir():
        raise ModelLoadError(f"{folder} is a file, not a model folder")
    if not has_model(folder):
        raise ModelLoadError(
            f"no model in {folder}: it has neither config.json nor adapter_config.json (unfinished run?)"
        )
    return folder


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def check_device(name: str | None) -> str:
    """The device to evaluate on (``name``, else :func:`default_device`), refused in one sentence when this torch
    cannot use it (instead of torch's assertion deep inside ``model.to``)."""
    import torch

    if name is None:
        return default_device()
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise ValueError(f"device {name!r}: {error}") from None
    if device.type == "cuda":
        if not torch.backends.cuda.is_built():
            raise ValueError(f"device {name!r}: this torch ({torch.__version__}) is built without CUDA; use cpu")
        count = torch.cuda.device_count()
        if count == 0 or (device.index is not None and device.index >= count):
            raise ValueError(f"device {name!r}: {count} CUDA device(s) visible to this process")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {name!r}: MPS is not available in this torch or on this machine")
    return name


def is_adapter(path: str | PathLike[str]) -> bool:
    return (Path(path) / "adapter_config.json").is_file()


def adapter_base(path: str | PathLike[str]) -> str | None:
    """The base model an adapter folder was trained on, as its ``adapter_config.json`` records it."""
    config = json.loads((Path(path) / "adapter_config.json").read_text())
    return config.get("base_model_name_or_path")


def torch_dtype(name: str) -> Any:
    """``from_pretrained``'s ``dtype`` for a ``--dtype`` name: a torch floating dtype, or ``"auto"`` (the
    checkpoint's own)."""
    if name == "auto":
        return "auto"
    import torch

    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"unknown dtype {name!r}: use float32, bfloat16, float16 or auto")
    return dtype


def _saved_dtype(folder: str | PathLike[str]) -> str | None:
    """The dtype a model folder's ``config.json`` says its weights were saved in, if it says."""
    config = Path(folder) / "config.json"
    if not config.is_file():
        return None
    values = json.loads(config.read_text())
    return values.get("dtype") or values.get("torch_dtype")


def load_model(
    path: str | PathLike[str],
    device: str | None = None,
    base: str | PathLike[str] | None = None,
    dtype: str = "float32",
) -> tuple[Any, Any]:
    """``(model, tokenizer)`` in eval mode on ``device`` (default: CUDA when available) from a local folder, in
    ``dtype`` (default float32, whatever the checkpoint was saved in, so that models evaluated side by side are
    scored alike).

    An adapter folder loads its base model (``base`` if given, else the adapter's recorded base) and applies the
    adapter; the tokenizer comes from the adapter folder when it has one (training saves it there, with any
    added tokens), else from the base.
    """
    path = check_model_folder(path)
    device = check_device(device)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    load_dtype = torch_dtype(dtype)
    try:
        if is_adapter(path):
            from peft import PeftModel

            base_path = base or adapter_base(path)
            if base_path is None:
                raise ModelLoadError(f"{path} is an adapter without a recorded base model: pass the base model")
            tokenizer = AutoTokenizer.from_pretrained(path if has_tokenizer(path) else base_path)
            model = AutoModelForCausalLM.from_pretrained(base_path, dtype=load_dtype)
            saved = _saved_dtype(base_path)
            if len(tokenizer) > model.get_input_embeddings().num_embeddings:
                model.resize_token_embeddings(len(tokenizer))
            model = PeftModel.from_pretrained(model, path)
        else:
            tokenizer = AutoTokenizer.from_pretrained(path)
            model = AutoModelForCausalLM.from_pretrained(path, dtype=load_dtype)
            saved = _saved_dtype(path)
    except (OSError, ValueError) as error:
        if isinstance(error, ModelLoadError):
            raise
        raise ModelLoadError(f"cannot load a model from {path}: {error}") from None
    if dtype != "auto" and saved is not None and saved != dtype:
        logger.info("%s: weights saved in %s, evaluated in %s (--dtype)", path, saved, dtype)
    return model.to(device).eval(), tokenizer
