"""`kaec`: train, inspect and use CNN-KAE compression models. Torch is imported inside commands only."""

from __future__ import annotations

import os
import re
import sys

import typer

from kaecompress.errors import KaecError

# Typer's rich help prints a value type after every option, `<bool>` after flags that take none, and
# `<list[str]>` after a repeatable one; the usage line shows a required argument as `{name}`.
_option_type = typer.core.TyperOption.display_type_rich


def _display_type(self, ctx):
    if self.is_flag:
        return None
    shown = _option_type(self, ctx)
    return re.sub(r"^<list\[(.*)\]>$", r"<\1>", shown) if isinstance(shown, str) else shown


def _usage_name(self) -> str:
    """An argument in the usage line: NAME, [NAME], NAME... (its metavar, as a word)."""
    name = self.display_name_raw.removesuffix("...")
    name += "..." if self.nargs != 1 else ""
    return name if self.required else f"[{name}]"


typer.core.TyperOption.display_type_rich = _display_type
typer.core.TyperArgument._usage_display_name = _usage_name
# an argument with a metavar is its own description (IMAGES..., RUN); no `<list[Path]>` after it
_argument_type = typer.core.TyperArgument.display_type_rich
typer.core.TyperArgument.display_type_rich = lambda self, ctx: None if self.metavar else _argument_type(self, ctx)

app = typer.Typer(
    help="Image compression with CNN autoencoders whose bottlenecks are Kolmogorov-Arnold (KAE) layers. "
    "Add --debug anywhere to see a traceback instead of a one-line error.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _print_version(value: bool) -> None:
    if value:
        from kaecompress import __version__

        print(f"kaecompress {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", help="Print the version and exit.", is_eager=True,
                                 callback=_print_version),
) -> None:
    """Image compression with CNN autoencoders whose bottlenecks are Kolmogorov-Arnold (KAE) layers."""


MULTI_VALUE = {"-ec", "--exclude", "-sc", "--sort", "-acs", "--aggregate-stats"}


def _expand_multi_value(argv: list[str]) -> list[str]:
    """`-ec a b c` -> `-ec a -ec b -ec c`, as the study typed it (click options take one value each)."""
    out, flag = [], None
    for arg in argv:
        if arg in MULTI_VALUE:
            flag = arg
            out.append(arg)
            continue
        if flag and out[-1] != flag and not arg.startswith("-"):
            out += [flag, arg]
            continue
        if arg.startswith("-"):
            flag = None
        out.append(arg)
    return out


def _comma_list(argv: list[str], flag: str) -> list[str]:
    """`--codecs jpeg,webp` -> `--codecs jpeg --codecs webp`: a repeatable choice, also given as a comma list."""
    argv = [x for a in argv for x in ((flag, a.split("=", 1)[1]) if a.startswith(flag + "=") else (a,))]
    out = []
    for i, arg in enumerate(argv):
        if i and argv[i - 1] == flag and "," in arg:
            values = [v.strip() for v in arg.split(",") if v.strip()]
            out += [x for v in values for x in (v, flag)][:-1] if values else [arg]
        else:
            out.append(arg)
    return out


# Spellings from before the convention (docs/cli.md), still read: (command, old option, new option); a note on
# stderr says what to write instead. `kaec bench/rd --json PATH` took a file name; `--json` alone is a flag now.
RENAMED = [("encode", "--format", "--container"), ("results", "--format", "--table-format"),
           ("bench", "--json", "--json-file"), ("rd", "--json", "--json-file"), ("rd", "-q", "--quiet")]


def _old_spellings(argv: list[str]) -> list[str]:
    command = _command(argv)
    out = list(argv)
    for cmd, old, new in RENAMED:
        if cmd != command or old not in out:
            continue
        i = out.index(old)
        if new == "--json-file" and (i + 1 == len(out) or out[i + 1].startswith("-")):
            continue  # `--json` alone is today's flag
        out[i] = new
        print(f"note: kaec {cmd} {old} is now {new}; the old spelling will stop working", file=sys.stderr)
    return out


