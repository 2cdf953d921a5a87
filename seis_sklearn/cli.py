"""The ``seis`` command line: score saved activations, write layerwise reports, run the demo.

Built on :mod:`argparse` (standard library: no extra dependency, and the same
parser drives ``--help``, the docs and the tests). Exit codes: 0 success, 1
failure (one line on stderr; ``--debug`` shows the traceback), 2 usage error,
130 interrupted.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import hashlib
import importlib
import importlib.util
import io
import json
import os
import re
import shutil
import sys
import warnings
from pathlib import Path

from ._files import atomic_write, exit_on_bus_error
from ._matricize import LAYOUTS, MATRICIZATIONS
from ._validation import INVARIANCE_MODES, SOLVERS, first_line

EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
RUN_FILE = "seis-run.json"
ROWS_DIR = "rows"
OUTPUTS = ("report.csv", "layers.png")

SCORE_EXAMPLES = """\
examples:
  seis score conv3_original.npy conv3_rot90.npy       # cross-fitted over 5 folds
  seis score acts.npz:conv3 acts_rot.npz:conv3 --cv 10 --format json
  seis score nhwc_conv3.npy nhwc_conv3_rot90.npy --layout NHWC
  seis score pairs/conv3.npz --matricization flatten --n-components 0.95
  seis score A.npy B.npy --format csv --out conv3.csv
  seis score A.npy B.npy --in-sample                  # biased upward; said on the output
"""

REPORT_EXAMPLES = """\
examples:
  # a folder of saved pairs per transform (see the docs: "From saved activations")
  seis report --pairs rot90=acts/rot90 --pairs hflip=acts/hflip --out report/
  # an ONNX model: every Conv and Relu output
  seis report --onnx model.onnx --inputs images.npy --transform rot90 \\
      --op-type Conv --op-type Relu --out report/
  # a TorchScript model, its inputs and transforms written as text
  seis report --torchscript model.pt --inputs images.npy \\
      --transform rot90 --transform shift:4 --transform rotate:15 --out report/
  # a model built by your own code, weights from a state dict (weights_only=True)
  seis report --model mynet.py:build --weights mynet.pt --inputs images.npy \\
      --transform hflip --layers 'features.*' --out report/
  # continue an interrupted report; start over
  seis report ... --out report/ --resume
  seis report ... --out report/ --force
"""

DEMO_EXAMPLES = """\
examples:
  seis demo                      # writes demo-output/report.csv and layers.png
  seis demo --out /tmp/demo --force
"""


PAPER_EXAMPLES = """\
examples:
  seis paper                     # writes paper-output/claims.md, claims.csv, figures
  seis paper --out /tmp/paper --epochs 8 --force
"""
PAPER_OUTPUTS = ("claims.csv", "claims.md", "scores.csv", "tracking.csv", "measures.csv")


class CommandError(Exception):
    """A failure the command line reports as one line (exit status 1)."""


# ------------------------------------------------------------------ argument parsing


def _n_components(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a variance threshold in (0, 1] or a whole number; got {text!r}"
        ) from None
    if any(c in text for c in ".eE") or not value.is_integer():
        return value
    return int(value)


def _whole_number(minimum):
    """An argparse type: a whole number >= ``minimum``."""

    def parse(text):
        try:
            value = int(text)
        except ValueError:
            value = minimum - 1
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected a whole number >= {minimum}; got {text!r}")
        return value

    return parse


_positive_int = _whole_number(1)
_nonnegative_int = _whole_number(0)


def _folds(text):
    value = _positive_int(text)
    if value < 2:
        raise argparse.ArgumentTypeError(f"expected at least 2 folds; got {text!r}")
    return value


def _fraction(text):
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0.0 < value <= 0.5:
        raise argparse.ArgumentTypeError(f"expected a fraction in (0, 0.5]; got {text!r}")
    return value


class _Parser(argparse.ArgumentParser):
    """The parser of ``seis`` and of each command: long options only in full (an
    abbreviation such as ``--n-component`` is refused, not read as ``--n-components``),
    and an unknown option refused in its command's usage with the nearest one
    (:func:`_check_options`)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)


def _common():
    parent = _Parser(add_help=False)
    group = parent.add_argument_group("output manners")
    group.add_argument(
        "-q", "--quiet", action="store_true", help="no progress bars or messages on stderr"
    )
    group.add_argument(
        "--debug", action="store_true", help="show the full traceback when something fails"
    )
    return parent


def _seis_options(parser, report=False):
    group = parser.add_argument_group("SEIS parameters (as in SEISScorer)")
    group.add_argument(
        "--n-components",
        type=_n_components,
        default=0.99,
        metavar="K",
        help="variance threshold in (0, 1] or a number of components (default 0.99)",
    )
    if report:
        group.add_argument(
            "--matricization",
            choices=("auto", *MATRICIZATIONS),
            default="auto",
            help="per layer; auto (default): spatial, or flatten where a map has <= 2x2 "
            "positions (the row says which)",
        )
    else:
        group.add_argument(
            "--matricization", choices=MATRICIZATIONS, default="spatial", help="default: spatial"
        )
    if report:
        group.add_argument(
            "--layout",
            action="append",
            metavar="[LAYER=]LAYOUT",
            help="how to read a layer's activations: LAYER=NHWC for one layer (repeatable), or "
            "one layout for every layer with that many axes; default: recognised per layer "
            "(channels last, prefix tokens) from the input's grid",
        )
    else:
        group.add_argument("--layout", choices=LAYOUTS, default="auto", help="default: auto")
    if report:
        group.add_argument(
            "--tokens",
            choices=("auto", "all", "patch"),
            default="auto",
            help="token activations (N, L, D): 'auto' drops the prefix tokens the model "
            "declares (timm's num_prefix_tokens, a Hugging Face config) so spatial mode "
            "reads the patch grid; 'patch' also finds them from the input's grid where the "
            "model does not say; 'all' keeps every token (default: auto)",
        )
        group.add_argument(
            "--prefix-tokens",
            type=_nonnegative_int,
            default=None,
            metavar="N",
            help="tokens before the patches, with --tokens auto or patch (default: the "
            "model's num_prefix_tokens)",
        )
    group.add_argument(
        "--reg", type=float, default=1e-6, help="ridge factor epsilon (default 1e-6)"
    )
    group.add_argument("--max-components", type=_positive_int, default=None, metavar="N")
    group.add_argument("--invariance", choices=INVARIANCE_MODES, default="trace")
    group.add_argument("--solver", choices=SOLVERS, default="auto")


def _statistics_options(parser, metrics=False):
    group = parser.add_argument_group("uncertainty and other metrics")
    group.add_argument(
        "--permutations", type=int, default=0, metavar="N",
        help="permutation null of N shuffled pairings: p-values per score",
    )  # fmt: skip
    group.add_argument(
        "--bootstrap", type=int, default=0, metavar="N",
        help="N bootstrap resamples: 95%% intervals per score",
    )  # fmt: skip
    group.add_argument("--seed", type=int, default=None, help="seed of the resampling")
    group.add_argument("--jobs", type=int, default=None, metavar="N", help="parallel replicates")
    if metrics:
        group.add_argument(
            "--metrics", action="append",
            choices=("cka", "cka_debiased", "svcca", "pwcca", "channel_eed"), metavar="NAME",
            help="add a column: cka, cka_debiased (linear CKA of the flattened activations), "
            "svcca, pwcca (on the layer's matricization), or (models) channel_eed (repeatable)",
        )  # fmt: skip


def _statistics_params(args):
    params = {}
    if args.permutations:
        params["n_permutations"] = args.permutations
    if args.bootstrap:
        params["n_bootstrap"] = args.bootstrap
    if params:
        params["random_state"] = args.seed
        if args.jobs is not None:
            params["n_jobs"] = args.jobs
    return params


def _layout_option(values):
    """``--layout`` of a report: one layout (str), or LAYER=LAYOUT entries (a dict)."""
    if not values:
        return "auto"
    named = [v for v in values if "=" in v]
    bare = [v for v in values if "=" not in v]
    if named and bare or len(bare) > 1:
        raise CommandError(
            "--layout: give one layout for every layer, or LAYER=LAYOUT for some layers, "
            f"not both; got {' '.join(values)}"
        )
    if bare:
        if bare[0] not in LAYOUTS:
            raise CommandError(f"--layout {bare[0]}: not one of {', '.join(LAYOUTS)}")
        return bare[0]
    layouts = {}
    for value in named:
        layer, _, layout = value.rpartition("=")
        if layout not in LAYOUTS or not layer:
            raise CommandError(
                f"--layout {value}: expected LAYER=LAYOUT with LAYOUT one of {', '.join(LAYOUTS)}"
            )
        layouts[layer] = layout
    return layouts


