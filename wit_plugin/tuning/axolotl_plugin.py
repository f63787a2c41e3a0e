"""``wit_plugin.tuning.axolotl_plugin.TunePlugin``: the Axolotl plugin ``wit tune`` adds to a trial's config, so
that the trial's training reports intermediate scores to the study (:class:`.pruning.PruningCallback`). It reads
the trial from ``$WIT_TUNE_TRIAL``; without it (the config retrained by hand) it does nothing."""

from __future__ import annotations

import logging
import os
from typing import Any

from axolotl.integrations.base import BasePlugin

from wit_plugin.tuning.pruning import TRIAL_ENV, PruningCallback, TrialLink

LOG = logging.getLogger(__name__)


class TunePlugin(BasePlugin):
    def add_callbacks_post_trainer(self, cfg: Any, trainer: Any) -> list:
        path = os.environ.get(TRIAL_ENV)
        if not path:
            LOG.info("wit tune: not in a tuning (no $%s): no intermediate scores reported", TRIAL_ENV)
            return []
        return [PruningCallback(TrialLink.load(path))]
