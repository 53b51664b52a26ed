"""Run by test_framework_endpoints in its own process: AReaL's ``AsyncRewardWrapper`` (``areal.api.reward_api``,
installed ``--no-deps``, its package entered without its ``__init__``) runs ``integrations.areal.reward`` on the
rollouts in argv[1] (JSON: prompt text, completion text, prompt ids, completion ids) and prints the rewards as JSON.
A process of its own because AReaL's logging setup replaces the root logger of whatever process imports it."""

import asyncio
import importlib
import importlib.util
import json
import os
import sys
import types

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def reward_api():
    spec = importlib.util.find_spec("areal")
    if spec is None:
        raise SystemExit("AReaL 1.0.4 is installed by `make setup` (pip install --no-deps areal==1.0.4)")
    root = spec.submodule_search_locations[0]
    for name, sub in (("areal", ""), ("areal.api", "api"), ("areal.utils", "utils")):
        shell = types.ModuleType(name)
        shell.__path__ = [os.path.join(root, sub) if sub else root]
        sys.modules[name] = shell
    return importlib.import_module("areal.api.reward_api")


def main() -> None:
    api = reward_api()
    from integrations.areal.reward import rmplugins_reward

    rollouts = json.loads(open(sys.argv[1]).read())
    wrapper = api.AsyncRewardWrapper(rmplugins_reward, max_workers=2, max_retries=0, timeout_seconds=60)

    async def run():
        return await asyncio.gather(*(wrapper(p, c, pi, ci, answer="unused") for p, c, pi, ci in rollouts))

    try:
        print(json.dumps(asyncio.run(run())))
    finally:
        api.AsyncRewardWrapper._atexit_shutdown_all()


if __name__ == "__main__":
    main()
