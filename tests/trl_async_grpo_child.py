"""The body of TRL's async GRPO rollout process, as far as rewards go, for test_trl_remote: spawned (as TRL's
``AsyncRolloutWorker`` spawns its child), the environment scrubbed by TRL's own ``_scrub_child_env`` (no GPU), the
reward functions unpickled from the parent's bytes, and TRL's ``_AsyncRolloutLoop._score_group`` run on rollout
groups in one long-lived event loop, as the child's loop does. The vLLM generation around it needs a GPU server."""

import asyncio
import pickle


def score_groups(payload: bytes, groups: list, results) -> None:
    from trl.experimental.async_grpo import async_rollout_worker as worker

    worker._scrub_child_env()
    from accelerate.state import PartialState

    PartialState()
    funcs = pickle.loads(payload)
    loop = object.__new__(worker._AsyncRolloutLoop)  # only what _score_group reads
    loop.reward_funcs = funcs
    loop.reward_func_names = [worker.get_callable_name(f) for f in funcs]
    loop._env_reward_types, loop._provides_rollout_reward = [], False

    async def main():
        out = []
        for i, (prompts, completions) in enumerate(groups):
            n = len(prompts)
            sequences = [[worker.TrainingSequence([1, 2, 3], [0, 1, 1], [0.0, -1.0, -1.0], f"{i}-{j}")]
                         for j in range(n)]
            group = worker.RolloutGroup(prompts=prompts, reward_kwargs={}, completions=completions,
                                        completions_ids=[[2, 3]] * n, completions_sequences=sequences,
                                        tool_call_counts=[0] * n, tool_failure_counts=[0] * n, model_version=0,
                                        group_id=i, env_rewards=[], rollout_rewards=[])
            out.append([s.metrics for s in await loop._score_group(group)])
        sessions = [len(funcs[0]._sessions), len(funcs[1].parent.client._sessions)]
        return out, sessions

    import os

    results.put((asyncio.run(main()), os.environ.get("CUDA_VISIBLE_DEVICES")))
