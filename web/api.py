"""The JSON API: chat (whole, or streamed as server-sent events), regenerate, history, reset, feedback,
settings, stats.

The routes sit on a module-level blueprint and find what they serve in `current_app.extensions["ergo"]`
(a Services, which web.app.create_app makes). The conversation id and its bundle sit in Flask's signed
session cookie; the turns sit in Redis, which is where the bot's context comes from, so any worker answers
any turn. When Redis fails (unreachable, out of memory, unable to write its files, ...) the chat still
replies, marked "degraded" and without context if it could not be read; what needs the stored conversation
says 503 (one error handler).
"""
from __future__ import annotations

import json
import logging
import math
import re
import secrets
import threading
from dataclasses import dataclass, field

from flask import Blueprint, Response, abort, current_app, jsonify, request, session, stream_with_context

from ergo.chatbot import AVOID_TURNS, SETTINGS, check_settings, choices_of
from ergo.errors import ErgoError

from . import metrics
from .bundles import Bundles, Served
from .config import WebConfig
from .store import ConversationStore, StoreUnavailable

log = logging.getLogger("ergo.web")
CID = re.compile(r"^[A-Za-z0-9_-]{24}$")
VOTES = ("up", "down")

api = Blueprint("api", __name__, url_prefix="/api")


@dataclass
class Services:
    """What the routes of one worker use."""

    bundles: Bundles
    store: ConversationStore
    config: WebConfig
    model_lock: threading.Lock = field(default_factory=threading.Lock)  # one reply at a time: the model
    # already uses the cores
    failing: str | None = None  # the kind of the Redis failure last logged, until a turn is kept again

    def store_failed(self, e: StoreUnavailable) -> None:
        """Count every failure; log each kind once (a race may log it twice), not once a request."""
        metrics.REDIS_ERRORS.inc()
        if self.failing != e.kind:
            self.failing = e.kind
            log.warning("Redis failed (%s): replies are degraded, and not kept, until it is back", e)

    def store_ok(self) -> None:
        if self.failing is not None:
            self.failing = None
            log.warning("Redis is back: conversations are kept")


def services() -> Services:
    return current_app.extensions["ergo"]


@api.errorhandler(StoreUnavailable)
def store_unavailable(e: StoreUnavailable):
    services().store_failed(e)
    return jsonify(error="the conversation store is unreachable; try again in a moment"), 503


def conversation_id(new: bool = False) -> str:
    """This client's conversation id, from the signed cookie; a fresh random one when absent or asked."""
    cid = session.get("cid")
    if new or not isinstance(cid, str) or not CID.match(cid):
        cid = secrets.token_urlsafe(18)
        session["cid"] = cid
        session.pop("bundle", None)  # a new conversation gets its bundle when it needs one
    session.permanent = True  # the cookie lives as long as the conversation's TTL, renewed on use
    return cid


def conversation_bundle() -> Served:
    """The bundle answering this client's conversation: the one it was assigned, while it is served; else
    the next of the traffic split's sequence, kept in the cookie from now on."""
    bundles = services().bundles
    served = bundles.get(session.get("bundle"))
    if served is None:
        served = bundles.assign()
        session["bundle"] = served.name
    return served


def json_body(known: tuple[str, ...]) -> dict:
    """The request's JSON object, with no fields but `known`; anything else is a 400 that says why."""
    if not request.is_json:
        abort(400, "send a JSON object with Content-Type: application/json")
    try:
        body = json.loads(request.get_data())  # past MAX_CONTENT_LENGTH this is a 413, nothing read
    except (ValueError, RecursionError):  # RecursionError: nesting too deep for the parser
        abort(400, "the request body is not valid JSON")
    if not isinstance(body, dict):
        abort(400, "the request body must be a JSON object")
    unknown = sorted(set(body) - set(known))
    if unknown:
        abort(400, f"unknown field {unknown[0]!r}; known: {', '.join(known) or 'none'}")
    return body


