"""Evaluation beside the training loss: one engine, several evaluators.

* :mod:`~wit_plugin.evaluation.engine`: prompts to token ids, batched prefill with a shared KV cache, greedy
  decoding, continuation scoring, mean-pooled hidden states (exact: pads never scored, log-softmax in fp32).
* :mod:`~wit_plugin.evaluation.models`: one loader for model and adapter folders.
* :mod:`~wit_plugin.evaluation.posix`: POSIX prompt sensitivity, with or without exemplar blocks.
* :mod:`~wit_plugin.evaluation.crosstask`: cross-task in-context accuracy.
* :mod:`~wit_plugin.evaluation.callback`: any evaluator every N optimiser steps during training.
"""
