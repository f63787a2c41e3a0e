"""POSIX, the prompt sensitivity index: prompt sets, intent-aligned variants, the evaluator, exemplar blocks."""

from wit_plugin.evaluation.posix.evaluate import POSIXResult, POSIXSettings, Response, SetResult, evaluate_posix, psi

__all__ = ["POSIXResult", "POSIXSettings", "Response", "SetResult", "evaluate_posix", "psi"]
