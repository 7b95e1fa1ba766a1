"""The command line's parser: argparse whose usage mistakes are one-line UsageErrors (exit code 2) that name
the closest option or value, like every other error of the command line."""

from __future__ import annotations

import argparse
import difflib
import re
import sys

from onnxattr.errors import UsageError


class HintingParser(argparse.ArgumentParser):
    """argparse whose usage mistakes become one-line UsageErrors (exit code 2), like every other error."""

    hint = ""

    def error(self, message):
        about_options = message.startswith(("unrecognized arguments", "the following arguments are required"))
        hint = self.hint if about_options else ""
        choice = re.search(r"invalid choice: '([^']*)' \(choose from (.*)\)", message)
        if choice:  # a value outside an option's choices (a colour map, a device): the closest one
            close = difflib.get_close_matches(choice.group(1), re.findall(r"[\w.-]+", choice.group(2)), n=1,
                                              cutoff=0.7)
            hint = f"; did you mean {close[0]}?" if close else ""
        raise UsageError(f"{message}{hint} (see `{self.prog} --help`)")

    def parse_args(self, args=None, namespace=None):
        """As argparse, but an unknown option is named with the closest option of its command (or the
        commands it belongs to), also when argparse stops first at a required option (``--ot`` for
        ``--out``)."""
        argv = sys.argv[1:] if args is None else list(args)
        command = next((w for w in argv if w in self.commands), None)

        options = {c: [o for act in p._actions for o in act.option_strings if o.startswith("--")]
                   for c, p in [(None, self), *self.commands.items()]}  # long options of each command
        known = options[command]
        everywhere = sorted({o for opts in options.values() for o in opts})
        hints = {}  # unknown option -> its likely meaning
        for word in argv:
            name = word.split("=", 1)[0]
            if name.startswith("--") and name != "--" and name not in hints \
                    and not any(k.startswith(name) for k in known):  # argparse takes prefixes
                owners = [c for c, opts in options.items()
                          if c not in (None, command) and any(o.startswith(name) for o in opts)]
                close = difflib.get_close_matches(name, everywhere, n=1, cutoff=0.6)
                if owners and command:  # another command's option (or its prefix) before a look-alike
                    hints[name] = f"an option of {', '.join(owners)}, not {command}"
                elif close and close[0] in known:
                    hints[name] = f"did you mean {close[0]}?"
                elif close and command:
                    of = ", ".join(c for c, opts in options.items() if c is not None and close[0] in opts)
                    hints[name] = f"did you mean {close[0]}? (an option of {of}, not {command})"
        hints = list(hints.items())
        if len(hints) == 1 and hints[0][1].startswith("did"):
            hint = "; " + hints[0][1]
        else:
            hint = "".join(f"; {name}: {what}" for name, what in hints)
        for p in (self, *self.commands.values()):
            p.hint = hint
        ns, extras = self.parse_known_args(argv, namespace)
        if extras:
            self.commands.get(command, self).error(f"unrecognized arguments: {' '.join(extras)}")
        return ns