def _seis_params(args):
    layout = args.layout
    if isinstance(layout, list) or layout is None:
        layout = _layout_option(layout)
    return {
        "n_components": args.n_components,
        "matricization": args.matricization,
        "layout": layout,
        "reg": args.reg,
        "max_components": args.max_components,
        "invariance": args.invariance,
        "solver": args.solver,
    }


def build_parser():
    """The ``seis`` argument parser (subcommands ``score``, ``report``, ``demo``).

    Returns
    -------
    argparse.ArgumentParser
    """
    from . import __version__

    parser = _Parser(
        prog="seis",
        description=(
            "SEIS: does a layer keep (equivariance S_E), and keep in place (invariance S_I), "
            "what a transformation does to its input?"
        ),
        epilog=(
            "exit status: 0 success, 1 failure (one line on stderr; --debug for the "
            "traceback), 2 usage error, 130 interrupted.\n"
            "Run 'seis COMMAND --help' for a command's options and examples."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"seis-sklearn {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    score = commands.add_parser(
        "score",
        help="SEIS of one pair of saved activation arrays",
        description=(
            "Score a pair of saved activations: A (on the original inputs) and B (on the "
            "transformed inputs), each a .npy file or FILE.npz:NAME; or one .npz holding "
            "'original' and 'transformed'. Files are memory-mapped, never unpickled."
        ),
        epilog=SCORE_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[_common()],
    )
    score.add_argument("A", help="activations on the original inputs (FILE.npy, FILE.npz:NAME)")
    score.add_argument(
        "B", nargs="?", help="activations on the transformed inputs (left out: A is a pair .npz)"
    )
    _seis_options(score)
    group = score.add_argument_group("evaluation and output")
    evaluation = group.add_mutually_exclusive_group()
    evaluation.add_argument(
        "--cv",
        type=_folds,
        default=None,
        metavar="K",
        help="cross-fitted mean ± std over K folds (default: 5 where there are at least 10 "
        "samples, else in-sample with a note)",
    )
    evaluation.add_argument(
        "--in-sample",
        action="store_true",
        help="fit and score on all samples (biased upward; the output says so)",
    )
    group.add_argument("--format", choices=("table", "json", "csv"), default="table")
    group.add_argument(
        "--raw",
        action="store_true",
        help="--format json: also the per-component arrays (canonical correlations, "
        "alignments, weights) and each fold's scores",
    )
    group.add_argument("--out", metavar="FILE", help="write here (atomically) instead of stdout")
    _statistics_options(score)
    group.add_argument("--force", action="store_true", help="overwrite an existing --out FILE")

    report = commands.add_parser(
        "report",
        help="layerwise report (report.csv, layers.png) from saved pairs or a model",
        description=(
            "Score every layer under every transform and write report.csv and layers.png "
            "in --out. Each finished layer is saved in --out/rows/ at once, and a streamed "
            "pass stopped by Ctrl-C or SIGTERM saves its statistics in --out/checkpoint/ "
            "at the next batch (a second signal stops at once), so an interrupted report "
            "loses nothing: rerun with --resume."
        ),
        epilog=REPORT_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[_common()],
    )
    source = report.add_argument_group("source (saved pairs, or a model with inputs)")
    source.add_argument(
        "--pairs",
        action="append",
        metavar="[NAME=]DIR",
        help="a saved-pairs folder (repeatable; NAME names its transform)",
    )
    source.add_argument("--onnx", metavar="FILE", help="an ONNX model (run with onnxruntime)")
    source.add_argument("--torchscript", metavar="FILE", help="a TorchScript model (torch.jit)")
    source.add_argument(
        "--exported",
        metavar="FILE",
        help="a torch.export program (torch.export.save, .pt2; exported with a dynamic "
        "batch dimension)",
    )
    source.add_argument(
        "--model",
        metavar="MODULE:FUNCTION",
        help="your code that builds the torch model (module.path:func or file.py:func)",
    )
    source.add_argument(
        "--weights", metavar="FILE", help="state dict for --model (loaded with weights_only=True)"
    )
    source.add_argument(
        "--inputs", metavar="FILE", help="model inputs (FILE.npy or FILE.npz:NAME)"
    )
    source.add_argument(
        "--transform",
        action="append",
        metavar="SPEC",
        help="rot90[:k], hflip, vflip, shift:dx or dy,dx, rotate:deg, scale:f; "
        "'+' composes (repeatable)",
    )
    source.add_argument("--input-layout", choices=LAYOUTS, default="auto", metavar="LAYOUT")
    source.add_argument(
        "--layers",
        action="append",
        metavar="NAME",
        help="layer names or globs: '*' within one part of a name (between dots; between "
        "slashes for ONNX tensors), '**' across parts: layer*.1, layer1.** (repeatable; "
        "default: every layer of the folders; a "
        "model's blocks and head, or its Conv/Linear modules)",
    )
    source.add_argument(
        "--op-type",
        action="append",
        metavar="OP",
        help="ONNX: record every output of nodes of this type, e.g. Conv, Relu (repeatable)",
    )
    source.add_argument(
        "--select",
        metavar="PART",
        help="which part of a layer's structured output to record: a key or attribute "
        "(last_hidden_state), or an index of a tuple (-1); default: its first tensor",
    )
    source.add_argument(
        "--memory-budget",
        type=float,
        metavar="GIB",
        help="memory one layer may take (default: half of what is available)",
    )
    source.add_argument(
        "--time-budget",
        type=float,
        metavar="MIN",
        help="minutes of algebra one layer's fit may take (default 15)",
    )
    source.add_argument(
        "--over-budget",
        choices=("pool", "skip", "error"),
        default="pool",
        help="a layer beyond the budget: pool its map (exact for quarter turns, flips and "
        "shifts by the pooling's multiples), skip it (a row that says why), or stop "
        "before the pass (default: pool)",
    )
    source.add_argument("--batch-size", type=_positive_int, default=256)
    source.add_argument(
        "--device", default=None, help="cpu, cuda or cuda:N (default: cuda when available)"
    )
    _seis_options(report, report=True)
    group = report.add_argument_group("evaluation and output")
    group.add_argument(
        "--cv", type=_folds, default=5, metavar="K", help="saved pairs: folds (default 5)"
    )
    group.add_argument(
        "--held-out",
        type=_fraction,
        default=0.2,
        metavar="F",
        help="models: fraction of samples held out, streaming (default 0.2)",
    )
    group.add_argument(
        "--in-sample", action="store_true", help="score on all samples (biased upward)"
    )
    _statistics_options(report, metrics=True)
    group.add_argument("--out", required=True, metavar="DIR", help="output folder")
    group.add_argument("--title", help="figure title")
    mode = group.add_mutually_exclusive_group()
    mode.add_argument("--resume", action="store_true", help="continue an unfinished run")
    mode.add_argument("--force", action="store_true", help="replace a previous run in --out")

    demo = commands.add_parser(
        "demo",
        help="the embedded demo: a CNN on digits, plain and rotation-augmented",
        description=(
            "Train a small CNN on scikit-learn's digits twice (plain and rotation-augmented) "
            "and write its layerwise held-out SEIS report. Needs the torch extra."
        ),
        epilog=DEMO_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[_common()],
    )
    demo.add_argument("--out", default="demo-output", metavar="DIR")
    demo.add_argument("--epochs", type=_positive_int, default=6)
    demo.add_argument("--force", action="store_true", help="replace a finished demo in --out")

    paper = commands.add_parser(
        "paper",
        help="the paper's claims checked on small models trained here (a few minutes)",
        description=(
            "Train small models on scikit-learn's digits — a CNN encoder plain and "
            "rotation-augmented, a U-Net, a multi-task model, a ViT and an MLP-Mixer — with "
            "several seeds, track them during training, score them layer by layer and judge "
            "each claim of the SEIS paper by a fixed rule on the spread between seeds: "
            "claims.md/claims.csv, effects_by_seed.csv, scores.csv, tracking.csv, one figure "
            "per claim, and SEIS beside CKA, debiased CKA, G-EED and the Lie derivative on the "
            "CNN's layers with their rank agreement (measures.csv, measures_agreement.csv, "
            "measures.png) in --out. Needs the torch extra."
        ),
        epilog=PAPER_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[_common()],
    )
    paper.add_argument("--out", default="paper-output", metavar="DIR")
    paper.add_argument("--epochs", type=_positive_int, default=6)
    paper.add_argument("--images", type=_positive_int, default=1000, metavar="N",
                       help="training images per model (default 1000)")  # fmt: skip
    paper.add_argument("--seeds", type=_positive_int, default=5, metavar="N",
                       help="train every model with seeds 0 … N−1 (default 5)")  # fmt: skip
    paper.add_argument("--force", action="store_true", help="replace a finished run in --out")
    parser.commands = commands.choices  # name → the command's parser, for _check_options
    return parser


def _check_options(parser, argv):
    """A long option the command does not have — mistyped (``--transfrom``) or
    abbreviated (``--n-component``) — as a usage error of that command, with the
    nearest of its options; before argparse, which would name only the first missing
    required option, or show the top-level usage."""
    import difflib

    command = next((i for i, token in enumerate(argv) if not token.startswith("-")), None)
    sub = parser.commands.get(argv[command]) if command is not None else None
    if sub is None:
        close = command is not None and difflib.get_close_matches(argv[command], parser.commands)
        if close:  # a mistyped command
            parser.error(f"unknown command {argv[command]!r}; did you mean {close[0]}?")
        return  # no command yet, or not one: argparse says so
    known = [flag for action in sub._actions for flag in action.option_strings]
    for token in argv[command + 1 :]:
        if token == "--":
            break
        flag = token.partition("=")[0]
        if token.startswith("--") and flag not in known:
            close = difflib.get_close_matches(flag, [k for k in known if k[1] == "-"], n=1)
            sub.error(
                f"unrecognized option {flag}"
                + (
                    f"; did you mean {close[0]}?"
                    if close
                    else f" (see seis {sub.prog.split()[-1]} --help)"
                )
            )


def _parse(parser, argv):
    """The parsed arguments; anything left over is a usage error of its command."""
    argv = sys.argv[1:] if argv is None else list(argv)
    _check_options(parser, argv)
    args, extra = parser.parse_known_args(argv)
    if extra:
        parser.commands[args.command].error(f"unrecognized arguments: {' '.join(extra)}")
    return args


# The Python API's argument names, as the command line's options: library messages the
# command line shows (errors, warnings, a report's reasons) name the options a user of
# `seis` can give (docs/cli.rst, "Messages").
_API_OPTIONS = {
    "over_budget": "--over-budget",
    "budget": "--memory-budget/--time-budget",
    "n_components": "--n-components",
    "max_components": "--max-components",
    "matricization": "--matricization",
    "layout": "--layout",
    "input_layout": "--input-layout",
    "invariance": "--invariance",
    "solver": "--solver",
    "reg": "--reg",
    "held_out": "--held-out",
    "batch_size": "--batch-size",
    "select": "--select",
    "tokens": "--tokens",
    "n_prefix": "--prefix-tokens",
    "layers": "--layers",
    "op_types": "--op-type",
    "metrics": "--metrics",
    "n_permutations": "--permutations",
    "n_bootstrap": "--bootstrap",
    "random_state": "--seed",
    "n_jobs": "--jobs",
    "cv": "--cv",
    "device": "--device",
    "providers": "--device",
    "inputs": "--inputs",
    "transforms": "--transform",
}
_API_VALUES = {  # argument=value pairs that are an option of their own, or none
    ("cv", "None"): "--in-sample",
    ("held_out", "None"): "--in-sample",
    ("cv", "'auto'"): "the default evaluation",
}
QUOTES = "'\""
_NAMES = "|".join(sorted(_API_OPTIONS, key=len, reverse=True))
# name=value (a quoted string, a number, None/True/False, or nothing: ``budget=``), and a
# gloss the library gives after it, ``n_prefix= (--prefix-tokens N)``
_ARGUMENT = re.compile(
    rf"(?<![\w./-])({_NAMES})=(?![{{=])('[^']*'|\"[^\"]*\"|-?\d[\w.+-]*|None|True|False)?"
    r"(?: \((--[^()]*)\))?"
)
# layout={'name': 'NCHW'}, and the command-line form the library adds after it
_LAYOUT_DICT = re.compile(
    r"(?<![\w./-])layout=\{'([^']*)': '(\w+)'\}((?: \(or '\w+'\))?)(?:, --layout \S+ on the "
    r"command line)?"
)
# a message that starts with the argument it is about: ``layers: …``, ``held_out must …``
_SUBJECT = re.compile(
    rf"^(?!tokens:)({_NAMES})(?=: | must | is | needs | goes | gives )"
)  # (``tokens: …`` describes a reading: not an argument)


def _cli_text(text, subject=True):
    """A library message with the Python API's arguments written as the command line's
    options: ``over_budget='pool'`` → ``--over-budget pool``, ``budget=`` →
    ``--memory-budget/--time-budget``, ``cv=None`` → ``--in-sample``; ``subject``: also a
    leading argument name (``layers: …`` → ``--layers: …``), for errors and warnings."""

    def option(match):
        name, value = match.group(1), match.group(2)
        if (name, value) in _API_VALUES:
            return _API_VALUES[name, value]
        flag = _API_OPTIONS[name]
        if value is None and match.group(3):  # the library's own gloss: --prefix-tokens N
            return match.group(3)
        if value is None or value in ("None", "True", "False"):
            return flag
        return f"{flag} {value.strip(QUOTES)}"

    text = _LAYOUT_DICT.sub(
        lambda m: (
            f"--layout {m.group(1)}={m.group(2)}"
            + (f" (or {m.group(1)}={m.group(3)[6:-2]})" if m.group(3) else "")
        ),
        text,
    )
    text = _ARGUMENT.sub(option, text)
    if subject:
        text = _SUBJECT.sub(lambda m: _API_OPTIONS[m.group(1)], text)
    return text


@contextlib.contextmanager
def _cli_warnings(command):
    """Warnings while a command runs, as ``seis COMMAND: warning: …`` — once per distinct
    message, naming the command line's options — instead of ``warnings.showwarning``'s
    file, line and source line. Only for the command line: the library's warnings are
    left to Python's own machinery for its users."""
    said = set()

    def show(message, category, filename, lineno, file=None, line=None):
        text = _cli_text(str(message))
        # a layer over budget is said before the pass and, not scored, after it: once
        key = re.sub(r"^(layer '[^']*'):? ", r"\1 ", text)
        if key not in said:
            said.add(key)
            print(f"seis {command}: warning: {text}", file=sys.stderr)

    with warnings.catch_warnings():
        warnings.showwarning = show
        yield


# ------------------------------------------------------------------ helpers


def _array_argument(text):
    """(path, key) from ``FILE.npy`` or ``FILE.npz:NAME``."""
    path = Path(text)
    if not path.exists() and ":" in text:
        head, _, key = text.rpartition(":")
        if head.endswith(".npz"):
            return Path(head), key
    return path, None


def _load(text, mmap=True):
    from .io import load_array

    path, key = _array_argument(text)
    return load_array(path, key, mmap=mmap)


def _progress(enabled):
    return enabled and sys.stderr.isatty()


def _say(args, message):
    if not getattr(args, "quiet", False):
        print(message, file=sys.stderr)


def _check_new_file(path, force):
    path = Path(path)
    if path.is_dir():
        raise CommandError(f"--out {path}: is a folder; give a file name")
    if path.exists() and not path.is_file():
        raise CommandError(
            f"--out {path}: not a regular file (a device, a pipe or a socket); output goes "
            "only to regular files"
        )
    if not path.parent.is_dir():
        raise CommandError(f"--out {path}: the folder {path.parent} does not exist")
    if path.exists() and not force:
        raise CommandError(f"--out {path}: exists; pass --force to overwrite it")


# ------------------------------------------------------------------ seis score


def cmd_score(args):
    from . import seis_score
    from ._result import SCORE_NAMES
    from .io import array_header

    if args.raw and args.format != "json":
        raise CommandError(f"--raw goes with --format json (the {args.format} has no arrays)")
    if args.out:
        _check_new_file(args.out, args.force)
    if args.B is None:
        path, key = _array_argument(args.A)
        if key is not None or path.suffix != ".npz":
            raise CommandError(
                "give two arrays (A B), or one .npz holding 'original' and 'transformed'"
            )
        names = (f"{path}:original", f"{path}:transformed")
    else:
        names = (args.A, args.B)
    # both headers first: a shape mismatch is found before a compressed member is inflated
    (shape_a, _), (shape_b, _) = (array_header(*_array_argument(name)) for name in names)
    if shape_a != shape_b:
        raise CommandError(
            f"A and B must have the same shape; got {names[0]} {shape_a} and {names[1]} {shape_b}"
        )
    A, B = (_load(name) for name in names)
    cv = None if args.in_sample else ("auto" if args.cv is None else args.cv)
    with warnings.catch_warnings(record=True) as caught:  # said in the output instead
        warnings.simplefilter("always")
        result = seis_score(A, B, cv=cv, **_statistics_params(args), **_seis_params(args))
    for warning in caught:
        if not _said_in_output(warning, result):
            warnings.warn_explicit(warning.message, warning.category, warning.filename,
                                   warning.lineno)  # fmt: skip
    if result.layout_choice != "given" and (
        "channels last" in result.layout_choice or "either" in result.layout_choice
    ):
        _say(args, f"seis score: {_layout_message(result)}")
    record = {"A": names[0], "B": names[1], "shape": list(A.shape), **result.as_dict()}
    if args.raw:  # each fold's four scores, beside the fit's per-component arrays
        record["fold_scores"] = [{name: getattr(fold, name) for name in SCORE_NAMES}
                                 for fold in result.folds]  # fmt: skip
    else:  # the summary: k values per array are for --raw
        for key in RAW_ARRAYS:
            record.pop(key)
    if args.format == "json":
        text = json.dumps(record, indent=2) + "\n"
    elif args.format == "csv":
        for key in ("p_values", "null_means", "ci_low", "ci_high"):  # one column per score
            for score_name, value in (record.pop(key) or {}).items():
                record[f"{score_name}_{key}"] = value
        record["grid"] = "x".join(map(str, result.grid or ()))
        columns = [k for k, v in record.items() if not isinstance(v, list)]
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(columns)
        writer.writerow([_csv_value(record[c]) for c in columns])
        text = buffer.getvalue()
    else:
        text = _score_table(names, A, B, result, SCORE_NAMES)
    if args.out:
        atomic_write(args.out, text.encode())
    else:
        sys.stdout.write(text)
    return EXIT_OK


# the per-component arrays of a result, in seis score's JSON with --raw only
RAW_ARRAYS = ("canonical_correlations", "alignments", "weights")


def _csv_value(value):
    if value is None:
        return ""
    return repr(value) if isinstance(value, float) else value


def _said_in_output(warning, result):
    """Whether a warning of ``seis_score`` is one the output states anyway."""
    from ._matricize import LayoutWarning

    text = str(warning.message)
    return (
        issubclass(warning.category, LayoutWarning)
        or (result.evaluation_reason and result.evaluation_reason in text)
        or (result.variance_shortfall and result.variance_shortfall in text)
    )


def _layout_message(result):
    """How the arrays were read, in words, with the option that says otherwise."""
    from ._result import grid_text

    text = f"read as {result.layout} ({grid_text(result.grid)})"
    if result.layout_choice == "given":
        return text + ", as given"
    other = "NCHW" if result.layout == "NHWC" else "NHWC"
    return f"{text}; {result.layout_choice}; pass --layout {result.layout} to confirm, " + (
        f"--layout {other} to read it the other way"
        if result.layout in ("NCHW", "NHWC")
        else "or move the channels first"
    )


def _score_table(names, A, B, result, score_names):
    from ._result import grid_text

    lines = [
        f"A  {names[0]}  {A.dtype} {tuple(A.shape)}",
        f"B  {names[1]}  {B.dtype} {tuple(B.shape)}",
        f"read as {result.layout} ({grid_text(result.grid)}); layout "
        + ("given" if result.layout_choice == "given" else result.layout_choice),
        "",
    ]
    folds = result.n_folds
    lines.append(f"{'score':<24}{'value':>10}" + (f"   ± std over {folds} folds" if folds else ""))
    for name in score_names:
        std = getattr(result, f"{name}_std")
        value = getattr(result, name)
        lines.append(f"{name:<24}{value:>10.4f}" + (f"   ± {std:.4f}" if std is not None else ""))
    lines.append(
        f"{'degenerate':<24}{'yes' if result.degenerate else 'no':>10}"
        + (f"   {_cli_text(result.degenerate_reason, False)}: do not read at face value"
           if result.degenerate
           else "")
    )  # fmt: skip
    if result.p_values is not None:
        lines.append("")
        lines.append(f"permutation null ({result.n_permutations} shuffled pairings):")
        for name in score_names:
            lines.append(
                f"  {name:<22}p = {result.p_values[name]:.4g}   null mean "
                f"{result.null_means[name]:.4f}"
            )
    if result.ci_low is not None:
        lines.append("")
        lines.append(f"{result.confidence:.0%} bootstrap intervals ({result.n_bootstrap}):")
        for name in score_names:
            lines.append(f"  {name:<22}[{result.ci_low[name]:.4f}, {result.ci_high[name]:.4f}]")
    lines.append("")
    folds = f" over {result.n_folds} folds" if result.n_folds else ""
    lines.append(
        f"{result.evaluation}{folds}; k = {result.n_components} components "
        f"({result.explained_variance_ratio:.1%} of the variance), m = {result.n_rows} rows, "
        f"{result.matricization} matricization of {result.layout} ({grid_text(result.grid)})"
    )
    if result.variance_shortfall:
        lines.append(f"variance target not reached: {_cli_text(result.variance_shortfall, False)}")
    if result.evaluation == "in-sample":
        why = _cli_text(result.evaluation_reason, False)  # cv=None: --in-sample
        lines.append(f"note: in-sample scores are biased upward; in-sample because {why}")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------ seis report


def _report_settings(args):
    """What defines a report run (its fingerprint), and the plan of its work."""
    params = _seis_params(args)
    if args.prefix_tokens is not None and args.tokens == "all":
        raise CommandError("--prefix-tokens goes with --tokens patch or auto, not all")
    if args.tokens == "patch" and args.prefix_tokens is None and args.pairs:
        raise CommandError(
            "--tokens patch needs --prefix-tokens N here: saved pairs do not say how many "
            "class/register tokens come before the patches (a model's report finds them "
            "from the input's grid)"
        )
    settings = {
        "seis": params,
        "tokens": [args.tokens, args.prefix_tokens],
        "statistics": _statistics_params(args),
        "metrics": args.metrics or [],
        "in_sample": args.in_sample,
        "layers": args.layers,
    }
    model_given = [a for a in ("onnx", "torchscript", "exported", "model") if getattr(args, a)]
    if args.pairs and model_given:
        raise CommandError("give either --pairs folders or a model, not both")
    if args.pairs:
        for name in ("inputs", "transform", "weights", "op_type"):
            if getattr(args, name):
                raise CommandError(f"--{name} goes with a model; --pairs folders hold activations")
        if "channel_eed" in (args.metrics or []):
            raise CommandError(
                "--metrics channel_eed applies the transform to feature maps: it needs a "
                "model and --transform, not saved pairs"
            )
        settings["cv"] = None if args.in_sample else args.cv
        settings["pairs"] = [_pairs_source(text, args.layers) for text in args.pairs]
        return settings
    if not model_given:
        raise CommandError(
            "give a source: --pairs DIR, --onnx FILE, --exported FILE, --torchscript FILE or "
            "--model MODULE:FUNC"
        )
    if len(model_given) > 1:
        raise CommandError(f"give one model: --{model_given[0]} or --{model_given[1]}, not both")
    if args.weights and not args.model:
        raise CommandError(
            "--weights goes with --model (ONNX, exported and TorchScript files hold theirs)"
        )
    if args.op_type and not args.onnx:
        raise CommandError("--op-type selects tensors of an --onnx model; use --layers")
    if args.select is not None and args.onnx:
        raise CommandError("--select picks parts of a torch module's output; an ONNX "
                           "tensor is one array")  # fmt: skip
    if args.select is not None:
        settings["select"] = args.select
    budget = {}
    for option, key, unit in (("memory_budget", "memory", 2**30), ("time_budget", "seconds", 60)):
        value = getattr(args, option)
        if value is not None:
            if not value > 0:
                raise CommandError(f"--{option.replace('_', '-')} must be positive; got {value}")
            budget[key] = value * unit
    settings["budget"] = [budget or "auto", args.over_budget]
    if not args.inputs:
        raise CommandError("a model needs --inputs FILE.npy (samples first)")
    if not args.transform:
        raise CommandError("a model needs at least one --transform (e.g. --transform rot90)")
    from .transforms import parse_spec

    for spec in args.transform:
        parse_spec(spec)
    if len(set(args.transform)) != len(args.transform):
        raise CommandError("--transform names the same transform twice")
    if settings["statistics"] and not args.in_sample:
        given = "--permutations" if args.permutations else "--bootstrap"
        raise CommandError(
            f"{given} refits on stored activations: add --in-sample (a model's report is "
            "otherwise streamed held-out, and its activations are never stored)"
        )
    settings["held_out"] = None if args.in_sample else args.held_out
    settings["transforms"] = args.transform
    settings["input_layout"] = args.input_layout
    settings["inputs"] = _file_record(_array_argument(args.inputs)[0], args.inputs, "inputs")
    if args.onnx:
        settings["onnx"] = _file_record(Path(args.onnx), args.onnx, "onnx")
        settings["op_types"] = args.op_type
    elif args.torchscript:
        settings["torchscript"] = _file_record(
            Path(args.torchscript), args.torchscript, "torchscript"
        )
    elif args.exported:
        settings["exported"] = _file_record(Path(args.exported), args.exported, "exported")
    else:
        settings["model"] = args.model
        if args.weights:
            settings["weights"] = _file_record(Path(args.weights), args.weights, "weights")
    return settings


def _file_record(path, text, option):
    from .io import file_identity

    if path.is_dir():
        raise CommandError(f"--{option} {text}: is a folder; give a file")
    if path.exists() and not path.is_file():
        raise CommandError(f"--{option} {text}: not a regular file (a device, a pipe or a socket)")
    if not path.is_file():
        raise CommandError(f"--{option} {text}: no such file")
    return {"path": str(path.resolve()), "argument": text, "identity": file_identity(path)}


def _pairs_source(text, patterns):
    from .io import file_identity, list_pairs

    name, sep, folder = text.partition("=")
    if not sep:
        name, folder = None, text
    try:
        layers, manifest = list_pairs(folder)
    except (ValueError, OSError) as exc:  # said of the option that named the folder
        why = first_line(exc).removeprefix(f"{folder}: ")
        raise CommandError(f"--pairs {text}: {why}") from exc
    layers = _select(layers, patterns, lambda layer: layer.name, f"--pairs {folder}")
    transform = name or manifest.get("transform") or Path(folder).resolve().name
    return {
        "transform": transform,
        "folder": str(Path(folder).resolve()),
        "layers": [
            {
                "name": layer.name,
                "depth": layer.depth,
                "module": layer.module,
                "files": [[f.name, *file_identity(f)] for f in layer.files],
                "layout": layer.layout,
            }
            for layer in layers
        ],
    }


def _select(items, patterns, name_of, where):
    """The items whose names ``--layers`` chooses: names or globs, ``*`` within one
    dotted part and ``**`` across parts — the rule of the Python API's ``layers=``
    (:func:`seis_sklearn.adapters._names.match_names`), in the items' order."""
    if not patterns:
        return list(items)
    from seis_sklearn.adapters._names import match_names

    try:
        names = match_names([name_of(i) for i in items], patterns, argument="--layers",
                            what="layer", where=where)  # fmt: skip
    except ValueError as exc:
        raise CommandError(str(exc)) from None
    chosen = set(names)
    return [item for item in items if name_of(item) in chosen]


def _fingerprint(settings):
    text = json.dumps(settings, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def _prepare_out(folder, settings, args):
    """Check what --out holds against --resume/--force; return the finished rows."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise CommandError(f"--out {folder}: exists and is not a folder")
    run_file = folder / RUN_FILE
    fingerprint = _fingerprint(settings)
    previous = None
    if run_file.exists():
        try:
            previous = json.loads(run_file.read_text())
            if not (
                isinstance(previous, dict)
                and isinstance(previous.get("fingerprint"), str)
                and isinstance(previous.get("status"), str)
                and isinstance(previous.get("settings", {}), dict)
            ):
                raise ValueError("not a run record")
        except (ValueError, OSError):
            if not args.force:
                raise CommandError(
                    f"--out {folder}: {RUN_FILE} is damaged; pass --force"
                ) from None
            previous = {"fingerprint": None, "status": "unknown"}
    ours = [
        folder / RUN_FILE, folder / ROWS_DIR, folder / CHECKPOINT_DIR,
        *(folder / o for o in OUTPUTS),
    ]  # fmt: skip
    if args.force:
        for path in ours:
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)
        previous = None
    elif previous is None:
        clashes = [p.name for p in ours if p.exists()]
        if clashes:
            raise CommandError(
                f"--out {folder}: already holds {', '.join(clashes)} from something other "
                "than a seis report run; pass --force to replace them or choose another --out"
            )
    elif previous.get("status") == "finished":
        raise CommandError(
            f"--out {folder}: holds a finished report; pass --force to overwrite it or choose "
            "another --out"
        )
    elif not args.resume:
        done = len(list((folder / ROWS_DIR).glob("*.json")))
        raise CommandError(
            f"--out {folder}: holds an unfinished run ({done} layer results kept); pass "
            "--resume to continue it or --force to start over"
        )
    elif previous["fingerprint"] != fingerprint:
        changed = sorted(
            key
            for key in set(settings) | set(previous.get("settings", {}))
            if settings.get(key) != previous.get("settings", {}).get(key)
        )
        raise CommandError(
            f"--out {folder}: the unfinished run there used different settings "
            f"({', '.join(changed) or 'unknown'} differ); --resume needs the same command "
            "and unchanged inputs, or pass --force to start over"
        )
    (folder / ROWS_DIR).mkdir(parents=True, exist_ok=True)
    record = {"status": "running", "fingerprint": fingerprint, "settings": settings}
    atomic_write(run_file, (json.dumps(record, indent=1, default=str) + "\n").encode())
    rows = {}
    for path in sorted((folder / ROWS_DIR).glob("*.json")):
        try:
            row = json.loads(path.read_text())
        except ValueError:  # pragma: no cover - rows are written atomically
            path.unlink()
            continue
        missing = [c for c in ROW_KEYS if not isinstance(row, dict) or c not in row]
        if missing:
            raise CommandError(
                f"--out {folder}: {ROWS_DIR}/{path.name} is not a report row (no "
                f"{', '.join(missing[:3])}{'…' if len(missing) > 3 else ''}); remove it, or "
                "pass --force to start over"
            )
        rows[path.stem] = row
    return rows


# what every row of a report holds (seis_sklearn.report.COLUMNS less the optional ones)
ROW_KEYS = ("layer", "depth", "transform", "equivariance", "invariance", "n_components")


def _write_row(folder, key, row):
    atomic_write(Path(folder) / ROWS_DIR / f"{key}.json", (json.dumps(row) + "\n").encode())


def cmd_report(args):
    from .report import report_frame

    settings = _report_settings(args)
    # everything is loaded and checked before --out is touched
    job = _report_pairs if "pairs" in settings else _model_job(args, settings)
    folder = Path(args.out)
    existed = folder.exists()
    with _out_lock(args.out):
        fresh = not (folder / RUN_FILE).exists() or args.force
        done = _prepare_out(args.out, settings, args)
        kept = len(done)
        if kept:
            _say(args, f"resuming: {kept} layer results already in {args.out}")
        try:
            job(args, settings, done)
        except (CommandError, ValueError):
            # refused before anything was kept (a layer over budget with --over-budget
            # error, …): leave --out as it was, not a run record that asks for --resume
            if fresh and not _run_kept_anything(folder):
                _undo_fresh_run(folder, remove_folder=not existed)
            raise
        frame = report_frame(done.values())
        _finish_report(args, frame, settings)
    return EXIT_OK


def _run_kept_anything(folder):
    """Whether a run in ``folder`` wrote a row or a checkpoint."""
    rows = folder / ROWS_DIR
    return (rows.is_dir() and any(rows.iterdir())) or (folder / CHECKPOINT_DIR).exists()


def _undo_fresh_run(folder, remove_folder):
    """Remove what a fresh run wrote before it was refused: its run record, its empty
    rows folder, and (``remove_folder``) the lock file and the folder it made."""
    (folder / RUN_FILE).unlink(missing_ok=True)
    rows = folder / ROWS_DIR
    if rows.is_dir() and not any(rows.iterdir()):
        rows.rmdir()
    if remove_folder:
        (folder / LOCK_FILE).unlink(missing_ok=True)
        with contextlib.suppress(OSError):  # not empty: something else is there
            folder.rmdir()


LOCK_FILE = ".seis-report.lock"


@contextlib.contextmanager
def _out_lock(folder):
    """One report at a time in ``--out``: an exclusive lock on a file there, held for
    the whole run (two runs writing one folder — a ``--force`` beside a running
    report — removed each other's files mid-write)."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise CommandError(f"--out {folder}: exists and is not a folder")
    folder.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX: no lock
        yield
        return
    with open(folder / LOCK_FILE, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise CommandError(
                f"--out {folder}: another seis report is writing there now; wait for it to "
                "finish, or choose another --out"
            ) from None
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _pair_metric(name, moments, A, B, layout):
    """One metric column of a saved pair's row: ``cka``, ``cka_debiased`` the standard
    CKA of the flattened activations (NaN where it is undefined), the others from the
    ``moments`` of the layer's matricization."""
    from .metrics import REPORT_METRICS, linear_cka

    if name not in ("cka", "cka_debiased"):
        return REPORT_METRICS[name](moments)
    try:
        return linear_cka(A, B, layout=layout, debiased=name == "cka_debiased")
    except ValueError:  # no variance (left by the unbiased estimator)
        return float("nan")


def _report_pairs(args, settings, done):
    from seis_sklearn.adapters._common import check_tokens, layer_params, read_as, unscored
    from seis_sklearn.adapters._layout import read_layers

    from . import seis_score
    from .io import LayerPair
    from .metrics import _moments_of
    from .report import result_row

    tokens, n_prefix = settings["tokens"]
    n_prefix = check_tokens(tokens, n_prefix, required=True)  # a folder of arrays does not say
    layout = settings["seis"]["layout"]
    params = {k: v for k, v in settings["seis"].items() if k != "layout"}
    work = []
    for t, source in enumerate(settings["pairs"]):
        for layer in source["layers"]:
            key = f"t{t:03d}-l{layer['depth']:04d}"
            if key not in done:
                work.append((key, source, layer))
    bar = _bar(len(work), "layers", _progress(not args.quiet))
    for key, source, layer in work:
        files = tuple(Path(source["folder"]) / f[0] for f in layer["files"])
        A, B = LayerPair(layer["name"], layer["depth"], layer["module"], files).load()
        try:  # a layout that does not fit this layer (or no variance): its row says so
            given, found = _pair_reading(
                _pair_layout(layout, layer), A.shape, layer["name"], source["transform"]
            )
            reading = read_layers(
                {layer["name"]: A.shape[1:]}, None, layout=given,
                tokens=tokens, model_prefix=n_prefix,
            )[layer["name"]]  # fmt: skip
            if found is not None:  # read by its shape (docs/cli.rst, "Layouts")
                reading = dataclasses.replace(reading, choice=found.choice)
                if found.warning:
                    _say(args, f"seis report: {_cli_layout(found.warning)}")
            A, B = read_as(A, reading), read_as(B, reading)
            layer_settings, choice = layer_params(params, A.shape, reading)
            result = seis_score(
                A, B, cv=settings["cv"], **settings["statistics"], **layer_settings
            )
            metrics = {}
            if settings["metrics"]:
                mode = layer_settings["matricization"]
                moments = (
                    _moments_of(A, B, reading.layout, mode)
                    if set(settings["metrics"]) - {"cka", "cka_debiased"}
                    else None
                )
                metrics = {name: _pair_metric(name, moments, A, B, reading.layout)
                           for name in settings["metrics"]}  # fmt: skip
        except ValueError as exc:
            result = unscored(layer["name"], first_line(exc), str(layout), params, "")
            reading, choice = None, ""
            metrics = {name: float("nan") for name in settings["metrics"]}
            why = _cli_text(first_line(exc), subject=False)
            _say(args, f"layer {layer['name']!r} not scored: {why}")
        row = result_row(
            result,
            layer=layer["name"],
            depth=layer["depth"],
            module=layer["module"],
            shape=A.shape[1:],
            transform=source["transform"],
            metrics=metrics,
            matricization_choice=choice,
            layout_choice=reading.choice if reading is not None else "",
        )
        _write_row(args.out, key, row)
        done[key] = row
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()


def _cli_layout(text):
    """A message naming ``layout='X'`` as the command line's ``--layout X``."""
    import re

    return re.sub(r"layout='(\w+)'", r"--layout \1", text)


def _square_grid_transform(name):
    """``name`` when it is a transform spec of an odd number of quarter turns (which keeps
    an array's shape only on a square grid), else None."""
    from .transforms import parse_spec

    try:
        steps = parse_spec(name)
    except (ValueError, TypeError):  # a folder's name, not a transform spec
        return None
    turns = sum(kwargs.get("k", 1) for function, kwargs in steps if function == "rot90")
    return name if turns % 2 else None


def _pair_reading(given, shape, name, transform):
    """A saved layer's layout and, where ``given`` is auto, how its shape decided it.

    Returns ``(layout, AutoLayout or None)``. A layer whose transform keeps the shape
    only on a square grid (rot90) and whose given layout reads a non-square grid, or
    a 5-D layer that looks channels last, is one ``ValueError`` with the fix (its row
    says it; the report goes on).
    """
    from ._matricize import auto_layout, grid_of

    square = _square_grid_transform(transform)
    if given == "auto":
        if len(shape) not in (4, 5):
            return given, None
        found = auto_layout(shape, name=f"layer {name!r}", square_grid=square)
        if found.error:
            raise ValueError(_cli_layout(found.error))
        return found.layout, found
    if (
        square
        and given in ("NCHW", "NHWC", "NCDHW")
        and len(shape) == (5 if given == "NCDHW" else 4)
    ):
        h, w = grid_of(shape, given)[-2:]
        if h != w:
            other = {"NCHW": "NHWC", "NHWC": "NCHW"}.get(given)
            fix = f"--layout {name}={other}" if other else "move its channels first"
            raise ValueError(
                f"layout {given} reads layer {name!r} of shape {tuple(shape)} as a {h}×{w} grid, "
                f"which {square} cannot keep (a quarter turn changes a non-square grid's shape, "
                f"yet its original and transformed views have the same shape): the layout is "
                f"likely wrong; {fix}"
            )
    return given, None


def _pair_layout(layout, layer):
    """A saved layer's layout: --layout's for it, else its manifest's, else auto."""
    if isinstance(layout, dict):
        given = layout.get(layer["name"], "auto")
    else:
        given = layout
    return given if given != "auto" else layer.get("layout", "auto")


def _model_job(args, settings):
    """Load the model, its inputs and the transforms; return the function that runs them."""
    if args.onnx:
        from seis_sklearn.adapters import onnx as adapter
        from seis_sklearn.transforms import from_spec

        _providers(args.device)  # checked before anything runs
        try:
            model = adapter.load_model(args.onnx)
        except ValueError as exc:  # the API's "model: …", said of --onnx
            why = first_line(exc).removeprefix("model: ")
            raise CommandError(f"--onnx {args.onnx}: {why}") from exc
        initializers = {t.name for t in model.graph.initializer}
        fed = [i.name for i in model.graph.input if i.name not in initializers]
        if len(fed) != 1:
            raise CommandError(
                f"--onnx {args.onnx}: the model takes {len(fed)} inputs "
                f"({', '.join(map(repr, fed))}) and --inputs gives one array; score it from "
                "Python with a dict of name → array (seis_sklearn.adapters.onnx.layerwise_seis)"
            )
        tensors = adapter.list_tensors(model)
        layers = None
        if args.layers or args.op_type:
            layers = adapter._select(tensors, args.layers, args.op_type, argument="--layers")
        elif not any(t.op_type in adapter.DEFAULT_OP_TYPES for t in tensors):
            raise CommandError("the model has no Conv/Gemm/MatMul node; choose with --layers")
    else:
        from seis_sklearn.adapters import torch as adapter
        from seis_sklearn.adapters.torch.transforms import from_spec

        model = _load_model(args)
        layers = None
        if args.layers:
            names = [n for n, _ in model.named_modules() if n]
            layers = _select(names, args.layers, str, "the model")
        elif not adapter.default_layers(model):
            raise CommandError(
                "the model has no block and no Conv/Linear module; name layers with --layers"
            )
    inputs = _load(args.inputs)
    if inputs.ndim < 2 or inputs.shape[0] < 2:
        raise CommandError(
            f"--inputs {args.inputs}: needs samples first, at least 2; got shape {inputs.shape}"
        )
    from seis_sklearn.adapters._common import check_finite_inputs

    check_finite_inputs(inputs, name=f"--inputs {args.inputs}")  # before --out is touched
    transforms = [from_spec(spec) for spec in settings["transforms"]]

    def run(args, settings, done):
        _report_model(args, settings, done, adapter, model, layers, inputs, transforms)

    return run


def _report_model(args, settings, done, adapter, model, layers, inputs, transforms):
    if args.onnx:
        where = {"providers": _providers(args.device)}
    else:
        where = {"device": args.device}
        if "select" in settings:
            text = settings["select"]
            where["select"] = int(text) if text.lstrip("-").isdigit() else text
    index, pending = {}, {}
    for t, (spec, transform) in enumerate(zip(settings["transforms"], transforms, strict=True)):
        if any(k.startswith(f"t{t:03d}-") for k in done):
            continue  # every layer of a transform finishes in the same pass
        index[spec] = t
        pending[spec] = lambda x, f=transform: f(x, layout=args.input_layout)
    if not pending:
        return

    def write(rows):  # each transform's (or pass's) rows, as soon as they are scored
        for spec in dict.fromkeys(row["transform"] for row in rows):
            mine = [row for row in rows if row["transform"] == spec]
            for row in mine:
                key = f"t{index[spec]:03d}-l{int(row['depth']):04d}"
                row = {k: (v.item() if hasattr(v, "item") else v) for k, v in row.items()}
                _write_row(args.out, key, row)
                done[key] = row
            _say(args, f"{spec}: {len(mine)} layers scored")

    budget, over_budget = settings.get("budget", ["auto", "pool"])
    where = {**where, "budget": budget, "over_budget": over_budget}
    streamed = settings["held_out"] is not None
    checkpoint = None
    with _stop_requests(graceful=streamed) as stopping:
        if streamed:
            from seis_sklearn.adapters._checkpoint import Checkpoint

            checkpoint = Checkpoint(Path(args.out) / CHECKPOINT_DIR, stopping)
            if checkpoint.start([("transformed", spec) for spec in pending]):
                _say(args, f"resuming the pass from the statistics saved in {args.out}")
        # the unfinished transforms together: their passes share the original inputs' runs
        with _model_failures(args):
            _run_report(adapter, model, inputs, pending, layers, settings, args,
                        {**where, "on_rows": write, "checkpoint": checkpoint})  # fmt: skip
        if stopping():  # asked while the last rows were written: every row is kept
            raise KeyboardInterrupt


CHECKPOINT_DIR = "checkpoint"


@contextlib.contextmanager
def _stop_requests(graceful):
    """SIGINT and SIGTERM while a report runs. ``graceful`` (a streamed pass): the first
    one only asks to stop, and says so at once on stderr — the pass saves its statistics
    at the next batch, or, once the pass is over, after the layer being fitted (with the
    rows of the layers fitted: docs/cli.rst, "Nothing lost, nothing clobbered"), and raises
    KeyboardInterrupt — and a second one stops at once; otherwise both raise
    KeyboardInterrupt at once (finished transforms are written already). Yields the
    function that says whether a stop was asked for."""
    import signal

    asked = []

    def on_signal(signum, _frame):
        if graceful and not asked:
            asked.append(signum)
            # os.write: the main thread may be inside a write to sys.stderr
            os.write(2, (
                f"seis report: {signal.Signals(signum).name} received: stopping at the next "
                "batch of the pass, or after the layer being fitted, with what is done saved "
                "for --resume (a second signal stops at once)\n"
            ).encode())  # fmt: skip
            return
        raise KeyboardInterrupt

    previous = {}
    try:
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, on_signal)
    except ValueError:  # pragma: no cover - not the main thread: leave the handlers
        pass
    try:
        yield lambda: bool(asked)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _model_option(args):
    """The option that named the model, for messages: ``--model nets.py:build`` …"""
    for name in ("model", "exported", "torchscript", "onnx"):
        if getattr(args, name, None):
            return f"--{name} {getattr(args, name)}"
    return "the model"


@contextlib.contextmanager
def _model_failures(args):
    """The model's own forward failing, as one line naming the option that gave it."""
    from seis_sklearn.adapters.torch import ForwardError

    try:
        yield
    except ForwardError as exc:
        raise CommandError(f"{_model_option(args)}: {exc}") from exc


def _run_report(adapter, model, inputs, pending, layers, settings, args, where):
    """The adapter's layerwise report of the unfinished transforms."""
    return adapter.layerwise_seis(
        model,
        inputs,
        pending,
        layers=layers,
        held_out=settings["held_out"],
        batch_size=args.batch_size,
        progress=_progress(not args.quiet),
        metrics=settings["metrics"],
        tokens=settings["tokens"][0],
        n_prefix=settings["tokens"][1],
        **where,
        **settings["statistics"],
        **settings["seis"],
    )


def _providers(device):
    """onnxruntime providers for --device (cpu, cuda or cuda:N); None: the default."""
    if device is None:
        return None
    if device == "cpu":
        return ["CPUExecutionProvider"]
    kind, _, index = device.partition(":")
    if kind != "cuda" or (index and not index.isdigit()):
        raise CommandError(f"--device {device!r}: expected cpu, cuda or cuda:N")
    cuda = ("CUDAExecutionProvider", {"device_id": int(index or 0)})
    return [cuda, "CPUExecutionProvider"]


@contextlib.contextmanager
def _user_code(option, what):
    """Any exception of the user's model code as one line naming it (--debug: traceback)."""
    try:
        yield
    except CommandError:
        raise
    except SystemExit as exc:  # sys.exit() in the user's code: not the end of `seis`
        raise CommandError(f"--model {option}: {what} (it called sys.exit({exc.code!r}))") from exc
    except Exception as exc:  # noqa: BLE001 - user code may raise anything
        where = ""
        if isinstance(exc, SyntaxError) and exc.lineno:
            where = f" at line {exc.lineno}"
        raise CommandError(
            f"--model {option}: {what}{where} ({type(exc).__name__}: {first_line(exc)})"
        ) from exc


def _zip_names(path, *endings):
    """Whether ``path`` is a zip archive with a member ending in each of ``endings``."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (OSError, zipfile.BadZipFile, ValueError):
        return False
    return all(any(n.endswith(end) for n in names) for end in endings)


def _is_torchscript(path):
    """Whether ``path`` is a zip archive laid out as ``torch.jit.save`` writes one."""
    return _zip_names(path, "/constants.pkl") and _zip_names(path, ".py")


def _torch_reason(exc):
    """First line of torch's error about a file, less its advice on corrupt checkpoints."""
    return first_line(exc).split(". This is an internal miniz error")[0]


def _load_exported(path, torch):
    from seis_sklearn.adapters.torch._export import load_exported, static_batch

    try:
        program, module = load_exported(path, torch)
    except Exception as exc:  # torch raises many types for a bad file
        if _is_torchscript(path):
            raise CommandError(
                f"--exported {path}: a TorchScript model, not a torch.export program; pass "
                f"it as --torchscript {path}"
            ) from exc
        raise CommandError(
            f"--exported {path}: not a loadable torch.export program ({_torch_reason(exc)})"
        ) from exc
    fixed = static_batch(program)
    if fixed is not None:
        raise CommandError(
            f"--exported {path}: exported with a fixed batch size of {fixed}; the report runs "
            "batches of other sizes — export with a dynamic batch dimension: "
            "torch.export.export(model, (x,), dynamic_shapes=({0: torch.export.Dim('batch')},))"
        )
    return module


def _load_model(args):
    from seis_sklearn.adapters.torch import _import_torch

    torch = _import_torch()
    if args.exported:
        return _load_exported(args.exported, torch)
    if args.torchscript:
        from seis_sklearn.adapters.torch._script import torchscript_deprecations

        try:
            with torchscript_deprecations():  # deprecated in torch >= 2.10, still what .pt is
                return torch.jit.load(args.torchscript, map_location="cpu")
        except (RuntimeError, ValueError) as exc:
            if _zip_names(args.torchscript, "/archive_format"):  # torch.export.save's
                raise CommandError(
                    f"--torchscript {args.torchscript}: a torch.export program, not a "
                    f"TorchScript model; pass it as --exported {args.torchscript}"
                ) from exc
            raise CommandError(
                f"--torchscript {args.torchscript}: not a loadable TorchScript model "
                f"({_torch_reason(exc)})"
            ) from exc
    module_text, _, function = args.model.rpartition(":")
    if not module_text or not function:
        raise CommandError(f"--model {args.model!r}: expected MODULE:FUNCTION or FILE.py:FUNCTION")
    if module_text.endswith(".py"):
        path = Path(module_text)
        if not path.is_file():
            raise CommandError(f"--model {args.model}: no such file {path}")
        spec = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(spec)
        with _user_code(args.model, f"{path} failed to load"):
            spec.loader.exec_module(module)
    else:
        with _user_code(args.model, f"cannot import {module_text}"):
            module = importlib.import_module(module_text)
    build = getattr(module, function, None)
    if not callable(build):
        raise CommandError(f"--model {args.model}: {module_text} has no function {function!r}")
    with _user_code(args.model, f"{function}() failed"):
        model = build()
    if not isinstance(model, torch.nn.Module):
        raise CommandError(
            f"--model {args.model}: returned a {type(model).__name__}, not a module"
        )
    if args.weights:
        try:
            with warnings.catch_warnings():  # torch warns about pickles it then refuses
                warnings.simplefilter("ignore")
                state = torch.load(args.weights, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises many types for a bad or unsafe file
            raise CommandError(
                f"--weights {args.weights}: not a loadable state dict (loaded with "
                f"weights_only=True: no code is unpickled) ({first_line(exc)})"
            ) from exc
        if isinstance(state, dict) and "state_dict" in state:
            state = state["state_dict"]
        try:
            model.load_state_dict(state)
        except (RuntimeError, TypeError, AttributeError) as exc:
            raise CommandError(
                f"--weights {args.weights}: does not fit the model ({first_line(exc)})"
            ) from exc
    return model


def _finish_report(args, frame, settings):
    from .report import save_report

    for column in ("remedy", "degenerate_reason", "matricization_choice", "layout_choice"):
        if column in frame:  # the library's reasons, naming the command line's options
            frame[column] = [_cli_text(v, subject=False) if isinstance(v, str) else v
                             for v in frame[column]]  # fmt: skip
    csv_path, png_path = save_report(frame, args.out, title=args.title)
    run_file = Path(args.out) / RUN_FILE
    record = {"status": "finished", "fingerprint": _fingerprint(settings), "settings": settings}
    atomic_write(run_file, (json.dumps(record, indent=1, default=str) + "\n").encode())
    columns = ["transform", "depth", "layer", "equivariance", "invariance", "evaluation",
               "layout", "shape"]  # fmt: skip
    table = frame[columns].copy()
    table["degenerate"] = [  # the flag and its reason beside the numbers
        f"yes: {why}" if flag is True or flag in ("True", "true") else "no"
        for flag, why in zip(frame["degenerate"], frame["degenerate_reason"], strict=True)
    ]
    print(table.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    _say(args, f"wrote {csv_path} and {png_path}")


def _bar(total, unit, enabled):
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover - tqdm comes with the torch extra
        return None
    return tqdm(total=total, unit=unit, file=sys.stderr, leave=False)


# ------------------------------------------------------------------ seis demo


def cmd_demo(args):
    try:
        from seis_sklearn.adapters.torch import demo
    except ImportError as exc:
        raise CommandError(f"{exc}") from exc
    folder = Path(args.out)
    finished = [o for o in OUTPUTS if (folder / o).exists()]
    if finished and not args.force:
        raise CommandError(
            f"--out {folder}: already holds {', '.join(finished)}; pass --force to overwrite"
        )
    # a line per epoch, flushed: the progress shows in a pipe or a file as it happens
    log = (lambda m: None) if args.quiet else (lambda m: print(m, file=sys.stderr, flush=True))
    table = demo.run(folder, epochs=args.epochs, progress=_progress(not args.quiet), log=log)
    print(demo.format_table(table.sort_values(["model", "depth"], kind="stable")))
    _say(args, f"wrote {folder / 'report.csv'} and {folder / 'layers.png'}")
    return EXIT_OK


def cmd_paper(args):
    try:
        from seis_sklearn.adapters.torch import paper
    except ImportError as exc:
        raise CommandError(f"{exc}") from exc
    folder = Path(args.out)
    if folder.exists() and not folder.is_dir():
        raise CommandError(f"--out {folder}: exists and is not a folder")
    finished = [o for o in PAPER_OUTPUTS if (folder / o).exists()]
    if finished and not args.force:
        raise CommandError(
            f"--out {folder}: already holds {', '.join(finished)}; pass --force to overwrite"
        )
    log = (lambda message: None) if args.quiet else (lambda m: print(m, file=sys.stderr))
    table = paper.run(folder, epochs=args.epochs, n_train=args.images,
                      seeds=range(args.seeds), log=log)  # fmt: skip
    print(paper.format_claims(table), end="")
    _say(args, f"wrote {folder / 'claims.md'}, claims.csv, effects_by_seed.csv, scores.csv, "
               "tracking.csv, measures.csv, measures_agreement.csv, figures")  # fmt: skip
    return EXIT_OK


# ------------------------------------------------------------------ entry point


COMMANDS = {"score": cmd_score, "report": cmd_report, "demo": cmd_demo, "paper": cmd_paper}


def main(argv=None):
    """Run the ``seis`` command line.

    Parameters
    ----------
    argv : list of str, optional
        Arguments (default ``sys.argv[1:]``).

    Returns
    -------
    int
        The exit status: 0 success, 1 failure, 2 usage error, 130 interrupted.
    """
    parser = build_parser()
    try:
        args = _parse(parser, argv)
    except SystemExit as exc:  # --help, --version (0) and usage errors (2)
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    from ._moments import InputFiles

    try:
        with (
            exit_on_bus_error(f"seis {args.command}: error: ", lambda: InputFiles.reading),
            _cli_warnings(args.command),
        ):
            status = COMMANDS[args.command](args)
        sys.stdout.flush()  # a full disk or device behind stdout fails here, not at exit
        return status
    except BrokenPipeError:
        raise  # the reader went away (``| head``): console() exits quietly
    except KeyboardInterrupt:
        kept = f"; {_kept_after_stop(args.out)}" if args.command == "report" else ""
        print(f"seis: interrupted{kept}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (CommandError, ValueError, TypeError, OSError, RuntimeError, ImportError) as exc:
        if args.debug:
            raise
        text = first_line(exc)  # the library's words in the options (ours are already)
        text = text if isinstance(exc, CommandError) else _cli_text(text)
        print(f"seis {args.command}: error: {text}", file=sys.stderr)
        _drop_stdout()
        return EXIT_FAILURE


def _kept_after_stop(out):
    """What an interrupted report left in ``out`` for --resume, read from what is there:
    the finished layers' rows and the checkpoint of an unfinished pass (its manifest is
    written last, so a checkpoint is counted only once it is whole)."""
    if not out:
        return "nothing is kept"
    folder = Path(out)
    n_rows = len(list((folder / ROWS_DIR).glob("*.json"))) if (folder / ROWS_DIR).is_dir() else 0
    saved = None
    with contextlib.suppress(OSError, ValueError):
        saved = json.loads((folder / CHECKPOINT_DIR / "checkpoint.json").read_text())
    parts = []
    if n_rows:
        parts.append(f"{n_rows} finished layer results")
    if isinstance(saved, dict) and saved.get("views"):
        views = ", ".join(saved["views"])
        if saved.get("pass_finished"):
            fitted = sum(len(v.get("rows", [])) for v in saved["views"].values())
            parts.append(
                f"the statistics of the whole pass over {saved['position']} samples ({views}) "
                f"and the rows of the {fitted} layers fitted after it: --resume fits the rest"
            )
        else:
            parts.append(
                f"the statistics of the unfinished pass ({views}) over its first "
                f"{saved['position']} samples: --resume streams the rest"
            )
    elif (folder / RUN_FILE).is_file():
        parts.append("no statistics of an unfinished pass (none saved): --resume redoes it")
    if not parts:
        return "nothing is kept"
    return f"kept in {out} (--resume): " + "; ".join(parts)


def _drop_stdout():
    """After a failed write, nothing more may reach stdout (not even at exit)."""
    try:
        sys.stdout.flush()
    except OSError:
        with contextlib.suppress(OSError, ValueError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def console():  # pragma: no cover - the installed ``seis`` script; tests call main()
    """Entry point of the ``seis`` console script."""
    with contextlib.suppress(BrokenPipeError):
        status = main()
        sys.stdout.flush()
        sys.exit(status)
    # stdout closed early (e.g. ``seis score ... | head``): exit quietly
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    sys.exit(EXIT_FAILURE)