def settings_from(body: dict) -> dict:
    settings = body.get("settings", {})
    if not isinstance(settings, dict):
        abort(400, "settings must be a JSON object of name: value")
    try:
        return check_settings(settings)
    except ErgoError as e:
        abort(400, str(e))


def message_from(body: dict) -> str:
    message = body.get("message")
    if message is None:
        abort(400, "message is required")
    if not isinstance(message, str):
        abort(400, "message must be a string")
    message = message.strip()
    if not message:
        abort(400, "message is empty")
    limit = services().config.max_message_chars
    if len(message) > limit:
        abort(400, f"message is too long: {len(message)} characters, at most {limit}")
    return message


def sse(event: str, data: dict) -> str:
    """One server-sent event (data on one line: JSON escapes every newline)."""
    return f"event: {event}\ndata: {json.dumps(data)}\n\n"


def settings_catalogue() -> list[dict]:
    """SETTINGS for the page's panel, each with the choices a web client may give where they are few."""
    out = []
    for name, (kind, default, _, valid) in SETTINGS.items():
        item = {"name": name, "type": kind.__name__, "default": default, "description": valid}
        if (choices := choices_of(name)) is not None:
            item["choices"] = choices
        out.append(item)
    return out


@dataclass
class Turn:
    """A chat request, read: what was said, how to reply, and to which conversation."""

    message: str
    settings: dict
    cid: str
    served: Served
    context: list[str]  # the stored turns a reply needs
    degraded: bool      # Redis could not give them

    @classmethod
    def read(cls) -> Turn:
        body = json_body(("message", "settings"))
        message, settings = message_from(body), settings_from(body)
        cid, served = conversation_id(), conversation_bundle()
        # the turns a reply may not repeat (they hold the context window, and spare turns should some have
        # no words: Chatbot.context skips them)
        last = max(AVOID_TURNS, 2 * served.live.bot.bundle.data_config.context_turns)
        try:
            return cls(message, settings, cid, served, [t["text"] for t in services().store.turns(cid, last=last)],
                       False)
        except StoreUnavailable as e:
            services().store_failed(e)
            return cls(message, settings, cid, served, [], True)


def reply_to(served: Served, history: list[str], settings: dict):
    """(The reply of the bundle's bot as it is now, that bot's version)."""
    live = served.live
    with services().model_lock:
        try:
            reply = live.bot.reply(history, **settings)
        except ErgoError as e:
            abort(400, str(e))
    metrics.REPLY_SECONDS.observe(reply.seconds)
    return reply, live.version


def bot_turn(reply, served: Served, version: str) -> dict:
    score = round(reply.score, 4) if math.isfinite(reply.score) else None  # JSON has no infinity
    return {"role": "bot", "text": reply.text, "decoder": reply.decoder, "score": score,
            "bundle": served.name, "version": version}


def kept(turn: Turn, reply, version: str) -> dict:
    """Store the exchange (unless Redis already failed) -> the JSON object /api/chat answers."""
    svc, number, degraded = services(), None, turn.degraded
    if not degraded:
        try:
            number = svc.store.append(turn.cid, {"role": "user", "text": turn.message},
                                      bot_turn(reply, turn.served, version), bundle=turn.served.name,
                                      keep=svc.config.keep_for_training)
            svc.store_ok()
        except StoreUnavailable as e:
            svc.store_failed(e)
            degraded = True
    metrics.REPLIES.labels(bundle=turn.served.name, degraded=str(degraded).lower()).inc()
    if number == 2:
        metrics.CONVERSATIONS.labels(bundle=turn.served.name).inc()
    return dict(reply=reply.text, conversation_id=turn.cid, turn=number, degraded=degraded,
                bundle=turn.served.name, version=version)


@api.post("/chat")
def chat():
    turn = Turn.read()
    reply, version = reply_to(turn.served, turn.context + [turn.message], turn.settings)
    return jsonify(kept(turn, reply, version))


