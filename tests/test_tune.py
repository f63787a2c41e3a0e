"""``wit tune``: the search space and priors, and real studies on the real SmolLM2-135M (2-step trials through the
TRL entry point; the Axolotl path end to end, ``slow``): objectives equal ``wit compare``'s numbers, best.yml is
the lowest objective, resume runs only the missing trials, pruning stops a trial, errors and Ctrl-C are kept,
a trial whose worker died is retried, and two workers share one study's total, on a SQLite file and on a
PostgreSQL server (pgserver's bundled binaries: the storage of workers on several machines)."""

from __future__ import annotations

import functools
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna  # the `tune` extra, in `dev` too: never skipped
import pytest
import yaml

from wit_plugin.tuning import study as studies
from wit_plugin.tuning.priors import length_ratio, rule_of_thumb
from wit_plugin.tuning.space import (
    DEFAULT_SPACE,
    Range,
    check_space_applies,
    default_space,
    first_trials,
    parse_space,
)

REPO = Path(__file__).resolve().parents[1]
TRAIN = [
    {
        "messages": [
            {"role": "user", "content": f"What is {a} plus {b}? Answer with the number only."},
            {"role": "assistant", "content": f"{a + b}."},
        ]
    }
    for a, b in [(2, 3), (4, 1), (7, 2), (5, 5)]
]
HELD_OUT = [
    {"messages": [{"role": "user", "content": "Name a colour of the sky."}, {"role": "assistant", "content": "Blue."}]},
    {"messages": [{"role": "user", "content": "Say hi in Spanish."}, {"role": "assistant", "content": "Hola."}]},
]


@pytest.fixture(scope="module")
def postgresql():
    """A PostgreSQL server on this machine (pgserver ships its binaries; a `dev` dependency: never skipped)."""
    folder = Path(tempfile.mkdtemp(prefix="wit-pg-"))  # short: the server's socket lives in it (108 bytes at most)
    folder.chmod(0o755)  # run as root, pgserver runs the server as a user of its own
    (folder / "run").mkdir(mode=0o700)
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    os.environ["XDG_RUNTIME_DIR"] = runtime or str(folder / "run")  # pgserver's lock files (unset on CI: a warning)
    import pgserver  # reads XDG_RUNTIME_DIR when imported

    server = pgserver.get_server(folder / "data", cleanup_mode="delete")
    yield server
    server.cleanup()
    shutil.rmtree(folder, ignore_errors=True)
    if runtime is None:
        del os.environ["XDG_RUNTIME_DIR"]


def new_database(server, name: str) -> str:
    """The URL of a new, empty database ``name`` on ``server``, with the driver docs/tune.md names."""
    server.psql(f"CREATE DATABASE {name};")
    return server.get_uri(name).replace("postgresql://", "postgresql+psycopg://", 1)


# --- space and priors --------------------------------------------------------------------------------------------


def test_space_ranges_are_floats_whatever_the_text_looks_like():
    space = parse_space("wit_prompt_weight=0:1, wit_response_weight=0.5:1")
    assert space == {"wit_prompt_weight": Range(0.0, 1.0), "wit_response_weight": Range(0.5, 1.0)}
    assert all(isinstance(bound, float) for r in space.values() for bound in (r.low, r.high))


@pytest.mark.parametrize(
    "text, named",
    [
        ("wit_prompt_wieght=0:1", "'wit_prompt_wieght' is not a weight"),
        ("wit_prompt_weight=1:0", "need 0 <= low < high"),
        ("wit_prompt_weight=-1:1", "need 0 <= low < high"),
        ("wit_prompt_weight=0:x", "expected two numbers"),
        ("wit_prompt_weight", "expected key=low:high"),
        ("wit_prompt_weight=0:1,wit_prompt_weight=0:1", "names wit_prompt_weight twice"),
    ],
)
def test_a_bad_space_entry_is_named(text, named):
    with pytest.raises(ValueError, match="--space") as error:
        parse_space(text)
    assert named in str(error.value)


class WordTokenizer:
    """One token per whitespace-separated word: an independent count for the length ratio."""

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": text.split()}


def test_length_ratio_counts_each_side_of_every_row_shape():
    rows = [
        {"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "a b c d"},
                      {"role": "assistant", "content": "x"}]},
        {"prompt": "one two", "completion": "three four five six"},
        {"instruction": "do it", "input": "now", "output": "done"},
        {"unknown": "shape"},
    ]  # fmt: skip
    ratio = length_ratio(rows, WordTokenizer())
    assert (ratio.prompt_tokens, ratio.completion_tokens, ratio.rows) == (2 + 4 + 2 + 3, 1 + 4 + 1, 3)
    assert ratio.prompt_weight == pytest.approx(0.1 * 6 / 11)
    assert "rule-of-thumb prompt weight" in ratio.describe()


def test_rule_of_thumb_follows_the_two_regimes_and_shapes_the_first_trials():
    assert rule_of_thumb(0.05) == 0.01 and rule_of_thumb(1.0) == pytest.approx(0.1) and rule_of_thumb(50) == 1.0
    assert default_space(0.1) == DEFAULT_SPACE
    widened = default_space(0.8)  # long generation: λp's range reaches the rule's point
    assert widened["wit_prompt_weight"] == Range(0.0, 0.8) and widened["wit_response_weight"] == Range(0.5, 1.0)
    assert first_trials(widened, 0.8) == [
        {"wit_prompt_weight": 0.8, "wit_response_weight": 1.0},
        {"wit_prompt_weight": 0.0, "wit_response_weight": 1.0},
    ]
    # a space that excludes λr = 1 gets the points clipped into it, duplicates dropped
    narrow = parse_space("wit_prompt_weight=0.2:0.3,wit_response_weight=0.5:0.9")
    assert first_trials(narrow, 0.01) == [{"wit_prompt_weight": 0.2, "wit_response_weight": 0.9}]


