"""ZenML pipeline definitions and their run harness (layer 3 of the house).

Importing this package points ZenML's source root away from the code
(``neuralmark.runtime.stack.use_import_names``), so that steps, materializers and artifact
types are recorded under their import names (``neuralmark.steps.training.train_model``).
"""

from neuralmark.runtime.stack import use_import_names

use_import_names()
