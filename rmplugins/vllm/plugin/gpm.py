"""GPM (General Preference representation Model) as a vLLM pooling model: vLLM's Llama, then the card's heads.

Its checkpoints name ``LlamaForCausalLM``, so vLLM is told the architecture: ``--hf-overrides
'{"architectures": ["GPMLlamaForPreference"]}'`` (rmplugins' vLLM engine passes it). Task ``embed``: per
conversation ``[v (d), b (d/2)]``: the unit preference embedding at the last token and the weights of the skew
operator from the prompt state, so s(a beats b) = v_a^T R(b)^T v_b (:func:`rmplugins.families.gpm.skew_operator`).

The prompt state is read at the last token of the rendered first message. rmplugins passes that index (it renders
the first message, as the card does: ``extra_kwargs={"prompt_state_index": i}``). Without it the pooler finds it
when the conversation opens with a user turn rendered as the template renders one (the card's own case); otherwise,
and when the last token is not the eos the card forces there, the output is NaN rather than a guess.
"""

from __future__ import annotations

import torch
from torch import nn
from vllm.config import VllmConfig

from ...chat import load_chat_tokenizer
from ...checkpoints import identify
from ...families.gpm import preference_embedding, skew_weights
from .common import LlamaPoolingModel, PositionPooler, nan_where, report, whole_prompts


class FirstUserTurn:
    """Where the card's prompt state lies when the first message is a user turn: the template's fixed opening
    (``prefix``), then the message, then the turn's closing tokens; the state is the closing's last token."""

    def __init__(self, tokenizer):
        def ids(content):
            text = tokenizer.apply_chat_template([{"role": "user", "content": content}], tokenize=False)
            return tokenizer(text)["input_ids"]  # the card tokenizes the template's text normally

        a, b = ids("u"), ids("v")
        k = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), None)
        self.usable = k is not None and len(a) == len(b) and a[k + 1:] == b[k + 1:] and len(a) > k + 1
        self.prefix, self.closing = (a[:k], a[k + 1:]) if self.usable else ([], [])

    def index(self, seq: list[int]) -> int | None:
        if not self.usable or seq[: len(self.prefix)] != self.prefix:
            return None
        c = self.closing
        for j in range(len(self.prefix) + 1, len(seq) - len(c) + 1):
            if seq[j: j + len(c)] == c:
                return j + len(c) - 1
        return None


class GPMPooler(PositionPooler):
    def forward(self, hidden_states: torch.Tensor, pooling_metadata) -> list[torch.Tensor]:
        model = self.owner[0]
        parts, ids, reasons = whole_prompts(hidden_states, pooling_metadata)
        picks = []
        for i, (h, seq, params) in enumerate(zip(parts, ids, pooling_metadata.pooling_params)):
            given = (params.extra_kwargs or {}).get("prompt_state_index")
            at = int(given) if given is not None else model.first_user_turn.index(seq)
            if reasons[i] is None and (at is None or not 0 <= at < len(seq)):
                reasons[i] = ("the prompt state's index is unknown (the conversation does not open with a user turn "
                              "rendered by the template): pass extra_kwargs={'prompt_state_index': i}, as rmplugins "
                              "does")
            if reasons[i] is None and seq[-1] != model.eos_token_id:
                reasons[i] = f"its last token is not eos ({model.eos_token_id}), where the card reads the embedding"
            last = len(h) - 1
            picks.append(torch.stack([h[last], h[at if reasons[i] is None else last]]))
        report("GPM", ids, reasons)
        h = torch.stack(picks)
        v = preference_embedding(model.value_head, h[:, 0])
        b = skew_weights(model.prompt_head, h[:, 1])
        return nan_where(torch.cat([v, b], dim=1), reasons)


class GPMForVLLM(LlamaPoolingModel):
    def __init__(self, *, vllm_config: VllmConfig, prefix: str = ""):
        super().__init__(vllm_config=vllm_config, prefix=prefix)
        model_config = vllm_config.model_config
        shapes = identify(model_config.model, kind="gpm").shapes  # refuses a checkpoint without GPM's heads
        if "prompt_head.weight" not in shapes:
            raise ValueError(f"{model_config.model}: this GPM checkpoint has no prompt_head, so preferences cannot "
                             "be computed")
        d = shapes["value_head.weight"][0]
        if d % 2:
            raise ValueError(f"{model_config.model}: GPM value_head has {d} rows; the skew operator needs an even "
                             "dimension")
        self.value_head = nn.Linear(self.config.hidden_size, d, bias=False)
        self.prompt_head = nn.Linear(self.config.hidden_size, d // 2, bias=False)
        tokenizer = load_chat_tokenizer(model_config.tokenizer, "GPM")
        self.eos_token_id = tokenizer.eos_token_id
        self.first_user_turn = FirstUserTurn(tokenizer)
        self.pooler = GPMPooler(self, "embed")
