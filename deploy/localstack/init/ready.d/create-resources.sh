#!/usr/bin/env bash
# LocalStack runs this once it is ready (mounted into /etc/localstack/init/ready.d by
# deploy/docker-compose.yml). It creates what deploy/config/poller.localstack.yaml uses: the
# Kinesis stream `orders`, the on-failure queue `orders-failures` and the Lambda function
# `process-orders`, which logs how many records it got and succeeds. The function is created
# last: the compose health check waits for it.
set -euo pipefail

awslocal kinesis create-stream --stream-name orders --shard-count 2
awslocal kinesis wait stream-exists --stream-name orders

awslocal sqs create-queue --queue-name orders-failures

workdir=$(mktemp -d)
trap 'rm -rf "$workdir"' EXIT
cat > "$workdir/handler.py" <<'PY'
import json


def handler(event, context):
    print(json.dumps({"records": len(event["Records"])}))
    return {"batchItemFailures": []}
PY
(cd "$workdir" && python3 -m zipfile -c function.zip handler.py)

awslocal lambda create-function \
  --function-name process-orders \
  --runtime python3.11 \
  --handler handler.handler \
  --role arn:aws:iam::000000000000:role/process-orders \
  --zip-file "fileb://$workdir/function.zip"
awslocal lambda wait function-active-v2 --function-name process-orders