@pytest.mark.parametrize("spec", ["median", "median:1", "hyperband", "none", "threshold:2.5"])
def test_pruner_specs(spec):
    assert studies.make_pruner(spec) is not None


@pytest.mark.parametrize("spec", ["mediann", "threshold:x", "median:a", "none:1"])
def test_a_bad_pruner_is_refused_before_anything_runs(spec):
    with pytest.raises(ValueError, match="--pruner"):
        studies.check_pruner(spec)


def test_the_summary_and_best_yml_print_weights_readably_and_keep_them_exact():
    from wit_plugin.cli.tune import summary
    from wit_plugin.tuning.results import best_yaml

    weights = {"wit_prompt_weight": 0.052777777777777785, "wit_response_weight": 1.0}
    best = {"number": 0, "objective": 2.6921702490912542, "weights": weights, "run": "r/trial_0000"}
    result = {"objectives": [{"name": "response_ce", "direction": "minimize"}], "trials": [{"state": "complete"}],
              "best": best}  # fmt: skip
    assert "best: trial 0, response_ce 2.6922, λp=0.05278 λr=1\n" in summary(result, Path("tune"))
    text = best_yaml(best, ["response_ce"])
    assert text.splitlines()[:2] == [
        "# wit tune: best trial 0 (response_ce 2.6922), run r/trial_0000",
        "# λp=0.05278 λr=1 (the keys below hold the exact values trained)",
    ]
    assert yaml.safe_load(text) == weights


# --- studies through the TRL entry point ------------------------------------------------------------------------


def default_trainer(model_path: Path, config):
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from wit_plugin import WITSFTTrainer

    model = AutoModelForCausalLM.from_pretrained(model_path)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    return WITSFTTrainer(model=model, args=config, train_dataset=Dataset.from_list(TRAIN), processing_class=tokenizer)


def trl_tune(model_path: Path, out: Path, trials: int, build=None, held_out: Path | None = None, **options):
    """A study of 2-step trials on four rows, scored on two held-out rows (or the file ``held_out``)."""
    from transformers import AutoTokenizer

    from wit_plugin import WITConfig
    from wit_plugin.tuning.tune import tune_trl

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    if held_out is None:
        held_out = out.parent / f"{out.name}_held_out.jsonl"
        held_out.write_text("".join(json.dumps(row) + "\n" for row in HELD_OUT))

    config = WITConfig(
        output_dir=str(out / "unused"), max_steps=2, logging_steps=1, per_device_train_batch_size=2,
        learning_rate=1e-3, bf16=False, report_to="none", save_strategy="no", disable_tqdm=True,
        wit_prompt_weight=0,  # an integer in the user's config: the trials' weights must stay floats
    )  # fmt: skip
    options.setdefault("seed", 0)
    options.setdefault("pruner", "none")
    result = tune_trl(
        build or functools.partial(default_trainer, model_path),
        config,
        held_out,
        trials,
        out,
        train_rows=TRAIN,
        tokenizer=tokenizer,
        **options,
    )
    return result, held_out


@pytest.fixture(scope="module")
def tuned(model_path, tmp_path_factory):
    out = tmp_path_factory.mktemp("tune") / "study"
    result, held_out = trl_tune(model_path, out, trials=2)
    return out, result, held_out


def test_every_trial_is_scored_as_wit_compare_scores_its_run(tuned):
    from wit_plugin.cli import main

    out, result, held_out = tuned
    assert [t["state"] for t in result["trials"]] == ["complete", "complete"]
    for trial in result["trials"]:
        saved = out / f"compare_{trial['number']}.json"
        assert main(["compare", trial["run"], "--eval-data", str(held_out), "--out", str(saved)]) == 0
        row = json.loads(saved.read_text())["runs"][0]
        assert trial["objective"] == row["eval"]["loss_response"]  # the same number, not merely close


def test_first_trial_is_the_rule_of_thumb_and_weights_stay_floats(tuned, tokenizer):
    from wit_plugin.training.records import read_record

    _, result, _ = tuned
    first, second = result["trials"]
    expected = length_ratio(TRAIN, tokenizer).prompt_weight
    assert first["weights"] == {"wit_prompt_weight": pytest.approx(expected), "wit_response_weight": 1.0}
    assert 0 < expected < 1 and second["weights"] == {"wit_prompt_weight": 0.0, "wit_response_weight": 1.0}
    config = json.loads((Path(first["run"]) / "wit_config.json").read_text())  # the trial's whole config
    assert config["wit_prompt_weight"] == first["weights"]["wit_prompt_weight"]
    assert config["output_dir"] == first["run"] and config["max_steps"] == 2 and config["learning_rate"] == 1e-3
    record = read_record(first["run"])
    assert record["weights"]["instruction"] == first["weights"]["wit_prompt_weight"]  # trained with it, not 0


