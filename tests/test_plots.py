"""Plots a person can read: gain numbers legible on every cell and not rounded away, task labels centred under
their bars, legends clear of the data, POSIX with exemplars plotted per condition. Each test also leaves its PNG
(under pytest's tmp_path) for a person to look at."""

from __future__ import annotations

from types import SimpleNamespace

import matplotlib
import pytest

matplotlib.use("Agg")

import itertools

from wit_plugin.evaluation.crosstask import report

TASKS = ("bigbench_disambiguation_qa", "commonsense_qa", "openbookqa", "piqa", "medmcqa")
CONDITIONS = ("zero", "cross", "mixed", "random", "gold")
GAINS = [-0.125, 0.125, 0.0, -0.025, 0.3, -0.3, 0.05, 0.1]  # points: -12.5, +12.5, 0.0, ...


def fake_result(pairs: int = 3, activation: list | None = None, conditions=CONDITIONS) -> SimpleNamespace:
    """What the report reads of a CrossTaskResult: accuracies near 100% everywhere (no empty corner for a legend
    to hide in), and a gain matrix with values that one-digit rounding would change."""
    results = [
        {"task": t, "condition": c, "accuracy": 0.9, "ci95": (0.8, 1.0), "n": 20, "gain": 0.0}
        for t in TASKS
        for c in conditions
    ]
    sources = list(TASKS[:pairs])
    gain = [[None if s == t else GAINS[(i * 3 + j) % len(GAINS)] for j, t in enumerate(TASKS)] for i, s in
            enumerate(sources)]  # fmt: skip
    return SimpleNamespace(
        results=results,
        settings=SimpleNamespace(conditions=conditions),
        gain_matrix={"sources": sources, "targets": list(TASKS), "gain": gain},
        activation=activation if activation is not None else [],
    )


def _boxes(texts, renderer):
    return [text.get_window_extent(renderer) for text in texts if text.get_text()]


def test_gain_numbers_keep_their_decimal_and_read_on_dark_cells(tmp_path):
    result = fake_result()
    figure = report.figure(result)
    figure.savefig(tmp_path / "crosstask.png")
    heat = figure.axes[1]
    shown = {(round(t.get_position()[1]), round(t.get_position()[0])): t for t in heat.texts}
    for i, row in enumerate(result.gain_matrix["gain"]):
        for j, value in enumerate(row):
            if value is None:
                assert (i, j) not in shown
                continue
            text = shown[(i, j)]
            assert text.get_text() == f"{100 * value:+.1f}"  # -12.5, not -12
            extreme = abs(value) == 0.3  # the darkest reds and blues of RdBu
            assert text.get_color() == ("white" if extreme else "black"), (value, text.get_color())
    assert report.text_colour((0.0, 0.0, 0.0, 1.0)) == "white" and report.text_colour((1, 1, 1, 1)) == "black"


def test_task_labels_are_centred_under_their_bars_and_do_not_overlap(tmp_path):
    figure = report.figure(fake_result())
    figure.savefig(tmp_path / "crosstask.png")
    renderer = figure.canvas.get_renderer()
    for axis in figure.axes[:2]:
        labels = [label for label in axis.get_xticklabels() if label.get_text()]
        assert len(labels) == len(TASKS)
        boxes = _boxes(labels, renderer)
        for label, box, tick in zip(labels, boxes, axis.get_xticks()):
            centre = axis.transData.transform((tick, 0))[0]
            assert abs((box.x0 + box.x1) / 2 - centre) < 1.0, label.get_text()
        for left, right in itertools.pairwise(boxes):
            assert left.x1 < right.x0, "labels overlap"


def test_legend_is_clear_of_the_bars_and_the_title(tmp_path):
    figure = report.figure(fake_result())
    figure.savefig(tmp_path / "crosstask.png")
    renderer = figure.canvas.get_renderer()
    bars = figure.axes[0]
    legend = bars.get_legend().get_window_extent(renderer)
    assert not legend.overlaps(bars.get_window_extent(renderer))
    assert not legend.overlaps(bars.title.get_window_extent(renderer))
    assert legend.x0 >= 0 and legend.y1 <= figure.bbox.y1  # and inside the picture


def _layers(pairs: int, rho) -> list[dict]:
    return [{"layer": k, "spearman": rho, "mean_cosine": 0.5, "pairs": pairs} for k in range(3)]


@pytest.mark.parametrize(
    ("result", "says"),
    [
        (fake_result(conditions=("zero",)), "it needs the cross condition"),
        (fake_result(pairs=0), "no (source, target) pair has both zero-shot and cross results"),
        (fake_result(activation=_layers(2, None)), "only 2 (source, target) pair(s) with a gain"),
        (fake_result(activation=_layers(6, None)), "the gain is the same on all 6"),
    ],
)
def test_activation_analysis_says_why_it_has_nothing_to_show(result, says):
    assert says in report.activation_note(result)


def test_activation_table_explains_its_dashes():
    result = fake_result(activation=[*_layers(6, 0.5), {"layer": 3, "spearman": None, "mean_cosine": 1, "pairs": 6}])
    assert report.activation_note(result) is None
    assert "same for every pair" in report.activation_table(result).caption