@api.post("/chat/stream")
def chat_stream():
    """/api/chat as server-sent events: `token` events with each piece of text as it is generated, then
    `done` with what /api/chat answers. The exchange is stored once, at the end."""
    turn = Turn.read()
    live = turn.served.live
    try:
        pieces = live.bot.reply_stream(turn.context + [turn.message], **turn.settings)
    except ErgoError as e:
        abort(400, str(e))

    def events():
        with services().model_lock:
            for piece in pieces:
                if isinstance(piece, str):
                    yield sse("token", {"text": piece})
        metrics.REPLY_SECONDS.observe(piece.seconds)
        yield sse("done", kept(turn, piece, live.version))

    return Response(stream_with_context(events()), mimetype="text/event-stream",
                    headers={"X-Accel-Buffering": "no"})  # a proxy such as nginx passes each event on


@api.post("/regenerate")
def regenerate():
    settings = settings_from(json_body(("settings",)))
    cid, served, store = conversation_id(), conversation_bundle(), services().store
    turns = store.turns(cid)
    if len(turns) < 2 or turns[-1]["role"] != "bot":
        abort(409, "there is no reply to regenerate")
    reply, version = reply_to(served, [t["text"] for t in turns[:-1]], settings)
    n = turns[-1]["n"]
    if not store.replace_last(cid, n, bot_turn(reply, served, version)):
        abort(409, "the conversation moved on meanwhile; reload it and try again")
    metrics.REPLIES.labels(bundle=served.name, degraded="false").inc()
    return jsonify(reply=reply.text, conversation_id=cid, turn=n, degraded=False, bundle=served.name,
                   version=version)


@api.get("/history")
def history():
    cid, svc = conversation_id(), services()
    bundle = session.get("bundle") if svc.bundles.get(session.get("bundle")) else None
    try:
        turns = svc.store.turns(cid, votes=True)
    except StoreUnavailable as e:
        svc.store_failed(e)
        return jsonify(conversation_id=cid, bundle=bundle, turns=[], degraded=True)
    keep = ("role", "text", "vote")
    return jsonify(conversation_id=cid, bundle=bundle, degraded=False,
                   turns=[{"turn": t["n"], **{k: t[k] for k in keep if k in t}} for t in turns])


@api.post("/reset")
def reset():
    """A new conversation id (and so, at its first reply, a bundle); the old one is left to its TTL."""
    json_body(())  # JSON only, as every write: a cross-site form cannot send it
    return jsonify(conversation_id=conversation_id(new=True))


@api.post("/feedback")
def feedback():
    body = json_body(("turn", "vote"))
    turn, vote = body.get("turn"), body.get("vote")
    if isinstance(turn, float) and turn.is_integer():
        turn = int(turn)  # JSON has one kind of number: 2.0 is turn 2, as settings take it
    if isinstance(turn, bool) or not isinstance(turn, int) or turn < 1:
        abort(400, "turn must be a positive integer (the turn number of a reply)")
    if vote not in VOTES:
        abort(400, "vote must be \"up\" or \"down\"")
    if not services().store.vote(conversation_id(), turn, vote):
        abort(404, f"this conversation keeps no reply numbered {turn}")
    metrics.FEEDBACK.labels(bundle=session.get("bundle") or "", vote=vote).inc()
    return jsonify(turn=turn, vote=vote)


@api.get("/settings")
def settings():
    return jsonify(settings=settings_catalogue(), keep_for_training=services().config.keep_for_training)


@api.get("/stats")
def stats():
    """Each bundle's share of new conversations, and the conversations, turns and votes it has had (kept
    in Redis: every worker and replica counts into the same numbers, and a restart keeps them)."""
    svc = services()
    names = [served.name for served in svc.bundles]
    try:
        counts, degraded = svc.store.stats(names), False
    except StoreUnavailable as e:
        svc.store_failed(e)
        counts, degraded = {}, True
    return jsonify(degraded=degraded, keep_for_training=svc.config.keep_for_training, bundles=[
        {**served.describe(), **({"conversations": None, "turns": None, "votes": None} if degraded else {
            "conversations": counts[served.name]["conversations"], "turns": counts[served.name]["turns"],
            "votes": {v: counts[served.name][v] for v in VOTES}})}
        for served in svc.bundles])
