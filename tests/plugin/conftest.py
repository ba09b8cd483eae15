"""Setup of the in-process ``pytester`` runs.

pytester restores ``sys.modules`` after each inner run, so anything the inner
run imports for the first time is dropped and imported again by the next
one. That is harmless for Python modules but not for torch's C extension,
which cannot be initialised twice in one process. Importing the model stack
here, in the outer process, keeps it loaded across inner runs.

numpy and scipy are the same (the statistics import them when a gate is
computed): without the model stack, nothing else would load them first.
The model stack is optional: the runs on ``fake:`` models
(``test_plugin.py``) need none of it, and ``test_real_models.py`` skips
itself without it.
"""

from __future__ import annotations

import contextlib

import numpy  # noqa: F401  (the gate's statistics import it, and scipy, in the first inner run)
import pytest
import scipy.special  # noqa: F401

with contextlib.suppress(ImportError):
    import tokenizers  # noqa: F401
    import torch  # noqa: F401
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: F401
    from transformers.models.llama import modeling_llama  # noqa: F401

    transformers.logging.disable_progress_bar()

with contextlib.suppress(ImportError):
    import bitsandbytes  # noqa: F401


@pytest.fixture(autouse=True)
def _reference_cache_off(request: pytest.FixtureRequest) -> None:
    """Inner runs start without the reference cache, so generation is what they count.

    Most of these tests count what each model generated, and several run
    pytest twice in one directory: a warm cache would hide the second run's
    generation. The tests of the cache pass ``--quant-cache=on`` (a later
    flag wins over ``PYTEST_ADDOPTS``).
    """
    if "pytester" not in request.fixturenames:
        return
    request.getfixturevalue("pytester")  # it clears PYTEST_ADDOPTS when it starts
    monkeypatch = request.getfixturevalue("monkeypatch")
    monkeypatch.setenv("PYTEST_ADDOPTS", "--quant-cache=off")
    # Inner runs on a CI runner must not append to the job's own summary page.
    monkeypatch.delenv("GITHUB_STEP_SUMMARY", raising=False)
