"""Where a mapping delivers its batches: a Lambda function, an HTTP endpoint or a Python handler.

Where it sits in the data flow::

    mappings[i].target (YAML) --TargetConfig, chosen by ``type``--> poller.targets builds the
                                                                     target that invokes it

What no request could carry (a control character in a URL or header, a host IDNA refuses,
credentials both in the URL and in an Authorization header) is refused here, in one line,
rather than failing every invocation at run time. An HTTP or Python target's
``input_template`` is compiled here too (:mod:`poller.core.transform`), so a bad template
fails at load with its line and column.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import AfterValidator, Field, Tag, field_validator, model_validator
from yarl import URL

from poller.config.arns import FUNCTION_NAME
from poller.config.models.base import Float, FrozenModel, HttpUrl, meta
from poller.config.wording import own_error
from poller.core.transform import MAX_TEMPLATE_CHARS, BatchShape, TemplateError, compile_template

_IDENTIFIER = "[A-Za-z_][A-Za-z0-9_]*"
_HANDLER = f"^{_IDENTIFIER}(?:\\.{_IDENTIFIER})*:{_IDENTIFIER}$"


def _compiles(template: str | None) -> str | None:
    """Compile the template at load, so a bad one fails with its line and column."""
    if template is not None:
        try:
            compile_template(template)
        except TemplateError as exc:
            raise own_error("input_template", "{problem}", problem=str(exc)) from None
    return template


#: Pipes' InputTemplate: each record reshaped before delivery (HTTP and Python targets).
InputTemplate = Annotated[
    str | None,
    Field(
        default=None,
        min_length=1,
        max_length=MAX_TEMPLATE_CHARS,
        json_schema_extra=meta(
            aws="InputTemplate",
            expected="an EventBridge Pipes input template, such as "
            '{"id": <$.messageId>, "order": <$.body.order>}',
        ),
    ),
    AfterValidator(_compiles),
]

#: What the target receives for a batch: ``records`` ({"Records": [...]}) or ``array``.
BatchShapeField = Annotated[BatchShape, Field(default="records")]


def _shape_needs_template(input_template: str | None, batch_shape: BatchShape) -> None:
    """Refuse ``batch_shape: array`` without a template: nothing would apply it."""
    if batch_shape == "array" and input_template is None:
        raise own_error(
            "batch_shape_without_template",
            "batch_shape: array applies only with an input_template; add one (<$> sends "
            "each record as it is) or remove batch_shape",
        )


class LambdaTargetConfig(FrozenModel):
    """Deliver batches by invoking an AWS Lambda function.

    Attributes:
        type: always ``lambda``.
        function_name: a function name, or a full or partial ARN, optionally with
            ``:version`` or ``:alias``.
        qualifier: a version or alias to invoke, when the name does not carry one.
    """

    type: Literal["lambda"]
    function_name: str = Field(
        min_length=1,
        max_length=256,
        pattern=FUNCTION_NAME,
        json_schema_extra=meta(
            aws="FunctionName",
            expected="a function name, or a full or partial Lambda ARN, optionally with "
            ":version or :alias (for example my-function or "
            "arn:aws:lambda:us-east-1:123456789012:function:my-function:live)",
        ),
    )
    qualifier: str | None = Field(
        default=None,
        min_length=1,
        max_length=128,
        pattern=r"^[A-Za-z0-9$_-]+$",
        json_schema_extra=meta(expected="a version number, $LATEST or an alias name"),
    )


def _is_ip_address(host: str) -> bool:
    """Whether ``host`` is an IPv4 or IPv6 address (with an IPv6 zone, as in ``fe80::1%eth0``)."""
    try:
        ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    return True


class HttpTargetConfig(FrozenModel):
    """Deliver batches as an HTTP POST of the Lambda event JSON.

    Attributes:
        type: always ``http``.
        url: the endpoint that receives the event.
        headers: extra request headers.
        timeout_seconds: the invocation timeout; running past it counts as a function error.
        input_template: reshapes each record before delivery (Pipes' InputTemplate).
        batch_shape: with a template, ``records`` posts ``{"Records": [...]}``, ``array``
            posts the bare array (as Pipes does).
    """

    type: Literal["http"]
    url: HttpUrl
    headers: dict[str, str] = Field(default_factory=dict)
    timeout_seconds: Float = Field(default=30.0, gt=0, le=900)
    input_template: InputTemplate = None
    batch_shape: BatchShapeField = "records"

    @model_validator(mode="after")
    def _check_batch_shape(self) -> HttpTargetConfig:
        _shape_needs_template(self.input_template, self.batch_shape)
        return self

    # What no HTTP request can carry is refused here, in one line, rather than failing every
    # invocation. Messages name headers but never quote their values, which may be secrets.

    @field_validator("url")
    @classmethod
    def _url_without_control_characters(cls, url: str) -> str:
        """A URL never holds a control character or a space (CR/LF would inject headers)."""
        for position, char in enumerate(url):
            if char <= " " or char == "\x7f":
                raise own_error(
                    "url_character",
                    "the URL holds {char} at position {position}; a URL cannot contain control "
                    "characters or spaces (percent-encode them)",
                    char=repr(char),
                    position=position,
                )
        return url

    @field_validator("url")
    @classmethod
    def _url_host_resolvable(cls, url: str) -> str:
        """The host must survive the IDNA encoding aiohttp and the resolver apply to it: an
        empty or 64-character label, a character IDNA forbids, or a space (U+00A0 becomes
        one) would fail every request, or crash the target's start."""
        try:
            host = URL(url).raw_host or ""
            if not _is_ip_address(host):
                host.encode("idna")
        except (UnicodeError, ValueError):
            host = ""
        if not host or not (_is_ip_address(host) or re.fullmatch(r"[A-Za-z0-9._-]+", host)):
            raise own_error(
                "url_host",
                "the URL's host {host} is not a host name a request can be sent to (labels of "
                "1 to 63 letters, digits or hyphens, or an IP address)",
                host=repr(urlsplit(url).hostname),
            )
        return url

    @field_validator("headers")
    @classmethod
    def _headers_http_can_send(cls, headers: dict[str, str]) -> dict[str, str]:
        """Names are HTTP tokens, values hold no control characters, framing is poller's."""
        seen: set[str] = set()
        for name, value in headers.items():
            if not re.fullmatch(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+", name):
                raise own_error(
                    "header_name",
                    "{name} is not an HTTP header name (letters, digits and !#$%&'*+-.^_`|~)",
                    name=repr(name),
                )
            if any((c < " " and c != "\t") or c == "\x7f" for c in value):
                raise own_error(
                    "header_value",
                    "header {name}: the value holds a control character (CR, LF, NUL...), "
                    "which HTTP cannot send",
                    name=repr(name),
                )
            if name.lower() in ("content-length", "transfer-encoding"):
                raise own_error(
                    "header_framing",
                    "header {name} is set by poller, which frames the request body; remove it",
                    name=repr(name),
                )
            if name.lower() in seen:
                raise own_error(
                    "header_duplicate",
                    "header {name} is given twice (header names ignore case)",
                    name=repr(name),
                )
            seen.add(name.lower())
        return headers

    @model_validator(mode="after")
    def _one_kind_of_credentials(self) -> HttpTargetConfig:
        """Credentials in the URL become an Authorization header, so both cannot be sent."""
        parts = urlsplit(self.url)
        in_url = parts.username is not None or parts.password is not None
        if in_url and any(name.lower() == "authorization" for name in self.headers):
            raise own_error(
                "url_and_authorization",
                "the URL carries credentials (user:password@) and headers has Authorization; "
                "a request sends one or the other, so keep only one",
            )
        return self


class PythonTargetConfig(FrozenModel):
    """Deliver batches by calling a Python function in this process.

    Attributes:
        type: always ``python``.
        handler: ``package.module:function``; the function takes ``(event, context)``.
        timeout_seconds: the invocation timeout; running past it counts as a function error.
        input_template: reshapes each record before delivery (Pipes' InputTemplate).
        batch_shape: with a template, ``records`` passes ``{"Records": [...]}``, ``array``
            the bare array (as Pipes does).
    """

    type: Literal["python"]
    handler: str = Field(
        pattern=_HANDLER,
        json_schema_extra=meta(
            expected="package.module:function, dotted identifiers and exactly one colon "
            "(for example examples.handlers:log_batch)"
        ),
    )
    timeout_seconds: Float = Field(default=60.0, gt=0, le=900)
    input_template: InputTemplate = None
    batch_shape: BatchShapeField = "records"

    @model_validator(mode="after")
    def _check_batch_shape(self) -> PythonTargetConfig:
        _shape_needs_template(self.input_template, self.batch_shape)
        return self


#: Where a mapping delivers its batches, chosen by ``type``.
TargetConfig = Annotated[
    Annotated[LambdaTargetConfig, Tag("lambda")]
    | Annotated[HttpTargetConfig, Tag("http")]
    | Annotated[PythonTargetConfig, Tag("python")],
    Field(discriminator="type"),
]