def test_posix_plot_with_exemplars_shows_every_condition(model_path, tmp_path, monkeypatch, capsys):
    """`wit posix --pool --plot` draws every evaluated condition (it drew only `none`), each set at its own index
    (in-task skips a set without a task), with the legend above the bars."""
    import json

    from wit_plugin.cli import main
    from wit_plugin.cli import posix as cli_posix

    pool = [
        {"task": "capitals", "input": f"Country: {c}\nCapital:", "label": k, "options": [k, "Oslo"]}
        for c, k in (("Italy", "Rome"), ("Spain", "Madrid"))
    ] + [
        {"task": "opposites", "input": f"Word: {w}\nOpposite:", "label": o, "options": [o, "warm"]}
        for w, o in (("hot", "cold"), ("up", "down"))
    ]
    (tmp_path / "pool.jsonl").write_text("".join(json.dumps(r) + "\n" for r in pool))
    sets = [
        {"prompts": ["Country: France\nCapital:", "Q: Country: France\nCapital:\nA:"], "task": "capitals"},
        {"prompts": ["Word: big\nOpposite:", "Word: big\nOpposite word:"], "task": "opposites"},
        {"prompts": ["Tell me a fact.", "Tell me one fact."]},
    ]
    (tmp_path / "sets.jsonl").write_text("".join(json.dumps(s) + "\n" for s in sets))
    drawn = {}
    real_figure = cli_posix.psi_figure

    def keep(series):
        drawn["series"], drawn["figure"] = series, real_figure(series)
        return drawn["figure"]

    monkeypatch.setattr(cli_posix, "psi_figure", keep)
    picture = tmp_path / "posix.png"
    argv = ["posix", "--model", str(model_path), "--prompts", str(tmp_path / "sets.jsonl"), "--device", "cpu"]
    argv += ["--pool", str(tmp_path / "pool.jsonl"), "--select", "lexical", "--shots", "1", "--max-new-tokens", "2"]
    assert main([*argv, "--plot", str(picture), "--threads", "1"]) == 0
    assert picture.read_bytes()[:4] == b"\x89PNG"
    series, figure = drawn["series"], drawn["figure"]
    assert list(series) == ["none", "cross", "in-task"]
    assert [list(series[name][0]) for name in series] == [[0, 1, 2], [0, 1, 2], [0, 1]]
    axes = figure.axes[0]
    legend = [text.get_text() for text in axes.get_legend().get_texts()]
    assert [label.split(":")[0] for label in legend] == ["none", "cross", "in-task"]
    assert len(axes.patches) == 3 + 3 + 2  # a bar per evaluated (condition, set)
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    renderer = FigureCanvasAgg(figure).get_renderer()  # the command closed its canvas after saving
    assert not axes.get_legend().get_window_extent(renderer).overlaps(axes.get_window_extent(renderer))


def compare_results(runs: int = 5) -> dict:
    """What `wit compare --out` writes, for the plot: a reference model and trained runs with long folder names."""

    def weights(prompt: float, response: float) -> dict:
        return {"template": prompt, "system": prompt, "instruction": prompt, "response": response, "eot": response,
                "reasoning": response}  # fmt: skip

    entries = [{"run": "models/SmolLM2-135M-Instruct", "kind": "reference", "weights": None, "train": {},
                "eval": {"loss_instruction": 2.6, "loss_response": 1.9, "loss_eot": 0.4}, "posix": 0.31,
                "crosstask_pct": {"zero": 95.0, "cross": 92.0}}]  # fmt: skip
    for k in range(runs - 1):
        prompt = k / max(runs - 2, 1)
        entries.append({"run": f"outputs/sweep/lambda_p_{prompt:g}_lambda_r_1_run", "kind": "run",
                        "weights": weights(prompt, 1.0), "train": {},
                        "eval": {"loss_instruction": 3.0 - prompt, "loss_response": 1.8, "loss_eot": 0.3},
                        "posix": 0.2 + 0.05 * k, "crosstask_pct": {"zero": 90.0 + k, "cross": 96.0 - k}})  # fmt: skip
    return {"eval_data": "held.jsonl", "runs": entries}


@pytest.mark.parametrize("runs", [2, 5, 9])
def test_compare_plot_legend_clear_of_the_bars_and_run_labels_centred(runs, tmp_path):
    """`wit compare --plot`: the role legend sat inside the bars and the run names were slanted, off their bars;
    now the legend is outside the axes and each name is wrapped, level and centred under its group of bars."""
    from wit_plugin.cli.compare import draw

    figure = draw(compare_results(runs))
    figure.savefig(tmp_path / f"compare-{runs}.png")
    renderer = figure.canvas.get_renderer()
    bars = figure.axes[0]
    legend = bars.get_legend().get_window_extent(renderer)
    assert not legend.overlaps(bars.get_window_extent(renderer))
    assert not legend.overlaps(bars.title.get_window_extent(renderer))
    assert legend.x0 >= 0 and legend.y1 <= figure.bbox.y1
    labels = [label for label in bars.get_xticklabels() if label.get_text()]
    assert len(labels) == runs
    assert all(label.get_rotation() == 0 for label in labels)
    assert labels[1].get_text().startswith("lambda_p_0_\n")  # wrapped at the name's own breaks
    boxes = _boxes(labels, renderer)
    for label, box, tick in zip(labels, boxes, bars.get_xticks()):
        centre = bars.transData.transform((tick, 0))[0]
        assert abs((box.x0 + box.x1) / 2 - centre) < 1.0, label.get_text()
        assert box.x0 >= 0 and box.y0 >= 0  # inside the picture
    for left, right in itertools.pairwise(boxes):
        assert left.x1 < right.x0, "labels overlap"
