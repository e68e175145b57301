"""`genai-service` / `python -m service`: serve, provision, train-digits, info."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Callable

from service.config import Settings


def _configure_logging(settings: Settings) -> None:
    """One stderr handler for every logger (uvicorn's too): `key=value` text, or JSON lines with GENAI_LOG_JSON."""
    from service.observability.logs import configure_logging

    configure_logging(settings)


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from service.app import create_app, load_models
    from service.http.listen import ListenError, bind_listener, ensure_open_files
    from service.http.protocol import HttpLimits, guarded_protocol
    from service.language.loading import ModelLoadError

    overrides = {k: v for k, v in {"host": args.host, "port": args.port}.items() if v is not None}
    settings = Settings(**overrides)
    _configure_logging(settings)
    # Bind first: a taken port is said in one line now, not after the models have loaded.
    try:
        listener = bind_listener(settings.host, settings.port)
    except ListenError as exc:
        print(f"genai-service: {exc}", file=sys.stderr)
        return 1
    ensure_open_files(settings.http_max_connections + 256)
    started = time.perf_counter()
    try:
        models = load_models(settings)
    except ModelLoadError as exc:
        listener.close()
        print(f"genai-service: {exc}", file=sys.stderr)
        return 2
    logging.getLogger("service").info("models loaded in %.2f s", time.perf_counter() - started)
    app = create_app(settings, models=models)
    # log_config=None keeps the logging configured above; the app writes its own access line per request.
    # http=: httptools with a head limit, deadlines and a connection bound (service/http/protocol.py).
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        timeout_graceful_shutdown=int(settings.shutdown_grace_s) or None,
        log_config=None,
        access_log=False,
        http=guarded_protocol(HttpLimits.from_settings(settings)),
        # uvicorn annotates this `int` but only hands it to `loop.call_later`, so fractional seconds work.
        timeout_keep_alive=settings.http_keep_alive_s,  # type: ignore[arg-type]
    )
    from service.server import DrainingServer

    DrainingServer(config, app).run(sockets=[listener])
    return 0


def cmd_provision(args: argparse.Namespace) -> int:
    """Prepare the embedded models (convert the GGUF, train digits if missing) so that `serve` starts fast."""
    from service.language.loading import ModelLoadError, provision_low_bit_weights, resolve_model_source

    settings = Settings()
    _configure_logging(settings)
    try:
        if settings.load_language_model:
            source = resolve_model_source(settings.lm_model, settings.cache_dir, settings.lm_revision)
            print(f"language model: {source.model_id} ({source.description}) -> {source.path_or_id}")
            packed = provision_low_bit_weights(
                source, settings.weights, settings.device, settings.lean_decoder, settings.cache_dir
            )
            if packed is not None:
                print(f"low-bit weights (GENAI_WEIGHTS={settings.weights}): packed -> {packed}")
                if settings.compiled_step == "on":
                    print(f"compiled step: {_provision_compiled_step(settings)}")
    except ModelLoadError as exc:
        print(f"genai-service: {exc}", file=sys.stderr)
        return 2
    provision_digits = _digits_provisioner()
    if provision_digits is not None:
        print(f"digit model: {provision_digits(settings)}")
    return 0


def _provision_compiled_step(settings: Settings) -> str:
    """Compile the decoder layer now (loading the model compiles it where no compiled copy is cached), so
    that the first `serve` does not; what became of it."""
    from service.app import load_language
    from service.language.llama_decoder import LlamaDecoder

    lm = load_language(settings)
    holder = lm.weights_holder
    compiled = holder.compiled if isinstance(holder, LlamaDecoder) else None
    path = getattr(compiled, "path", None)
    return f"-> {path}" if path is not None else "unavailable here, the eager layer runs (see the log above)"


def _digits_provisioner() -> Callable[[Settings], str] | None:
    """The digit model's provisioning step, or None where the digit side cannot be imported."""
    try:
        from service.digits.provision import provision_digit_model
    except ImportError:
        return None
    return provision_digit_model


def cmd_info(args: argparse.Namespace) -> int:
    settings = Settings()
    print(json.dumps(settings.public_view(), indent=2, default=str))
    return 0


def cmd_train_digits(args: argparse.Namespace) -> int:
    from service.digits.train_cli import main as train_main

    return int(train_main(args.train_args) or 0)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="genai-service", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="serve the API (settings from GENAI_* variables)")
    serve.add_argument("--host", default=None)
    serve.add_argument("--port", type=int, default=None)
    serve.set_defaults(func=cmd_serve)
    sub.add_parser("provision", help="prepare the embedded models so that serve starts fast").set_defaults(
        func=cmd_provision
    )
    sub.add_parser("info", help="print the effective settings").set_defaults(func=cmd_info)
    train = sub.add_parser("train-digits", help="train the digit classifier (see --help)", add_help=False)
    train.add_argument("train_args", nargs=argparse.REMAINDER)
    train.set_defaults(func=cmd_train_digits)
    return parser


def settings_error_lines(exc: Exception) -> list[str]:
    """One line per invalid setting: the variable, the value given, and what is allowed."""
    from pydantic import ValidationError

    if not isinstance(exc, ValidationError):
        return [f"genai-service: invalid settings: {exc}"]
    lines = []
    for err in exc.errors():
        loc = err.get("loc") or ("?",)
        name = f"GENAI_{str(loc[0]).upper()}"
        ctx = err.get("ctx") or {}
        if "expected" in ctx:
            allowed = f"allowed values: {ctx['expected']}"
        else:
            allowed = (
                str(err.get("msg", "invalid value")).replace("Input should be", "must be").removeprefix("Value error, ")
            )
        lines.append(f"genai-service: {name}={err.get('input')!r} is not valid; {allowed}")
    return lines or [f"genai-service: invalid settings: {exc}"]


def main(argv: list[str] | None = None) -> int:
    from pydantic import ValidationError
    from pydantic_settings import SettingsError

    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        if argv[:1] == ["train-digits"]:  # argparse's REMAINDER rejects options that come first (`train-digits --full`)
            return cmd_train_digits(argparse.Namespace(train_args=argv[1:]))
        args = build_parser().parse_args(argv)
        return int(args.func(args))
    except (ValidationError, SettingsError) as exc:
        if isinstance(exc, ValidationError) and exc.title != Settings.__name__:
            raise
        for line in settings_error_lines(exc):
            print(line, file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
