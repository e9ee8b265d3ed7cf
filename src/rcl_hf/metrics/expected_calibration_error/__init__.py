"""The `evaluate` module folder of the expected calibration error (``evaluate.load(this folder)``).

Unlike ``critical_error_rate/``, this folder imports rcl_hf: the ECE has one definition,
:func:`rcl_hf.metrics.reliability.expected_calibration_error`, and the module calls it.
"""
