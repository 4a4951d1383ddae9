"""What every command shares: one exception for wrong user input, argparse ``type=`` helpers, a lock
per output, and the wrapper that turns a :class:`UserError` into one line and exit status 2.

    from cli import UserError, run_main, positive_int, probability, output_lock

    def main(argv=None) -> int:
        args = build_parser().parse_args(argv)       # bad flags: argparse's own "prog: error: ..." + exit 2
        with output_lock(out_dir):                   # a second run on the same output refuses at once
            ...raise UserError("the file x.csv has no column 'text': pass --text-column NAME")...
        return 0

    if __name__ == "__main__":
        sys.exit(run_main(main, "my_script.py"))

A UserError is the user's to fix: its message names the problem and the fix, and it is printed as
``prog: error: message`` with no traceback. Anything else is a bug and keeps its traceback.
"""
from __future__ import annotations

import argparse
import fcntl
import os
import sys
from contextlib import contextmanager
from pathlib import Path


class UserError(Exception):
    """The user's input or arguments are wrong; the message says what and how to fix it."""


def run_main(main, prog: str, argv=None) -> int:
    """Call ``main(argv)``; a UserError becomes one line on stderr and exit status 2."""
    try:
        return main(argv) or 0
    except UserError as error:
        message = " ".join(str(error).split())  # one line, whatever the message's layout
        print(f"{prog}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted; finished work is kept, rerun the same command to resume.", file=sys.stderr)
        return 130


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose own errors (unknown flags, bad type= values) are UserErrors too: one line through
    run_main, exit status 2, no usage dump (stock argparse prints the usage line first)."""

    def error(self, message):
        raise UserError(f"{message} (see {self.prog} --help)")


# -- argparse type= helpers: a bad value is refused by argparse itself (usage line + exit 2) ----------
def _typed(convert, what: str):
    def parse(text: str):
        try:
            return convert(text)
        except (ValueError, TypeError):
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
    parse.__name__ = what.split()[-1]
    return parse


def _positive(text):
    value = int(text)
    if value < 1:
        raise ValueError
    return value


def _non_negative(text):
    value = int(text)
    if value < 0:
        raise ValueError
    return value


def _probability(text):
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise ValueError
    return value


def _positive_float(text):
    value = float(text)
    if not value > 0:
        raise ValueError
    return value


def _int_list(text):
    values = [int(v) for v in str(text).split(",") if v.strip()]
    if not values or any(v < 0 for v in values):
        raise ValueError
    return values


positive_int = _typed(_positive, "a positive integer")
non_negative_int = _typed(_non_negative, "a non-negative integer")
probability = _typed(_probability, "a probability in [0, 1]")
positive_float = _typed(_positive_float, "a positive number")
int_list = _typed(_int_list, "a comma-separated list of non-negative integers, e.g. 0,50,100")


def layer_spec(text: str) -> str:
    """Syntax check of a layer spec ('all', 'last-8', '0-2', '0,5,10', '3'); ranges are checked against the
    model later (:func:`parse_layer_spec`)."""
    try:
        parse_layer_spec(text, None)
    except UserError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return text


def parse_layer_spec(spec, n_layers: int | None, flag: str = "--layers") -> list[int] | None:
    """Layer indices of a spec: 'all', 'last-L' (the last L layers), 'a-b', 'a,b,c', an int or a list.

    With ``n_layers`` None only the syntax is checked (and None returned). An out-of-range spec is refused
    naming ``flag`` and the spec as typed, not its expansion ('30-99' would list 70 numbers)."""
    hint = "use 'all', 'last-L', 'a-b' or a comma list such as 0,5,10"
    typed = f"{flag} {spec}" if isinstance(spec, (str, int)) else f"{flag} {','.join(map(str, spec))}"
    if isinstance(spec, (list, tuple, range)):
        layers = [int(i) for i in spec]
    elif isinstance(spec, int):
        layers = [spec]
    else:
        text = str(spec).strip().lower()
        try:
            if text == "all":
                layers = None if n_layers is None else list(range(n_layers))
            elif text.startswith("last-"):
                count = int(text[5:])
                if count < 1:
                    raise ValueError
                layers = None if n_layers is None else list(range(max(0, n_layers - count), n_layers))
            else:
                layers = []
                for part in text.split(","):
                    lo, sep, hi = part.strip().partition("-")
                    layers += list(range(int(lo), int(hi) + 1)) if sep else [int(lo)]
                if not layers:
                    raise ValueError
        except ValueError:
            raise UserError(f"bad layer spec {spec!r}: {hint}") from None
    if n_layers is None:
        return None
    bad = [i for i in layers if not 0 <= i < n_layers]
    if bad or not layers:
        raise UserError(f"{typed} is out of range: the model has {n_layers} layers (0..{n_layers - 1}); {hint}")
    return sorted(set(layers))


# -- one writer per output ---------------------------------------------------------------------------
@contextmanager
def output_lock(path, what: str | None = None):
    """Hold an exclusive lock on ``path`` (a file or folder of results) for the ``with`` block.

    The lock is ``fcntl.flock`` on ``<path>.lock`` (beside a file, inside a folder: create a folder output
    before locking it, or two runs would lock different files): the kernel drops it
    when the process dies, so a lock left by a killed run is taken over without asking. A second run on
    the same output is refused at once with a UserError naming the output and the other run's pid.
    """
    path = Path(path)
    lock_file = path / ".lock" if path.is_dir() else path.with_name(path.name + ".lock")
    try:
        lock_file.parent.mkdir(parents=True, exist_ok=True)
        handle = open(lock_file, "a+")
    except OSError as error:
        raise UserError(f"cannot write {lock_file} ({error.strerror}): choose an output in a folder you can "
                        "write") from None
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            pid = handle.read().strip() or "unknown"
            raise UserError(f"{what or path} is being written by another run (pid {pid}); wait for it to finish, "
                            "or write somewhere else") from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        yield lock_file
    finally:
        handle.close()  # closing drops the lock; the file stays (removing it would race a waiting run)
