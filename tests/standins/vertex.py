"""A real HTTP stand-in for Google Vertex AI's Anthropic models, and Google's token endpoint.

Token endpoint (`POST /token`, what a service-account key's `token_uri` names): the JWT-bearer
grant google-auth sends; the assertion must be an RS256 JWT signed by the service account's key
(verified with the public half of the key `service_account_key` generated), issued by its
`client_email`, for the cloud-platform scope, addressed to Google's token endpoint (the
audience google-auth sets) and not expired. It
answers with a fresh access token.

Model endpoint: `POST /v1/projects/<p>/locations/<r>/publishers/anthropic/models/<m>:rawPredict`
(JSON) and `:streamRawPredict` (the Messages API's SSE), and `.../models/count-tokens:rawPredict`;
the `Authorization: Bearer` must be an access token it issued, the project and region its own,
the body's `anthropic_version` `vertex-2023-10-16`. A bad token is Google's 401
`UNAUTHENTICATED`. The answers come from the scripted `AnthropicStandIn` it holds (`vertex.api`).
"""

from __future__ import annotations

import json
import re
import secrets
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.standins.cloud import CloudRequest, CloudStandIn, Handler, close

SCOPE = "https://www.googleapis.com/auth/cloud-platform"
CLIENT_EMAIL = "claudecluster-test@stand-in.iam.gserviceaccount.com"
# The audience google-auth puts in the assertion whatever the key's token_uri, as Google expects.
AUDIENCE = "https://oauth2.googleapis.com/token"
_MODEL_PATH = re.compile(
    r"/v1/projects/([^/]+)/locations/([^/]+)/publishers/anthropic/models/([^/:]+):"
    r"(rawPredict|streamRawPredict)"
)


class VertexStandIn(CloudStandIn):
    def __init__(self, project: str = "cc-test-project", region: str = "europe-west1") -> None:
        super().__init__()
        self.project, self.region = project, region
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.issued: set[str] = set()

    @property
    def token_uri(self) -> str:
        return self.url + "/token"

    def key_pem(self, key: rsa.RSAPrivateKey | None = None) -> str:
        return (
            (key or self.key)
            .private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
            .decode()
        )

    def service_account_key(self, path: Path, key: rsa.RSAPrivateKey | None = None) -> Path:
        """Write a service-account key file for this stand-in (another `key`: one it refuses)."""
        pem = self.key_pem(key).encode()
        path.write_text(
            json.dumps(
                {
                    "type": "service_account",
                    "project_id": self.project,
                    "private_key_id": secrets.token_hex(20),
                    "private_key": pem.decode(),
                    "client_email": CLIENT_EMAIL,
                    "client_id": "1234567890",
                    "token_uri": self.token_uri,
                }
            )
        )
        path.chmod(0o600)
        return path

    def serve(self, h: Handler, request: CloudRequest) -> None:
        if request.method == "POST" and request.path == "/token":
            self._token(h, request)
            return
        match = _MODEL_PATH.fullmatch(request.path)
        if request.method != "POST" or not match:
            h.answer(404, _error(404, "NOT_FOUND", f"no such route: {request.path}"))
            return
        bearer = request.headers.get("authorization", "").removeprefix("Bearer ")
        if bearer not in self.issued:
            request.refusal = "invalid access token"
            h.answer(401, _error(401, "UNAUTHENTICATED", "Request had invalid credentials."))
            return
        request.accepted = True
        project, region, model, method = match.groups()
        if (project, region) != (self.project, self.region):
            h.answer(403, _error(403, "PERMISSION_DENIED", "not this project or region"))
            return
        try:
            body = json.loads(request.body)
        except ValueError:
            body = None
        if not isinstance(body, dict) or body.pop("anthropic_version", "") != "vertex-2023-10-16":
            h.answer(400, _error(400, "INVALID_ARGUMENT", "anthropic_version is required"))
            return
        if model == "count-tokens":
            self._relay(h, body, "/v1/messages/count_tokens")
            return
        body["model"] = model
        body["stream"] = method == "streamRawPredict" and body.get("stream", True)
        self._relay(h, body, "/v1/messages")

    def _relay(self, h: Handler, body: dict[str, Any], path: str) -> None:
        answer = self.ask_model(body, path)
        try:
            kind = answer.headers.get("content-type", "")
            if answer.status_code == 200 and kind.startswith("text/event-stream"):
                h.start_chunked(200, kind)  # Vertex streams the Messages API's own events
                for piece in answer.iter_raw():
                    h.chunk(piece)
                h.end_chunked()
                return
            answer.read()
            h.answer(answer.status_code, answer.json())
        finally:
            close(answer)

    def _token(self, h: Handler, request: CloudRequest) -> None:
        form = {k: v[0] for k, v in parse_qs(request.body.decode()).items()}
        if form.get("grant_type") != "urn:ietf:params:oauth:grant-type:jwt-bearer":
            h.answer(400, {"error": "unsupported_grant_type"})
            return
        try:
            claims = jwt.decode(
                form.get("assertion", ""),
                self.key.public_key(),
                algorithms=["RS256"],
                audience=AUDIENCE,
                issuer=CLIENT_EMAIL,
                options={"require": ["exp", "iat", "aud", "iss"]},
            )
        except jwt.PyJWTError as exc:
            request.refusal = f"invalid assertion: {type(exc).__name__}"
            h.answer(400, {"error": "invalid_grant", "error_description": "Invalid JWT Signature."})
            return
        if SCOPE not in str(claims.get("scope", "")).split():
            h.answer(400, {"error": "invalid_scope"})
            return
        request.accepted = True
        token = "ya29." + secrets.token_urlsafe(48)
        self.issued.add(token)
        h.answer(200, {"access_token": token, "expires_in": 3600, "token_type": "Bearer"})


def _error(code: int, status: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "status": status}}
