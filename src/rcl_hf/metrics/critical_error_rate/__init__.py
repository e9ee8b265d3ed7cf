"""The `evaluate` module folder of the Critical Error Rate (``evaluate.load(this folder)``).

``clinical_scores.py`` is the numpy core shared by rcl_hf (:mod:`rcl_hf.metrics.functional`)
and the `evaluate` module ``critical_error_rate.py``; neither file imports rcl_hf, so the folder
works on its own (pushed to the Hub as a metric Space, or copied elsewhere).
"""
