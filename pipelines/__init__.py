"""ZenML pipeline definitions and their run harness (layer 3 of the house).

Importing this package points ZenML's source root away from the code
(``neuralmark.runtime.stack.use_import_names``), so that steps, materializers and artifact
types are recorded under their import names (``neuralmark.steps.training.train_model``),
and silences the MLflow tracker's autologging warning that every step run would print
(``neuralmark.runtime.stack.quiet_tracker_warnings``).
"""

from neuralmark.runtime.stack import quiet_tracker_warnings, use_import_names

use_import_names()
quiet_tracker_warnings()