def _help_wanted(argv: list[str]) -> bool:
    return bool({"-h", "--help"} & set(argv)) or not argv


def _optional_value(argv: list[str], flag: str, default: str) -> list[str]:
    """`--ray` alone (last, or before another option) means `--ray auto`: click options need their value."""
    return [x for i, a in enumerate(argv)
            for x in ([a, default] if a == flag and (i + 1 == len(argv) or argv[i + 1].startswith("-")) else [a])]


from kaecompress.cli import coding, deploy, experiments, rd  # noqa: E402  (commands register on the app)

experiments.register(app)
deploy.register(app)
coding.register(app)
rd.register(app)


# Commands of the training install: in the runtime install (no torch) they refuse before anything loads.
TRAINING_COMMANDS = ("train", "results", "plot", "export", "promote", "rd")


def _command(argv: list[str]) -> str | None:
    return next((a for a in argv if not a.startswith("-")), None)


def _web_export(argv: list[str]) -> bool:
    """`kaec export --format web`: shipped models to a web folder, which needs no PyTorch."""
    return any(a == "--format" and b == "web" for a, b in zip(argv, argv[1:])) or "--format=web" in argv


def main() -> None:
    """Console entry point: mistakes become one line on stderr and exit 2 (`--debug` shows the trace)."""
    from kaecompress.errors import Interrupted

    # before any library (onnxscript during an export, say) imports onnxruntime, whose telemetry would
    # otherwise write ~/.cache/Microsoft/ (kaecompress.runtime.sessions.import_onnxruntime)
    os.environ["ORT_DISABLE_TELEMETRY"] = "1"
    argv = sys.argv[1:]
    debug = "--debug" in argv or os.environ.get("KAEC_DEBUG") == "1"
    argv = _expand_multi_value([a for a in argv if a != "--debug"])
    argv = _optional_value(argv, "--ray", "auto")
    argv = _old_spellings(_comma_list(argv, "--codecs"))
    if not debug:  # a library's warning is one line of ours, not a source excerpt
        import warnings

        warnings.showwarning = lambda message, category, *_a, **_k: print(
            f"warning: {str(message).splitlines()[0] if str(message) else category.__name__}", file=sys.stderr)

    def fail(message: str, code: int = 2):
        if debug and sys.exc_info()[0] is not None:
            raise
        print(f"error: {message}", file=sys.stderr)
        sys.exit(code)

    try:
        command = _command(argv)
        if _help_wanted(argv):
            coding.describe_levels()  # --quality's help lists the shipped levels (read from the cards)
        elif command in TRAINING_COMMANDS and not (command == "export" and _web_export(argv)):
            from kaecompress.api import require_training

            require_training(f"kaec {command}")
        code = app(args=argv, prog_name="kaec", standalone_mode=False)
    except KaecError as e:
        fail(str(e))
    except typer.TyperException as e:  # usage mistakes: one line, not the boxed panel
        where = getattr(e, "ctx", None)
        message = (e.format_message() if hasattr(e, "format_message") else str(e)).replace("Value error, ", "")
        if not message:  # `kaec` alone: the help was the answer
            sys.exit(getattr(e, "exit_code", 2))
        fail(message + (f" (see: {where.command_path} --help)" if where else ""))
    except Interrupted as e:
        fail(f"interrupted: {e}", 130)
    except typer.Abort:
        fail("aborted", 1)
    except OSError as e:  # unwritable output, full disk, ...: the path and the reason
        fail(f"{e.filename}: {e.strerror}" if e.filename and e.strerror else str(e))
    except MemoryError:
        fail("out of memory; run with --debug for the traceback", 1)
    except Exception as e:  # last resort: a bug of ours, still one line
        first = str(e).splitlines()[0] if str(e) else ""
        fail(f"unexpected {type(e).__name__}{': ' + first if first else ''}; run with --debug for the traceback", 1)
    if code == 130:  # Ctrl-C: finished outputs stay, none is half-written (all writes are atomic)
        fail("interrupted", 130)
    sys.exit(code or 0)


if __name__ == "__main__":
    main()
