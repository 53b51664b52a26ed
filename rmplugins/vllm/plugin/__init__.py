"""rmplugins' vLLM plugin: the families vLLM cannot run correctly, as vLLM pooling models over vLLM's own Llama.

vLLM calls :func:`register` in every process it starts (the ``vllm.general_plugins`` entry point in
``pyproject.toml``), so once rmplugins is installed:

- ArmoRM (``LlamaForRewardModelWithGating``, the published ``architectures``) loads as is:
  ``vllm serve RLHFlow/ArmoRM-Llama3-8B-v0.1 --runner pooling``; ``/classify`` (``use_activation: false``) returns
  the reference score, ``/pooling`` with ``task: "embed"`` the score, the 19 objective rewards and the 19 gating
  weights (:mod:`.armorm`).
- GPM's checkpoints say ``LlamaForCausalLM``, which vLLM already runs as a language model, so the architecture is
  named explicitly: ``--hf-overrides '{"architectures": ["GPMLlamaForPreference"]}'``; its ``embed`` output is the
  preference embedding and the prompt's skew-operator weights (:mod:`.gpm`).

Both read hidden states inside the prompt (ArmoRM's gate, GPM's prompt state), which vLLM's prefix caching and
chunked prefill would skip: they declare a token-position pooling type, so vLLM turns both off for them.
"""

import os
import threading
import time

WATCH_PARENT_ENV = "RMPLUGINS_VLLM_EXIT_WITH_PARENT"
ARCHITECTURES = {
    "LlamaForRewardModelWithGating": "rmplugins.vllm.plugin.armorm:ArmoRMForVLLM",
    "GPMLlamaForPreference": "rmplugins.vllm.plugin.gpm:GPMForVLLM",  # rmplugins.families.gpm.ARCHITECTURE
}


def register() -> None:
    """Register the architectures with vLLM's model registry (lazily: the modules import when a model loads)."""
    from vllm import ModelRegistry

    for architecture, target in ARCHITECTURES.items():
        if architecture not in ModelRegistry.get_supported_archs():
            ModelRegistry.register_model(architecture, target)
    if os.environ.get(WATCH_PARENT_ENV) == "1":
        exit_with_parent()


_watching = False


def exit_with_parent() -> None:
    """In a process vLLM started for rmplugins (its engine core, its workers): exit when the process that started
    it is gone. vLLM's engine core does not notice a parent killed with ``kill -9`` and would keep its memory (and a
    GPU's) for good. Only where rmplugins asked for it (:class:`rmplugins.vllm.backend.AsyncVLLMBackend` sets
    ``RMPLUGINS_VLLM_EXIT_WITH_PARENT=1`` for its engine), never in the process that started vLLM."""
    global _watching
    import multiprocessing

    if _watching or multiprocessing.parent_process() is None:
        return
    _watching = True
    parent = os.getppid()

    def watch():
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)  # re-parented: the parent died without shutting the engine down

    threading.Thread(target=watch, name="rmplugins-exit-with-parent", daemon=True).start()
