"""RewardFunction / AsyncRemoteRewardFunction on the tiny real-layout checkpoints, called as TRL calls them."""

import asyncio
import logging
import math

import pytest
import torch
from test_server import _get, _post

import rmplugins
from rmplugins import RewardFunction
from rmplugins.trl import AsyncRemoteRewardFunction
from rmplugins.trl.grouping import group_indices, is_pair_layout, prompt_key

P = ["What is a cat?"] * 3 + ["Name a color."] * 3
C = ["A small animal.", "A pet that meows.", "cat", "Red.", "Blue is a color.", ""]
CONV_P = [[{"role": "system", "content": "Be brief."}, {"role": "user", "content": p}] for p in P]
CONV_C = [[{"role": "assistant", "content": c}] for c in C]



def _call(rf, prompts, completions, **kw):
    logged, extra = {}, {}
    out = rf(prompts=prompts, completions=completions, completion_ids=[[1] * len(str(c)) for c in completions],
             trainer_state=None, log_metric=lambda n, v: logged.setdefault(n, v),
             log_extra=lambda c, v: extra.setdefault(c, v), **kw)
    return out, logged, extra


@pytest.mark.parametrize("kind", ["bt", "armorm"])
def test_pointwise_rewards_equal_score(models, kind):
    rm = models(kind)
    rf = RewardFunction(rm)
    assert not isinstance(rf, torch.nn.Module) and callable(rf)
    for prompts, completions in ((P, C), (CONV_P, CONV_C)):
        out, _, _ = _call(rf, prompts, completions, answer=["x"] * 6)
        assert out == pytest.approx(rm.score(prompts, completions), abs=1e-5)


def test_names_are_distinct_and_readable(models):
    a, b = RewardFunction(models("bt")), RewardFunction(models("bt"))
    assert a.__name__.startswith("bt_RM-Mistral-7B") and b.__name__ != a.__name__
    assert RewardFunction(models("bt"), name="helpful").__name__ == "helpful"


def test_armorm_logs_objectives_and_steers(models):
    rm = models("armorm")
    rf = RewardFunction(rm, top_objectives=2)
    out, logged, extra = _call(rf, CONV_P, CONV_C)
    details = rm.score_details(CONV_P, CONV_C)
    assert out == pytest.approx(list(details.score), abs=1e-5)
    names = details.objective_names
    assert len(names) == 19
    for k, name in enumerate(names):
        assert logged[f"rewards/{rf.__name__}/objective/{name}"] == pytest.approx(
            float(details.rewards[:, k].mean()), abs=1e-5)
    column = extra[f"{rf.__name__}/top_objectives"]
    assert len(column) == 6 and all(c.count("=") == 2 for c in column)
    # the top objective of row 0 is the largest reward * coefficient contribution
    contrib = details.rewards[0] * details.coefficients[0]
    assert column[0].startswith(names[int(contrib.argmax())] + "=")

    steer = RewardFunction(rm, objective_weights={"helpsteer-helpfulness": 2.0, "beavertails-is_safe": 1.0})
    out, _, _ = _call(steer, CONV_P, CONV_C)
    i, j = names.index("helpsteer-helpfulness"), names.index("beavertails-is_safe")
    expected = (2.0 * details.rewards[:, i] + details.rewards[:, j]).tolist()
    assert out == pytest.approx(expected, abs=1e-4)
    with pytest.raises(ValueError, match="unknown ArmoRM objectives"):
        RewardFunction(rm, objective_weights={"nope": 1.0})
    with pytest.raises(ValueError, match="ArmoRM only"):
        RewardFunction(models("bt"), objective_weights={"helpsteer-helpfulness": 1.0})
    # before: NaN weights gave NaN rewards, all-zero weights a reward of 0 for everything, silently
    with pytest.raises(ValueError, match=r"objective_weights\['beavertails-is_safe'\] must be a finite number"):
        RewardFunction(rm, objective_weights={"beavertails-is_safe": math.nan})
    with pytest.raises(ValueError, match=r"objective_weights\[3\] must be a finite number"):
        RewardFunction(rm, objective_weights=[0.0] * 3 + [math.inf] + [0.0] * 15)
    with pytest.raises(ValueError, match="objective_weights are all 0"):
        RewardFunction(rm, objective_weights=[0] * 19)
    with pytest.raises(ValueError, match="top_objectives applies to ArmoRM only"):
        RewardFunction(models("bt"), top_objectives=2)
    with pytest.raises(ValueError, match="top_objectives must be a whole number of at least 0"):
        RewardFunction(rm, top_objectives=-1)


