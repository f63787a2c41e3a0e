"""Cross-task prompting (ACL 2024): task files, demo selection, prompts, the evaluator and its report."""

from wit_plugin.evaluation.crosstask.analysis import CrossTaskResult
from wit_plugin.evaluation.crosstask.evaluate import evaluate_crosstask
from wit_plugin.evaluation.crosstask.settings import CrossTaskSettings
from wit_plugin.evaluation.crosstask.tasks import TaskFileError, TaskItem, load_items

__all__ = ["CrossTaskResult", "CrossTaskSettings", "TaskFileError", "TaskItem", "evaluate_crosstask", "load_items"]
