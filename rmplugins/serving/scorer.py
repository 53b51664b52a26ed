"""Samples -> rewards: the one place of the server that knows the reward-model kinds. Pointwise kinds score the
response; pairwise kinds and GPM give P(response beats the reference the label carried), or, with
``--group-size``, each response's reward within its prompt's group (:class:`~.groups.GroupJob`)."""

from typing import Any

from ..refusals import NO_VERDICT, REJECTED, Unscorable
from .groups import GroupJob
from .protocol import RequestError, Sample, refusal, refusal_kind

# Per-row values a family returns beside its score, in the order /pooling reports them after the score.
VECTOR_EXTRAS = ("rewards", "gating_output", "step_rewards")


class RewardScorer:
    """``scorer(items)`` -> one result per item: a ``{"score", "logs", "vector"}`` per :class:`Sample`, a list of
    them per :class:`GroupJob`, or a ``ValueError`` with the reason where the model could not score it.
    ``scorer.answer(results)`` -> OpenRLHF's ``{"rewards", "scores", "extra_logs"}``, with the same ``extra_logs``
    keys (``log_keys``) every time. ``vector`` is what ``/pooling`` returns: the score, then the family's named
    per-row values (ArmoRM: 19 objective rewards and 19 gating weights; a PRM: its step rewards)."""

    def __init__(self, rm: Any, objective_logs: bool = False, groups: bool = False, fallback: bool = False):
        self.rm = rm
        self.kind = rm.kind
        self.groups = groups
        self.needs_reference = not rm.pointwise and not groups
        self.objective_names: list[str] = []
        if objective_logs and self.kind == "armorm":
            self.objective_names = list(rm.objective_names)
        self.log_keys = (["rm_score", "template_recovered"] + [f"objective/{n}" for n in self.objective_names]
                         + (["group_complete", "group_size"] if groups else []) + (["no_reward"] if fallback else []))

    def __call__(self, items: list) -> list:
        """One result per item; an item the model cannot score gets a ``ValueError`` with its reason (the others
        are scored in the same batched call, not again)."""
        out: list = [None] * len(items)
        samples = [i for i, item in enumerate(items) if isinstance(item, Sample)]
        jobs = [i for i, item in enumerate(items) if isinstance(item, GroupJob)]
        if samples:
            for i, result in zip(samples, self._samples([items[i] for i in samples])):
                out[i] = result
        if jobs:
            for i, result in zip(jobs, self._groups([items[i] for i in jobs])):
                out[i] = result
        return out

    def _samples(self, samples: list[Sample]) -> list:
        prompts = [s.messages for s in samples]
        responses = [s.response for s in samples]
        if self.needs_reference:
            rows = self.rm.compare_rows(prompts, responses, [s.reference for s in samples])
        else:
            rows = self.rm.score_rows(prompts, responses)
        out: list = []
        for i, (sample, score) in enumerate(zip(samples, rows.scores)):
            if score is None:
                out.append(Unscorable(rows.reasons.get(i, "the reward model could not score this sample"),
                                      rows.kinds.get(i, REJECTED)))
                continue
            logs = {"rm_score": score, "template_recovered": sample.recovered}
            if self.objective_names:
                objectives = rows.extras["rewards"][i].tolist()
                logs.update({f"objective/{n}": float(v) for n, v in zip(self.objective_names, objectives)})
            vector = [score]
            for name in VECTOR_EXTRAS:
                if name in rows.extras:
                    vector += [float(v) for v in rows.extras[name][i].tolist()]
            out.append({"score": score, "logs": logs, "vector": vector})
        return out

    def _groups(self, jobs: list[GroupJob]) -> list:
        """Every group ranked in one ``rank_rows`` call (each method's groups together); a group that cannot be
        ranked gets its ValueError, the others their rewards."""
        out: list = [None] * len(jobs)
        for method in dict.fromkeys(job.method for job in jobs):
            index = [i for i, job in enumerate(jobs) if job.method == method]
            rankings = self.rm.rank_rows([jobs[i].messages for i in index], [jobs[i].responses for i in index],
                                         method)
            for i, ranking in zip(index, rankings):
                out[i] = ranking if isinstance(ranking, ValueError) else self._group_results(jobs[i], ranking.scores)
        return out

    def _group_results(self, job: GroupJob, scores: list) -> list:
        results: list = []
        for score in scores:
            if score is None:
                results.append(Unscorable("the judge decided none of this response's comparisons in its group",
                                          NO_VERDICT))
                continue
            logs = {"rm_score": score, "template_recovered": 1.0, "group_complete": float(job.complete),
                    "group_size": float(len(job))}
            results.append({"score": score, "logs": logs, "vector": [score]})
        return results

    def fallback(self, err: BaseException, reward: float, sample: Sample) -> dict:
        """The result of ``sample``, which the model rejected, answered with ``--fallback-reward``: that reward,
        ``no_reward`` = 1, ``template_recovered`` as the sample's, the model's logs 0 (``/pooling``'s vector is the
        reward alone). Only a refusal (422, or a lone grouped sample's 408) is answered so; anything else (a bug) is
        raised, never turned into a number."""
        refused = refusal(err)
        if not isinstance(refused, RequestError) or refused.status not in (408, 422):
            raise err
        logs = {key: 0.0 for key in self.log_keys}
        logs.update(no_reward=1.0, template_recovered=sample.recovered)
        return {"score": reward, "logs": logs, "vector": [reward]}

    def answer(self, results: list) -> dict:
        """OpenRLHF's answer; where a sample was rejected (a request that asked for ``partial`` answers), its reward
        and logs are null, ``errors`` holds its reason and ``error_kinds`` its kind (:mod:`rmplugins.refusals`;
        both only when one was, null for the scored samples)."""
        rejected = [rejection(r) if isinstance(r, BaseException) else None for r in results]
        scores = [None if why else r["score"] for r, why in zip(results, rejected)]
        content = {"rewards": scores, "scores": list(scores),
                   "extra_logs": {k: [None if why else r["logs"].get(k, 0.0) for r, why in zip(results, rejected)]
                                  for k in self.log_keys}}
        if any(rejected):
            content["errors"] = rejected
            content["error_kinds"] = [refusal_kind(r) if isinstance(r, BaseException) else None for r in results]
        return content


def rejection(err: BaseException) -> str:
    """Why a sample has no reward, as the whole request's 422 (or 408) would have said it."""
    return getattr(refusal(err), "reason", None) or str(err)
