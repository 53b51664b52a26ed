"""ArmoRM-Llama3-8B-v0.1: 19 objective rewards mixed by a prompt-conditioned gating network.

A native module with the published tensor names (no ``trust_remote_code``: the hub code imports symbols recent
transformers no longer has). Math, from the model card and its modeling code:
    rewards = regression_layer(h[last real token])                       # [N, 19]
    gate    = softmax(gating_mlp(h[<|eot_id|> closing the last user turn]) / T) * logit_scale
    score   = sum(gate * (rewards @ reward_transform_matrix), dim=1)
    coefficients = gate @ reward_transform_matrix.T   (so score == sum(rewards * coefficients))
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import LlamaConfig, LlamaModel, LlamaPreTrainedModel

from ..base import PointwiseRewardModel, engine_backend
from ..chat import load_chat_tokenizer, render
from ..inputs import to_conversations
from ..placement import model_kwargs
from ..refusals import TOO_LONG, Unscorable
from .common import pad_or_eos, read_tensors

OBJECTIVE_NAMES = [
    "helpsteer-helpfulness", "helpsteer-correctness", "helpsteer-coherence", "helpsteer-complexity",
    "helpsteer-verbosity", "ultrafeedback-overall_score", "ultrafeedback-instruction_following",
    "ultrafeedback-truthfulness", "ultrafeedback-honesty", "ultrafeedback-helpfulness", "beavertails-is_safe",
    "prometheus-score", "argilla-overall_quality", "argilla-judge_lm", "code-complexity", "code-style",
    "code-explanation", "code-instruction-following", "code-readability",
]


class GatingNetwork(nn.Module):
    """``layers.{0..n_hidden}``: Linear+ReLU blocks then Linear to n objectives; softmax(x / T) * logit_scale."""

    def __init__(self, in_features: int, out_features: int, temperature: float, hidden_dim: int, n_hidden: int):
        super().__init__()
        self.temperature = temperature
        self.logit_scale = nn.Parameter(torch.ones(1))
        dims = [in_features] + [hidden_dim] * n_hidden + [out_features]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = F.relu(x)
        return F.softmax(x / self.temperature, dim=1) * self.logit_scale[0]


class ArmoRMModel(LlamaPreTrainedModel):
    """Tensor layout of ``LlamaForRewardModelWithGating``: ``model.*``, ``regression_layer``, ``gating.*``,
    ``reward_transform_matrix``. Heads stay float32 (as stored) whatever the backbone dtype."""

    config_class = LlamaConfig
    base_model_prefix = "model"
    _keep_in_fp32_modules_strict = ["regression_layer", "gating", "reward_transform_matrix"]

    def __init__(self, config: LlamaConfig):
        super().__init__(config)
        n = getattr(config, "num_objectives", 19)
        self.model = LlamaModel(config)
        self.regression_layer = nn.Linear(config.hidden_size, n, bias=False)
        self.reward_transform_matrix = nn.Parameter(torch.eye(n), requires_grad=False)
        self.gating = GatingNetwork(config.hidden_size, n, temperature=getattr(config, "gating_temperature", 10),
                                    hidden_dim=getattr(config, "gating_hidden_dim", 1024),
                                    n_hidden=getattr(config, "gating_n_hidden", 3))
        self.post_init()

    def heads(self, h_last: torch.Tensor, h_gate: torch.Tensor):
        """(rewards [N, n], gating_output [N, n], score [N]) from the two hidden states, in float32."""
        return armorm_heads(self.regression_layer, self.gating, self.reward_transform_matrix, h_last, h_gate)


def armorm_heads(regression_layer: nn.Linear, gating: GatingNetwork, transform: torch.Tensor, h_last: torch.Tensor,
                 h_gate: torch.Tensor):
    """The card's head arithmetic, shared by this module and the vLLM plugin (:mod:`rmplugins.vllm_plugin`)."""
    rewards = regression_layer(h_last.float())
    gate = gating(h_gate.float())
    score = torch.sum(gate * (rewards @ transform), dim=1)
    return rewards, gate, score


