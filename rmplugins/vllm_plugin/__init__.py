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

ARCHITECTURES = {
    "LlamaForRewardModelWithGating": "rmplugins.vllm_plugin.armorm:ArmoRMForVLLM",
    "GPMLlamaForPreference": "rmplugins.vllm_plugin.gpm:GPMForVLLM",
}


def register() -> None:
    """Register the architectures with vLLM's model registry (lazily: the modules import when a model loads)."""
    from vllm import ModelRegistry

    for architecture, target in ARCHITECTURES.items():
        if architecture not in ModelRegistry.get_supported_archs():
            ModelRegistry.register_model(architecture, target)
