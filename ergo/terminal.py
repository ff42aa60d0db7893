"""The terminal chat (`python main.py --chat`): keeps the conversation, takes a few commands.

On a terminal it shows a prompt; from a pipe it writes exactly one line per message and nothing
else on stdout (command feedback and errors go to stderr), so `cat questions.txt | main.py --chat`
gives one reply per line.
"""
from __future__ import annotations

import sys
from typing import TextIO

from .chatbot import SETTINGS, Chatbot, check_settings
from .errors import ErgoError

HELP = """commands:
  /reset             start a new conversation
  /set NAME=VALUE    change a reply setting, e.g. /set decoder=sample  /set temperature=0.7
  /settings          show every setting and its value
  /help              this help
  /quit              leave (end of input and Ctrl-C too)"""
KEEP_TURNS = 20  # turns remembered; the model sees the last few (its context window)


def chat(bot: Chatbot, stdin: TextIO | None = None, stdout: TextIO | None = None, stderr: TextIO | None = None,
         settings: dict | None = None) -> int:
    """Talk with `bot` until /quit or end of input; `settings` are the starting overrides. Returns 0."""
    stdin, stdout, stderr = stdin or sys.stdin, stdout or sys.stdout, stderr or sys.stderr
    interactive = stdin.isatty()
    notes = stdout if interactive else stderr
    chosen = dict(settings or {})
    check_settings(chosen)
    history: list[str] = []
    if interactive:
        print(f"ErGo: chatting with {bot.name}. /help lists the commands.", file=stdout)
    try:
        while True:
            if interactive:
                stdout.write("you> ")
                stdout.flush()
            line = stdin.readline()
            if not line:
                break
            line = line.strip()
            if not line:
                continue
            if line.startswith("/"):
                if _command(line, history, chosen, notes) == "quit":
                    break
                continue
            try:
                reply = bot.reply(history + [line], **chosen)
            except ErgoError as e:
                print(f"error: {e}", file=notes, flush=True)
                if not interactive:
                    print("", file=stdout, flush=True)  # keep one output line per input line
                continue
            history[:] = (history + [line, reply.text])[-KEEP_TURNS:]
            print(("bot> " if interactive else "") + reply.text, file=stdout, flush=True)
    except KeyboardInterrupt:
        print("", file=notes)
    return 0


def _command(line: str, history: list[str], chosen: dict, notes: TextIO) -> str | None:
    name, _, arg = line[1:].partition(" ")
    if name in ("quit", "exit", "q"):
        return "quit"
    if name == "reset":
        history.clear()
        print("(new conversation)", file=notes)
    elif name == "help":
        print(HELP, file=notes)
    elif name == "settings":
        for key, value in check_settings(chosen).items():
            print(f"  {key} = {value}", file=notes)
    elif name == "set":
        try:
            key, value = _parse_setting(arg)
            check_settings({**chosen, key: value})
        except ErgoError as e:
            print(f"error: {e}", file=notes)
        else:
            chosen[key] = value
            print(f"({key} = {value})", file=notes)
    else:
        print(f"unknown command /{name}; /help lists the commands", file=notes)
    notes.flush()
    return None


def _parse_setting(arg: str):
    key, sep, text = arg.partition("=")
    key, text = key.strip(), text.strip()
    if not sep or key not in SETTINGS:
        raise ErgoError(f"use /set NAME=VALUE with NAME one of: {', '.join(SETTINGS)}")
    kind = SETTINGS[key][0]
    try:
        return key, kind(text)
    except ValueError:
        raise ErgoError(f"setting {key!r} must be {SETTINGS[key][3]}, not {text!r}") from None