def test_best_yml_holds_the_lowest_objective(tuned):
    out, result, _ = tuned
    lowest = min(result["trials"], key=lambda t: t["objective"])
    assert result["best"]["number"] == lowest["number"]
    best = yaml.safe_load((out / "best.yml").read_text())
    assert {key: best[key] for key in lowest["weights"]} == lowest["weights"]
    assert (out / "best.yml").read_text().startswith(f"# wit tune: best trial {lowest['number']}")
    assert json.loads((out / "results.json").read_text())["best"] == result["best"]
    assert (out / "tune.png").stat().st_size > 10_000


def test_resume_runs_only_the_missing_trials_and_a_pruner_stops_one(tuned, model_path):
    """The same study asked for 3 trials runs one more; a pruner that prunes any value (threshold:0) stops it at
    its first report, where the study records it, and leaves the best as it was."""
    out, before, _ = tuned
    stamps = [os.stat(Path(t["run"]) / "wit_run.json").st_mtime_ns for t in before["trials"]]
    result, _ = trl_tune(model_path, out, trials=3, pruner="threshold:0", report_every=1)
    assert [t["number"] for t in result["trials"]] == [0, 1, 2]
    assert [os.stat(Path(t["run"]) / "wit_run.json").st_mtime_ns for t in result["trials"][:2]] == stamps
    pruned = result["trials"][2]
    assert pruned["state"] == "pruned" and pruned["pruned_at_step"] == 1 and pruned["steps"] == 1
    assert list(pruned["intermediate"]) == ["1"] and pruned["objective"] is None
    assert result["best"]["number"] == before["best"]["number"]
    again, _ = trl_tune(model_path, out, trials=3)  # nothing missing: nothing trained
    assert [t["number"] for t in again["trials"]] == [0, 1, 2]


def test_a_study_tuning_something_else_is_refused(tuned, model_path, tmp_path):
    """Another space, other held-out rows or another scoring flag: the trials' objectives could not be compared.
    The same rows in another file (another worker's copy) are the same study."""
    out, _, held_out = tuned
    with pytest.raises(ValueError, match="tunes something else.*space"):
        trl_tune(model_path, out, trials=4, space=parse_space("wit_prompt_weight=0:1,wit_response_weight=0:1"))
    other = tmp_path / "other.jsonl"
    other.write_text(held_out.read_text() + json.dumps(TRAIN[0]) + "\n")
    with pytest.raises(ValueError, match="tunes something else \\(scored_on.eval_data: .*'other.jsonl'"):
        trl_tune(model_path, out, trials=1, held_out=other)
    with pytest.raises(
        ValueError, match="tunes something else \\(scored_on.max_length: the study has None, this command 64\\)"
    ):
        trl_tune(model_path, out, trials=1, compare={"max_length": 64})
    copy = tmp_path / "copy.jsonl"
    copy.write_text(held_out.read_text())
    before = json.loads((out / "results.json").read_text())["trials"]
    result, _ = trl_tune(model_path, out, trials=1, held_out=copy)  # the study has its trials: none runs
    assert result["trials"] == before and result["eval_data"] == str(copy)


def test_several_objectives_give_a_pareto_front_and_no_pruning(tmp_path, model_path, caplog):
    import logging

    caplog.set_level(logging.INFO, logger="wit_plugin")
    result, _ = trl_tune(model_path, tmp_path / "study", trials=2, objective="response_ce,instruction_ce",
                         pruner="median")  # fmt: skip
    assert "Optuna prunes single-objective studies only" in caplog.text
    trials = result["trials"]
    assert [t["state"] for t in trials] == ["complete", "complete"]
    for trial in trials:
        assert trial["objective"] == {
            "response_ce": trial["compare"]["eval"]["loss_response"],
            "instruction_ce": trial["compare"]["eval"]["loss_instruction"],
        }
        assert "intermediate" not in trial  # nothing reported: no pruning

    def dominated(a, b):  # b at least as good everywhere, better somewhere
        pairs = [(a["objective"][k], b["objective"][k]) for k in a["objective"]]
        return all(y <= x for x, y in pairs) and any(y < x for x, y in pairs)

    front = [t["number"] for t in trials if not any(dominated(t, other) for other in trials)]
    assert [t["number"] for t in result["pareto_front"]] == front
    assert (
        result["best"]["number"] == min(result["pareto_front"], key=lambda t: t["objective"]["response_ce"])["number"]
    )


@pytest.mark.parametrize(
    "change, message",
    [
        ({"plugins": []}, "`plugins` lacks wit_plugin.WITPlugin"),
        ({"space": "wit_prompt_weight=2:1"}, "--space entry 'wit_prompt_weight=2:1'"),
        ({"pruner": "medain"}, "--pruner 'medain'"),
        ({"objective": "posix"}, "--objective posix needs --posix"),
        ({"eval": "missing.jsonl"}, "no eval data at"),
        ({"eval": "broken.jsonl"}, "broken.jsonl:2: not valid JSON"),
        ({"eval": "empty.jsonl"}, "empty.jsonl has no rows"),
    ],
)
def test_cli_bad_input_is_named_before_anything_trains(tmp_path, capsys, change, message):
    from wit_plugin.cli import main

    config = {"base_model": "m", "plugins": change.get("plugins", ["wit_plugin.WITPlugin"]), "datasets": []}
    path = tmp_path / "config.yml"
    path.write_text(yaml.safe_dump(config))
    held_out = tmp_path / "held_out.jsonl"
    held_out.write_text(json.dumps(HELD_OUT[0]) + "\n")
    (tmp_path / "broken.jsonl").write_text(json.dumps(HELD_OUT[0]) + '\n{"messages": [\n')  # each trial failed on it
    (tmp_path / "empty.jsonl").write_text("\n")
    argv = ["tune", str(path), "--eval-data", str(tmp_path / change.get("eval", "held_out.jsonl")), "--trials", "1",
            "--out", str(tmp_path / "tune"), "--objective", change.get("objective", "response_ce"),
            "--pruner", change.get("pruner", "median")]  # fmt: skip
    if "space" in change:
        argv += ["--space", change["space"]]
    assert main(argv) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "tune" / "runs").exists()


