"""A real HTTP stand-in for Amazon Bedrock's runtime, as the gateway's Bedrock backend uses it.

It serves `POST /model/<id>/invoke` (a JSON answer) and `/model/<id>/invoke-with-response-stream`
(an AWS event stream, `application/vnd.amazon.eventstream`, each message's payload
`{"bytes": base64(event JSON)}` with the Messages API's stream events inside: Bedrock's
documented encoding for Anthropic models). Anything else is a 404.

The credential is checked as AWS checks it: the `Authorization` header must be a SigV4
signature for the service "bedrock" in the stand-in's region by the expected access key, and
the signature is recomputed with botocore's own signer from the same credentials and the
request as received (method, path, the signed headers, the body) and compared; with a session
token, `X-Amz-Security-Token` must carry it. A request that fails gets AWS's 403
(`InvalidSignatureException` / `UnrecognizedClientException`).

The answers come from the scripted `AnthropicStandIn` it holds (`bedrock.api`): its `model` is
the model id of the path, so what the gateway meters is what the path asked for.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import re
import struct
from typing import Any

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from tests.standins.cloud import CloudRequest, CloudStandIn, Handler, close, sse_events

_PATH = re.compile(r"/model/([^/]+)/(invoke|invoke-with-response-stream)")
_AUTH = re.compile(
    r"AWS4-HMAC-SHA256 Credential=([^/]+)/(\d{8})/([^/]+)/([^/]+)/aws4_request, "
    r"SignedHeaders=([a-z0-9;-]+), Signature=([0-9a-f]{64})"
)


def event_message(payload: bytes, headers: dict[str, str]) -> bytes:
    """One AWS event-stream message: prelude (lengths and their CRC), string headers, payload,
    and the CRC of the whole."""
    encoded = b"".join(
        bytes([len(name)]) + name + b"\x07" + struct.pack(">H", len(value)) + value
        for name, value in ((n.encode(), v.encode()) for n, v in headers.items())
    )
    total = 12 + len(encoded) + len(payload) + 4
    prelude = struct.pack(">II", total, len(encoded))
    prelude += struct.pack(">I", binascii.crc32(prelude))
    message = prelude + encoded + payload
    return message + struct.pack(">I", binascii.crc32(message))


def chunk_event(event: bytes) -> bytes:
    """A Bedrock `chunk` event wrapping one Messages stream event."""
    payload = json.dumps({"bytes": base64.b64encode(event).decode()}).encode()
    headers = {
        ":event-type": "chunk",
        ":content-type": "application/json",
        ":message-type": "event",
    }
    return event_message(payload, headers)


class BedrockStandIn(CloudStandIn):
    def __init__(
        self,
        access_key: str,
        secret_key: str,
        session_token: str | None = None,
        region: str = "eu-west-1",
    ) -> None:
        super().__init__()
        self.credentials = Credentials(access_key, secret_key, session_token)
        self.region = region

    def serve(self, h: Handler, request: CloudRequest) -> None:
        match = _PATH.fullmatch(request.path)
        if request.method != "POST" or not match:
            h.answer(404, {"message": f"no such route: {request.method} {request.path}"})
            return
        if refusal := self.refusal(request):
            request.refusal = refusal
            kind = "UnrecognizedClient" if "key" in refusal else "InvalidSignature"
            kind += "Exception"
            h.answer(403, {"message": refusal}, {"x-amzn-ErrorType": kind})
            return
        request.accepted = True
        try:
            body = json.loads(request.body)
        except ValueError:
            h.answer(400, {"message": "Malformed input request"})
            return
        if not isinstance(body, dict) or body.get("anthropic_version") != "bedrock-2023-05-31":
            h.answer(400, {"message": "anthropic_version: bedrock-2023-05-31 is required"})
            return
        streams = match[2] == "invoke-with-response-stream"
        envelope = ("anthropic_version", "anthropic_beta")
        message = {k: v for k, v in body.items() if k not in envelope}
        self.api.model = match[1]
        self._answer(h, dict(message, model=match[1], stream=streams), streams)

    def _answer(self, h: Handler, body: dict[str, Any], streams: bool) -> None:
        answer = self.ask_model(body)
        try:
            if answer.status_code != 200 or not streams:
                answer.read()
                payload = answer.json()
                if answer.status_code != 200:  # AWS's error shape, the API's message in it
                    payload = {"message": str((payload.get("error") or {}).get("message"))}
                h.answer(answer.status_code, payload)
                return
            h.start_chunked(200, "application/vnd.amazon.eventstream")
            for event in sse_events(answer):
                h.chunk(chunk_event(event))
            h.end_chunked()
        finally:
            close(answer)

    def refusal(self, request: CloudRequest) -> str:
        """Why AWS would refuse the request's signature, or "" if it is valid."""
        headers = request.headers
        match = _AUTH.fullmatch(headers.get("authorization", ""))
        if not match:
            return "Missing Authentication Token"
        key, day, region, service, signed, signature = match.groups()
        if key != self.credentials.access_key:
            return "The security token included in the request is invalid (unknown key)"
        if (region, service) != (self.region, "bedrock"):
            return f"Credential should be scoped to {self.region}/bedrock"
        amz_date = headers.get("x-amz-date", "")
        if not amz_date.startswith(day):
            return "X-Amz-Date does not match the credential's date"
        token = self.credentials.token
        if token and headers.get("x-amz-security-token") != token:
            return "The security token included in the request is invalid (session key)"
        if not {"host", "x-amz-date"} <= set(signed.split(";")):
            return "host and x-amz-date must be signed"
        expected = self._signature(request, signed.split(";"), amz_date)
        if not hmac.compare_digest(expected, signature):
            return "The request signature we calculated does not match the signature you provided"
        return ""

    def _signature(self, request: CloudRequest, signed: list[str], amz_date: str) -> str:
        """The signature botocore's signer makes of this request with the stand-in's keys."""
        again = AWSRequest(
            method=request.method,
            url=f"http://{request.headers['host']}{request.path}",
            data=request.body,
            headers={name: request.headers.get(name, "") for name in signed},
        )
        again.context["timestamp"] = amz_date
        signer = SigV4Auth(self.credentials, "bedrock", self.region)
        to_sign = signer.string_to_sign(again, signer.canonical_request(again))
        return signer.signature(to_sign, again)
