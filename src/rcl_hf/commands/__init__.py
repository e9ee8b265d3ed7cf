"""The console commands; ``scripts/*.py`` are thin wrappers around them.

* :mod:`.train` — ``rcl-train`` (``scripts/train.py``): fine-tune with a clinical loss;
* :mod:`.calibrate` — ``rcl-calibrate`` (``scripts/calibrate.py``): a certified decision layer for a saved model;
* :mod:`.ood_guard` — ``rcl-ood-guard``: fit a saved model's out-of-distribution guard;
* :mod:`.push` — ``scripts/push_to_hub.py``: push a model, a dataset or the Space (or dry-run it);
* :mod:`.args` — the parser plumbing they share (configs, flag aliases, one-line errors).

Nothing is imported here, so importing one command loads only what it needs.
"""