def gating_pattern(tokenizer) -> list[int]:
    """Token ids of ``<|eot_id|><|start_header_id|>assistant<|end_header_id|>\\n\\n`` (Llama-3: 128009, 128006,
    78191, 128007, 271), derived by rendering a probe conversation with the model's own template."""
    probe = [{"role": "user", "content": "u"}, {"role": "assistant", "content": "a"}]
    with_header = tokenizer(render(tokenizer, probe[:1], name="ArmoRM", add_generation_prompt=True),
                            add_special_tokens=False)["input_ids"]
    user_only = tokenizer(render(tokenizer, probe[:1], name="ArmoRM"), add_special_tokens=False)["input_ids"]
    eot = user_only[-1]
    if with_header[: len(user_only)] != user_only or len(with_header) <= len(user_only):
        raise ValueError("ArmoRM: the tokenizer's chat template does not add an assistant header after the user "
                         "turn, so the gating token cannot be located; use ArmoRM's own Llama-3 tokenizer")
    pattern = [eot] + with_header[len(user_only):]
    if tokenizer.convert_ids_to_tokens(eot) != "<|eot_id|>":
        raise ValueError(f"ArmoRM: expected the user turn to close with <|eot_id|>, got "
                         f"{tokenizer.convert_ids_to_tokens(eot)!r}; this is not a Llama-3 chat tokenizer")
    return pattern


def reward_position(ids: list[int], pad_token_id: int | None) -> int:
    """Reference: (index of the first pad token - 1) mod L, i.e. the last token when there is no pad."""
    if pad_token_id is not None and pad_token_id in ids:
        return (ids.index(pad_token_id) - 1) % len(ids)
    return len(ids) - 1


def find_gating_position(ids: list[int], pattern: list[int]) -> int | None:
    """Start of the last occurrence of the gating pattern (the <|eot_id|> closing the last user turn), or None."""
    for j in range(len(ids) - len(pattern), -1, -1):
        if ids[j: j + len(pattern)] == pattern:
            return j
    return None


@dataclass
class ArmoRMDetails:
    """``score`` [N]; ``rewards``/``coefficients``/``gating_output`` [N, 19]; ``objective_names`` (19)."""

    score: list[float]
    rewards: torch.Tensor
    coefficients: torch.Tensor
    gating_output: torch.Tensor
    objective_names: list[str]

    def __getitem__(self, key: str):  # mapping-style access, as the contract allows
        return getattr(self, key)

    def top_objectives(self, k: int = 3) -> list[list[tuple[str, float]]]:
        """Per row, the k objectives with the largest |coefficient| (the model card's interpretation)."""
        idx = torch.argsort(self.coefficients.abs(), dim=1, descending=True)[:, :k]
        return [[(self.objective_names[j], float(self.coefficients[i, j])) for j in row.tolist()]
                for i, row in enumerate(idx)]


