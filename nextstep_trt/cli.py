"""The ``nextstep-trt`` console script: one sub-command per module in ``nextstep_trt.commands``."""
from __future__ import annotations

import argparse
import importlib
import sys

from nextstep_trt.core.errors import CheckFailed, UserError

# command name -> module in nextstep_trt.commands that defines add_arguments(parser) and run(args) -> int
COMMANDS = {
    "demo": "demo", "init-tiny": "init", "init-model": "init", "export": "export", "inspect": "inspect",
    "quantize": "quantize", "build": "build", "generate": "generate", "edit": "generate", "verify": "verify",
    "record": "verify", "bench": "bench", "floor": "bench", "doctor": "doctor", "serve": "serve", "client": "serve",
    "triton-repo": "serve",
}


# a module that is missing -> the extra that installs it (pyproject.toml)
EXTRAS = {"torch": "torch", "onnxscript": "torch", "onnx_graphsurgeon": "torch", "polygraphy": "torch",
          "modelopt": "quant", "tensorrt_rtx": "rtx", "tensorrt": "trt", "cuda": "rtx-runtime",
          "pytriton": "serve", "tritonclient": "serve", "onnxruntime_genai": "peer", "diffusers": "test"}


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Every flag's help ends with its default, except where there is none to show (required, unset, switches) or
    the help already says it in words ("(default: loopback only)")."""

    def _get_help_string(self, action):
        if action.required or action.default is None or action.default is argparse.SUPPRESS \
                or isinstance(action.default, bool) or action.default == [] or "(default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def _module(command: str):
    return importlib.import_module(f"nextstep_trt.commands.{COMMANDS[command]}")


def build_parser(available: dict[str, object]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nextstep-trt", description="Export, build, run and verify NextStep-1.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    subs = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, module in available.items():
        sub = subs.add_parser(name, help=module.HELP[name], description=module.HELP[name],
                              formatter_class=HelpFormatter)
        sub.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks")
        module.add_arguments(name, sub)
    return parser


def _available() -> dict[str, object]:
    out = {}
    for name in COMMANDS:
        try:
            out[name] = _module(name)
        except ModuleNotFoundError as err:
            if not err.name or not err.name.startswith("nextstep_trt.commands"):
                raise
    return out


def main(argv: list[str] | None = None) -> int:
    available = _available()
    args = build_parser(available).parse_args(argv)
    try:
        return int(available[args.command].run(args) or 0)
    except (UserError, CheckFailed) as err:
        if args.debug:
            raise
        print(f"nextstep-trt {args.command}: error: {err}", file=sys.stderr)
        return err.exit_code
    except ModuleNotFoundError as err:
        top = (err.name or "").split(".")[0]
        if args.debug or top not in EXTRAS:
            raise
        print(f"nextstep-trt {args.command}: error: this needs {top}, which this install lacks: "
              f'pip install -e ".[{EXTRAS[top]}]" -c constraints.txt', file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"nextstep-trt {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # an unexpected failure still gets one line unless --debug
        if args.debug:
            raise
        print(f"nextstep-trt {args.command}: unexpected error: {type(err).__name__}: {err} "
              "(run with --debug for the traceback)", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
