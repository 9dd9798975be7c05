"""V-Reason as an lmms-eval model: ``pip install vreason[lmms]``, then ``lmms-eval --model vreason ...``.

lmms-eval 0.7 finds models outside its own tree through the Python entry-point group
``lmms_eval.models`` (``ModelRegistryV2.load_entrypoint_manifests``, called when ``lmms_eval.models`` is
imported; the older ``LMMS_EVAL_PLUGINS`` variable is deprecated there). ``pyproject.toml`` points that
group at ``manifest``, which names our classes by dotted path, so listing lmms-eval's models imports
nothing of ours beyond this file.

Two classes, as lmms-eval's own models come: ``VReasonChat`` (the default, ``is_simple = False``:
requests carry the task's chat messages) and ``VReasonSimple`` (``--force_simple``: a prompt string and
the task's visuals). Both decode with ``vreason.engine.Decoder`` through ``VReasonModule``, read videos
through the model's family (``vreason.families``, ``vreason.data.video``), and record every sample's
trace in one MLflow run per invocation (``vreason.lmms.tracking``). Modules: ``requests`` (lmms-eval
requests as messages and sampling settings), ``model`` (the classes), ``tracking`` (the MLflow run).
"""

from __future__ import annotations

MODEL_ID = "vreason"


def manifest():
    """lmms-eval's registration payload for ``--model vreason`` (an entry point of ``lmms_eval.models``)."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(
        model_id=MODEL_ID,
        chat_class_path="vreason.lmms.model.VReasonChat",
        simple_class_path="vreason.lmms.model.VReasonSimple",
    )