def tune_cli(tmp_path, *extra, config=None):
    """`wit tune` on a config that cannot train (no model): only what happens before training can be seen."""
    from wit_plugin.cli import main

    path = tmp_path / "config.yml"
    path.write_text(yaml.safe_dump({"base_model": "m", "plugins": ["wit_plugin.WITPlugin"], "datasets": [],
                                    **(config or {})}))  # fmt: skip
    held_out = tmp_path / "held_out.jsonl"
    held_out.write_text(json.dumps(HELD_OUT[0]) + "\n")
    return main(["tune", str(path), "--eval-data", str(held_out), "--trials", "1", "--out", str(tmp_path / "tune"),
                 *extra])  # fmt: skip


SHADOW = {"wit_template_weight": 0, "wit_system_weight": 0.2, "wit_instruction_weight": 0.2}


@pytest.mark.parametrize("space", [None, "wit_prompt_weight=0:1"])
def test_a_searched_key_that_per_role_keys_override_is_refused(tmp_path, capsys, space):
    """λp with its three roles set by their own keys: every trial would train the same weights."""
    assert tune_cli(tmp_path, *(["--space", space] if space else []), config=SHADOW) == 2
    error = capsys.readouterr().err
    assert f"{tmp_path / 'config.yml'} sets wit_instruction_weight, wit_system_weight, wit_template_weight" in error
    assert "searches wit_prompt_weight" in error and not (tmp_path / "tune").exists()


def test_a_searched_key_the_config_schedules_is_refused(tmp_path, capsys):
    """Every trial would replace the config's schedule of λp by a constant."""
    schedule = {"wit_prompt_weight": {"start": 0.4, "end": 0.0, "schedule": "linear"}}
    assert tune_cli(tmp_path, config=schedule) == 2
    error = capsys.readouterr().err
    assert f"searches a constant wit_prompt_weight, but {tmp_path / 'config.yml'} sets it to a schedule" in error
    check_space_applies(parse_space("wit_response_weight=0.5:1"), schedule, "cfg.yml")  # another key: searched


def test_which_key_sets_a_role_is_the_weights_own_resolution(caplog):
    """The check agrees with RoleSchedules.from_options (the keys' precedence): a key decides a role exactly when
    changing its value changes that role's resolved weight."""
    import logging

    from wit_plugin.roles import KEY_ROLES, TRAINABLE_ROLES, RoleWeights, deciding_keys
    from wit_plugin.tuning.space import check_space_applies

    values = {"wit_prompt_weight": 0.3, "wit_response_weight": 0.7, "wit_template_weight": 0.1, "wit_eot_weight": 1}
    deciding = deciding_keys(values)
    base = RoleWeights.from_options(values).as_tuple()
    for key in values:
        moved = RoleWeights.from_options({**values, key: 0.55}).as_tuple()
        changed = {role for role, a, b in zip(TRAINABLE_ROLES, base, moved) if a != b}
        assert changed == {role for role, k in deciding.items() if k == key} <= set(KEY_ROLES[key]), key
    caplog.set_level(logging.INFO, logger="wit_plugin")
    check_space_applies(None, {"wit_template_weight": 0}, "cfg.yml")  # λp still weights system and instruction
    assert "wit_prompt_weight weights system, instruction only: cfg.yml sets wit_template_weight" in caplog.text
    with pytest.raises(ValueError, match="--space also searches wit_instruction_weight, wit_system_weight"):
        check_space_applies(parse_space("wit_prompt_weight=0:1,wit_system_weight=0:1,wit_instruction_weight=0:1"),
                            {"wit_template_weight": 0}, "cfg.yml")  # fmt: skip