def test_a_group_size_that_makes_no_sense_is_refused_before_the_model_loads(models, tmp_path):
    import numpy as np

    for bad in (4.5, "4", True, 0, -2):  # 4.5 read as 4 would split every group wrongly
        with pytest.raises(ValueError, match=f"num_generations must be a whole number of at least 1.*{bad!r}"):
            RewardFunction(tmp_path / "not-there", num_generations=bad)  # refused before the (missing) model
    with pytest.raises(ValueError, match="layout must be"):
        RewardFunction(tmp_path / "not-there", layout="rows")
    for kind in ("pair_pm", "gpm"):  # a group of one has nothing to compare: every reward would be None
        with pytest.raises(ValueError, match=f"num_generations=1: kind {kind!r} rewards a completion against"):
            RewardFunction(models(kind), num_generations=1)
    assert RewardFunction(models("bt"), num_generations=1).num_generations == 1  # pointwise: no group needed
    rf = RewardFunction(models("gpm"), num_generations=np.int64(3))  # a numpy integer from a config is a number
    assert rf.num_generations == 3 and type(rf.num_generations) is int
    out, _, _ = _call(rf, P, C)
    assert out == pytest.approx(models("gpm").rank(P[0], C[:3]).scores + models("gpm").rank(P[3], C[3:]).scores,
                                abs=1e-5)


@pytest.mark.parametrize("kind", ["pair_pm", "pairrm", "gpm"])
def test_group_aware_rewards_equal_rank(models, kind):
    rm = models(kind)
    method = "round_robin" if kind != "gpm" else None
    expected = rm.rank(P[0], C[:3], method=method).scores + rm.rank(P[3], C[3:], method=method).scores
    for ng in (3, None):  # explicit group size, or runs of identical prompts
        rf = RewardFunction(rm, num_generations=ng)
        out, logged, _ = _call(rf, P, C)
        assert out == pytest.approx(expected, abs=1e-5)
        assert logged[f"rewards/{rf.__name__}/group_size"] == 3
    if kind == "gpm":  # the GPO score: (1/n) sum_j (s_ij - s_ji) / tau, antisymmetric so it sums to zero
        assert sum(out[:3]) == pytest.approx(0.0, abs=1e-4)
    else:
        assert all(0.0 < x < 1.0 for x in out)
        rf = RewardFunction(rm, method="tournament")
        out, _, _ = _call(rf, P, C)
        assert out == pytest.approx(rm.rank(P[0], C[:3], method="tournament").scores
                                    + rm.rank(P[3], C[3:], method="tournament").scores, abs=1e-5)


@pytest.mark.parametrize("kind", ["pair_pm", "gpm"])
def test_online_dpo_pair_layout(models, kind):
    rm = models(kind)
    rf = RewardFunction(rm)
    prompts = [P[0], P[3], P[0], P[3]]  # online DPO: row i pairs with row i + B
    completions = [C[0], C[3], C[1], C[4]]
    out = rf(prompts=prompts, completions=completions, completion_ids=None, trainer_state=None)  # no log_metric
    p = rm.compare([P[0], P[3]], [C[0], C[3]], [C[1], C[4]])
    assert out == pytest.approx([p[0], p[1], 1 - p[0], 1 - p[1]], abs=1e-5)
    assert is_pair_layout([prompt_key(x) for x in prompts])
    assert not is_pair_layout([prompt_key(x) for x in [P[0]] * 4])


