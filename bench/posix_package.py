"""POSIX beside the authors' package prompt-sensitivity-index 0.0.1 (its wheel fetched with pip and imported from
a temporary folder, never installed): the same model, prompt sets and max_new_tokens, ψ both ways.

    python bench/posix_package.py [--prompts examples/posix_sets.jsonl] [--max-new-tokens 32] [--threads 1]

Prints, per set, the package's own ψ, this project's ``psi_definition="package"`` and ``"paper"`` (Eq. 1) on
the same responses, whether the greedy responses match token for token, and how far the log-prob matrices are
apart. The package takes text prompts, so chat prompts go to both as their rendered chat template.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests.reference_posix: the one place that fetches and imports the package

from tests.reference_posix import load_reference
from wit_plugin.demo.model import prepare_default_model
from wit_plugin.evaluation.engine import render_prompt
from wit_plugin.evaluation.models import load_model
from wit_plugin.evaluation.posix import evaluate_posix, psi
from wit_plugin.evaluation.posix.variants import load_prompt_sets


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=None, help="default: the embedded SmolLM2-135M-Instruct")
    parser.add_argument("--prompts", type=Path, default=ROOT / "examples" / "posix_sets.jsonl")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    path = args.model or prepare_default_model()
    model, tokenizer = load_model(path, "cpu")
    sets = load_prompt_sets(args.prompts)  # `wit posix`'s defaults: spelling,template, 5 variants, seed 0
    texts = [
        [p if isinstance(p, str) else tokenizer.apply_chat_template(p, add_generation_prompt=True, tokenize=False)
         for p in prompts]
        for prompts in sets
    ]  # fmt: skip
    for originals, rendered in zip(sets, texts):  # the text tokenizes exactly as the chat prompt renders
        assert [render_prompt(tokenizer, p) for p in originals] == [render_prompt(tokenizer, t) for t in rendered]

    with tempfile.TemporaryDirectory() as folder:
        posix_module, models = load_reference(Path(folder))
        reference = models.HFModel(str(path), dtype=torch.float32)
        theirs, trace = posix_module.get_prompt_sensitivity(
            reference, texts, posix_module.PosixConfig(max_new_tokens=args.max_new_tokens)
        )
    ours = evaluate_posix(model, texts, tokenizer, args.max_new_tokens, psi_definition="package")

    print(f"{path.name}, {args.prompts.name}, max_new_tokens {args.max_new_tokens}")
    print("set  N  lengths                      package's ψ  ours 'package'  ours 'paper'  same responses  max rel Δ")
    papers, worst = [], 0.0
    for index, result in enumerate(ours.sets):
        lengths = [len(r.token_ids) for r in result.responses]
        paper = psi(result.logprobs, lengths, "paper")
        papers.append(paper)
        decoded = [tokenizer.decode(r.token_ids, skip_special_tokens=False) for r in result.responses]
        same = decoded == trace.responses[index]
        matrix = np.asarray(trace.logprob_matrices[index])
        delta = float(np.max(np.abs(result.logprobs - matrix) / np.abs(matrix)))
        worst = max(worst, delta)
        print(
            f"{index:>3} {len(lengths):>2}  {','.join(map(str, lengths)):<28} {trace.prompt_sensitivities[index]:>11.6f}"
            f"  {result.psi:>14.6f}  {paper:>12.6f}  {same!s:>14}  {delta:>9.1e}"
        )
    print(f"POSIX: package {theirs:.6f}, ours 'package' {ours.posix:.6f}, ours 'paper' {np.mean(papers):.6f}")
    print(f"|ours 'package' - package| = {abs(ours.posix - theirs):.1e}; log-prob matrices within {worst:.1e} relative")


if __name__ == "__main__":
    main()
