"""``rmplugins serve``: load a reward model and serve it in OpenRLHF's remote reward protocol."""

import contextlib
import logging
import os
import sys

from ..finite import NonFiniteOutput
from ..judges import PRESETS
from ..registry import KINDS, variants

logger = logging.getLogger("rmplugins.server")
API_KEY_ENV = "RMPLUGINS_API_KEY"


def parse_vllm_args(items: list[str]) -> dict:
    """``["tensor_parallel_size=2", "enforce_eager=true"]`` -> ``{"tensor_parallel_size": 2, "enforce_eager": True}``
    (a value that is not JSON stays a string)."""
    import json

    out = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise ValueError(f"--vllm-arg {item!r}: expected NAME=VALUE, e.g. tensor_parallel_size=2")
        try:
            out[name.strip()] = json.loads(value)
        except json.JSONDecodeError:
            out[name.strip()] = value
    return out


def _is_loopback(host: str) -> bool:
    return host in ("127.0.0.1", "localhost", "::1") or host.startswith("127.")


def register(subparsers) -> None:
    from ..options import HelpFormatter, non_negative_float, non_negative_int, positive_float, positive_int

    p = subparsers.add_parser(
        "serve", help="reward server for every framework's client (OpenRLHF, verl, AReaL, slime, TRL)",
        description="Serve a reward model over HTTP, batching concurrent one-sample requests: POST /get_reward "
                    "(OpenRLHF: {query, prompts, labels} -> {rewards, scores, extra_logs}), POST /score (separated "
                    "prompts and completions; integrations/verl), POST /classify and /pooling (vLLM's schemas: "
                    "verl's reward loop, AReaL), POST /remote_rm (slime: {prompt, response, label} -> a number); "
                    "GET /health, GET /metrics (Prometheus), GET /metrics.json. With --group-size, group-relative "
                    "families answer each sample with its reward within its prompt's group. docs/server.md has "
                    "each framework's configuration.",
        formatter_class=HelpFormatter)
    p.add_argument("--model", required=True, help="reward model path or hub id (any supported family)")
    p.add_argument("--kind", default=None, choices=KINDS,
                   help="family; default: detected from the checkpoint (an RLHFlow pair-preference model saved "
                        "locally without rmplugins.json needs --kind pair_pm: its files look like any LM)")
    p.add_argument("--judge", default=None, metavar="PRESET|FILE.json",
                   help=f"with --kind genrm: the judge's prompt and verdicts, a preset ({', '.join(PRESETS)}) or a "
                        "JSON file of JudgeSpec fields (docs/judges.md)")
    p.add_argument("--variant", default=None, choices=variants(),
                   help="PairRM only: 'pairrm' or 'better' (Better-PairRM); default: from the checkpoint's "
                        "rmplugins.json or its hub id")
    p.add_argument("--engine", default="transformers", choices=("transformers", "vllm"),
                   help="'transformers': rmplugins' engine, batched here with prefix sharing and a prompt cache; "
                        "'vllm': the model runs on a vLLM engine (every kind but pairrm), whose scheduler batches "
                        "the requests and whose prefix caching keeps prompts (the --max-batch-*, --max-wait-ms and "
                        "--prompt-cache-tokens options do not apply)")
    p.add_argument("--vllm-arg", action="append", default=[], metavar="NAME=VALUE",
                   help="with --engine vllm, a vLLM engine argument (repeatable; VALUE is read as JSON when it "
                        "parses, e.g. tensor_parallel_size=2, gpu_memory_utilization=0.5, enable_prefix_caching=true)")
    p.add_argument("--device", default=None, help="torch device, e.g. cuda:0 (default: cuda if available)")
    p.add_argument("--dtype", default=None, choices=("bfloat16", "float16", "float32"),
                   help="the model's dtype (default: bfloat16 on a GPU, float32 on CPU; on a CPU with AMX or "
                        "AVX-512 BF16, bfloat16 scores 4-5x faster within bf16 rounding; on one without them, "
                        "several times slower: keep float32)")
    p.add_argument("--deterministic", action="store_true",
                   help="score every sample alone, so its reward is bit for bit the same however requests are "
                        "batched (costs one forward per sample; without it a reward may move by float rounding, "
                        "within 5e-5 x (1 + |reward|) in float32: README, Scoring determinism)")
    p.add_argument("--host", default="127.0.0.1",
                   help="interface to bind; 127.0.0.1 keeps it local. Use 0.0.0.0 only with --api-key")
    p.add_argument("--port", type=int, default=5000,
                   help="TCP port to listen on (0: any free port, printed in the log)")
    p.add_argument("--api-key", default=None,  # not the env value: --help would print the secret
                   help=f"require 'Authorization: Bearer KEY' (default: ${API_KEY_ENV} if set). OpenRLHF's "
                        "built-in HTTP client sends no header: use integrations/openrlhf/reward_func.py with a key")
    p.add_argument("--policy-tokenizer", default=None,
                   help="the policy's tokenizer (path or hub id): recover the conversation from the "
                        "policy-templated text and re-render it in the reward model's format. Without it "
                        "prompts[i] is the user's text and the rest of query[i] the response")
    p.add_argument("--max-batch-size", type=positive_int, default=64,
                   help="most samples scored in one batch; 1 = score requests one at a time")
    p.add_argument("--max-batch-tokens", type=positive_int, default=32768, help="token budget of one batch (estimated)")
    p.add_argument("--max-wait-ms", type=non_negative_float, default=5.0,
                   help="how long the first request of a batch waits for others")
    p.add_argument("--max-request-samples", type=positive_int, default=256,
                   help="most samples in one request (413 above)")
    p.add_argument("--max-body-bytes", type=positive_int, default=8 << 20, help="largest request body (413 above)")
    p.add_argument("--max-sample-chars", type=positive_int, default=None,
                   help="longest sample (prompt, response and reference, in characters; 413 above); default: 64 x "
                        "the reward model's max_length, far more than it reads")
    p.add_argument("--max-queue-samples", type=positive_int, default=8192, help="most samples waiting (503 above)")
    p.add_argument("--request-timeout", type=positive_float, default=120.0,
                   help="seconds a request may wait for its score (504 after; OpenRLHF's client waits 180)")
    p.add_argument("--read-timeout", type=positive_float, default=30.0,
                   help="seconds a connection has to send its whole request (from connecting or from its previous "
                        "response); slower or idle connections are closed")
    p.add_argument("--max-connections", type=positive_int, default=1024,
                   help="open connections beyond this are closed at once (keep it below `ulimit -n`)")
    p.add_argument("--prompt-cache-tokens", type=non_negative_int, default=None,
                   help="keep the keys/values of up to this many tokens of recent samples, so the n samples of one "
                        "prompt run the prompt once even when they land in different batches (exact: only identical "
                        "leading tokens are reused; least recently used dropped first). Default: what fits in a "
                        "tenth of the memory free at start; 0 turns it off; off with --deterministic")
    p.add_argument("--group-size", type=group_size, default=None, metavar="N",
                   help="group rewards for gpm, pair_pm, pairrm and pairwise judges: hold each one-sample request "
                        "until the N samples of its group have arrived (keyed by a group id the request carries, "
                        "else by prompt), rank the group and answer each with its own sample's reward within it. "
                        "N = the trainer's samples per prompt (OpenRLHF n_samples_per_prompt, verl rollout.n, "
                        "slime n-samples-per-prompt). Pointwise kinds ignore it")
    p.add_argument("--group-timeout", type=positive_float, default=120.0, metavar="SECONDS",
                   help="with --group-size: seconds from a group's first sample until it is ranked with the samples "
                        "that came (extra_logs group_complete 0) or, a lone sample, answered 408. Keep it below the "
                        "client's timeout (OpenRLHF 180 s, slime 30 s)")
    p.add_argument("--group-method", default=None, choices=("round_robin", "tournament", "circular", "gpo"),
                   help="with --group-size: how a group is ranked; default: round_robin for pairwise kinds and "
                        "judges, gpo (GPM's GPO score) for gpm")
    p.add_argument("--fallback-reward", type=float, default=None, metavar="X",
                   help="the reward of a sample the model rejects (a generating judge that wrote no verdict, a "
                        "prompt it cannot read whole, a lone sample whose group never completed), flagged "
                        "no_reward = 1 in extra_logs, for clients that have no 'no reward' value (OpenRLHF, verl, "
                        "AReaL, slime: without it such a sample is refused with its reason, which stops their "
                        "run). The number is yours to choose; a client that sends \"partial\": true (rmplugins' "
                        "TRL reward) still gets null. Default: unset")
    p.add_argument("--objective-logs", action="store_true",
                   help="ArmoRM: add the 19 objective rewards to extra_logs (objective/<name>)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars while the model loads")
    p.set_defaults(func=_serve)