def test_rows_that_cannot_be_scored_are_none(models, caplog):
    rf = RewardFunction(models("pair_pm"), num_generations=2)
    bad = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "dangling"}]
    prompts = [bad, bad, P[0], P[0]]
    with caplog.at_level(logging.WARNING, logger="rmplugins.trl"):
        out, logged, _ = _call(rf, prompts, ["a", "b", C[0], C[1]])
    assert out[:2] == [None, None] and None not in out[2:]
    assert "must end with a user turn" in caplog.text
    assert "2 of 4 rows have no reward (None: 2 unreadable)" in caplog.text
    assert "online DPO" not in caplog.text  # GRPO/RLOO (log_metric given) leave a None row out of its group
    assert logged[f"rewards/{rf.__name__}/none_frac"] == logged[f"rewards/{rf.__name__}/none_frac/unreadable"] == 0.5
    assert rf.last_call["kinds"] == {0: "unreadable", 1: "unreadable"} and set(rf.last_call["reasons"]) == {0, 1}
    caplog.clear()
    from transformers import TrainerState

    with caplog.at_level(logging.WARNING, logger="rmplugins.trl"):  # the call online DPO makes: state, no log_metric
        out = RewardFunction(models("pair_pm"))(prompts=[bad, P[3], bad, P[3]], completions=[C[0], C[3], C[1], C[4]],
                                               completion_ids=None, trainer_state=TrainerState())
    assert out[0] is out[2] is None and None not in (out[1], out[3])
    assert "online DPO counts None as 0 and cannot skip a pair" in caplog.text
    assert logged[f"rewards/{rf.__name__}/none_frac"] == 0.5
    # a pairwise model cannot score a completion without a rival
    rf = RewardFunction(models("pairrm"))
    with caplog.at_level(logging.WARNING, logger="rmplugins.trl"):
        out, logged, _ = _call(rf, [P[0], P[3]], [C[0], C[3]])
    assert out == [None, None] and "group of one" in caplog.text
    assert logged[f"rewards/{rf.__name__}/none_frac/group_incomplete"] == 1.0


def test_none_rows_are_counted_by_kind(tiny, caplog):
    """TRL's logs say why rows have no reward, by the refusal's kind (``none_frac/<kind>``), not only how many:
    GPM's prompt longer than max_length (refused before any forward: a cut would tie every response) is too_long;
    the pair layout's partner of a refused row is refused with the same kind."""
    rm = rmplugins.load_reward_model(tiny("gpm"), device="cpu", max_length=96)
    long_prompt = "Tell me about the books of the city and the world, please. " * 30
    rf = RewardFunction(rm, num_generations=2)
    with caplog.at_level(logging.WARNING, logger="rmplugins.trl"):
        out, logged, _ = _call(rf, [long_prompt, long_prompt, P[0], P[0]], [C[0], C[1], C[0], C[1]])
    assert out[:2] == [None, None] and None not in out[2:] and "(None: 2 too_long)" in caplog.text
    assert rf.last_call["kinds"] == {0: "too_long", 1: "too_long"} and "max_length is 96" in rf.last_call["reasons"][0]
    assert logged[f"rewards/{rf.__name__}/none_frac"] == logged[f"rewards/{rf.__name__}/none_frac/too_long"] == 0.5
    assert not any(key.endswith(("/unreadable", "/rejected")) for key in logged)
    dpo = RewardFunction(rm)  # online DPO's layout: row i against row i + B
    out = dpo(prompts=[long_prompt, P[0], long_prompt, P[0]], completions=[C[0], C[0], C[1], C[1]],
              completion_ids=None, trainer_state=None)
    assert out[0] is out[2] is None and None not in (out[1], out[3])
    assert dpo.last_call["kinds"] == {0: "too_long", 2: "too_long"}


def test_tool_call_completions_are_tolerated(models, tiny, caplog):
    completion = [{"role": "assistant", "content": None, "tool_calls": [{"function": {"name": "f"}}]},
                  {"role": "tool", "content": "42"}, {"role": "assistant", "content": "It is 42."}]
    prompts = [[{"role": "user", "content": "f?"}], [{"role": "user", "content": "g?"}]]
    completions = [completion, [{"role": "assistant", "content": "No tools."}]]
    rm = rmplugins.load_reward_model(tiny("bt_llama3"), device="cpu")  # Llama-3's template renders tool turns
    out, _, _ = _call(RewardFunction(rm), prompts, completions)
    assert out == pytest.approx(rm.score(prompts, completions), abs=1e-5)
    # Mistral's template only alternates user/assistant: that row gets None and a warning, the other a reward
    bt = models("bt")
    with caplog.at_level(logging.WARNING, logger="rmplugins.trl"):
        out, _, _ = _call(RewardFunction(bt), prompts, completions)
    assert out[0] is None and out[1] == pytest.approx(bt.score(prompts[1:], completions[1:])[0], abs=1e-5)
    assert "roles must alternate" in caplog.text


