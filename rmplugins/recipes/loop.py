"""The resumable iterative-DPO / rejection-sampling loop.

Layout of ``--output DIR`` (iteration k = 1..N uses the policy of iteration k-1; iteration 0 is ``--policy``)::

    DIR/run.json                   the options that shape the outputs (a resume must match them)
    DIR/recipe.log                 the log of every run into DIR
    DIR/summary.json               per-iteration summary, rewritten after every stage
    DIR/iter-k/candidates.jsonl    {"index", "prompt", "seed", "candidates": [K texts]}
    DIR/iter-k/scores.jsonl        {"index", "scores", "best", "worst", "comparisons", "method"}
    DIR/iter-k/pairs.jsonl         iterative DPO: {"prompt", "chosen", "rejected", "chosen_score",
                                   "rejected_score", "margin"} in TRL's format (conversational when prompts are)
    DIR/iter-k/best.jsonl          rejection sampling: {"prompt", "completion", "score"}
    DIR/iter-k/*.openrlhf.jsonl    with --openrlhf-keys: OpenRLHF <= 0.9's iter_dpo / rs rows
    DIR/iter-k/model/              the trained policy (TRL DPOTrainer / SFTTrainer)
    DIR/iter-k/<stage>.done.json   stage marker: seconds and statistics
    DIR/eval-N/                    with --eval-final: candidates and scores of the final policy

Resume rules: a stage is done when its marker exists; finished files are never rewritten. Generation and scoring
append complete rows to ``<file>.partial`` (flushed and fsynced per chunk) and continue after the last complete
row; sampling seeds depend only on (seed, iteration, prompt index) and chunks always start at multiples of
``chunk_size``, so a resumed stage produces what an uninterrupted one would. Every
final file and the model directory are written to a temporary name and moved into place with ``os.replace``.

Test hooks (:mod:`.signals`): the process kills or interrupts itself after a stage or a chunk.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..loading import load_reward_model
from .config import RecipeConfig
from .files import DISK_ERRORS, PartialFile, disk_error, dumps, lock_directory, read_jsonl, writable, write_atomic
from .generation import make_generator, seed_for
from .preflight import check_run
from .prompts import as_messages, is_conversational, read_prompts
from .selection import SelectionStats, best_of_n, default_rule, dpo_rows, rank_method, select_pair, sft_rows
from .signals import signal_hook
from .summary import STAGES, iteration_summary, log_iteration, run_summary, score_row, stats_of
from .training import _cuda, train

logger = logging.getLogger("rmplugins.recipes")

# ----------------------------------------------------------------------------- the loop
class Recipe:
    def __init__(self, config: RecipeConfig):
        self.cfg = config
        self.out = Path(config.output)
        self.prompts = read_prompts(config.prompts)
        self.conversational = is_conversational(self.prompts)
        self._rm = None
        self._gen = None
        self.rm_kind: str | None = None  # set by preflight() from the checkpoint's files

    # ---- resources, loaded lazily so a resume that only trains never loads the reward model
    def ready_reward_model(self):
        """The reward model, loaded on first use (a resume that only trains never loads it) and on its device."""
        if self._rm is None:
            self._rm = load_reward_model(self.cfg.reward_model, device=self.cfg.rm_device, **self.cfg.reward_kwargs)
            logger.info("reward model %s (kind %s), rule %s", self.cfg.reward_model, self._rm.kind,
                        self.rule_for_kind(self._rm.kind))
        elif self.cfg.rm_device or _cuda():
            self._rm.to(self.cfg.rm_device or "cuda")
        return self._rm

    def generator(self, policy: str):
        if self._gen is None:
            self._gen = make_generator(self.cfg.backend, policy, seed=self.cfg.seed,
                                       max_new_tokens=self.cfg.max_new_tokens, temperature=self.cfg.temperature,
                                       top_p=self.cfg.top_p, gpu_memory_utilization=self.cfg.gpu_memory_utilization,
                                       **({"device": self.cfg.device, "batch_size": self.cfg.generation_batch_size}
                                          if self.cfg.backend == "hf" else {"engine_args": self.cfg.vllm_engine_args}))
        elif self._gen.model_path != str(policy):
            self._gen.load(policy)
        self._gen.wake_up()
        return self._gen

    def _park(self) -> None:
        """Free the GPU before training: generator asleep, reward model on CPU."""
        if self._gen is not None:
            self._gen.sleep()
        if self._rm is not None and _cuda():
            self._rm.to("cpu")

    # ---- layout
    def policy_for(self, k: int) -> str:
        return self.cfg.policy if k == 1 else str(self.out / f"iter-{k - 1}" / "model")

    def reference_for(self, k: int) -> str:
        return self.cfg.policy if self.cfg.reference == "initial" else self.policy_for(k)

    @property
    def select_file(self) -> str:
        return "pairs.jsonl" if self.cfg.recipe == "iterative-dpo" else "best.jsonl"

    def marker(self, d: Path, stage: str) -> Path:
        return d / f"{stage}.done.json"

    def done(self, d: Path, stage: str) -> dict | None:
        m = self.marker(d, stage)
        return json.loads(m.read_text()) if m.exists() else None

    def mark(self, d: Path, stage: str, info: dict) -> dict:
        self.write_fingerprint()
        write_atomic(self.marker(d, stage), json.dumps(info, indent=2) + "\n")
        self.write_summary()
        signal_hook(f"{d.name}/{stage}")
        return info

    # ---- before any work
    def preflight(self) -> None:
        """Every check that can fail, before any work (:mod:`.preflight`): the output, the trackers, the devices,
        the backend importable, the policy and the reward model found and identified, the pair rule fit for the
        reward model's kind."""
        self.rm_kind = check_run(self.cfg, self.rule_for_kind)

    def complete(self) -> bool:
        """Every stage of every iteration (and the final evaluation, if asked) has its marker."""
        dirs = [(self.out / f"iter-{k}", "train") for k in range(1, self.cfg.iterations + 1)]
        if self.cfg.eval_final:
            dirs.append((self.out / f"eval-{self.cfg.iterations}", "score"))
        return all(self.marker(d, stage).exists() for d, stage in dirs)

    # ---- the output directory: one run at a time, options fixed once outputs exist
    def check_run_file(self) -> None:
        """A resume must use the options that shaped the outputs already there (run.json)."""
        run_file = self.out / "run.json"
        if not run_file.exists():
            return
        old = json.loads(run_file.read_text())
        diff = {k: (old.get(k), v) for k, v in self.cfg.fingerprint().items() if old.get(k) != v}
        if diff:
            lines = ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in sorted(diff.items()))
            raise ValueError(f"{self.out} holds a run started with different options ({lines}); resume with "
                             "the same options (only --iterations may grow) or use a new --output")
        logger.info("resuming the run in %s", self.out)

    def write_fingerprint(self) -> None:
        """Write run.json just before the first output of the run, so a run refused or failed before producing
        anything can be re-run with corrected options."""
        run_file = self.out / "run.json"
        if not run_file.exists():
            write_atomic(run_file, json.dumps(self.cfg.fingerprint(), indent=2) + "\n")

    def run(self) -> dict:
        if self.out.is_dir() and (self.out / "run.json").exists() and not writable(self.out):
            return self.read_only_summary()
        self.preflight()
        try:
            lock = lock_directory(self.out)
        except OSError as err:
            raise disk_error(err, self.out) from None
        try:
            self.check_run_file()
            return self._run_locked()
        except OSError as err:
            if err.errno in DISK_ERRORS:
                raise disk_error(err, self.out) from None
            raise
        finally:
            lock.close()

    def read_only_summary(self) -> dict:
        """A finished run on read-only media: nothing to do, nothing written; its summary is returned."""
        self.check_run_file()
        if not self.complete():
            raise ValueError(f"{self.out} is read-only and its run is not finished; copy it to writable storage "
                             "and re-run the same command there to resume")
        logger.info("%s is read-only and its run is finished: nothing to do", self.out)
        return self.summary()

    def _run_locked(self) -> dict:
        handler = logging.FileHandler(self.out / "recipe.log", encoding="utf-8")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root = logging.getLogger("rmplugins")
        root.addHandler(handler)
        if root.level == logging.NOTSET or root.level > logging.INFO:
            root.setLevel(logging.INFO)
        try:
            logger.info("%s: %d prompts, %d iterations, %d candidates each, backend %s, output %s",
                        self.cfg.recipe, len(self.prompts), self.cfg.iterations, self.cfg.num_candidates,
                        self.cfg.backend, self.out)
            for k in range(1, self.cfg.iterations + 1):
                d = self.out / f"iter-{k}"
                d.mkdir(exist_ok=True)
                policy = self.policy_for(k)
                self.stage_generate(d, policy, k)
                self.stage_score(d)
                self.stage_select(d)
                self.stage_train(d, k)
                self.log_iteration(k)
            if self.cfg.eval_final:
                n = self.cfg.iterations
                d = self.out / f"eval-{n}"
                d.mkdir(exist_ok=True)
                self.stage_generate(d, str(self.out / f"iter-{n}" / "model"), n + 1)
                self.stage_score(d)
            return self.write_summary()
        finally:
            if self._gen is not None:
                self._gen.close()
            root.removeHandler(handler)
            handler.close()

    # ---- stages
    def chunked_stage(self, d: Path, stage: str, activity: str, file: str, start_work: Callable[[], Callable]
                      ) -> float | None:
        """The resumable skeleton of generate and score: rows for prompts [lo, hi) appended to ``file.partial``
        a chunk at a time (fsynced), resuming after the last complete chunk; the finished file moved into place.
        ``start_work()`` loads what the stage needs (a model) and returns ``produce(lo, hi) -> rows``; it runs only
        when work remains. Returns the seconds spent, or None when the file was already there."""
        final = d / file
        if final.exists():
            return None
        t0 = time.time()
        part = PartialFile(final)
        start = len(part.rows)
        if start:
            logger.info("%s: resuming %s after %d finished prompts", d.name, activity, start)
        produce = start_work()
        size = self.cfg.chunk_size
        with self._bar(f"{d.name} {stage}", start) as bar:
            for chunk, lo in enumerate(range(start, len(self.prompts), size), 1):
                hi = min(lo + size, len(self.prompts))
                rows = produce(lo, hi)
                self.write_fingerprint()
                part.append(rows)
                bar.update(hi - lo)
                signal_hook(f"{d.name}/{stage}/chunk-{chunk}")
        part.finish()
        return time.time() - t0

    def _bar(self, desc: str, initial: int):
        from tqdm.auto import tqdm

        return tqdm(total=len(self.prompts), initial=initial, desc=desc, unit="prompt",
                    disable=not self.cfg.show_progress, dynamic_ncols=True)

    def stage_generate(self, d: Path, policy: str, k: int) -> dict:
        """K candidates per prompt from ``policy``, seeded per (seed, iteration, prompt)."""
        if (info := self.done(d, "generate")) is not None:
            return info

        def start_work():
            logger.info("%s: generating %d candidates per prompt with %s (%s)", d.name, self.cfg.num_candidates,
                        policy, self.cfg.backend)
            gen = self.generator(policy)

            def produce(lo, hi):
                seeds = [seed_for(self.cfg.seed, k, i) for i in range(lo, hi)]
                outs = gen.generate(self.prompts[lo:hi], self.cfg.num_candidates, seeds)
                return [{"index": i, "prompt": self.prompts[i], "seed": s, "candidates": c}
                        for i, s, c in zip(range(lo, hi), seeds, outs)]
            return produce

        seconds = self.chunked_stage(d, "generate", "generation", "candidates.jsonl", start_work)
        rows = read_jsonl(d / "candidates.jsonl")
        lengths = [len(c) for r in rows for c in r["candidates"]]
        return self.mark(d, "generate", {"seconds": seconds, "policy": str(policy), "prompts": len(rows),
                                         "candidates": len(lengths),
                                         "mean_chars": sum(lengths) / max(1, len(lengths))})

    def stage_score(self, d: Path) -> dict:
        """Rank each prompt's candidates: a chunk at a time, one batched call (or one per tournament round)."""
        if (info := self.done(d, "score")) is not None:
            return info

        def start_work():
            cands = read_jsonl(d / "candidates.jsonl")
            rm = self.ready_reward_model()
            method = rank_method(self.rule_for_kind(rm.kind), rm.kind)
            logger.info("%s: scoring with %s (kind %s)", d.name, self.cfg.reward_model, rm.kind)
            if self._gen is not None:
                self._gen.sleep()

            def produce(lo, hi):
                rows = cands[lo:hi]
                rankings = rm.rank_rows([r["prompt"] for r in rows], [r["candidates"] for r in rows], method)
                return [score_row(r, g, method) for r, g in zip(rows, rankings)]
            return produce

        seconds = self.chunked_stage(d, "score", "scoring", "scores.jsonl", start_work)
        rows = read_jsonl(d / "scores.jsonl")
        values = [s for r in rows for s in r["scores"] if s is not None]  # None: a judge gave no verdict
        best = [max(s for s in r["scores"] if s is not None) for r in rows if any(s is not None for s in r["scores"])]
        return self.mark(d, "score", {"seconds": seconds, "reward_kind": self.rm_kind,
                                      "reward": stats_of(values), "best_of_n_mean": stats_of(best)["mean"],
                                      "comparisons": sum(r["comparisons"] for r in rows),
                                      "unscored": sum(s is None for r in rows for s in r["scores"])})

    def stage_select(self, d: Path) -> dict:
        if (info := self.done(d, "select")) is not None:
            return info
        t0 = time.time()
        cands = read_jsonl(d / "candidates.jsonl")
        scores = read_jsonl(d / "scores.jsonl")
        rule = self.rule_for_kind(self.done(d, "score")["reward_kind"])
        stats = SelectionStats(comparisons=sum(s["comparisons"] for s in scores))
        rows, openrlhf = [], []
        for c, s in zip(cands, scores):
            prompt, texts = c["prompt"], c["candidates"]
            if self.cfg.recipe == "iterative-dpo":
                pair = select_pair(texts, s["scores"], s["best"], s["worst"], rule=rule,
                                   min_margin=self.cfg.min_margin, stats=stats)
                kept = pair and dpo_rows(prompt, texts, pair, self.conversational, self._templated(prompt))
            else:
                best = best_of_n(texts, s["scores"], s["best"], stats=stats)
                kept = best is not None and sft_rows(prompt, texts[best], float(s["scores"][best]),
                                                     self.conversational, self._templated(prompt))
            if kept:
                rows.append(kept[0])
                openrlhf.append(kept[1])
        if self.cfg.openrlhf_keys:
            write_atomic(d / self.select_file.replace(".jsonl", ".openrlhf.jsonl"),
                         "".join(dumps(r) for r in openrlhf))
        write_atomic(d / self.select_file, "".join(dumps(r) for r in rows))
        info = {"seconds": time.time() - t0, "rule": rule, **stats.as_dict()}
        if rows and self.cfg.recipe == "iterative-dpo":
            info["mean_margin"] = sum(r["margin"] for r in rows) / len(rows)
        return self.mark(d, "select", info)

    def rule_for_kind(self, kind: str) -> str:
        if self.cfg.recipe == "rejection-sampling":
            return "best-of-n"
        return self.cfg.pair_rule or default_rule(kind, self.cfg.reward_kwargs.get("judge"))

    def _templated(self, prompt: Any) -> str:
        """The prompt in the policy's chat template, as OpenRLHF's batch_inference wrote it."""
        if not self.cfg.openrlhf_keys:
            return ""
        if not hasattr(self, "_policy_tok"):
            from transformers import AutoTokenizer

            self._policy_tok = AutoTokenizer.from_pretrained(self.cfg.policy)
        return self._policy_tok.apply_chat_template(as_messages(prompt), tokenize=False, add_generation_prompt=True)

    def stage_train(self, d: Path, k: int) -> dict:
        if (info := self.done(d, "train")) is not None:
            return info
        model_dir = d / "model"
        policy = self.policy_for(k)
        rows = read_jsonl(d / self.select_file)
        if model_dir.exists():  # trained before a crash that came ahead of the marker
            return self.mark(d, "train", {"seconds": None, "trained": True, "rows": len(rows)})
        for stale in d.glob(".model-*"):  # a training killed before its os.replace
            shutil.rmtree(stale, ignore_errors=True)
        t0 = time.time()
        logger.info("%s: training on %d rows of %s with TRL's %s", d.name, len(rows), self.select_file,
                    "DPOTrainer" if self.cfg.recipe == "iterative-dpo" else "SFTTrainer")
        self._park()
        tmp = Path(tempfile.mkdtemp(dir=d, prefix=".model-"))
        try:
            if not rows:
                logger.warning("%s: no %s kept; the policy is carried over untrained", d.name, self.select_file)
                shutil.copytree(policy, tmp, dirs_exist_ok=True)
                metrics = {"trained": False}
            else:
                metrics = train(self.cfg, rows, policy, self.reference_for(k), tmp, self.conversational)
                metrics["trained"] = True
            os.replace(tmp, model_dir)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        return self.mark(d, "train", {"seconds": time.time() - t0, "rows": len(rows), **metrics})

    # ---- summary (:mod:`.summary`)
    def done_stages(self, d: Path) -> dict:
        return {stage: self.done(d, stage) for stage in STAGES}

    def write_summary(self) -> dict:
        summary = self.summary()
        write_atomic(self.out / "summary.json", json.dumps(summary, indent=2) + "\n")
        return summary

    def summary(self) -> dict:
        return run_summary(self.cfg, len(self.prompts), self.out, self.done_stages)

    def log_iteration(self, k: int) -> None:
        log_iteration(k, iteration_summary(self.out / f"iter-{k}", self.done_stages), self.select_file)


def run_recipe(config: RecipeConfig) -> dict:
    """Run (or resume) the loop; returns the summary written to ``DIR/summary.json``."""
    return Recipe(config).run()
