"""``wit tune``: an Optuna study over the role weights of one training set-up.

Each trial trains the set-up with the weights Optuna suggests into its own run folder (Axolotl in a subprocess,
or a TRL trainer in this process), then scores it the way ``wit compare`` does (the same code, so the same
number). One module per job:

* :mod:`.space`: the ``--space`` text, the default (literature) space and the first trials;
* :mod:`.priors`: the completion/prompt length ratio of the training data and the prompt weight it suggests;
* :mod:`.objective`: what a run scores (held-out CE per role, POSIX, cross-task accuracy) via ``wit compare``;
* :mod:`.pruning`: the training callback reporting intermediate scores to the study and stopping pruned trials
  (:mod:`.axolotl_plugin` adds it to an Axolotl trial's training subprocess);
* :mod:`.study`: the Optuna study (storage, heartbeat, retries, the study's total of trials, resume);
* :mod:`.runners`: one trial's training, Axolotl or TRL;
* :mod:`.results`: ``results.json``, ``best.yml`` and the Pareto front, read from the study;
* :mod:`.plot`: objective per trial and the λp × λr map.

The Python entry points are :func:`wit_plugin.tuning.tune.tune_axolotl` and :func:`~.tune.tune_trl`.
"""
