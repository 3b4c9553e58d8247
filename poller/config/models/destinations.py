"""Where a stream mapping reports the batches it discards (AWS DestinationConfig.OnFailure).

Where it sits in the data flow::

    mappings[i].destination_config (YAML) --these models--> the stream mapping's on_failure_arn
        --> poller.destinations sends the failure record there

Only stream mappings have one; an SQS mapping refuses it (a queue has a redrive policy).
"""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, Field

from poller.config.arns import DESTINATION_FORMS, check_destination_arn
from poller.config.models.base import FrozenModel, meta


class OnFailureDestination(FrozenModel):
    """Where a batch that ran out of retries or record age is reported (AWS OnFailure).

    Attributes:
        destination_arn: a standard SQS queue, a standard SNS topic or an S3 bucket. SQS and
            SNS get the failure record; S3 gets it with the batch's records as ``payload``.
    """

    destination_arn: Annotated[str, AfterValidator(check_destination_arn)] = Field(
        max_length=350,
        json_schema_extra=meta(expected=DESTINATION_FORMS),
    )


class DestinationConfig(FrozenModel):
    """Destinations of a stream mapping (AWS DestinationConfig; only OnFailure exists for ESMs).

    Attributes:
        on_failure: where discarded batches are reported; None drops them silently, as AWS does.
    """

    on_failure: OnFailureDestination | None = None
