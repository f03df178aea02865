"""MkDocs hook: the CLI reference, generated from bertkit's argparse parser at build time.

``docs/cli.md`` holds the marker below; this hook replaces it with one section per subcommand (nested
subcommands such as ``index build`` included): its summary, usage and every argument with its default and help,
read from ``bertkit.cli.main.build_parser()``. The reference therefore cannot drift from the parser; a page
without the marker, or a parser that fails to import, fails the build.
"""

from __future__ import annotations

import argparse
import os
import re
import textwrap

from mkdocs.exceptions import PluginError

MARKER = "<!-- bertkit-cli-reference -->"
PAGE = "cli.md"
WIDTH = "100"  # argparse wraps usage lines at $COLUMNS; fixed so that the output does not depend on the terminal


def _escape(text: str) -> str:
    """Markdown-escape help text for a table cell, keeping `code spans` as they are."""
    parts = re.split(r"(`[^`]*`)", " ".join(text.split()))
    out = []
    for i, part in enumerate(parts):
        if i % 2:  # a code span: Python-Markdown's tables leave pipes inside code spans alone
            out.append(part)
        else:
            part = part.replace("\\", "\\\\").replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
            out.append(re.sub(r"([*_\[\]|#])", r"\\\1", part))
    return "".join(out)


def _code(text: str) -> str:
    return f"``{text}``" if "`" in text else f"`{text}`"


def _default(action: argparse.Action) -> str:
    d = action.default
    if d is None or d is argparse.SUPPRESS or isinstance(action, (argparse._StoreTrueAction,
                                                                    argparse._StoreFalseAction)):
        return ""
    if isinstance(d, (list, tuple)):
        if not d:
            return ""
        d = " ".join(map(str, d))
    return _code(str(d)) if str(d) != "" else "`''`"


def _subcommands(parser: argparse.ArgumentParser) -> list[tuple[str, str, argparse.ArgumentParser]]:
    """(name, one-line help, parser) for each subcommand of ``parser``, in definition order."""
    out = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help or "" for a in action._choices_actions}
            seen = set()
            for name, sub in action.choices.items():
                if id(sub) in seen:  # an alias of a subcommand already listed
                    continue
                seen.add(id(sub))
                out.append((name, helps.get(name, ""), sub))
    return out


def _arguments(parser: argparse.ArgumentParser) -> list[str]:
    lines: list[str] = []
    formatter = parser._get_formatter()
    for group in parser._action_groups:
        actions = [a for a in group._group_actions
                   if not isinstance(a, (argparse._HelpAction, argparse._SubParsersAction))
                   and a.help is not argparse.SUPPRESS]
        if not actions:
            continue
        title = group.title or ""
        title = {"positional arguments": "Arguments", "options": "Options",
                 "optional arguments": "Options"}.get(title, title[:1].upper() + title[1:])
        lines += [f"**{title}**", ""]
        if group.description:
            lines += [_escape(group.description), ""]
        lines += ["| argument | default | description |", "|---|---|---|"]
        for a in actions:
            invocation = formatter._format_action_invocation(a)
            if a.choices and not a.option_strings and a.metavar is None:
                invocation = f"{a.dest} {{{','.join(map(str, a.choices))}}}"
            elif a.choices and a.option_strings and "{" not in invocation:
                invocation += f" {{{','.join(map(str, a.choices))}}}"
            helptext = formatter._expand_help(a) if a.help else ""
            if a.required and a.option_strings:
                helptext = f"required. {helptext}" if helptext else "required"
            lines.append(f"| {_code(invocation)} | {_default(a)} | {_escape(helptext)} |")
        lines.append("")
    return lines


def _prose(parser: argparse.ArgumentParser, text: str) -> list[str]:
    """A description or epilog: as argparse prints it (a text block) where the command keeps its own line breaks,
    else one escaped paragraph."""
    if issubclass(parser.formatter_class, argparse.RawDescriptionHelpFormatter):
        return ["```text", textwrap.dedent(text).strip("\n"), "```", ""]
    return [_escape(text), ""]


def _section(name: str, helptext: str, parser: argparse.ArgumentParser, level: int) -> list[str]:
    lines = [f"{'#' * level} {parser.prog}", ""]
    if helptext:
        lines += [_escape(helptext[0].upper() + helptext[1:]) + ".", ""]
    if parser.description:
        lines += _prose(parser, parser.description)
    lines += ["```text", parser.format_usage().strip(), "```", ""]
    lines += _arguments(parser)
    if parser.epilog:
        lines += _prose(parser, parser.epilog)
    for sub_name, sub_help, sub in _subcommands(parser):
        lines += _section(sub_name, sub_help, sub, level + 1)
    return lines


def render() -> str:
    from bertkit.cli.main import build_parser

    columns = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = WIDTH
    try:
        parser = build_parser()
        lines = ["## Global options", "", "```text", parser.format_usage().strip(), "```", ""]
        lines += _arguments(parser)
        for name, helptext, sub in _subcommands(parser):
            lines += _section(name, helptext, sub, 2)
    finally:
        if columns is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = columns
    return "\n".join(lines) + "\n"


def on_page_markdown(markdown: str, page, config, files) -> str:
    if page.file.src_uri != PAGE:
        return markdown
    if MARKER not in markdown:
        raise PluginError(f"docs/{PAGE} lost its marker {MARKER!r}; the CLI reference has nowhere to go")
    try:
        reference = render()
    except Exception as e:  # an import error in a half-edited CLI module: fail the build, naming it
        raise PluginError(f"cannot build the CLI reference from bertkit.cli.main.build_parser(): {e!r}") from e
    return markdown.replace(MARKER, reference)
