"""The vLLM backend: a family loaded with ``engine="vllm"`` makes its one model call here instead of on rmplugins'
engine, with the same encoding (templates, truncation, positions: the family's own code) and the same numbers.

    rm.score -> family.encode_row -> family.forward_rows -> VLLMBackend.<call> -> vLLM

The calls, one per kind of read-out a family needs (each family says which it uses and with which engine
arguments, ``vllm_engine_args``):
- ``classify``: a sequence classifier's logit at the last token, no activation (Bradley-Terry);
- ``embed``: a pooler's vector (rmplugins' plugin models: ArmoRM's score, objectives and gate; GPM's embedding and
  skew-operator weights, the prompt state's index passed per request);
- ``step_probs``: the label softmax at each step token (Qwen2.5-Math-PRM, vLLM's own model);
- ``answer_logprobs``: next-token log-probabilities restricted to a few tokens (pair-PM's "A"/"B"): they differ from
  the logits by one constant, so a softmax over them is unchanged;
- ``prompt_logprobs`` and ``generate_texts``: a generative judge's verdict tokens after its prompt, or its answers.

The family object is built with its weights on the ``meta`` device (configuration, tokenizer, checks; no memory):
vLLM holds the only copy. :class:`VLLMBackend` drives an offline ``vllm.LLM``; :class:`AsyncVLLMBackend` an
``AsyncLLM`` on its own event loop, so that several threads (the reward server's requests) submit at once and vLLM's
scheduler batches them.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import threading
from contextlib import nullcontext

import torch

from ..finite import check_finite
from . import settings

logger = logging.getLogger("rmplugins")

TRANSFORMERS_ONLY_OPTIONS = ("token_budget", "device_map", "attn_implementation")


class VLLMBackend:
    """The calls the families make, each over a batch of token-id sequences, on an offline ``vllm.LLM``."""

    name = "vllm"
    concurrent = False  # one caller at a time: vllm.LLM is not thread-safe
    supports_prompt_cache = False  # vLLM's own prefix caching keeps prompts (enable_prefix_caching)

    def __init__(self, llm, dtype: torch.dtype):
        self.llm = llm
        self.dtype = dtype

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")  # where the results land; the weights live in vLLM's workers

    # ---------------------------------------------------------------- what every backend offers
    def keep_prefixes(self):
        return nullcontext()  # vLLM keeps prefixes itself, where the model allows

    def without_kept_prefixes(self):
        return nullcontext()

    def to(self, device) -> None:
        raise ValueError("this model runs on vLLM (engine='vllm'), which places its weights itself: it cannot be "
                         "moved with .to(); drop the device option (vLLM's own placement is set with vllm_args, e.g. "
                         "tensor_parallel_size)")

    def metrics(self) -> dict:
        return {}

    def shutdown(self) -> None:
        """End the vLLM engine now (its memory, its processes)."""
        settings.shutdown_engine(self.llm)
        self.llm = None

    def max_model_len(self) -> int:
        return int(self.llm.llm_engine.model_config.max_model_len)

    # ---------------------------------------------------------------- the two primitives an engine provides
    def _pool(self, prompts: list, params: list) -> list:
        return self.llm.encode(prompts, pooling_params=params, pooling_task=params[0].task, use_tqdm=False)

    def _generate(self, prompts: list, params) -> list:
        return self.llm.generate(prompts, params, use_tqdm=False)

    # ---------------------------------------------------------------- what the families call
    def classify(self, sequences: list[list[int]]) -> list[float]:
        """The classifier's logit (no activation) per sequence."""
        from vllm.pooling_params import PoolingParams

        params = [PoolingParams(task="classify", use_activation=False) for _ in sequences]
        return [float(o.outputs.data[0]) for o in self._pool(_prompts(sequences), params)]

    def embed(self, sequences: list[list[int]], extra: list[dict] | None = None) -> torch.Tensor:
        """The pooler's ``embed`` vector per sequence, float32 [N, width] (``extra``: per-sequence
        ``extra_kwargs`` for the pooler)."""
        from vllm.pooling_params import PoolingParams

        params = [PoolingParams(task="embed", use_activation=False, extra_kwargs=(extra[i] if extra else None))
                  for i in range(len(sequences))]
        return torch.stack([o.outputs.data.float().cpu() for o in self._pool(_prompts(sequences), params)])

    def step_probs(self, sequences: list[list[int]], step_id: int) -> list[torch.Tensor]:
        """Per sequence, the softmax over the labels at each ``step_id`` token, float32 [steps, labels]."""
        from vllm.pooling_params import PoolingParams

        params = [PoolingParams(task="token_classify", step_tag_id=step_id) for _ in sequences]
        return [o.outputs.data.float().cpu() for o in self._pool(_prompts(sequences), params)]

    def answer_logprobs(self, sequences: list[list[int]], token_ids: list[int]) -> torch.Tensor:
        """[N, len(token_ids)] next-token log-probabilities restricted to ``token_ids`` (log-softmax over them)."""
        from vllm import SamplingParams

        params = SamplingParams(max_tokens=1, temperature=1.0, allowed_token_ids=list(token_ids),
                                logprobs=len(token_ids), seed=0)
        outs = self._generate(_prompts(sequences), params)
        return torch.tensor([[o.outputs[0].logprobs[0][t].logprob for t in token_ids] for o in outs])

    def prompt_logprobs(self, sequences: list[list[int]], starts: list[int]) -> list[list[float]]:
        """Per sequence, the raw log-probability of each of its tokens from ``starts[i]`` on, given the tokens
        before it (a generative judge's verdict tokens after its prompt)."""
        from vllm import SamplingParams

        params = SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0)
        outs = self._generate(_prompts(sequences), params)
        return [[o.prompt_logprobs[j][seq[j]].logprob for j in range(start, len(seq))]
                for o, seq, start in zip(outs, sequences, starts)]

    def generate_texts(self, sequences: list[list[int]], max_tokens: list[int], *, samples: int, temperature: float,
                       seed: int) -> list[list[str]]:
        """``samples`` answers per sequence (greedy at temperature 0, else seeded sampling), special tokens kept
        in the text (a judge's think block), the stop token left out."""
        from vllm import SamplingParams

        # logprobs=0: each answer's log-probability, NaN where the forward gave NaN scores (vLLM then writes token 0
        # on and on, which would read as a judge without a verdict): raised instead (rmplugins.finite)
        params = [SamplingParams(n=samples, temperature=temperature, seed=seed, max_tokens=limit,
                                 skip_special_tokens=False, logprobs=0) for limit in max_tokens]
        outputs = self._generate(_prompts(sequences), params)
        logps = torch.tensor([c.cumulative_logprob for o in outputs for c in o.outputs], dtype=torch.float64)
        check_finite(logps, model="the judge on vLLM", dtype=self.dtype, neg_inf_allowed=True)
        return [[c.text for c in o.outputs] for o in outputs]


