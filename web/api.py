"""The JSON API: chat (whole, or streamed as server-sent events), regenerate, history, reset, feedback, settings.

The conversation id sits in Flask's signed session cookie; the turns sit in Redis, which is where the
bot's context comes from, so any worker answers any turn. When Redis fails (unreachable, out of memory,
unable to write its files, ...) the chat still replies, marked "degraded" and without context if it could not
be read; what needs the stored conversation says 503.
"""
from __future__ import annotations

import json
import logging
import math
import re
import secrets
import threading

from flask import Blueprint, Response, abort, jsonify, request, session, stream_with_context

from ergo.chatbot import AVOID_TURNS, SETTINGS, check_settings, choices_of
from ergo.errors import ErgoError

from . import metrics
from .config import WebConfig
from .store import ConversationStore, StoreUnavailable

log = logging.getLogger("ergo.web")
CID = re.compile(r"^[A-Za-z0-9_-]{24}$")
VOTES = ("up", "down")


def conversation_id(new: bool = False) -> str:
    """This client's conversation id, from the signed cookie; a fresh random one when absent or asked."""
    cid = session.get("cid")
    if new or not isinstance(cid, str) or not CID.match(cid):
        cid = secrets.token_urlsafe(18)
        session["cid"] = cid
    session.permanent = True  # the cookie lives as long as the conversation's TTL, renewed on use
    return cid


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


