"""MLflow "models from code" definition of a neuralmark verifier (no pickle).

``integrations/model_registry.py`` logs this *file* with
``mlflow.pyfunc.log_model(python_model=<this path>, artifacts={"bundle": dir})``.
MLflow executes it on load; ``mlflow.models.set_model`` below names the model
object, and ``load_context`` reads the bundle with
``neuralmark.components.methods.registry.load_bundle`` (config.json + safetensors).

Input to ``predict``: every shape MLflow's scoring server passes on
(``neuralmark.components.serving.verify_requests`` reads them):

    * columns ``{"paths": ["a.png", ...], "secret": "s", "message": 7}`` (``"path"`` for
      one image; ``message`` optional; ``secret`` / ``message`` one value or one per path),
      as plain Python values or as the numpy arrays MLflow makes of a JSON ``inputs``;
    * a pandas DataFrame with columns ``path``, ``secret`` [, ``message``]
      (``dataframe_records``, ``dataframe_split``, CSV);
    * a list of ``{"path", "secret"[, "message"]}`` rows (``instances``, ``inputs``).

A model watermark (``trigger_key`` and its baselines: the registered model *is* a marked
image-processing host) serves the host's task instead: images as arrays or paths in, the
denoised / super-resolved images out (``components/methods/trigger_key/serving.py``).

Output: one dict per image: the ``Verdict`` fields (``detected``, ``score``,
``p_value``, ``status``, ``reason``, …) plus ``path``. An image that cannot be
read gives ``status="unreadable"`` for its row. A request that cannot be read (a
missing ``secret`` or path, a wrong type, an unknown field) raises an
``MlflowException`` with error code ``INVALID_PARAMETER_VALUE`` naming the problem:
the scoring server answers HTTP 400 with that message, never a verdict.
"""

from __future__ import annotations

from typing import Any

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.pyfunc import PythonModel


class WatermarkVerifier(PythonModel):
    """Verifies images against a key with a bundled neuralmark method."""

    #: MLflow 3 wraps ``predict`` to validate inputs against its type hints (and
    #: warns when there are none); this model takes several input shapes on
    #: purpose (checked by ``verify_requests``), so opt out as MLflow's own ChatModel does.
    _skip_type_hint_validation = True

    def load_context(self, context: Any) -> None:
        """Load the bundle named ``bundle`` in the model's artifacts."""
        from neuralmark.components.methods.registry import load_bundle

        self.method = load_bundle(context.artifacts["bundle"])

    # ``model_input`` is unannotated on purpose: ``log_model`` would try to infer
    # a signature from its type hint (and warn that ``Any`` cannot give one).
    def predict(self, context: Any, model_input,
                params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        """Verify each image path against its key (a marked host: run its task on each
        image); see the module docstring.

        Raises:
            MlflowException: ``INVALID_PARAMETER_VALUE`` (HTTP 400 when served) for a
                request that cannot be read; the message names the row and field.
        """
        from neuralmark.components.errors import InputError
        from neuralmark.components.methods.trigger_key.host import HostMark
        from neuralmark.components.serving import verify_file, verify_requests

        if isinstance(self.method, HostMark):  # a marked host serves its own task
            from neuralmark.components.methods.trigger_key.serving import serve

            try:
                return serve(self.method, model_input)
            except InputError as err:
                raise MlflowException.invalid_parameter_value(
                    f"bad {self.method.config.task} request: {err}") from None
        try:
            requests = verify_requests(model_input)
        except InputError as err:
            raise MlflowException.invalid_parameter_value(
                f"bad verification request: {err}") from None
        return [{"path": r.path, **verify_file(self.method, r.path, r.key).to_dict()}
                for r in requests]


mlflow.models.set_model(WatermarkVerifier())