class ArmoRMRewardModel(PointwiseRewardModel):
    kind = "armorm"

    def __init__(self, model: ArmoRMModel, tokenizer, *, name_or_path, max_length=4096, token_budget=None,
                 backend=None, transform: torch.Tensor | None = None):
        super().__init__(model, tokenizer, name_or_path=name_or_path, max_length=max_length)
        self.pad_token_id = model.config.pad_token_id
        self.gating_pattern = gating_pattern(tokenizer)
        n = model.regression_layer.out_features
        self.objective_names = OBJECTIVE_NAMES if n == len(OBJECTIVE_NAMES) else [f"objective_{i}" for i in range(n)]
        # reward_transform_matrix: the model's own, or (weights on the meta device, the model on vLLM) read from files
        self.transform = (transform if transform is not None else model.reward_transform_matrix.detach()).float()
        pad = self.pad_token_id if self.pad_token_id is not None else pad_or_eos(tokenizer)
        self.backend = (backend or engine_backend(token_budget))(model.model, pad, True)

    @classmethod
    def from_pretrained(cls, checkpoint, *, name_or_path, device, dtype, attn_implementation=None,
                        device_map=None, max_length=None, token_budget=None, chat_template=None, backend=None):
        tokenizer = load_chat_tokenizer(checkpoint.path, name_or_path, chat_template)
        model = ArmoRMModel.from_pretrained(checkpoint.path,
                                            **model_kwargs(device, dtype, attn_implementation, device_map))
        transform = read_tensors(checkpoint.path, "reward_transform_matrix")[""] if device == "meta" else None
        return cls(model, tokenizer, name_or_path=name_or_path, max_length=max_length or 4096,
                   token_budget=token_budget, backend=backend, transform=transform)

    @staticmethod
    def vllm_engine_args(checkpoint, name_or_path) -> dict:
        """rmplugins' vLLM plugin model (:mod:`rmplugins.vllm.plugin.armorm`), its ``embed`` task: the score, the
        19 objective rewards and the 19 gating weights."""
        from vllm.config import PoolerConfig

        return {"runner": "pooling", "pooler_config": PoolerConfig(task="embed")}

    # ---------------------------------------------------------------- positions (reference-exact)
    def encode(self, messages: list[dict]) -> list[int]:
        text = render(self.tokenizer, messages, name=self.name_or_path)
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]  # the template carries the one BOS
        return self._truncate(ids, side="right")  # card pipeline: truncation=True, max_length=4096

    def reward_position(self, ids: list[int]) -> int:
        return reward_position(ids, self.pad_token_id)

    def gating_position(self, ids: list[int]) -> int:
        """Start of the last occurrence of the gating pattern: the <|eot_id|> that closes the last user turn."""
        found = find_gating_position(ids, self.gating_pattern)
        if found is not None:
            return found
        if len(ids) >= self.max_length:
            raise Unscorable(
                f"ArmoRM: the conversation is too long: it has more than max_length={self.max_length} tokens, and "
                "cutting it there (on the right, as the model card's pipeline does) removed the end of the last "
                "user turn, where the gating network reads. Shorten the prompt, or load with a larger "
                "max_length=... (the model was trained on 4096)", TOO_LONG)
        raise ValueError("ArmoRM: the gating pattern <|eot_id|><|start_header_id|>assistant<|end_header_id|> is not "
                         "in the rendered conversation (was it truncated? conversations must end with an "
                         "assistant turn after a user turn)")

    def encode_row(self, conversation) -> tuple[list[int], list[int]]:
        """(token ids, [the reward's position, the gate's position]); raises when the gate's pattern is absent."""
        ids = self.encode(conversation.messages)
        return ids, [self.reward_position(ids), self.gating_position(ids)]

    def forward_rows(self, encoded):
        """``score`` [N], and per row the 19 objective ``rewards``, the ``gating_output`` and the
        ``coefficients`` (= gating_output @ transform.T)."""
        n = len(self.objective_names)
        if not encoded:
            empty = torch.zeros(0, n)
            return {"score": torch.zeros(0), "rewards": empty, "gating_output": empty, "coefficients": empty}
        if self.backend.name == "vllm":  # the plugin finds the same two positions and runs the same heads
            out = self.backend.embed([ids for ids, _ in encoded])
            score, rewards, gate = out[:, 0], out[:, 1: 1 + n], out[:, 1 + n:]
        else:
            h = torch.stack(self.backend.hidden_at([ids for ids, _ in encoded], [pos for _, pos in encoded]))
            with torch.inference_mode():  # h: [N, 2, H]
                rewards, gate, score = self.model.heads(h[:, 0].to(self.device), h[:, 1].to(self.device))
        coefficients = gate.float().cpu() @ self.transform.cpu().T
        return {"score": score.float().cpu(), "rewards": rewards.float().cpu(), "gating_output": gate.float().cpu(),
                "coefficients": coefficients}

    def score_details(self, prompts, completions) -> ArmoRMDetails:
        (convs,) = to_conversations(prompts, completions)
        out = self._forward([self.encode_row(c) for c in convs])
        return ArmoRMDetails(score=out["score"].tolist(), rewards=out["rewards"], coefficients=out["coefficients"],
                             gating_output=out["gating_output"], objective_names=list(self.objective_names))