def test_tune_trl_refuses_a_searched_key_its_config_overrides(tmp_path):
    from wit_plugin import WITConfig
    from wit_plugin.tuning.tune import tune_trl

    held_out = tmp_path / "held_out.jsonl"
    held_out.write_text(json.dumps(HELD_OUT[0]) + "\n")
    config = WITConfig(output_dir=str(tmp_path / "unused"), report_to="none", bf16=False, **SHADOW)
    with pytest.raises(ValueError, match="the WITConfig sets wit_instruction_weight, wit_system_weight, wit_templ"):
        tune_trl(failing, config, held_out, 1, tmp_path / "tune")
    assert not (tmp_path / "tune").exists()


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--space", ""], "--space is empty"),
        (["--objective", "response_cee"], "--objective 'response_cee': unknown ['response_cee']"),
        (["--objective", "posix"], "--objective posix needs --posix"),
        (["--pruner", "medain"], "--pruner 'medain'"),
        (["--storage", "study.db"], "--storage 'study.db' is not a database URL"),
        (["--storage", "mysql+nosuchdriver://h/db"], "is not a database URL SQLAlchemy knows"),
        (["--storage", "postgresql+pg8000://h/db"], "the database driver is not installed (No module named 'pg8000')"),
        (["--storage", "sqlite://"], "an in-memory database is not shared"),
        (["--storage", "sqlite:///no_such_folder/study.db"], "the folder no_such_folder does not exist"),
    ],
)
def test_cli_arguments_are_checked_before_anything_heavy_loads(tmp_path, extra, message):
    """Refused before transformers (the tokenizer of the length ratio, the trial code) is even imported."""
    script = (
        "import sys; from pathlib import Path; sys.path.insert(0, {tests!r}); from test_tune import tune_cli; "
        "rc = tune_cli(Path({tmp!r}), *{extra!r}); print('rc', rc, 'transformers' in sys.modules)"
    ).format(tests=str(REPO / "tests"), tmp=str(tmp_path), extra=extra)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.stdout.splitlines()[-1] == "rc 2 False", done.stderr[-2000:]
    assert message in done.stderr


def failing(config):
    raise RuntimeError(f"no trainer for λp={config.wit_prompt_weight}")


def test_a_failed_trial_keeps_its_error_and_counts(tmp_path, model_path):
    result, _ = trl_tune(model_path, tmp_path / "study", trials=2, build=failing)
    assert [t["state"] for t in result["trials"]] == ["failed", "failed"]  # two failures fill the two places
    assert result["trials"][0]["error"].startswith("RuntimeError: no trainer for λp=")
    assert result["best"] is None and not (tmp_path / "study" / "best.yml").exists()


def test_ctrl_c_fails_the_trial_and_its_weights_run_again_on_resume(tmp_path, model_path):
    def interrupted(config):
        raise KeyboardInterrupt

    out = tmp_path / "study"
    with pytest.raises(KeyboardInterrupt):
        trl_tune(model_path, out, trials=1, build=interrupted)
    saved = json.loads((out / "results.json").read_text())
    assert [(t["state"], "interrupted" in t["error"]) for t in saved["trials"]] == [("failed", True)]
    result, _ = trl_tune(model_path, out, trials=2, build=failing)  # the interrupted trial did not count
    first, queued, retry = result["trials"]  # the second literature point was queued before the retry
    assert queued["weights"] == {"wit_prompt_weight": 0.0, "wit_response_weight": 1.0}
    assert retry["retry_of"] == 0 and retry["weights"] == first["weights"] and retry["state"] == "failed"


def test_cli_ctrl_c_prints_one_line_not_optunas_traceback(tmp_path, capsys, monkeypatch):
    """Optuna logs a trial that raised KeyboardInterrupt with its traceback; `wit tune` drops that record (and its
    "failed with value None" line) and prints its own line. Records are caught on Optuna's logger, where its own
    handler writes them (it does not propagate to the root logger)."""
    import logging

    from wit_plugin.tuning.runners import AxolotlRunner

    def interrupted(self, weights, folder, link, trial):
        raise KeyboardInterrupt

    monkeypatch.setattr(AxolotlRunner, "train", interrupted)
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    logging.getLogger("optuna").addHandler(handler)
    try:
        assert tune_cli(tmp_path) == 130
    finally:
        logging.getLogger("optuna").removeHandler(handler)
    assert "wit tune: interrupted;" in capsys.readouterr().err
    assert [record.getMessage() for record in records if "Trial 0" in record.getMessage()] == []
    saved = json.loads((tmp_path / "tune" / "results.json").read_text())
    assert saved["trials"][0]["error"].startswith("interrupted (Ctrl-C); its weights are queued again (trial 1)")


def test_a_trial_whose_worker_died_is_failed_and_retried(tmp_path, model_path):
    """A RUNNING trial whose heartbeat stopped (its worker was killed) is failed once its grace period is over,
    and retried with the same weights; it does not count towards the total, its retry does."""
    from optuna.distributions import FloatDistribution

    out = tmp_path / "study"
    out.mkdir()
    storage = studies.make_storage(f"sqlite:///{out / studies.STORAGE_FILE}", heartbeat_s=1)
    study = optuna.create_study(study_name=studies.DEFAULT_STUDY, storage=storage)
    lost = study.ask({key: FloatDistribution(r.low, r.high) for key, r in DEFAULT_SPACE.items()})
    storage.record_heartbeat(lost._trial_id)  # one beat, then the worker is gone
    time.sleep(studies.GRACE_FACTOR * 1 + 1)
    result, _ = trl_tune(model_path, out, trials=1, build=failing, heartbeat_s=1)
    first, retry = result["trials"]
    assert first["state"] == "failed" and "heartbeat" in first["error"]
    assert retry["retry_of"] == 0 and retry["weights"] == lost.params


