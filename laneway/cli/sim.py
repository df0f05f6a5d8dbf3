"""``laneway sim``: run the simulated upstream on a port."""

from __future__ import annotations

import click

from laneway.cli.common import friendly_errors, run_async

FAMILY_PORTS = {"ollama": 11434, "openai": 9000, "anthropic": 9000}


def _models(ctx: click.Context, param: click.Parameter, value: str | None) -> list[str]:
    if value is None:
        return []
    names = [name.strip() for name in value.split(",")]
    if not all(names):
        raise click.BadParameter(
            "expected comma-separated model names, e.g. gpt-4o-mini,text-embedding-3-small"
        )
    return names


@click.command("sim")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=None,
    help="Port (0 = any free port). Default: 11434 (Ollama's) for --family ollama, else 9000.",
)
@click.option(
    "--family",
    type=click.Choice(["openai", "ollama", "anthropic"]),
    default="openai",
    show_default=True,
    help="Personality: decides the default models and the shape of GET /v1/models. "
    "All three protocols are served either way.",
)
@click.option(
    "--models",
    callback=_models,
    default=None,
    metavar="A,B,C",
    help="Comma-separated model names (default: the family's). A name with 'embed' is an embedding model.",
)
@click.option(
    "--latency",
    type=click.FloatRange(min=0),
    default=0.0,
    show_default=True,
    help="Seconds before each answer.",
)
@click.option(
    "--tps",
    type=click.FloatRange(min=0),
    default=0.0,
    show_default=True,
    help="Stream tokens per second (0 = no delay).",
)
@click.option("--reply", default=None, help="Fixed reply text (default: a sentence echoing the prompt).")
@click.option(
    "--api-key",
    envvar="LANEWAY_SIM_API_KEY",
    default=None,
    help="Require this key (Bearer, or x-api-key for Anthropic). Env: LANEWAY_SIM_API_KEY.",
)
@click.option(
    "--forbidden-key", "forbidden_keys", multiple=True, help="A key answered with 403 (repeatable)."
)
@click.option(
    "--fail-status",
    type=click.IntRange(400, 599),
    default=None,
    help="Status of injected failures. Alone (no --fail-rate/--fail-first) every inference request fails.",
)
@click.option(
    "--fail-rate",
    type=click.FloatRange(0, 1),
    default=0.0,
    show_default=True,
    help="Fraction of inference requests that fail (seeded by --seed).",
)
@click.option(
    "--fail-first",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="The first N inference requests fail.",
)
@click.option(
    "--drop-after",
    type=click.IntRange(min=0),
    default=None,
    help="Abort every stream's connection after N content chunks.",
)
@click.option("--garbage", is_flag=True, help="Answer inference with 200 and non-JSON bytes.")
@click.option(
    "--ratelimit",
    type=click.Choice(["openai", "anthropic", "openrouter"]),
    default=None,
    help="Send rate-limit headers in this provider's format (needs --rpm and/or --tpm).",
)
@click.option(
    "--rpm", type=click.IntRange(min=0), default=0, show_default=True, help="Requests per 60 s window."
)
@click.option(
    "--tpm", type=click.IntRange(min=0), default=0, show_default=True, help="Tokens per 60 s window."
)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for --fail-rate.")
@click.option("--embedding-dim", type=click.IntRange(1, 65536), default=16, show_default=True)
@click.option("--context-length", type=click.IntRange(min=1), default=8192, show_default=True)
@click.option(
    "--models-format",
    type=click.Choice(["openai", "vllm", "openrouter"]),
    default=None,
    help="Shape of GET /v1/models (and /api/v1/models): OpenAI's (default), vLLM's (with "
    "max_model_len) or OpenRouter's catalogue (modalities, pricing, supported parameters).",
)
@click.option(
    "--hang-discovery",
    is_flag=True,
    help="Model lists and metadata (/v1/models, /api/tags, /api/show, /api/ps) never answer; "
    'inference still does. POST /_sim/options {"hang_discovery": false} ends it.',
)
@click.option(
    "--tool-calls",
    type=click.Choice(["auto", "forced"]),
    default="auto",
    show_default=True,
    help="auto: call a tool whenever tools are offered; forced: only when tool choice forces one "
    "(what a coding agent's sim wants: it answers text, never asks for a command).",
)
@friendly_errors
def sim(
    host: str,
    port: int | None,
    family: str,
    models: list[str],
    latency: float,
    tps: float,
    reply: str | None,
    api_key: str | None,
    forbidden_keys: tuple[str, ...],
    fail_status: int | None,
    fail_rate: float,
    fail_first: int,
    drop_after: int | None,
    garbage: bool,
    ratelimit: str | None,
    rpm: int,
    tpm: int,
    seed: int,
    embedding_dim: int,
    context_length: int,
    models_format: str | None,
    hang_discovery: bool,
    tool_calls: str,
) -> None:
    """Run a simulated LLM upstream speaking the OpenAI, Ollama and Anthropic protocols.

    It answers deterministically and makes trouble on request (latency, slow streams, failures,
    dropped streams, garbage, auth errors, rate limits). GET /_sim/stats shows counters,
    POST /_sim/options changes options at runtime, POST /_sim/reset zeroes counters. Ctrl-C stops it.
    """
    from laneway.sim import SimOptions, serve_sim
    from laneway.sim.server import bind

    if ratelimit is not None and rpm == 0 and tpm == 0:
        raise click.UsageError("--ratelimit needs --rpm and/or --tpm")
    options = SimOptions(
        family=family,
        models=models,
        latency=latency,
        tokens_per_second=tps,
        reply=reply,
        api_key=api_key,
        forbidden_keys=list(forbidden_keys),
        fail_status=fail_status,
        fail_rate=fail_rate,
        fail_first=fail_first,
        seed=seed,
        drop_after_chunks=drop_after,
        garbage=garbage,
        ratelimit=ratelimit,
        rpm=rpm,
        tpm=tpm,
        embedding_dim=embedding_dim,
        context_length=context_length,
        models_format=models_format,
        hang_discovery=hang_discovery,
        tool_calls=tool_calls,
    )
    port = FAMILY_PORTS[family] if port is None else port
    try:
        sock = bind(host, port)
    except OSError as exc:
        raise click.ClickException(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None

    def ready(url: str) -> None:
        click.echo(
            f"laneway sim ({family}) listening on {url} with models {', '.join(options.models)}", err=False
        )

    try:
        run_async(serve_sim(options, sock=sock, on_ready=ready))
    except KeyboardInterrupt:  # uvicorn already shut down cleanly; it re-raises the signal
        pass