def group_size(text: str) -> int:
    import argparse

    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 2:
        raise argparse.ArgumentTypeError(f"{value}: a group needs at least 2 samples")
    return value


def check_family_options(args, judge) -> None:
    """The options that apply to some families only, against the checkpoint's family, before the model loads: its
    kind is read once, from the checkpoint's headers."""
    if args.group_method is not None and args.group_size is None:
        raise ValueError("--group-method applies with --group-size (group rewards); add --group-size N")
    if args.group_size is None and not args.objective_logs:
        return
    from ..checkpoints import identify

    kind = identify(args.model, kind=args.kind, variant=args.variant).kind
    if args.group_size is not None:
        check_group_method(args.group_method, kind, judge)
    if args.objective_logs and kind != "armorm":  # it would log nothing, said nowhere
        raise ValueError(f"--objective-logs adds ArmoRM's 19 objective rewards to extra_logs; {args.model} is kind "
                         f"{kind!r}, which has none: drop --objective-logs")


def check_group_method(method: str | None, kind: str, judge) -> None:
    """--group-method against the family's ranking methods (a generative judge's by its spec)."""
    from ..registry import family

    cls = family(kind).model_class()
    if kind == "genrm" and judge is not None:
        from ..families.genrm import PairwiseJudge, PointwiseJudge

        cls = PairwiseJudge if judge.pairwise else PointwiseJudge
    methods = tuple(getattr(cls, "rank_methods", ()))
    if method is not None and methods and not getattr(cls, "pointwise", False) and method not in methods:
        raise ValueError(f"--group-method {method}: kind {kind!r} ranks a group with one of {list(methods)}")


