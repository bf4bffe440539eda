"""MLflow "models from code" definition of a neuralmark verifier (no pickle).

``steps/model_registry.py`` logs this *file* with
``mlflow.pyfunc.log_model(python_model=<this path>, artifacts={"bundle": dir})``.
MLflow executes it on load; ``mlflow.models.set_model`` below names the model
object, and ``load_context`` reads the bundle with
``neuralmark.components.methods.registry.load_bundle`` (config.json + safetensors).

Input to ``predict`` (any of):
    * ``{"paths": ["a.png", ...], "secret": "s", "message": 7}`` (``"path"``
      for one image; ``message`` optional),
    * a pandas DataFrame with columns ``path``, ``secret`` [, ``message``],
    * a list of ``{"path", "secret"[, "message"]}`` dicts.

Output: one dict per image: the ``Verdict`` fields (``detected``, ``score``,
``p_value``, ``status``, ``reason``, …) plus ``path``. An image that cannot be
read gives ``status="unreadable"`` instead of an exception.
"""

from __future__ import annotations

import math
from typing import Any

import mlflow
from mlflow.pyfunc import PythonModel


def _rows(model_input: Any) -> list[dict[str, Any]]:
    """Normalise the accepted input shapes to ``[{"path", "secret", "message"}]``."""
    if hasattr(model_input, "to_dict") and hasattr(model_input, "columns"):  # DataFrame
        model_input = model_input.to_dict(orient="records")
    if isinstance(model_input, dict):
        paths = model_input.get("paths", model_input.get("path"))
        if paths is None:
            raise ValueError("input needs 'paths' (or 'path')")
        if isinstance(paths, str):
            paths = [paths]
        return [{"path": p, "secret": model_input.get("secret"),
                 "message": model_input.get("message")} for p in paths]
    if isinstance(model_input, list):
        return [dict(r) for r in model_input]
    raise ValueError(f"unsupported input type {type(model_input).__name__}")


def _message(value: Any) -> int | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return int(value)


class WatermarkVerifier(PythonModel):
    """Verifies images against a key with a bundled neuralmark method."""

    #: MLflow 3 wraps ``predict`` to validate inputs against its type hints (and
    #: warns when there are none); this model takes several input shapes on
    #: purpose (checked in ``_rows``), so opt out as MLflow's own ChatModel does.
    _skip_type_hint_validation = True

    def load_context(self, context: Any) -> None:
        """Load the bundle named ``bundle`` in the model's artifacts."""
        from neuralmark.components.methods.registry import load_bundle

        self.method = load_bundle(context.artifacts["bundle"])

    # ``model_input`` is unannotated on purpose: ``log_model`` would try to infer
    # a signature from its type hint (and warn that ``Any`` cannot give one).
    def predict(self, context: Any, model_input,
                params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        """Verify each image path against its key; see the module docstring."""
        from neuralmark.components.imageio import load_image
        from neuralmark.components.methods.base import Verdict, WatermarkKey

        out: list[dict[str, Any]] = []
        for row in _rows(model_input):
            path = str(row.get("path"))
            try:
                key = WatermarkKey(secret=row.get("secret"), message=_message(row.get("message")))
            except (TypeError, ValueError) as err:
                verdict = Verdict.unreadable(f"bad key: {err}")
            else:
                try:  # ImageReadError / InputError are ValueErrors naming the problem
                    image = load_image(path, min_size=self.method.min_size).tensor
                    verdict = self.method.verify(image, key)[0]
                except (OSError, TypeError, ValueError) as err:  # TypeError: model method
                    verdict = Verdict.unreadable(str(err))
            out.append({"path": path, **verdict.to_dict()})
        return out


mlflow.models.set_model(WatermarkVerifier())
