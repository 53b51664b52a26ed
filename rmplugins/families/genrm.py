"""Generative judges (``kind="genrm"``): any causal LM asked, in its own chat template, about one response
(pointwise: ``rm.score``) or two (pairwise: ``rm.compare``, ``rm.rank``), its verdict read from its next-token
log-probabilities or from what it writes (:class:`rmplugins.judges.JudgeSpec`).

    logits:   logp(v) = sum_t log softmax(lm_head(h))[v_t] over the tokens of the verdict text v (tokenized alone,
              appended after the judge prompt); p = softmax over the verdicts; judgement = sum_v p(v) value(v)
    generate: judgement = the verdict parsed from the answer after its thinking (mean over ``samples``), or None
    pairwise: P(a beats b) = (E[a shown first] + 1 - E[b shown first]) / 2, both orders always

On rmplugins' engine the n verdict sequences of every judge prompt share the prompt's computation, and so do the
judge prompts of one user prompt up to the first response; generation runs on transformers' ``generate``. On vLLM
(``engine="vllm"``): the verdicts' prompt log-probabilities, and generation with prefix caching.
"""

from __future__ import annotations

import itertools
import logging
import math

import torch
from transformers import AutoModelForCausalLM, GenerationConfig, LogitsProcessor, LogitsProcessorList

from ..base import PairwiseRewardModel, PointwiseRewardModel, engine_backend
from ..chat import load_chat_tokenizer, render
from ..checkpoints import causal_lm
from ..finite import check_finite
from ..judges import judge_spec
from ..placement import model_kwargs
from ..refusals import TOO_LONG, Unscorable
from .common import pad_or_eos

logger = logging.getLogger("rmplugins")

GENERATE_BATCH = 8  # judge prompts per transformers generate call


def check_verdict_tokens(name_or_path: str, tokenizer, spec) -> None:
    """Read from logits, each verdict is a token sequence after the prompt, and the verdicts are renormalised as
    disjoint answers. One whose tokens begin another's is not: p("1") already holds every "10" where digits are
    tokens of their own (Qwen, Gemma), so the scale would lean to it; refused before the weights load, as is a
    verdict of no tokens."""
    if spec.readout != "logits":
        return
    texts = list(spec.verdicts)
    ids = [tokenizer.encode(v, add_special_tokens=False) for v in texts]
    for text, seq in zip(texts, ids):
        if not seq:
            raise ValueError(f"{name_or_path}: the verdict {text!r} tokenizes to nothing")
    for (text, seq), (other, other_seq) in itertools.permutations(zip(texts, ids), 2):
        if other_seq[:len(seq)] == seq:
            raise ValueError(f"{name_or_path}: the verdicts {text!r} and {other!r} tokenize as {seq} and {other_seq}: "
                             f"the first's tokens begin the second's, so p({text!r}) already counts every "
                             f"{other!r} and the verdicts cannot be renormalised as separate answers. Give verdicts "
                             "none of which begins another in tokens (e.g. '[[1]]' ... '[[10]]', not '1' ... '10'), "
                             "or readout='generate'")


