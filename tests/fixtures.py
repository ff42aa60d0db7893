"""Small corpora of our own making, written in the exact formats of the real ones."""
from __future__ import annotations

import json
import random
from pathlib import Path

CORNELL_SEP = " +++$+++ "

# (line id, character id, character name, text) - Cornell stores lines out of order.
CORNELL_LINES = [
    ("L197", "u2", "CAMERON", "Forget it."),
    ("L194", "u0", "BIANCA", "Can we make this quick?  Roxanne Korrine and Andrew Barrett are having an incredibly horrendous public break- up on the quad.  Again."),
    ("L196", "u0", "BIANCA", "Let's go."),
    ("L195", "u2", "CAMERON", "Well, I thought we'd start with pronunciation, if that's okay with you."),
    ("L198", "u0", "BIANCA", "You're asking me out.  That's so cute. What's your name again?"),
    ("L199", "u2", "CAMERON", "Où est la fête? Déjà vu, señor."),  # non-ASCII, stored as ISO-8859-1
    ("L200", "u0", "BIANCA", ""),                                  # an empty utterance, as in the real file
]
CORNELL_CONVERSATIONS = [
    ("u0", "u2", "m0", "['L194', 'L195', 'L196', 'L197']"),
    ("u0", "u2", "m0", "['L198', 'L199', 'L200']"),
]


def write_cornell(folder: Path, extra_lines: list[str] = (), extra_conversations: list[str] = ()) -> Path:
    """movie_lines.txt + movie_conversations.txt inside 'cornell movie-dialogs corpus/', as in the zip."""
    inner = Path(folder) / "cornell movie-dialogs corpus"
    inner.mkdir(parents=True, exist_ok=True)
    lines = [CORNELL_SEP.join((lid, uid, "m0", name, text)) for lid, uid, name, text in CORNELL_LINES]
    convs = [CORNELL_SEP.join(c) for c in CORNELL_CONVERSATIONS]
    (inner / "movie_lines.txt").write_bytes(("\n".join(lines + list(extra_lines)) + "\n").encode("iso-8859-1"))
    (inner / "movie_conversations.txt").write_bytes(
        ("\n".join(convs + list(extra_conversations)) + "\n").encode("iso-8859-1"))
    return Path(folder)


def write_ubuntu_v1(folder: Path) -> Path:
    """dialogs/<n>/<id>.tsv: time, sender, recipient, text; the same sender twice in a row is one turn."""
    d = Path(folder) / "dialogs" / "3"
    d.mkdir(parents=True, exist_ok=True)
    (d / "1.tsv").write_text(
        "2004-11-23T11:49:00.000Z\tstuNNed\t\tany ideas why java plugin takes so long to load?\n"
        "2004-11-23T11:49:07.000Z\tcrimsun\tstuNNed\tjava 1.4?\n"
        "2004-11-23T11:49:26.000Z\tstuNNed\tcrimsun\tyes\n"
        "2004-11-23T11:49:35.000Z\tstuNNed\tcrimsun\tit's java 1.4.2\n"
        "2004-11-23T11:49:50.000Z\tcrimsun\tstuNNed\ttry the 1.5 beta, it loads faster\n", encoding="utf-8")
    (d / "2.tsv").write_text(
        "2005-01-02T10:00:00.000Z\talice\t\thow do i mount a usb stick?\n"
        "this line is malformed\n"
        "2005-01-02T10:00:10.000Z\tbob\talice\tsudo mount /dev/sdb1 /mnt\n", encoding="utf-8")
    return Path(folder)


UBUNTU_V2_TRAIN = (
    "Context,Utterance,Label\n"
    '"i think we could import the old comments via rsync , but from there we need to go via email . '
    '__eou__ __eot__ that \'s a good idea __eou__ i \'ll do it __eou__ __eot__","ok thanks __eou__",1\n'
    '"hi __eou__ __eot__ hello __eou__ __eot__","this is a distractor __eou__",0\n'
    '"how do i install vim ? __eou__ __eot__","sudo apt-get install vim __eou__",1.0\n'
)
UBUNTU_V2_TEST = (
    "Context,Ground Truth Utterance,Distractor_0,Distractor_1\n"
    '"what is my ip ? __eou__ __eot__","run ip addr __eou__","no __eou__","maybe __eou__"\n'
)

TEXT = "hi there\nhello! how are you?\ni'm fine, thanks.\n\nwhat's your name?\nergo.\n"
TSV = "hi there\thello!\nhow are you?\tfine, thanks.\nno tab on this line\nsay\tsomething\tmore\n"
JSONL = ('{"turns": ["hi", "hello there"]}\n'
         "this is not json\n"
         '{"turns": ["how are you?", "good, and you?", "great"]}\n'
         '{"turns": "not a list"}\n')
YAML = ("categories:\n- greetings\nconversations:\n- - Hello\n  - Hi there!\n"
        "- - How are you doing?\n  - I am doing well.\n  - Glad to hear it.\n")


def chitchat_json(conversations: list[list[list[str]]]) -> str:
    """A file shaped like chitchat-dataset's dataset.json (turns of messages, one sender per turn)."""
    out = {}
    for i, conv in enumerate(conversations):
        out[f"c{i}"] = {"messages": [[{"text": t, "sender": f"s{j % 2}", "timestamp": "2018-05-02T19:38:15Z"}
                                      for t in turn] for j, turn in enumerate(conv)]}
    return json.dumps(out)


_GREETINGS = ["hi", "hello", "hey", "good morning", "hi there"]
_NAMES = ["anna", "bob", "carl", "dora", "emil", "fay", "gus", "hana"]
_FOODS = ["pizza", "pasta", "rice", "soup", "salad", "bread", "cake", "fish"]
_PLACES = ["paris", "rome", "oslo", "lima", "cairo", "tokyo", "quito", "delhi"]


def synthetic_conversations(n: int, seed: int = 0) -> list[list[str]]:
    """Patterned small talk that a tiny model can learn: replies depend on the context."""
    rng = random.Random(seed)
    convs = []
    for _ in range(n):
        name, food, place = rng.choice(_NAMES), rng.choice(_FOODS), rng.choice(_PLACES)
        g = rng.choice(_GREETINGS)
        convs.append([f"{g}!", f"{g}, i am {name}.", "what do you like to eat?", f"i like {food}.",
                      "where do you live?", f"i live in {place}.", f"{place} is nice.", "thanks, bye!"])
    return convs


def write_text_corpus(path: Path, conversations: list[list[str]]) -> Path:
    Path(path).write_text("\n\n".join("\n".join(c) for c in conversations) + "\n", encoding="utf-8")
    return Path(path)

