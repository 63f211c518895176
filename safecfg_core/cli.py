"""``python -m safecfg_core <command>``: one entry point, one module per subcommand.

Command modules are collected, not hard-wired, so each engineer's command lives in its own file and a broken
one cannot take the others down. A command module defines::

    COMMAND = "name"                      # the subcommand
    HELP = "one line for --help"
    def add_arguments(parser: argparse.ArgumentParser) -> None: ...
    def run(args: argparse.Namespace) -> int: ...   # exit status

and is found either as ``safecfg_core/cli_<name>.py`` (discovered automatically) or through
:data:`EXTRA_COMMAND_MODULES` (for modules named otherwise, e.g. ``bench.py`` or ``demo/cli.py``). A module
that fails to import still shows up in ``--help`` as "unavailable: <why>", and running it prints the error.

Models for ``--model`` come from :data:`MODEL_LOADERS` (name -> ``"module:function"``, imported lazily); the
function returns a *model setup* with the attributes of :class:`safecfg_core.analytic.ModelSetup` (``text_encoder``,
``denoiser``, ``hgr_config``, ``concepts``, ``clean_prompts``, ``harmful_prompts``, ``negative_prompt``,
``cfg_scale``, ``sample_latents``). The demo model adds itself with one entry (or :func:`register_model`).
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import pkgutil
import shlex
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Union

PACKAGE = __name__.rsplit(".", 1)[0]

EXTRA_COMMAND_MODULES: Dict[str, str] = {
    "bench": ".bench",
    "demo": ".demo.cli",
    "eval": ".demo.eval_cli",
}
"""Subcommands whose module is not named ``cli_<name>.py`` (relative to this package, or absolute); listed
only if the module exists."""

MODEL_LOADERS: Dict[str, Union[str, Callable[[], Any]]] = {
    "analytic": ".analytic:load_analytic_setup",
    "demo": ".demo.train_hgr:load_demo_setup",
}
"""``--model`` choices: name -> ``"module:function"`` (relative to this package) or a callable."""


def register_model(name: str, loader: Union[str, Callable[[], Any]]) -> None:
    """Add a ``--model`` choice (e.g. ``register_model("demo", ".demo.train_hgr:load_demo_setup")``)."""
    MODEL_LOADERS[name] = loader


def load_model_setup(name: str) -> Any:
    """Build the model setup for ``--model name``; a clear SystemExit if it is unknown or cannot load."""
    if name not in MODEL_LOADERS:
        raise SystemExit(f"error: unknown model {name!r}; choose one of: {', '.join(sorted(MODEL_LOADERS))}")
    loader = MODEL_LOADERS[name]
    try:
        if isinstance(loader, str):
            mod_name, func = loader.split(":")
            loader = getattr(importlib.import_module(mod_name, PACKAGE), func)
        return loader()  # type: ignore[operator]
    except SystemExit:
        raise
    except Exception as exc:
        raise SystemExit(f"error: model {name!r} could not be loaded: {type(exc).__name__}: {exc}") from exc


@dataclass
class CommandSpec:
    name: str
    module: str
    help: str = ""
    add_arguments: Optional[Callable[[argparse.ArgumentParser], None]] = None
    run: Optional[Callable[[argparse.Namespace], int]] = None
    error: Optional[str] = None


def _module_exists(name: str) -> bool:
    """Whether a command module is there at all (without importing it): relative names are looked up as files."""
    if not name.startswith("."):
        try:
            return importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):
            return False
    parts = name.lstrip(".").split(".")
    base = Path(__file__).resolve().parent.joinpath(*parts)
    return base.with_suffix(".py").exists() or (base / "__init__.py").exists()


def discover_commands() -> List[CommandSpec]:
    """All subcommands: ``cli_*.py`` modules plus existing :data:`EXTRA_COMMAND_MODULES`; import errors kept."""
    pkg_dir = str(Path(__file__).resolve().parent)
    candidates: Dict[str, str] = {}
    for info in pkgutil.iter_modules([pkg_dir]):
        if info.name.startswith("cli_"):
            candidates[info.name[4:]] = "." + info.name
    for name, mod in EXTRA_COMMAND_MODULES.items():
        if name not in candidates and _module_exists(mod):
            candidates[name] = mod
    specs = []
    for name, mod in sorted(candidates.items()):
        spec = CommandSpec(name=name, module=mod)
        try:
            module = importlib.import_module(mod, PACKAGE)
            spec.name = getattr(module, "COMMAND", name)
            spec.help = getattr(module, "HELP", (module.__doc__ or "").strip().split("\n")[0])
            spec.add_arguments = getattr(module, "add_arguments", None)
            spec.run = getattr(module, "run", None)
            if spec.run is None:
                spec.error = f"module {PACKAGE}{mod} defines no run(args) function"
        except Exception as exc:  # a broken command must not break the others
            spec.error = f"{type(exc).__name__}: {exc}"
            spec.traceback = traceback.format_exc()  # type: ignore[attr-defined]
        specs.append(spec)
    return specs


def build_parser(specs: Optional[Sequence[CommandSpec]] = None) -> argparse.ArgumentParser:
    specs = discover_commands() if specs is None else specs
    parser = argparse.ArgumentParser(
        prog="python -m safecfg_core",
        description="SafeCFG core tools: train and use a Harmful Guidance Redirector (HGR) outside ComfyUI.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for spec in specs:
        if spec.error:
            p = sub.add_parser(spec.name, help=f"(unavailable: {spec.error})", add_help=True)
            p.set_defaults(_spec=spec)
            continue
        p = sub.add_parser(spec.name, help=spec.help, description=spec.help)
        if spec.add_arguments is not None:
            spec.add_arguments(p)
        p.set_defaults(_spec=spec)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    spec: Optional[CommandSpec] = getattr(args, "_spec", None)
    if spec is None:
        parser.print_help()
        return 2
    if spec.error:
        print(f"error: the '{spec.name}' command is unavailable: {spec.error}", file=sys.stderr)
        tb = getattr(spec, "traceback", None)
        if tb:
            print(tb, file=sys.stderr)
        return 2
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    assert spec.run is not None
    # the command line as typed, for files that record how they were made (an HGR's training metadata)
    args.command_line = " ".join(["python -m safecfg_core", *map(shlex.quote, sys.argv[1:] if argv is None else argv)])
    return int(spec.run(args) or 0)


__all__ = ["EXTRA_COMMAND_MODULES", "MODEL_LOADERS", "CommandSpec", "build_parser", "discover_commands",
           "load_model_setup", "main", "register_model"]