def test_a_group_the_pairwise_model_cannot_render_does_not_sink_the_batch(models, caplog):
    """Groups are ranked together (rank_many); one PairRM cannot render (a tool turn in its context) gets None with
    the reason, the others their ranking."""
    tool = [{"role": "assistant", "content": None, "tool_calls": [{"function": {"name": "f"}}]},
            {"role": "tool", "content": "42"}, {"role": "assistant", "content": "It is 42."}]
    prompts = [[{"role": "user", "content": "f?"}]] * 2 + [[{"role": "user", "content": "g?"}]] * 2
    completions = [tool, tool[:2] + [{"role": "assistant", "content": "41"}],
                   [{"role": "assistant", "content": "Yes."}], [{"role": "assistant", "content": "No tools."}]]
    rm = models("pairrm")
    with caplog.at_level(logging.WARNING, logger="rmplugins.trl"):
        out, _, _ = _call(RewardFunction(rm, num_generations=2), prompts, completions)
    assert out[:2] == [None, None] and "must alternate user/assistant" in caplog.text
    assert out[2:] == pytest.approx(rm.rank(prompts[2], completions[2:]).scores, abs=1e-5)


def test_shaping_length_penalty_normalisation_clipping(models):
    rm = models("bt")
    raw = rm.score(P, C)
    ids = [[0] * (i + 1) for i in range(6)]
    rf = RewardFunction(rm, length_penalty=0.5)
    assert rf(prompts=P, completions=C, completion_ids=ids) == pytest.approx(
        [r - 0.5 * (i + 1) for i, r in enumerate(raw)], abs=1e-5)
    rf = RewardFunction(rm, normalize=True, clip=1.5)
    first = rf(prompts=P, completions=C)
    mean, std = sum(raw) / 6, math.sqrt(sum((r - sum(raw) / 6) ** 2 for r in raw) / 6)
    assert first == pytest.approx([max(-1.5, min(1.5, (r - mean) / std)) for r in raw], abs=1e-4)
    rf(prompts=P[:3], completions=C[:3])  # running statistics now cover all nine rewards
    allr = raw + raw[:3]
    assert rf.stats.mean == pytest.approx(sum(allr) / 9, abs=1e-5)
    assert rf.stats.std == pytest.approx(math.sqrt(sum((r - sum(allr) / 9) ** 2 for r in allr) / 9), abs=1e-5)
    with pytest.raises(ValueError, match="clip"):
        RewardFunction(rm, clip=(1, 0))


def test_shaping_options_that_make_no_sense_are_refused_before_the_model_loads(models, tmp_path):
    """Before: ``clip=nan`` clipped nothing, ``length_penalty=nan`` made every reward NaN, ``normalize="false"``
    normalised; all without a word. NumPy numbers from a config stay numbers."""
    import numpy as np

    for options, message in [({"clip": math.nan}, "clip must be a finite number"),
                             ({"clip": (-math.inf, 1.0)}, "clip must be a finite number"),
                             ({"clip": -1}, "clip must be a positive number"),
                             ({"clip": "1"}, "clip must be a finite number"),
                             ({"clip": (1, 2, 3)}, "a \\(low, high\\) pair"),
                             ({"length_penalty": math.nan}, "length_penalty must be a finite number"),
                             ({"length_penalty": "0.1"}, "length_penalty must be a finite number"),
                             ({"normalize": "false"}, "normalize must be True or False")]:
        with pytest.raises(ValueError, match=message):
            RewardFunction(tmp_path / "not-there", **options)  # refused before the (missing) model
        with pytest.raises(ValueError, match=message):
            AsyncRemoteRewardFunction("http://127.0.0.1:9", **options)
    rm = models("bt")
    raw = rm.score(P, C)
    rf = RewardFunction(rm, clip=np.float32(2.0), length_penalty=np.float64(0.25))
    assert rf(prompts=P, completions=C, completion_ids=[[0]] * 6) == pytest.approx(
        [max(-2.0, min(2.0, r - 0.25)) for r in raw], abs=1e-5)


def test_errors_are_clear(models):
    rm = models("pair_pm")
    with pytest.raises(ValueError, match="num_generations=2 does not match"):
        RewardFunction(rm, num_generations=2)(prompts=P, completions=C)
    with pytest.raises(ValueError, match="6 prompts but 5 completions"):
        RewardFunction(rm)(prompts=P, completions=C[:5])
    with pytest.raises(ValueError, match="pairwise kinds"):
        RewardFunction(models("bt"), method="tournament")
    args = type("Args", (), {"per_device_train_batch_size": 3, "steps_per_generation": 1, "num_generations": 2})
    with pytest.raises(ValueError, match="per_device_train_batch_size"):
        RewardFunction(rm, distributed="refuse").check_trainer_args(args, num_processes=2)
    RewardFunction(rm).check_trainer_args(args, num_processes=2)  # gathering handles it