class JudgeCore:
    """What both kinds of judge share: the judge prompt's tokens, the verdicts' tokens, and the two readouts."""

    kind = "genrm"

    def __init__(self, model, tokenizer, spec, *, name_or_path, max_length, token_budget=None, backend=None):
        super().__init__(model, tokenizer, name_or_path=name_or_path, max_length=max_length)
        self.spec = spec
        self.verdict_ids = [self.tokenizer.encode(v, add_special_tokens=False) for v in (spec.verdicts or {})]
        self.verdict_values = torch.tensor([float(v) for v in (spec.verdicts or {}).values()], dtype=torch.float64)
        self.judged = 0          # judgements asked for (each order of a pair counts once)
        self.no_verdict = 0      # ... of which without a verdict (generate readout)
        # a template that cannot render the spec's chat fails here, not on every request of a server started on it
        self.judge_ids([{"role": "user", "content": "Which answer is better?"}],
                       *(["The first answer.", "The second answer."] if spec.pairwise else ["An answer."]))
        self.backend = (backend or engine_backend(token_budget))(self.model.get_decoder(), pad_or_eos(self.tokenizer),
                                                                 True)

    @property
    def nan_is_no_verdict(self) -> bool:  # a generated answer without a verdict scores NaN; read logits never do
        return self.spec.readout != "logits"

    def metrics(self) -> dict:
        return {"judge": {"preset": self.spec.name, "readout": self.spec.readout, "judged": self.judged,
                          "no_verdict": self.no_verdict}}

    # ---------------------------------------------------------------- the judge prompt
    def judge_ids(self, context, *responses: str) -> list[int]:
        """The judge prompt's token ids: the spec's chat in the checkpoint's template with its generation prompt,
        then ``answer_prefix``, tokenized without adding special tokens. Longer than ``max_length``: refused (a cut
        judge prompt would judge another question)."""
        kwargs = {} if self.spec.thinking is None else {"enable_thinking": self.spec.thinking}
        text = render(self.tokenizer, self.spec.messages([dict(m) for m in context], *responses),
                      name=self.name_or_path, add_generation_prompt=True, **kwargs) + self.spec.answer_prefix
        missing = [r for r in responses if r.strip() and r.strip() not in text]
        if missing:  # a template that drops a role (response_1/response_2) would judge without the response
            raise ValueError(f"{self.name_or_path}: its chat template did not render the response to judge "
                             f"({missing[0][:60]!r}...): the judge's roles {self.spec.response_roles or ('user',)} "
                             "are not in this template; use a judge whose template takes them, or another spec")
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        room = max((len(v) for v in self.verdict_ids), default=0) if self.spec.readout == "logits" else 1
        if len(ids) + room > self.max_length:
            raise Unscorable(f"the judge prompt has {len(ids)} tokens, more than max_length={self.max_length} leaves "
                             "for the verdict; shorten the prompt or responses, or load with a larger max_length=...",
                             TOO_LONG)
        return ids

    # ---------------------------------------------------------------- readouts
    def judgements(self, prompts: list[list[int]]) -> torch.Tensor:
        """float64 [N]: the judgement of each judge prompt (NaN where a generating judge gave no verdict)."""
        self.judged += len(prompts)
        if not prompts:
            return torch.zeros(0, dtype=torch.float64)
        if self.spec.readout == "logits":
            return self._from_logits(prompts)
        return self._from_generation(prompts)

    def verdict_logprobs(self, prompts: list[list[int]]) -> torch.Tensor:
        """float64 [N, verdicts]: each verdict's log-probability after each judge prompt (the sum over its tokens)."""
        if self.backend.name == "vllm":
            seqs = [ids + v for ids in prompts for v in self.verdict_ids]
            per_token = self.backend.prompt_logprobs(seqs, [len(ids) for ids in prompts for _ in self.verdict_ids])
            sums = [math.fsum(tokens) for tokens in per_token]
        else:
            seqs, positions, targets = [], [], []
            for ids in prompts:
                for v in self.verdict_ids:  # the hidden state before each verdict token predicts it
                    seqs.append(ids + v[:-1])
                    positions.append(list(range(len(ids) - 1, len(ids) - 1 + len(v))))
                    targets.append(v)
            hidden = self.backend.hidden_at(seqs, positions)
            logp = torch.log_softmax(self.lm_logits(torch.cat(hidden)), dim=-1)
            picked = logp[torch.arange(logp.shape[0]), torch.tensor([t for v in targets for t in v])]
            sums = [float(s.sum()) for s in picked.double().split([len(v) for v in targets])]
        return torch.tensor(sums, dtype=torch.float64).view(len(prompts), len(self.verdict_ids))

    def lm_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """float32 next-token logits from final hidden states: the LM head (and Gemma-2's final soft-capping)."""
        head = self.model.get_output_embeddings()
        with torch.inference_mode():
            logits = head(hidden.to(head.weight.device, head.weight.dtype)).float()
        cap = getattr(self.model.config, "final_logit_softcapping", None)
        return torch.tanh(logits / cap) * cap if cap else logits

    def _from_logits(self, prompts: list[list[int]]) -> torch.Tensor:
        probs = torch.softmax(self.verdict_logprobs(prompts), dim=-1)  # renormalised over the verdicts
        return probs @ self.verdict_values

    def _from_generation(self, prompts: list[list[int]]) -> torch.Tensor:
        out = []
        for ids, texts in zip(prompts, self.generate(prompts)):
            opened = self.opens_thinking(ids)
            values, reasons = [], []
            for text in texts:
                value, reason = self.spec.verdict(text, opened)
                (values if value is not None else reasons).append(value if value is not None else reason)
            if not values:
                self.no_verdict += 1
                if self.no_verdict <= 10 or self.no_verdict % 100 == 0:  # the first ten, then every hundredth
                    logger.warning("%s: no verdict (%s; %d so far); the answer ended: %r", self.spec.name, reasons[0],
                                   self.no_verdict, texts[0][-200:])
            out.append(sum(values) / len(values) if values else math.nan)
        return torch.tensor(out, dtype=torch.float64)

    def opens_thinking(self, ids: list[int]) -> bool:
        """Whether the judge prompt ends inside a think block it opened (DeepSeek-R1 distills' generation prompt
        ends with ``<think>``): the answer then starts with thinking that has no opening tag of its own."""
        return self.tokenizer.decode(ids[-8:], skip_special_tokens=False).rstrip().endswith("<think>")

    def generate(self, prompts: list[list[int]]) -> list[list[str]]:
        """``samples`` answers per judge prompt: greedy when ``temperature`` is 0, else sampled with ``seed``."""
        spec = self.spec
        limits = [max(1, min(spec.max_new_tokens, self.max_length - len(ids))) for ids in prompts]
        if self.backend.name == "vllm":
            return self.backend.generate_texts(prompts, limits, samples=spec.samples, temperature=spec.temperature,
                                               seed=spec.seed)
        out: list[list[str] | None] = [None] * len(prompts)
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        # sampling draws from one seeded stream per call: a prompt alone in its call gets the answers that prompt and
        # seed give, whatever else is judged beside it (as vLLM's per-request seed does); greedy calls are batched
        step = 1 if spec.temperature > 0 else GENERATE_BATCH
        for lo in range(0, len(order), step):
            batch = order[lo: lo + step]
            answers = self._generate_batch([prompts[i] for i in batch], max(limits[i] for i in batch))
            for i, texts in zip(batch, answers):
                out[i] = texts
        return out

    def _generate_batch(self, prompts: list[list[int]], max_new_tokens: int) -> list[list[str]]:
        tok, spec = self.tokenizer, self.spec
        stops = self._stop_ids()
        pad = pad_or_eos(tok)
        width = max(len(p) for p in prompts)
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts], device=self.device)
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=self.device)
        sample = spec.temperature > 0
        config = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=sample,
                                  temperature=spec.temperature if sample else None, top_p=None, top_k=None,
                                  num_return_sequences=spec.samples, eos_token_id=stops, pad_token_id=pad)
        finite = LogitsProcessorList([FiniteLogits(f"the genrm model {self.name_or_path!r}", self.dtype)])
        with torch.random.fork_rng(devices=[]), torch.inference_mode():
            torch.manual_seed(spec.seed)
            new = self.model.generate(input_ids=ids, attention_mask=mask, generation_config=config,
                                      logits_processor=finite)[:, width:]
        texts = [tok.decode(_until_stop(row.tolist(), stops), skip_special_tokens=False) for row in new]
        return [texts[i * spec.samples:(i + 1) * spec.samples] for i in range(len(prompts))]

    def _stop_ids(self) -> list[int]:
        ids = self.model.generation_config.eos_token_id
        ids = [ids] if isinstance(ids, int) else list(ids or [])
        if self.tokenizer.eos_token_id is not None and self.tokenizer.eos_token_id not in ids:
            ids.append(self.tokenizer.eos_token_id)
        return ids