def _serve(args) -> int:
    try:
        return _serve_checked(args)
    except (ValueError, OSError, TypeError, NonFiniteOutput) as err:
        print(f"rmplugins serve: {err}", file=sys.stderr)
        return 2


def check_forward(rm) -> None:
    """One short sample through the model before the server answers /health: a model whose forward gives NaN
    (NaN weights, float16 overflow) stops the start with :class:`~rmplugins.finite.NonFiniteOutput`, not the
    trainer's first step after its first rollouts. A judge is left out (a generating one's probe would write for
    seconds, and its counts are its clients'); a refused probe is no error here, and the probe is not counted."""
    if rm.kind == "genrm":
        return
    conversation, engine = [{"role": "user", "content": "Say hello."}], rm.engine
    counted = engine.stats.as_dict() if engine is not None else None
    with engine.without_kept_prefixes() if engine is not None else contextlib.nullcontext():
        try:
            if rm.pointwise:
                rm.score_rows([conversation], ["Hello! How can I help you today?"])
            else:
                rm.compare_rows([conversation], ["Hello! How can I help you today?"], ["Hi."])
        finally:
            if engine is not None:
                engine.stats.restore(counted)


# the packages of the `server` extra (pyproject.toml) that the server's modules import
SERVER_PACKAGES = ("fastapi", "starlette", "uvicorn", "prometheus_client")


