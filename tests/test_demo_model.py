"""``wit prepare``'s model folder appears whole or not at all, also when two processes prepare it at once."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import transformers

from wit_plugin.demo import model as demo_model


class FakeSaved:
    """Stands in for the converted tokenizer/model: saving writes a file and records what the target held then."""

    def __init__(self, target: Path, file: str, on_save=None) -> None:
        self.target, self.file, self.on_save = target, file, on_save
        self.config = SimpleNamespace(eos_token_id=None, pad_token_id=None)
        self.generation_config = None
        self.target_seen: list[bool] = []

    def convert_tokens_to_ids(self, token: str) -> int:
        return 2

    def save_pretrained(self, folder: Path) -> None:
        self.target_seen.append(self.target.exists())
        if self.on_save:
            self.on_save()
        (Path(folder) / self.file).write_text("{}")


@pytest.fixture
def fake_conversion(monkeypatch, tmp_path):
    target = tmp_path / "cache" / "model"

    def install(on_model_save=None) -> tuple[FakeSaved, FakeSaved]:
        tokenizer, model = FakeSaved(target, "tokenizer.json"), FakeSaved(target, "config.json", on_model_save)
        monkeypatch.setattr(demo_model, "_download_gguf", lambda workdir: workdir / "model.gguf")
        monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", lambda *a, **k: tokenizer)
        monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", lambda *a, **k: model)
        monkeypatch.setattr(demo_model, "gguf_load_kwargs", dict)
        return tokenizer, model

    return target, install


def test_the_model_folder_is_written_aside_then_renamed_into_place(fake_conversion):
    target, install = fake_conversion
    tokenizer, model = install()
    assert demo_model.prepare_default_model(target) == target
    assert tokenizer.target_seen == [False] and model.target_seen == [False]  # nothing visible while writing
    assert sorted(p.name for p in target.iterdir()) == ["config.json", "tokenizer.json"]
    assert [p.name for p in target.parent.iterdir()] == ["model"]  # no staging folder left behind


def test_a_copy_another_process_finished_first_is_kept(fake_conversion):
    target, install = fake_conversion

    def other_process_finishes() -> None:
        target.mkdir(parents=True)
        (target / "config.json").write_text('{"theirs": true}')

    install(on_model_save=other_process_finishes)
    demo_model.prepare_default_model(target)
    assert (target / "config.json").read_text() == '{"theirs": true}'
    assert [p.name for p in target.parent.iterdir()] == ["model"]
