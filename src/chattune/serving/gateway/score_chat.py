"""The seed's `/score` for engines that speak only OpenAI's chat API (vLLM), and the
`model` of their chat requests.

The request is parsed with the model server's own wire models and turned into one chat
completion per conversation (`ScoreInput.chat_requests`: the same defaults as the built-in
engine's `/score`); the answers are put back into `/score`'s shape (`ScoreResponse.of`), so a
client sees the same body whichever engine runs the deployment.

The gateway, not the `model` field, picks the deployment; the built-in engine ignores that
field, vLLM answers 404 to a name it does not serve: `with_model` names the deployment's.
"""

from __future__ import annotations

import json

from chattune.serving.bodies import parse_body
from chattune.serving.model_server.schemas import ChatCompletion, ScoreRequest, ScoreResponse

SCORE_PATH = "/score"
CHAT_PATH = "/v1/chat/completions"


def is_score(path: str) -> bool:
    """Whether a request path (maybe with a query string) is `/score`."""
    return path.partition("?")[0] == SCORE_PATH


def chat_bodies(score_body: bytes, model: str) -> list[bytes]:
    """The `/v1/chat/completions` bodies of a `/score` body, one per conversation.

    Raises:
        InvalidRequest: the body is not the seed's `/score` body (400 naming the field).
    """
    request = parse_body(ScoreRequest, score_body)
    return [
        r.model_dump_json(exclude_none=True).encode()
        for r in request.input_data.chat_requests(model)
    ]


def score_body(chat_answers: list[bytes]) -> bytes:
    """The `/score` answer made of the chat completions' answers, in order."""
    texts = [ChatCompletion.model_validate_json(a).choices[0].message.content for a in chat_answers]
    return ScoreResponse.of(texts).model_dump_json().encode()


def is_chat(path: str) -> bool:
    return path.partition("?")[0] == CHAT_PATH


def with_model(chat_body: bytes, model: str) -> bytes:
    """A chat request's body with `model` set to the served name (a body that is not a JSON
    object goes as it is: the engine's 400 says what is wrong)."""
    try:
        request = json.loads(chat_body)
    except ValueError:
        return chat_body
    if not isinstance(request, dict):
        return chat_body
    return json.dumps({**request, "model": model}).encode()