def require_server_packages() -> None:
    """The `server` extra's packages import, or a ValueError that says to install it (a plain ``pip install
    rmplugins`` has the library and the TRL reward, not the server)."""
    try:
        import fastapi  # noqa: F401
        import prometheus_client  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as err:
        raise ValueError(f"the reward server needs rmplugins' 'server' extra: pip install 'rmplugins[server]' "
                         f"({err.name or 'import'}: {err})") from None


def _serve_checked(args) -> int:
    """Every option checked before the model loads (minutes for a large one): the server's packages, the key, the
    vLLM arguments, the device, the policy tokenizer, the port; then the model, then the app."""
    require_server_packages()
    api_key = args.api_key if args.api_key is not None else os.environ.get(API_KEY_ENV)
    if api_key is not None and not api_key.strip():
        raise ValueError("the API key is empty (--api-key '' or an empty $RMPLUGINS_API_KEY): give a real key, or "
                         "leave both unset to serve without authentication")
    options = {"variant": args.variant} if args.variant else {}
    if args.judge is not None:
        from ..judges import judge_spec

        options["judge"] = judge_spec(args.judge)  # a bad preset or file: refused before anything loads
    if args.engine == "vllm":
        options.update(engine="vllm", asynchronous=True, vllm_args=parse_vllm_args(args.vllm_arg))
    elif args.vllm_arg:
        raise ValueError("--vllm-arg is for --engine vllm")
    if args.no_progress:
        from ..progress import silence_progress_bars

        silence_progress_bars()
    from ..loading import load_reward_model
    from ..placement import check_device
    from ..policy_template import load_policy_template
    from .app import DETERMINISTIC, ON_VLLM, check_fallback_reward, create_app, refuse_prompt_cache
    from .transport import bind, reward_server, uvicorn_config

    device = check_device(args.device, "--device") if args.device is not None else None
    template = load_policy_template(args.policy_tokenizer, "--policy-tokenizer") if args.policy_tokenizer else None
    if not _is_loopback(args.host) and not api_key:
        logger.warning("binding %s without --api-key: anyone who can reach this port can use the reward model",
                       args.host)
    check_family_options(args, options.get("judge"))
    # create_app's refusals, given before a vLLM engine or a large model spends minutes starting
    check_fallback_reward(args.fallback_reward)
    refuse_prompt_cache(args.prompt_cache_tokens, ON_VLLM if args.engine == "vllm" else
                        DETERMINISTIC if args.deterministic else None)
    sock = bind(args.host, args.port)  # before the model loads: a busy port fails in a second, not minutes
    rm = load_reward_model(args.model, kind=args.kind, device=device, dtype=args.dtype,
                           deterministic=args.deterministic, **options)
    logger.info("loaded %r", rm)
    if rm.engine is not None and (took := rm.engine.warm_up()):  # before /health answers: no request waits on it
        logger.info("compiled the fused CPU kernels before serving (%.1f s; cached on disk for the next start)", took)
    check_forward(rm)
    app = create_app(rm, policy_tokenizer=template, api_key=api_key, max_batch_size=args.max_batch_size,
                     max_batch_tokens=args.max_batch_tokens, max_wait_ms=args.max_wait_ms,
                     max_request_samples=args.max_request_samples, max_body_bytes=args.max_body_bytes,
                     max_queue_samples=args.max_queue_samples, request_timeout=args.request_timeout,
                     objective_logs=args.objective_logs, max_sample_chars=args.max_sample_chars,
                     prompt_cache_tokens=args.prompt_cache_tokens, group_size=args.group_size,
                     group_timeout=args.group_timeout, group_method=args.group_method,
                     fallback_reward=args.fallback_reward)
    logger.info("serving on http://%s:%d (POST /get_reward, /score, /classify, /pooling, /remote_rm; GET /health, "
                "/metrics) (policy template: %s, auth: %s)", args.host, sock.getsockname()[1],
                args.policy_tokenizer or "none; chat-templated text is recovered with the built-in templates or "
                "refused", "bearer key" if api_key else "none")
    reward_server(app, uvicorn_config(app, host=args.host, port=args.port, read_timeout=args.read_timeout,
                                      max_connections=args.max_connections, log_level="warning")).run(sockets=[sock])
    return 0