def test_grouping_helpers():
    keys = ["a", "a", "b", "b", "b", "a"]
    assert group_indices(keys) == [[0, 1], [2, 3, 4], [5]]
    assert group_indices(["a", "a", "b", "b"], 2) == [[0, 1], [2, 3]]


def test_async_remote_reward_function_against_real_server(models):
    import socket

    from rmplugins.serving import BackgroundServer, create_app

    rm = models("bt", deterministic=True)  # rows come back bit for bit as scored alone, however batched
    app = create_app(rm, api_key="sekret")
    with BackgroundServer(app) as server:
        rf = AsyncRemoteRewardFunction(server.url, api_key="sekret", batch_size=2)
        assert asyncio.iscoroutinefunction(rf.__call__)
        out = asyncio.run(rf(prompts=P, completions=C, completion_ids=None))
        assert out == rm.score(P, C)
        bad = AsyncRemoteRewardFunction(server.url, api_key="wrong", retries=2)
        with pytest.raises(RuntimeError, match="answered 401.*api_key="):  # not [None, None]: training would go on
            asyncio.run(bad(prompts=P[:2], completions=C[:2]))
    logged = {}  # the server answered before and is gone now: the rows it lost are None, counted as unanswered
    out = asyncio.run(rf(prompts=P[:3], completions=C[:3], log_metric=lambda key, value: logged.setdefault(key, value)))
    assert out == [None] * 3 and logged[f"rewards/{rf.__name__}/none_frac/unanswered"] == 1.0
    with socket.socket() as s:  # a port nothing listens on, held bound so that no other test can take it meanwhile
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
        nobody = AsyncRemoteRewardFunction(dead, retries=1)
        with pytest.raises(RuntimeError, match="could not be reached.*rmplugins serve"):
            asyncio.run(nobody(prompts=P[:2], completions=C[:2]))
    assert AsyncRemoteRewardFunction(dead + "/get_reward/").url == dead + "/get_reward"
    for route in ("score", "classify", "remote_rm"):  # another framework's route of the same server
        with pytest.raises(ValueError, match=f"names the server's /{route} route; this client speaks"):
            AsyncRemoteRewardFunction(f"{dead}/{route}")
    for option, bad in (("batch_size", 0), ("batch_size", 2.5), ("retries", -1), ("retries", True),
                        ("timeout", 0), ("timeout", -1.0), ("timeout", float("inf")), ("timeout", "30")):
        with pytest.raises(ValueError, match=f"{option} must be"):  # never clamped or truncated silently
            AsyncRemoteRewardFunction(dead, **{option: bad})


def test_a_server_that_errs_before_it_ever_scored_is_named_so_not_unreachable(models):
    """A server that is up but answers its first requests with a 500 (its model ran out of memory) is not "could
    not be reached... start it": the client says it answered, and where the reason is."""
    from rmplugins.serving import BackgroundServer, create_app

    rm = models("bt")

    class OutOfMemory:  # the real model, failing the way an accelerator out of memory does
        kind, pointwise, name_or_path, deterministic = rm.kind, True, rm.name_or_path, False
        backend, max_length = rm.backend, rm.max_length

        def score_rows(self, prompts, completions):
            raise RuntimeError("CUDA out of memory. Tried to allocate 20.00 GiB")

    with BackgroundServer(create_app(OutOfMemory())) as server:
        rf = AsyncRemoteRewardFunction(server.url, retries=1)
        with pytest.raises(RuntimeError, match=r"answered every attempt \(2\) with an error and has not scored yet; "
                                               r"its log says why. Last answer: HTTP 500: .*out of memory"):
            asyncio.run(rf(prompts=P[:2], completions=C[:2]))