class FiniteLogits(LogitsProcessor):
    """Stops a generation whose next-token scores hold NaN or +inf (a broken forward, :mod:`rmplugins.finite`):
    greedy decoding would pick token 0 on and on, and the answer would read as a judge without a verdict. A -inf
    score is a processor's ban on a token, not a fault."""

    def __init__(self, model: str, dtype: torch.dtype):
        self.model, self.dtype = model, dtype

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        check_finite(scores, model=self.model, dtype=self.dtype, neg_inf_allowed=True)
        return scores


def _until_stop(tokens: list[int], stops: list[int]) -> list[int]:
    for j, t in enumerate(tokens):
        if t in stops:
            return tokens[:j]
    return tokens


class PointwiseJudge(JudgeCore, PointwiseRewardModel):
    """A judge of one response: ``rm.score`` is its judgement (None where a generating judge gave no verdict)."""

    def encode_row(self, conversation) -> list[int]:
        return self.judge_ids(conversation.context, conversation.response)

    def forward_rows(self, encoded):
        return {"score": self.judgements(encoded).float()}


class PairwiseJudge(JudgeCore, PairwiseRewardModel):
    """A judge of two responses, always shown in both orders: ``compare``, and ``rank`` by round robin (default),
    tournament or circle."""

    rank_methods = ("round_robin", "tournament", "circular")

    def encode_pair(self, a, b) -> tuple[list[int], list[int]]:
        return self.judge_ids(a.context, a.response, b.response), self.judge_ids(a.context, b.response, a.response)

    def pair_probs(self, encoded_pairs):
        """(E[a first] + 1 - E[b first]) / 2; NaN where either order has no verdict."""
        e = self.judgements([ids for pair in encoded_pairs for ids in pair])
        return ((e[0::2] + 1 - e[1::2]) / 2).float()