def api_blueprint(bot, store: ConversationStore, config: WebConfig, limit) -> Blueprint:
    """The /api routes around one loaded bot; `limit` is the rate-limit decorator for writes."""
    api = Blueprint("api", __name__, url_prefix="/api")
    model_lock = threading.Lock()  # one reply at a time per worker: the model already uses its cores
    failing = None  # the kind of the Redis failure last logged, until a turn is kept again

    def store_failed(e: StoreUnavailable) -> None:
        """Count every failure; log each kind once (a race may log it twice), not once a request."""
        nonlocal failing
        metrics.REDIS_ERRORS.inc()
        if failing != e.kind:
            failing = e.kind
            log.warning("Redis failed (%s): replies are degraded, and not kept, until it is back", e)

    def store_ok() -> None:
        nonlocal failing
        if failing is not None:
            failing = None
            log.warning("Redis is back: conversations are kept")

    def reply_to(history: list[str], settings: dict):
        with model_lock:
            try:
                reply = bot.reply(history, **settings)
            except ErgoError as e:
                abort(400, str(e))
        metrics.REPLY_SECONDS.observe(reply.seconds)
        return reply

    def bot_turn(reply) -> dict:
        score = round(reply.score, 4) if math.isfinite(reply.score) else None  # JSON has no infinity
        return {"role": "bot", "text": reply.text, "decoder": reply.decoder, "score": score}

    def message_from(body: dict) -> str:
        message = body.get("message")
        if message is None:
            abort(400, "message is required")
        if not isinstance(message, str):
            abort(400, "message must be a string")
        message = message.strip()
        if not message:
            abort(400, "message is empty")
        if len(message) > config.max_message_chars:
            abort(400, f"message is too long: {len(message)} characters, at most {config.max_message_chars}")
        return message

    def chat_turn() -> tuple[str, dict, str, list[str], bool]:
        """(message, settings, conversation id, the stored turns a reply needs, degraded) of a chat request."""
        body = json_body(("message", "settings"))
        message, settings = message_from(body), settings_from(body)
        cid = conversation_id()
        try:
            # the turns a reply may not repeat (they hold the context window, and spare turns should some
            # have no words: Chatbot.context skips them)
            last = max(AVOID_TURNS, 2 * bot.bundle.data_config.context_turns)
            return message, settings, cid, [t["text"] for t in store.turns(cid, last=last)], False
        except StoreUnavailable as e:
            store_failed(e)
            return message, settings, cid, [], True

    def kept(cid: str, message: str, reply, degraded: bool) -> dict:
        """Store the exchange (unless Redis already failed) -> the JSON object /api/chat answers."""
        turn = None
        if not degraded:
            try:
                turn = store.append(cid, {"role": "user", "text": message}, bot_turn(reply))
                store_ok()
            except StoreUnavailable as e:
                store_failed(e)
                degraded = True
        metrics.REPLIES.labels(degraded=str(degraded).lower()).inc()
        return dict(reply=reply.text, conversation_id=cid, turn=turn, degraded=degraded)

    @api.post("/chat")
    @limit
    def chat():
        message, settings, cid, context, degraded = chat_turn()
        return jsonify(kept(cid, message, reply_to(context + [message], settings), degraded))

    @api.post("/chat/stream")
    @limit
    def chat_stream():
        """/api/chat as server-sent events: `token` events with each piece of text as it is generated, then
        `done` with what /api/chat answers. The exchange is stored once, at the end."""
        message, settings, cid, context, degraded = chat_turn()
        try:
            pieces = bot.reply_stream(context + [message], **settings)
        except ErgoError as e:
            abort(400, str(e))

        def events():
            with model_lock:
                for piece in pieces:
                    if isinstance(piece, str):
                        yield sse("token", {"text": piece})
            metrics.REPLY_SECONDS.observe(piece.seconds)
            yield sse("done", kept(cid, message, piece, degraded))

        return Response(stream_with_context(events()), mimetype="text/event-stream",
                        headers={"X-Accel-Buffering": "no"})  # a proxy such as nginx passes each event on

    @api.post("/regenerate")
    @limit
    def regenerate():
        settings = settings_from(json_body(("settings",)))
        cid = conversation_id()
        try:
            turns = store.turns(cid)
        except StoreUnavailable as e:
            store_failed(e)
            abort(503, "the conversation store is unreachable; try again in a moment")
        if len(turns) < 2 or turns[-1]["role"] != "bot":
            abort(409, "there is no reply to regenerate")
        reply = reply_to([t["text"] for t in turns[:-1]], settings)
        n = turns[-1]["n"]
        try:
            replaced = store.replace_last(cid, n, bot_turn(reply))
        except StoreUnavailable as e:
            store_failed(e)
            abort(503, "the conversation store is unreachable; try again in a moment")
        if not replaced:
            abort(409, "the conversation moved on meanwhile; reload it and try again")
        metrics.REPLIES.labels(degraded="false").inc()
        return jsonify(reply=reply.text, conversation_id=cid, turn=n, degraded=False)

    @api.get("/history")
    def history():
        cid = conversation_id()
        try:
            turns = store.turns(cid, votes=True)
        except StoreUnavailable as e:
            store_failed(e)
            return jsonify(conversation_id=cid, turns=[], degraded=True)
        keep = ("role", "text", "vote")
        return jsonify(conversation_id=cid, degraded=False,
                       turns=[{"turn": t["n"], **{k: t[k] for k in keep if k in t}} for t in turns])

    @api.post("/reset")
    @limit
    def reset():
        """A new conversation id; the old conversation is left to expire with its TTL."""
        json_body(())  # JSON only, as every write: a cross-site form cannot send it
        return jsonify(conversation_id=conversation_id(new=True))

    @api.post("/feedback")
    @limit
    def feedback():
        body = json_body(("turn", "vote"))
        turn, vote = body.get("turn"), body.get("vote")
        if isinstance(turn, float) and turn.is_integer():
            turn = int(turn)  # JSON has one kind of number: 2.0 is turn 2, as settings take it
        if isinstance(turn, bool) or not isinstance(turn, int) or turn < 1:
            abort(400, "turn must be a positive integer (the turn number of a reply)")
        if vote not in VOTES:
            abort(400, "vote must be \"up\" or \"down\"")
        cid = conversation_id()
        try:
            found = store.vote(cid, turn, vote)
        except StoreUnavailable as e:
            store_failed(e)
            abort(503, "the conversation store is unreachable; try again in a moment")
        if not found:
            abort(404, f"this conversation keeps no reply numbered {turn}")
        metrics.FEEDBACK.labels(vote=vote).inc()
        return jsonify(turn=turn, vote=vote)

    @api.get("/settings")
    def settings():
        return jsonify(settings=settings_catalogue())

    return api
