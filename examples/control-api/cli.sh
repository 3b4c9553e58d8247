#!/usr/bin/env bash
# The README's AWS CLI walkthrough ("Control API"): a Kinesis mapping created, changed, tagged,
# disabled, enabled and deleted through poller's control API, with no restart.
#
#   .venv/bin/poller run --config examples/control-api/config.yaml   # first, in another terminal
#   examples/control-api/cli.sh
#
# POLLER_API, POLLER_EMULATOR and STREAM override the defaults (the example config's ports).
set -euo pipefail

export AWS_ACCESS_KEY_ID="${AWS_ACCESS_KEY_ID:-test}"       # auth: none still needs a signature
export AWS_SECRET_ACCESS_KEY="${AWS_SECRET_ACCESS_KEY:-test}"
export AWS_DEFAULT_REGION=us-east-1 AWS_PAGER=""
api="--endpoint-url=${POLLER_API:-http://127.0.0.1:10028}"
emulator="--endpoint-url=${POLLER_EMULATOR:-http://127.0.0.1:4567}"
stream="${STREAM:-orders}"
stream_arn="arn:aws:kinesis:us-east-1:123456789012:stream/${stream}"

run() { echo "\$ aws $*" >&2; aws "$@"; }
state() { aws lambda get-event-source-mapping "$api" --uuid "$uuid" --query State --output text; }
wait_for_state() {
  until [ "$(state)" = "$1" ]; do sleep 1; done
  echo "State: $1" >&2
}

aws kinesis describe-stream-summary "$emulator" --stream-name "$stream" >/dev/null 2>&1 ||
  run kinesis create-stream "$emulator" --stream-name "$stream" --shard-count 1
aws kinesis wait stream-exists "$emulator" --stream-name "$stream"

uuid=$(run lambda create-event-source-mapping "$api" --function-name orders-handler \
  --event-source-arn "$stream_arn" --starting-position TRIM_HORIZON --batch-size 100 \
  --tags team=payments --query UUID --output text)
wait_for_state Enabled                                   # Creating -> Enabled
run kinesis put-record "$emulator" --stream-name "$stream" --partition-key k1 --data aGVsbG8=

run lambda update-event-source-mapping "$api" --uuid "$uuid" --batch-size 10
wait_for_state Enabled                                   # Updating -> Enabled
run lambda list-event-source-mappings "$api" --event-source-arn "$stream_arn"

esm_arn=$(aws lambda get-event-source-mapping "$api" --uuid "$uuid" \
  --query EventSourceMappingArn --output text)
run lambda tag-resource "$api" --resource "$esm_arn" --tags owner=ops
run lambda list-tags "$api" --resource "$esm_arn"

run lambda update-event-source-mapping "$api" --uuid "$uuid" --no-enabled
wait_for_state Disabled                                  # Disabling -> Disabled
run lambda update-event-source-mapping "$api" --uuid "$uuid" --enabled
wait_for_state Enabled                                   # Enabling -> Enabled

run lambda delete-event-source-mapping "$api" --uuid "$uuid"
until ! aws lambda get-event-source-mapping "$api" --uuid "$uuid" >/dev/null 2>&1; do sleep 1; done
echo "Deleted: $uuid" >&2                               # Deleting -> 404