class GenerativeJudge:
    """The registry's entry for ``kind="genrm"``: builds a :class:`PointwiseJudge` or a :class:`PairwiseJudge` from
    the judge spec (``judge=``: a :class:`~rmplugins.judges.JudgeSpec`, a preset name or a JSON file)."""

    kind = "genrm"

    @classmethod
    def from_pretrained(cls, checkpoint, *, name_or_path, device, dtype, judge=None, attn_implementation=None,
                        device_map=None, max_length=None, token_budget=None, chat_template=None, backend=None):
        if judge is None:
            raise ValueError(f"{name_or_path}: kind='genrm' needs judge=: a JudgeSpec, a preset name or a JSON file "
                             "(a judge's prompt and verdicts are never guessed from a checkpoint)")
        spec = judge_spec(judge)
        check_causal_lm(checkpoint, name_or_path)
        tokenizer = load_chat_tokenizer(checkpoint.path, name_or_path, chat_template)
        check_verdict_tokens(name_or_path, tokenizer, spec)
        model = AutoModelForCausalLM.from_pretrained(checkpoint.path, **model_kwargs(device, dtype, attn_implementation,
                                                                                      device_map))
        limit = max_length or checkpoint.text.get("max_position_embeddings") or 8192
        judge_class = PairwiseJudge if spec.pairwise else PointwiseJudge
        return judge_class(model, tokenizer, spec, name_or_path=name_or_path, max_length=limit,
                           token_budget=token_budget, backend=backend)

    @staticmethod
    def vllm_engine_args(checkpoint, name_or_path) -> dict:
        """A generating engine with prefix caching: the verdicts' prompt log-probabilities, or the answers."""
        return {"runner": "generate", "enable_prefix_caching": True}


def check_causal_lm(checkpoint, name_or_path) -> None:
    """A ``*ForConditionalGeneration`` judge loads as the causal LM transformers maps its ``model_type`` to (Qwen3.5's
    text model: the same logits on text, the vision tower left out); where transformers maps none (an
    encoder-decoder, Mistral-3) it is refused before any weights load."""
    if not causal_lm(checkpoint.config):
        raise ValueError(f"{name_or_path} ({', '.join(checkpoint.config.get('architectures') or [])}, model_type "
                         f"{checkpoint.config.get('model_type')!r}) has no causal language model class in "
                         "transformers, so it cannot read verdicts or generate here; load it with engine='vllm' if "
                         "vLLM runs it, or use its text-only checkpoint")