def test_a_lost_trial_says_retried_only_once_its_retry_ran_and_every_field_is_written(tmp_path):
    """A stale trial's retry is queued at once; until it runs (a study already at its total) the error says it is
    queued, not retried. results.json writes error, pruned_at_step and retry_of on every trial (None if empty)."""
    from optuna.distributions import FloatDistribution

    from wit_plugin.tuning.objective import parse_objectives
    from wit_plugin.tuning.results import document
    from wit_plugin.tuning.tune import Tuning

    url = f"sqlite:///{tmp_path / studies.STORAGE_FILE}"
    study = optuna.create_study(study_name=studies.DEFAULT_STUDY, storage=studies.make_storage(url, heartbeat_s=1))
    lost = study.ask({key: FloatDistribution(r.low, r.high) for key, r in DEFAULT_SPACE.items()})
    study._storage.record_heartbeat(lost._trial_id)  # one beat, then the worker is gone
    time.sleep(studies.GRACE_FACTOR * 1 + 1)
    studies.slots_left(study, 1)  # fails the stale trial: Optuna queues its retry, trial 1
    tuning = Tuning(out=tmp_path, trials=1, settings=None, objectives=parse_objectives("response_ce"),
                    space=DEFAULT_SPACE, storage=url, heartbeat_s=1)  # fmt: skip
    (first,) = document(study, tuning)["trials"]
    assert first["error"].endswith("killed or lost); its weights are queued again (trial 1), to run when the "
                                   "tuning resumes or --trials grows")  # fmt: skip
    assert (first["pruned_at_step"], first["retry_of"]) == (None, None)
    retry = study.ask()
    assert retry.number == 1 and retry.params == lost.params
    study.tell(retry, 2.5)
    first, second = document(study, tuning)["trials"]
    assert first["error"].endswith("killed or lost); retried as trial 1")
    assert {key: second[key] for key in ("error", "pruned_at_step", "retry_of")} == {
        "error": None, "pruned_at_step": None, "retry_of": 0
    }  # fmt: skip