class AsyncVLLMBackend(VLLMBackend):
    """The same calls on a ``vllm.AsyncLLM`` running in its own event-loop thread: callers in any number of threads
    submit their sequences as separate requests, and vLLM's scheduler batches them with everyone else's."""

    concurrent = True

    def __init__(self, model: str, engine_args: dict, dtype: torch.dtype):
        from .plugin import WATCH_PARENT_ENV

        os.environ[WATCH_PARENT_ENV] = "1"  # the engine-core process exits if this one is killed (kill -9)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="rmplugins-vllm", daemon=True)
        self._thread.start()
        self._ids = itertools.count()
        try:
            llm = self._call(self._start(model, engine_args))
        except BaseException:
            self._loop.call_soon_threadsafe(self._loop.stop)  # no engine: its loop's thread ends too
            self._thread.join(timeout=10)
            raise
        super().__init__(llm, dtype)

    @staticmethod
    async def _start(model: str, engine_args: dict):
        from vllm import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        return AsyncLLM.from_engine_args(AsyncEngineArgs(model=model, **engine_args))

    def max_model_len(self) -> int:
        return int(self.llm.model_config.max_model_len)

    def _call(self, coroutine):
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()

    async def _last(self, stream):
        out = None
        async for out in stream:
            pass
        return out

    def _pool(self, prompts, params):
        async def run():
            return await asyncio.gather(*(self._last(self.llm.encode(p, q, f"rmplugins-{next(self._ids)}"))
                                          for p, q in zip(prompts, params)))
        return self._call(run())

    def _generate(self, prompts, params):
        per_prompt = params if isinstance(params, list) else [params] * len(prompts)

        async def run():
            return await asyncio.gather(*(self._last(self.llm.generate(p, q, f"rmplugins-{next(self._ids)}"))
                                          for p, q in zip(prompts, per_prompt)))
        return self._call(run())

    def shutdown(self) -> None:
        if self.llm is not None:
            llm, self.llm = self.llm, None

            async def stop():  # in the engine's loop, which owns its output task
                llm.shutdown()

            self._call(stop())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)


def _prompts(sequences):
    from vllm.inputs import TokensPrompt

    return [TokensPrompt(prompt_token_ids=list(s)) for s in sequences]


def engine_args(family_args: dict, dtype: torch.dtype, user_args: dict | None) -> dict:
    """``vllm.LLM`` arguments: the runner and task the family needs, this platform's settings
    (:func:`.settings.engine_args`), then the user's ``vllm_args`` (they win)."""
    user_args = dict(user_args or {})
    unknown = settings.unknown_engine_args(user_args)
    if unknown:
        raise ValueError(f"vllm_args: {unknown} are not vLLM engine arguments (see vllm.EngineArgs)")
    args = {**family_args, **user_args}
    args.setdefault("dtype", str(dtype).replace("torch.", ""))
    return settings.engine_args(**args)  # tensor_parallel_size decides the executor there


def start_backend(checkpoint, family_args: dict, *, name_or_path: str, dtype: torch.dtype, vllm_args: dict | None,
                  asynchronous: bool) -> VLLMBackend:
    """A new vLLM engine on ``checkpoint`` for its family (``asynchronous``: an ``AsyncLLM`` for concurrent callers,
    as the reward server uses)."""
    from .plugin import register

    register()  # vLLM also loads the entry point; registering here covers a source checkout that was not installed
    args = engine_args(family_args, dtype, vllm_args)
    logger.info("%s: scoring on vLLM (%s)", name_or_path, ", ".join(f"{k}={v}" for k, v in sorted(args.items())))
    path = str(checkpoint.path)
    try:
        if asynchronous:
            return AsyncVLLMBackend(path, args, dtype)
        return VLLMBackend(settings.start_engine(path, **args), dtype)
    except Exception as err:  # noqa: BLE001 - vLLM's own error, said where it came from and what else runs it
        import vllm

        # a ValueError: what was asked (this checkpoint, these vllm_args) is what cannot be done; CLIs say it in a line
        raise ValueError(
            f"{name_or_path}: vLLM {vllm.__version__} could not start on this checkpoint "
            f"(architectures={checkpoint.config.get('architectures')}): {type(err).__name__}: {err}. Check vllm_args; "
            "if this vLLM cannot run the architecture (vLLM 0.32 fails inside its own code on the vision-language "
            "classifiers, Gemma-3 and Qwen3.5), rmplugins' own engine runs it: engine='transformers' (the default)"
        ) from err
