"""Samples -> rewards: the one place of the server that knows the reward-model kinds. Pointwise kinds score the
response; pairwise kinds and GPM give P(response beats the reference the label carried)."""

from typing import Any

from .protocol import Sample


class RewardScorer:
    """``scorer(samples)`` -> one ``{"score", "logs"}`` per sample; ``scorer.answer(results)`` -> OpenRLHF's
    ``{"rewards", "scores", "extra_logs"}``, with the same ``extra_logs`` keys (``log_keys``) every time."""

    def __init__(self, rm: Any, objective_logs: bool = False):
        self.rm = rm
        self.kind = rm.kind
        self.needs_reference = not rm.pointwise
        self.objective_names: list[str] = []
        if objective_logs and self.kind == "armorm":
            self.objective_names = list(rm.objective_names)
        self.log_keys = ["rm_score", "template_recovered"] + [f"objective/{n}" for n in self.objective_names]

    def __call__(self, samples: list[Sample]) -> list[dict | ValueError]:
        """One result per sample; a sample the model cannot score gets a ``ValueError`` with its reason (the others
        are scored in the same batched call, not again)."""
        prompts = [s.messages for s in samples]
        responses = [s.response for s in samples]
        if self.needs_reference:
            rows = self.rm.compare_rows(prompts, responses, [s.reference for s in samples])
        else:
            rows = self.rm.score_rows(prompts, responses)
        out: list[dict | ValueError] = []
        for i, (sample, score) in enumerate(zip(samples, rows.scores)):
            if score is None:
                out.append(ValueError(rows.reasons.get(i, "the reward model could not score this sample")))
                continue
            logs = {"rm_score": score, "template_recovered": sample.recovered}
            if self.objective_names:
                objectives = rows.extras["rewards"][i].tolist()
                logs.update({f"objective/{n}": float(v) for n, v in zip(self.objective_names, objectives)})
            out.append({"score": score, "logs": logs})
        return out

    def answer(self, results: list[dict]) -> dict:
        scores = [r["score"] for r in results]
        return {"rewards": scores, "scores": list(scores),
                "extra_logs": {k: [r["logs"][k] for r in results] for k in self.log_keys}}
