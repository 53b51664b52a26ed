"""Run by test_nemo_gym in its own process: NeMo-Gym's own resources-server app (``SimpleResourcesServer``'s
``/verify`` route with its middlewares and judge failsafe) around ``integrations/nemo_gym/rmplugins_reward/app.py``.
argv[1] is a JSON file of cases ``{"config": {...}, "requests": [verify bodies], "together": bool}``; each case's
requests are posted to ``/verify`` as NeMo-Gym's agent posts them (all at once where ``together``), and the script
prints ``[[status, body], ...]`` per case as JSON; a config NeMo-Gym refuses gives ``[["config", reason]]``. A case
``{"kinds": [...]}`` gives ``[[kind, its failure_kind, whether NeMo-Gym's vocabulary accepts that name], ...]``.
A process of its own because NeMo-Gym registers OmegaConf resolvers and warnings filters in whatever imports it."""

import asyncio
import importlib.util
import json
import os
import sys
import warnings

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def server_module():
    if importlib.util.find_spec("nemo_gym") is None:
        raise SystemExit("NeMo-Gym 0.7.0 is installed by `make setup` (pip install --no-deps "
                         "--ignore-requires-python nemo-gym==0.7.0)")
    warnings.simplefilter("ignore")  # NeMo-Gym's OmegaConf resolvers warn on import
    path = os.path.join(ROOT, "integrations", "nemo_gym", "rmplugins_reward", "app.py")
    spec = importlib.util.spec_from_file_location("rmplugins_reward_app", path)
    module = sys.modules[spec.name] = importlib.util.module_from_spec(spec)  # as an import registers it
    spec.loader.exec_module(module)
    return module


def failure_kinds(module, kinds):
    from nemo_gym.failure_kinds import is_namespaced, is_registered

    return [[kind, module.failure_kind(kind), is_registered(module.failure_kind(kind))
             or is_namespaced(module.failure_kind(kind))] for kind in kinds]


async def run_case(module, case):
    if "kinds" in case:
        return failure_kinds(module, case["kinds"])
    import httpx
    from pydantic import ValidationError

    try:
        config = module.RmpluginsRewardConfig(**{"host": "127.0.0.1", "port": 0, "entrypoint": "app.py",
                                                 "name": "rmplugins_reward", **case["config"]})
    except ValidationError as err:
        return [["config", str(err)]]
    server = module.RmpluginsRewardServer.model_construct(config=config, server_client=None)
    app = server.setup_webserver()
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with app.router.lifespan_context(app), \
            httpx.AsyncClient(transport=transport, base_url="http://nemo-gym", timeout=300) as client:
        async def post(body):
            answer = await client.post("/verify", json=body)
            try:
                return [answer.status_code, answer.json()]
            except ValueError:
                return [answer.status_code, answer.text]

        if case.get("together"):
            out = await asyncio.gather(*(post(b) for b in case["requests"]))
        else:
            out = [await post(b) for b in case["requests"]]
    assert server._session is None, "the app's shutdown closes the session to the reward server"
    return out


def main() -> None:
    module = server_module()
    cases = json.loads(open(sys.argv[1]).read())
    print(json.dumps([asyncio.run(run_case(module, case)) for case in cases]))


if __name__ == "__main__":
    main()