def test_ready_rewards_module_is_lazy_and_resolves(tiny, monkeypatch):
    import importlib
    import sys

    sys.modules.pop("integrations.trl.rewards", None)
    mod = importlib.import_module("integrations.trl.rewards")
    assert mod._INSTANCES == {}  # importing loads nothing
    monkeypatch.setenv("RMPLUGINS_GPM_GPO_MODEL", tiny("gpm"))
    rf = mod.gpm_gpo  # what `trl grpo --reward_funcs integrations.trl.rewards.gpm_gpo` does: getattr
    assert isinstance(rf, RewardFunction) and rf.__name__ == "gpm_gpo" and rf.kind == "gpm"
    assert mod.gpm_gpo is rf
    with pytest.raises(AttributeError, match="choose one of"):
        mod.nope  # noqa: B018
    # the ready judges load as generative judges with their presets: pointwise (a reward each) and pairwise
    monkeypatch.setenv("RMPLUGINS_QWEN3_RERANKER_MODEL", tiny("genrm_qwen3"))
    monkeypatch.setenv("RMPLUGINS_RM_R1_MODEL", tiny("genrm_trained"))
    reranker, rm_r1 = mod.qwen3_reranker, mod.rm_r1
    assert (reranker.kind, reranker.pointwise, rm_r1.kind, rm_r1.pointwise) == ("genrm", True, "genrm", False)
    want = rmplugins.load_reward_model(tiny("genrm_qwen3"), kind="genrm", judge="qwen3-reranker").score(P[:2], C[:2])
    assert reranker(prompts=P[:2], completions=C[:2]) == want
    assert rm_r1.model.spec.name == "rm-r1-reasoning" and rm_r1.model.spec.readout == "generate"


def test_win_metrics_leave_out_prompts_without_a_verdict():
    from rmplugins.trl.callbacks import win_metrics

    assert win_metrics([0.9, 0.2, 0.5]) == pytest.approx({"win_rate": 0.5, "win_prob": 1.6 / 3})
    got = win_metrics([0.9, None, 0.2, 0.5])  # before: None > 0.5 raised TypeError at the evaluation
    assert got == pytest.approx({"win_rate": 0.5, "win_prob": 1.6 / 3, "win_no_verdict": 1.0})


def test_a_row_the_model_rejects_is_none_and_its_chunk_keeps_the_other_rewards(models, caplog):
    """A row the reward model refuses (here a prompt ArmoRM cannot read whole; a generating judge without a verdict
    alike) made the server answer 422 for the whole request, and the client raised: training stopped. The client
    asks for partial answers: that row is None with the reason, the chunk's other rows are scored; OpenRLHF's
    client, which never asks, still gets the 422."""
    from rmplugins.serving import BackgroundServer, create_app

    rm = models("armorm", deterministic=True)
    long = "word " * 20000
    prompts, completions = [P[0], long, P[3]], [C[0], "an answer", C[3]]
    with BackgroundServer(create_app(rm, max_sample_chars=10 ** 6)) as server:
        body = {"query": [p + c for p, c in zip(prompts, completions)], "prompts": prompts}
        status, answer = _post(f"{server.url}/get_reward", body)
        assert status == 422 and "too long" in answer["error"] and answer["kind"] == "too_long"
        status, answer = _post(f"{server.url}/get_reward", {**body, "partial": True})
        assert status == 200 and answer["rewards"][1] is None and "too long" in answer["errors"][1]
        assert answer["error_kinds"] == [None, "too_long", None]
        assert answer["errors"][0] is None and answer["rewards"][0] == rm.score(P[:1], C[:1])[0]
        assert _post(f"{server.url}/get_reward", {**body, "partial": "yes"})[0] == 422
        rf = AsyncRemoteRewardFunction(server.url, batch_size=4)
        with caplog.at_level(logging.WARNING, logger="rmplugins"):
            out = asyncio.run(rf(prompts=prompts, completions=completions))
        assert _get(f"{server.url}/metrics.json")[1]["samples_rejected"] == 2  # the raw partial request's, and this
    good = rm.score([prompts[0], prompts[2]], [completions[0], completions[2]])
    assert out == [good[0], None, good[1]]
    assert "1 of 3 rows have no reward" in caplog.text and "too long" in caplog.text


def test_win_rate_callback_numbers_that_make_no_sense_are_refused_before_the_judge_loads(tmp_path):
    """Before: batch_size=0 ran as 1, num_prompts=0 judged every prompt, max_new_tokens=2.5 generated 2."""
    from rmplugins.trl import WinRateCallback

    for options, message in [({"batch_size": 0}, "batch_size must be a whole number of at least 1"),
                             ({"num_prompts": 0}, "num_prompts must be a whole number of at least 1"),
                             ({"max_new_tokens": 2.5}, "max_new_tokens must be a whole number of at least 1"),
                             ({"every_n_steps": 0}, "every_n_steps must be a whole number of at least 1")]:
        with pytest.raises(ValueError, match=message):
            WinRateCallback(tmp_path / "no-judge-here", None, prompts=["Hi"], **options)
