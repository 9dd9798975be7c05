"""V-Reason as a transformers custom generation method (the Hub layout: ``custom_generate/generate.py``).

transformers loads this file for ``model.generate(..., custom_generate="<you>/v-reason",
trust_remote_code=True)`` (or a local folder holding ``custom_generate/``) and calls ``generate`` with
every argument of ``generate``, ``model`` in place of ``self``. The decoding loop lives in the
``vreason`` package (``vreason.hf``); this file only hands the call on.
"""

from vreason import hf


def generate(model, *args, **kwargs):
    """``vreason.hf.generate``: the method arguments of ``vreason.hf.v_reason`` (``controller``,
    ``step_size``, ``lr``, ``objective``, ``schedule``, ``pruner``, ``positions``, ``optimizer``,
    ``seed``) and ``tokenizer`` are taken out; everything else goes to ``generate``."""
    return hf.generate(model, *args, **kwargs)
