"""Process reward model parity: the ``prm`` kind against Qwen2.5-Math-PRM's model card, re-implemented here: the
card's model class (a Qwen2 backbone, ``Linear -> ReLU -> Linear(h, 2)`` on every token) and its
``make_step_rewards`` (softmax, the positive class at each ``<extra_0>``), one conversation at a time."""

import engines
import pytest
import torch
import torch.nn.functional as F
import transformers
from engines import ENGINES
from reference_helpers import ATOL, assert_close, assert_differs
from transformers import AutoTokenizer

from rmplugins import RewardFunction, load_reward_model

SYSTEM = "Please reason step by step, and put your final answer within \\boxed{}."
QUESTIONS = ["What is 12 times 3?", "Solve x + 4 = 10.", "What is the capital of France?"]
RESPONSES = [
    "12 times 3 is 12 + 12 + 12.\n\nThat is 36.\n\nSo the answer is \\boxed{36}.",
    "Subtract 4 from both sides.\n\nx = 6.",
    "Paris.",
    "First step.\n\n\n\nSecond step after a blank line.\n\n",
]


class QwenPRMCard(transformers.Qwen2PreTrainedModel):
    """The card's ``Qwen2ForProcessRewardModel``: per-token logits of two classes."""

    def __init__(self, config):
        super().__init__(config)
        self.model = transformers.Qwen2Model(config)
        self.score = torch.nn.Sequential(torch.nn.Linear(config.hidden_size, config.hidden_size), torch.nn.ReLU(),
                                         torch.nn.Linear(config.hidden_size, 2))
        self.post_init()

    def forward(self, input_ids):
        return (self.score(self.model(input_ids).last_hidden_state),)


def make_step_rewards(logits, token_masks):
    """The card's function: P(positive) at each masked token, per sample."""
    probabilities = F.softmax(logits, dim=-1) * token_masks.unsqueeze(-1)
    out = []
    for i in range(probabilities.size(0)):
        sample = probabilities[i]
        out.append(sample[sample != 0].view(-1, 2)[:, 1].tolist())
    return out


@pytest.fixture(scope="module")
def card(tiny):
    path = tiny("prm")
    model = QwenPRMCard.from_pretrained(path, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(path)

    def step_rewards(question, steps):
        messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question},
                    {"role": "assistant", "content": "<extra_0>".join(steps) + "<extra_0>"}]
        text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)
        ids = tok.encode(text, return_tensors="pt")
        with torch.no_grad():
            logits = model(input_ids=ids)[0]
        return make_step_rewards(logits, ids == tok.encode("<extra_0>")[0])[0]

    return step_rewards


@pytest.fixture(scope="module", params=ENGINES)
def prm(request, tiny):
    rm = engines.load(tiny("prm"), request.param)
    yield rm
    engines.close(rm)


def cases():
    return [(q, r) for q in QUESTIONS for r in RESPONSES]


def card_steps(response):
    return [s.strip() for s in response.split("\n\n") if s.strip()]


def test_kind_detected_from_the_architecture(prm):
    assert prm.kind == "prm" and prm.pointwise


def test_step_rewards_match_the_card(prm, card):
    prompts, responses = zip(*cases())
    got = prm.score_steps(list(prompts), list(responses))  # all in one batched call
    for (q, r), steps in zip(cases(), got):
        want = card(q, card_steps(r))
        assert len(steps) == len(want) == len(card_steps(r))
        assert_close(steps, want, ATOL, f"steps of {r[:20]!r}")
    assert_differs(got[0][0], got[0][1], ATOL, "two steps")


@pytest.mark.parametrize("aggregate", ["min", "last", "mean", "product"])
def test_score_aggregates_the_steps(tiny, card, aggregate):
    rm = load_reward_model(tiny("prm"), dtype="float32", device="cpu", aggregate=aggregate)
    reduce = {"min": min, "last": lambda s: s[-1], "mean": lambda s: sum(s) / len(s),
              "product": lambda s: torch.tensor(s).prod().item()}[aggregate]
    prompts, responses = zip(*cases())
    want = [reduce(card(q, card_steps(r))) for q, r in cases()]
    assert_close(rm.score(list(prompts), list(responses)), want, ATOL, aggregate)


def test_step_separator_and_system_prompt_are_options(tiny, card):
    rm = load_reward_model(tiny("prm"), dtype="float32", device="cpu", step_separator="\n")
    response = "a line\nanother line\n\nthird"
    assert rm.steps(response) == ["a line", "another line", "third"]
    assert len(rm.score_steps([QUESTIONS[0]], [response])[0]) == 3
    bare = load_reward_model(tiny("prm"), dtype="float32", device="cpu", system_prompt=None)
    assert_differs(bare.score([QUESTIONS[0]], [RESPONSES[0]])[0],
                   load_reward_model(tiny("prm"), dtype="float32", device="cpu").score([QUESTIONS[0]],
                                                                                        [RESPONSES[0]])[0],
                   ATOL, "with and without the card's system prompt")
    with pytest.raises(ValueError, match="aggregate"):
        load_reward_model(tiny("prm"), device="cpu", aggregate="max")


def test_a_response_carrying_the_step_marker_is_refused_alone(prm):
    rows = prm.score_rows(["Q?", "Q?"], ["fine.", "sneaky <extra_0> marker"])
    assert rows.scores[0] is not None and rows.scores[1] is None and "<extra_0>" in rows.reasons[1]
    assert rows.kinds == {1: "unreadable"}  # the model cannot read it as steps; not a length, not a verdict


def test_a_conversation_longer_than_max_length_is_refused_as_too_long(tiny):
    """Steps past max_length would have no reward: that row is refused (kind too_long), the other scored."""
    rm = load_reward_model(tiny("prm"), device="cpu", max_length=64)
    rows = rm.score_rows(["Q?", "Q?"], ["fine.", "\n\n".join(["a step that goes on and on"] * 12)])
    assert rows.scores[0] is not None and rows.scores[1] is None
    assert "more than max_length=64" in rows.reasons[1] and rows.kinds == {1: "too_long"}


def test_deterministic_mode_gives_the_same_steps(tiny, prm):
    det = load_reward_model(tiny("prm"), dtype="float32", device="cpu", deterministic=True)
    prompts, responses = zip(*cases())
    for a, b in zip(det.score_steps(list(prompts), list(responses)), prm.score_steps(list(prompts), list(responses))):
        assert_close(a, b, ATOL, "deterministic")


def test_reward_function_logs_step_statistics(tiny):
    rf = RewardFunction(tiny("prm"), device="cpu")
    logged = {}
    prompts = [[{"role": "user", "content": q}] for q in QUESTIONS]
    completions = [[{"role": "assistant", "content": r}] for r in RESPONSES[:3]]
    rewards = rf(prompts=prompts, completions=completions, log_metric=lambda k, v: logged.__setitem__(k, v))
    assert rewards == pytest.approx(rf.model.score(prompts, completions), abs=1e-6)
    steps = rf.model.score_steps(prompts, completions)
    key = f"rewards/{rf.__name__}/"
    assert logged[key + "steps/mean"] == pytest.approx(sum(map(len, steps)) / 3)
    assert logged[key + "step_reward/mean"] == pytest.approx(sum(sum(s) for s in steps) / sum(map(len, steps)),
                                                             abs=1e-6)
    assert logged[key + "step_reward/min_mean"] == pytest.approx(sum(min(s) for s in steps) / 3, abs=1e-6)
