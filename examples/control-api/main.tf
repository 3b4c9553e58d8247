# A mapping managed by Terraform through poller's control API (README: "Control API").
#
#   terraform init -plugin-dir=/opt/tf-plugins   # offline, from a provider mirror; or plain init
#   terraform apply -var event_source_arn=arn:aws:kinesis:us-east-1:123456789012:stream/orders
#
# The AWS provider talks to poller as if it were Lambda: only the lambda endpoint is overridden,
# and the skip_* flags keep it from calling STS, IAM or the instance metadata service.
# tests/integration/test_c5_terraform.py applies this very file against a live poller.

terraform {
  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = ">= 5.0"
    }
  }
}

variable "endpoint" {
  description = "poller's control API (control_api.host and port)"
  type        = string
  default     = "http://127.0.0.1:10028"
}

variable "access_key" {
  description = "with auth: sigv4, a key pair control_api.credentials names; any value with auth: none"
  type        = string
  default     = "test"
}

variable "secret_key" {
  type      = string
  default   = "test"
  sensitive = true
}

variable "event_source_arn" {
  description = "the Kinesis stream, DynamoDB stream or SQS queue to read"
  type        = string
}

variable "function_name" {
  description = "a key of control_api.functions (a local handler), else a Lambda function"
  type        = string
  default     = "orders-handler"
}

variable "batch_size" {
  type    = number
  default = 100
}

variable "queue_arn" {
  description = "an SQS queue to map to the same function too; empty: none"
  type        = string
  default     = ""
}

provider "aws" {
  region                      = "us-east-1"
  access_key                  = var.access_key
  secret_key                  = var.secret_key
  skip_credentials_validation = true
  skip_requesting_account_id  = true
  skip_metadata_api_check     = true

  endpoints {
    lambda = var.endpoint
  }
}

resource "aws_lambda_event_source_mapping" "orders" {
  event_source_arn  = var.event_source_arn
  function_name     = var.function_name
  starting_position = "TRIM_HORIZON"
  batch_size        = var.batch_size

  tags = {
    team = "payments"
  }
}

resource "aws_lambda_event_source_mapping" "queue" {
  count            = var.queue_arn == "" ? 0 : 1
  event_source_arn = var.queue_arn
  function_name    = var.function_name
  batch_size       = 10

  tags = {
    team = "payments"
  }
}

output "uuid" {
  value = aws_lambda_event_source_mapping.orders.uuid
}

output "state" {
  value = aws_lambda_event_source_mapping.orders.state
}

output "queue_uuid" {
  value = one(aws_lambda_event_source_mapping.queue[*].uuid)
}
