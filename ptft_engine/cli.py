"""`ptft <command>`: one table of subcommands, each a module with add_arguments/run.

Errors a user can fix (bad path, bad config key, missing backend) are printed as one
line; `--debug` shows the traceback instead.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import sys

# name -> (module, one-line help). A command's module is imported only when it runs,
# so `ptft --help` stays fast and needs neither DeepSpeed nor Triton.
COMMANDS: dict[str, tuple[str, str]] = {
    "env": ("ptft_engine.commands.env", "report versions and which kernel backends work here"),
    "shard": ("ptft_engine.commands.shard", "write WebDataset tar shards from text, JSONL or image folders"),
    "tokenizer": ("ptft_engine.commands.tokenizer", "train a BPE or WordPiece tokenizer on shards or files"),
    "speech-targets": ("ptft_engine.commands.speech_targets", "fit HuBERT's k-means targets (MFCC) on audio shards"),
    "pretrain": ("ptft_engine.commands.pretrain", "pre-train with DeepSpeed: MLM, CLM, SimCLR, CLIP, wav2vec2, HuBERT"),
    "export": ("ptft_engine.commands.export", "consolidate a run/checkpoint into safetensors (HF layout) + manifest"),
    "finetune": ("ptft_engine.commands.finetune", "fine-tune an export on a labelled task (plain PyTorch, one device)"),
    "demo": ("ptft_engine.commands.demo", "run the whole workflow on bundled data"),
    "report": ("ptft_engine.commands.report", "PNG plots + a Markdown/HTML summary of a run, fine-tune or demo folder"),
}


class UserError(Exception):
    """A problem the user can fix; printed as one line without a traceback."""


def _top_parser() -> argparse.ArgumentParser:
    lines = "\n".join(f"  {name:<15} {help_text}" for name, (_, help_text) in COMMANDS.items())
    return argparse.ArgumentParser(
        prog="ptft",
        usage="ptft [--debug] COMMAND [options]",
        description="ptft_engine: pre-train, export and fine-tune.",
        epilog=f"commands:\n{lines}\n\n`ptft COMMAND --help` explains one. Example: ptft env",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def _command_parser(name: str) -> argparse.ArgumentParser:
    module, help_text = COMMANDS[name]
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name != module:
            raise
        raise UserError(f"command {name!r} is not available in this version") from exc
    p = argparse.ArgumentParser(
        prog=f"ptft {name}",
        description=mod.__doc__ or help_text,
        epilog=getattr(mod, "EXAMPLE", None),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    mod.add_arguments(p)
    p.set_defaults(_run=mod.run)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    top = _top_parser()
    names = [a for a in argv if not a.startswith("-")]
    if not names:
        top.print_help()
        return 0 if ("-h" in argv or "--help" in argv) else 2
    name = names[0]
    if name not in COMMANDS:
        top.error(f"unknown command {name!r}; choose one of: {', '.join(COMMANDS)}")
    argv.remove(name)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if not debug and "torch" not in sys.modules:
        # c10d prints C++ stack dumps before raising (e.g. an unreachable rendezvous); the
        # exception becomes our one line below, and --debug (or the variable set) shows them
        import os

        os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "FATAL")
    try:
        args = _command_parser(name).parse_args(argv)
        return int(args._run(args) or 0)
    except KeyboardInterrupt:  # Ctrl-C outside a training loop (which saves and exits 75 itself)
        if debug:
            raise
        print(f"ptft {name}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        message = _user_message(exc)
        if debug or message is None:
            raise
        print(f"ptft {name}: error: {message}", file=sys.stderr)
        return 1


def _user_message(exc: BaseException) -> str | None:
    """One line for an error the user can fix; None lets a bug show its traceback."""
    if isinstance(exc, (UserError, ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError,
                        PermissionError, FileExistsError)):
        return _from_worker(str(exc))
    kind = type(exc).__name__  # by name: importing torch here would slow every command
    if kind == "BackendUnavailable":  # an explicitly requested kernel backend (ops.registry)
        return f"{exc} — use a machine that has it, or PTFT_KERNEL_BACKEND=auto"
    if kind in ("DistNetworkError", "DistStoreError"):  # torch.distributed rendezvous
        import os

        where = f"{os.environ.get('MASTER_ADDR', '?')}:{os.environ.get('MASTER_PORT', '?')}"
        first = (str(exc).strip().splitlines() or [kind])[0]
        return (f"cannot reach the rank-0 rendezvous at {where} ({first}) — check that rank 0 is running, that "
                "MASTER_ADDR/MASTER_PORT (or the hostfile) name it, and that the port is open between the nodes")
    return None


def _from_worker(message: str) -> str:
    """A DataLoader worker's error arrives as 'Caught X in DataLoader worker process N.
    Original Traceback ...': keep the original one-line message, say where it came from."""
    lines = message.strip().splitlines()
    if len(lines) < 2 or "DataLoader worker" not in lines[0]:
        return message
    last = lines[-1].strip()
    kind, sep, text = last.partition(": ")
    original = text if sep and " " not in kind else last  # drop 'package.module.ErrorClass: '
    return f"{original} (in {lines[0].removeprefix('Caught ').split(' in ', 1)[-1].rstrip('.')})"


def finish(code: int) -> None:
    """Exit with `code`. A process that was a rank (launched, or a plain `ptft pretrain` with
    its own one-rank group) ends through engine/rank_exit: its teardown could abort it."""
    import os

    setup = sys.modules.get("ptft_engine.engine.setup")
    if "RANK" in os.environ or getattr(setup, "GROUP_MADE", False):
        from ptft_engine.engine.rank_exit import exit_rank

        exit_rank(code)
    sys.exit(code)


def entry() -> None:
    """The `ptft` console script."""
    finish(main())


if __name__ == "__main__":
    # `python -m ptft_engine.cli` (the deepspeed launcher's way in) runs this file as __main__:
    # go through the imported module so commands raise the same UserError class it catches
    from ptft_engine.cli import finish as _finish
    from ptft_engine.cli import main as _main

    _finish(_main())