def test_two_workers_on_one_sqlite_file_never_take_the_same_queued_trial(tmp_path, monkeypatch):
    """Optuna takes a queued trial by reading it WAITING, then setting it RUNNING under SELECT ... FOR UPDATE, which
    SQLite ignores: with the gap between the two widened, two unlocked workers both take trial 0 (the lost race
    that failed a two-worker study: "Cannot tell a COMPLETE trial"); under the worker lock the second takes a new one."""
    import threading

    url = f"sqlite:///{tmp_path / studies.STORAGE_FILE}"
    optuna.create_study(study_name="s", storage=studies.make_storage(url, None)).enqueue_trial({"x": 0.5})

    from optuna.storages._rdb import models

    find = models.TrialModel.find_or_raise_by_id

    def slow_find(*args, **kwargs):
        trial = find(*args, **kwargs)
        time.sleep(0.5)  # between reading the queued trial WAITING and setting it RUNNING
        return trial

    monkeypatch.setattr(models.TrialModel, "find_or_raise_by_id", staticmethod(slow_find))

    def take(locked: bool) -> list[int]:
        numbers: list[int] = []

        def worker() -> None:
            study = optuna.load_study(study_name="s", storage=studies.make_storage(url, None))
            if locked:
                studies.serialise_ask(study, url)
            numbers.append(study.ask().number)

        threads = [threading.Thread(target=worker) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return sorted(numbers)

    assert take(locked=False) == [0, 0]  # the race, reproduced: both hold trial 0
    optuna.load_study(study_name="s", storage=studies.make_storage(url, None)).enqueue_trial({"x": 0.25})
    assert take(locked=True) == [1, 2]  # the queued trial 1 to one worker, a new trial 2 to the other


@pytest.mark.parametrize("server", [False, True], ids=["sqlite", "postgresql"])
def test_workers_opening_a_new_study_database_together_all_open_it(tmp_path, monkeypatch, request, server):
    """A new database's first open creates its tables and stamps its schema version: with the gap between finding
    no version and stamping one widened, of two plain opens one or both fail (the race that failed a two-worker study:
    UNIQUE constraint failed: alembic_version.version_num; or both create a table: table ... already exists).
    make_storage opens under the worker lock (SQLite) and, on a server database (no such lock), opens again after a
    lost race (retry_schema_race)."""
    import threading

    import sqlalchemy.exc
    from optuna.storages import RDBStorage
    from optuna.storages._rdb import storage as rdb

    stamp = rdb._VersionManager._set_alembic_revision

    def slow_stamp(self, revision):
        time.sleep(0.5)  # between finding the database without a version and stamping one
        return stamp(self, revision)

    monkeypatch.setattr(rdb._VersionManager, "_set_alembic_revision", slow_stamp)

    def open_together(open_storage) -> list[Exception | None]:
        outcomes: list[Exception | None] = []  # None: opened

        def worker() -> None:
            try:
                open_storage()
                outcomes.append(None)
            except Exception as error:  # noqa: BLE001 - the outcome is what the test compares
                outcomes.append(error)

        threads = [threading.Thread(target=worker) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return outcomes

    if server:
        plain, made = (new_database(request.getfixturevalue("postgresql"), name) for name in ("plain", "made"))
    else:
        plain, made = (f"sqlite:///{tmp_path / name}" for name in ("plain.db", "made.db"))
    lost = [error for error in open_together(lambda: RDBStorage(plain)) if error is not None]
    assert lost and all(isinstance(error, sqlalchemy.exc.DatabaseError) for error in lost), lost  # the race
    assert open_together(lambda: studies.make_storage(made, None)) == [None, None]


def test_a_storage_password_is_written_nowhere(tmp_path, model_path, postgresql, caplog, monkeypatch):
    """A password in --storage is masked in the log, results.json and an Axolotl trial's link file (run folders and
    results get shared); the trial's training process gets the URL whole through its environment."""
    import logging

    from sqlalchemy.engine import make_url

    from wit_plugin.tuning.pruning import STORAGE_ENV, TrialLink

    url = new_database(postgresql, "secret").replace("postgres:@", "postgres:s3cret@")  # the server trusts any
    with caplog.at_level(logging.INFO):
        trl_tune(model_path, tmp_path / "study", trials=1, build=failing, storage=url)
    saved = (tmp_path / "study" / "results.json").read_text()
    assert make_url(json.loads(saved)["storage"]) == make_url(url).set(password="***")
    assert "s3cret" not in saved and "s3cret" not in caplog.text and "postgres:***@" in caplog.text
    link = TrialLink(storage=url, study="s", trial_id=0, pruner="none", objective="response_ce", settings={})
    assert "s3cret" not in link.save(tmp_path).read_text()
    monkeypatch.setenv(STORAGE_ENV, url)
    assert TrialLink.load(tmp_path / "wit_tune_trial.json") == link


def test_a_pruned_trial_stops_on_every_rank(tmp_path):
    """Under torchrun (two gloo processes) rank 0 decides and every rank stops at the same step; a rank left training
    would hang in its next all-reduce (the timeout fails the test then)."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    subprocess.run([*command, "tests/pruning_case.py", str(tmp_path)], check=True, env=env, cwd=REPO, timeout=300)
    ranks = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    assert ranks == [
        {"step": 2, "reports": [1, 2], "pruned": True},
        {"step": 2, "reports": [], "pruned": True},  # rank 1 reports nothing: rank 0 speaks for the run
    ]


WORKER = """
import sys
sys.path.insert(0, {tests!r})
from pathlib import Path
from test_tune import default_trainer, trl_tune

def build(config):
    print("built", config.output_dir, flush=True)  # which worker trained which trial
    return default_trainer(Path({model!r}), config)

trl_tune(Path({model!r}), Path({out!r}), trials=3, seed={seed}, build=build, storage={storage!r})
"""


@pytest.mark.slow
@pytest.mark.parametrize("server", [False, True], ids=["sqlite", "postgresql"])
def test_two_workers_share_one_study_and_its_total(tmp_path, model_path, request, server):
    """Two workers started together on one new study (the default SQLite file, or a PostgreSQL database: the
    storage of workers on several machines) train three trials between them, each once."""
    out = tmp_path / "study"
    storage = new_database(request.getfixturevalue("postgresql"), "two_workers") if server else None
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    scripts = [
        WORKER.format(tests=str(REPO / "tests"), model=str(model_path), out=str(out), seed=seed, storage=storage)
        for seed in (0, 1)
    ]
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", script], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        for script in scripts
    ]
    logs = [worker.communicate(timeout=900)[0] for worker in workers]
    assert [worker.returncode for worker in workers] == [0, 0], "\n".join(log[-3000:] for log in logs)
    result = json.loads((out / "results.json").read_text())
    numbers = [t["number"] for t in result["trials"]]
    assert len(numbers) == len(set(numbers)) == 3 and [t["state"] for t in result["trials"]] == ["complete"] * 3
    assert len({t["run"] for t in result["trials"]}) == 3
    built = [line.removeprefix("built ") for log in logs for line in log.splitlines() if line.startswith("built ")]
    assert sorted(built) == sorted(t["run"] for t in result["trials"])  # each trial trained once, by one worker
    assert all(math.isfinite(t["objective"]) for t in result["trials"])


# --- `wit tune` on an Axolotl config, end to end ------------------------------------------------------------------


def test_an_axolotl_trial_runs_under_the_interpreter_that_tunes(tmp_path, model_path):
    """`wit tune` run from a venv sharing another's packages (one with a database driver of its own, say): the
    venv has no `accelerate` script, and `axolotl train` started the first `accelerate` on PATH, the system's,
    whose Python lacks the venv's packages. The trial (here one refused at once: a negative weight) must run
    under the venv's Python: a sitecustomize only the venv has records every interpreter that starts."""
    pytest.importorskip("axolotl")
    import site as this_site
    import venv

    from wit_plugin.tuning.pruning import TrialLink
    from wit_plugin.tuning.runners import AxolotlRunner, TrialError

    venv.create(tmp_path / "venv", with_pip=False)
    python = tmp_path / "venv" / "bin" / "python"
    site = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    shared = "".join(f"import site; site.addsitedir({folder!r})\n" for folder in this_site.getsitepackages())
    Path(site, "zz_shared.pth").write_text(shared)  # this interpreter's packages (whether it is a venv or not)
    started = tmp_path / "started.txt"
    Path(site, "sitecustomize.py").write_text(
        f"import sys\nwith open({str(started)!r}, 'a') as f:\n    f.write(' '.join(sys.orig_argv[1:3]) + '\\n')\n"
    )
    config = tmp_path / "config.yml"
    config.write_text(yaml.safe_dump({"base_model": str(model_path), "plugins": ["wit_plugin.WITPlugin"],
                                      "wit_prompt_weight": -1, "datasets": [], "output_dir": str(tmp_path)}))  # fmt: skip
    link = TrialLink(storage="sqlite:///unused.db", study="s", trial_id=0, pruner="none", objective="response_ce",
                     settings={})  # fmt: skip
    runner = AxolotlRunner(config, cwd=tmp_path, python=str(python))
    with pytest.raises(TrialError, match="wit_prompt_weight must be >= 0"):
        runner.train({"wit_response_weight": 1.0}, tmp_path / "trial", link, trial=None)
    assert "-m axolotl.cli.train" in started.read_text().splitlines()  # the training process: the venv's Python


def test_an_axolotl_trial_stopped_before_its_end_is_not_complete(tmp_path, model_path):
    """Axolotl saves the model and exits 0 when its training is interrupted (SIGINT to the training process only):
    the run's record is not marked finished, and the trial must fail, not be scored as complete (it would score
    the untrained model). A stand-in interpreter writes what such a run leaves."""
    from wit_plugin.tuning.pruning import TrialLink
    from wit_plugin.tuning.runners import AxolotlRunner, TrialError

    python = tmp_path / "python"
    python.write_text(
        '#!/bin/sh\nfor last; do :; done\necho \'{"finished": false}\' > "$(dirname "$last")/wit_run.json"\n'
    )
    python.chmod(0o755)
    config = tmp_path / "config.yml"
    config.write_text(yaml.safe_dump({"base_model": str(model_path), "plugins": ["wit_plugin.WITPlugin"]}))
    link = TrialLink(storage="sqlite:///unused.db", study="s", trial_id=0, pruner="none", objective="response_ce",
                     settings={})  # fmt: skip
    runner = AxolotlRunner(config, cwd=tmp_path, python=str(python))
    with pytest.raises(TrialError, match="exited with 0 before its end .*wit_run.json is not marked finished"):
        runner.train({"wit_response_weight": 1.0}, tmp_path / "trial", link, trial=None)


@pytest.mark.slow
def test_wit_tune_cli_trains_axolotl_trials_and_prunes_in_the_subprocess(model_path, tmp_path, capsys):
    """A 2-step Axolotl trial, its config recorded whole with float weights (the user's config has integer
    ones), scored as `wit compare` scores the run; resumed to two with a pruner that prunes any value, which
    the subprocess's callback applies at the first report."""
    pytest.importorskip("axolotl")
    from wit_plugin.cli import main
    from wit_plugin.demo.data import write_dataset
    from wit_plugin.training.records import read_record

    config = yaml.safe_load((REPO / "yaml_examples" / "wit_smollm2_cpu.yml").read_text())
    config.update(
        base_model=str(model_path), dataset_prepared_path=str(tmp_path / "prepared"), sequence_len=128,
        micro_batch_size=2, gradient_accumulation_steps=1, max_steps=2, logging_steps=1,
        wit_prompt_weight=0, wit_response_weight=1,  # integers: the trials' floats must not be cast to them
    )  # fmt: skip
    config["datasets"][0]["path"] = str(write_dataset(tmp_path / "data.jsonl", count=16, seed=1))
    path = tmp_path / "config.yml"
    path.write_text(yaml.safe_dump(config))
    held_out = tmp_path / "held_out.jsonl"
    held_out.write_text("".join(json.dumps(row) + "\n" for row in HELD_OUT))
    out = tmp_path / "tune"
    common = [str(path), "--eval-data", str(held_out), "--out", str(out), "--seed", "0", "--heartbeat", "5"]
    assert main(["tune", *common, "--trials", "1", "--pruner", "none"]) == 0
    result = json.loads((out / "results.json").read_text())
    assert [t["state"] for t in result["trials"]] == ["complete"]
    for trial in result["trials"]:
        run = Path(trial["run"])
        recorded = yaml.safe_load((run / "config.yml").read_text())
        assert {key: recorded[key] for key in config if key not in ("plugins",)} == {
            **{key: value for key, value in config.items() if key != "plugins"},
            **trial["weights"],
            "output_dir": str(run),
        }  # the whole config, with the trial's weights and folder
        assert recorded["plugins"][0] == "wit_plugin.WITPlugin"
        assert all(isinstance(recorded[key], float) for key in trial["weights"])
        assert read_record(run)["weights"]["instruction"] == trial["weights"]["wit_prompt_weight"]
        saved = tmp_path / f"compare_{trial['number']}.json"
        assert main(["compare", str(run), "--eval-data", str(held_out), "--out", str(saved)]) == 0
        assert json.loads(saved.read_text())["runs"][0]["eval"]["loss_response"] == trial["objective"]
    assert main(["tune", *common, "--trials", "2", "--pruner", "threshold:0", "--report-every", "1"]) == 0
    result = json.loads((out / "results.json").read_text())
    second = result["trials"][1]
    assert second["state"] == "pruned" and second["pruned_at_step"] == 1 and list(second["intermediate"]) == ["1"]
    saved = tmp_path / "compare_pruned.json"  # Axolotl saved the pruned run's model: compare says it was pruned
    assert main(["compare", second["run"], "--eval-data", str(held_out), "--out", str(saved)]) == 0
    assert json.loads(saved.read_text())["runs"][0]["note"] == (
        "pruned by wit tune at step 1: trained fewer steps than its config asks"
    )
    assert "wit tune: 2 trial(s): 1 complete, 1 pruned" in capsys.readouterr().out
    assert (
        yaml.safe_load((out / "best.yml").read_text())["wit_prompt_weight"]
        == result["best"]["weights"]["wit_prompt_weight"]
    )
