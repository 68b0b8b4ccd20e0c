# Least-privilege roles, one per workload, each limited to its own bucket:
#   pipeline      flow-run pods / GPU boxes: read+write the DVC remote (dvc pull/push). No delete:
#                 DVC objects are content-addressed, and `dvc gc -c` is an operator's job.
#                 No MLflow bucket: the MLflow server proxies artifacts (`--artifacts-destination`).
#   mlflow_server the tracking server: read+write+delete its artifact bucket (`mlflow gc`).
# Trust: the EKS service accounts through IRSA when eks_oidc_provider_arn is set, plus any listed
# principals. The Prefect worker itself (it only creates Kubernetes Jobs) needs no AWS access.

locals {
  oidc_host = var.eks_oidc_provider_arn == null ? null : element(split("oidc-provider/", var.eks_oidc_provider_arn), 1)

  roles = {
    pipeline = {
      bucket          = "dvc"
      service_account = var.pipeline_service_account
      principals      = var.pipeline_trusted_principal_arns
      object_actions  = ["s3:GetObject", "s3:PutObject", "s3:AbortMultipartUpload", "s3:ListMultipartUploadParts"]
    }
    mlflow_server = {
      bucket          = "mlflow"
      service_account = var.mlflow_service_account
      principals      = var.mlflow_trusted_principal_arns
      object_actions  = ["s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload", "s3:ListMultipartUploadParts"]
    }
  }
}

data "aws_iam_policy_document" "assume" {
  for_each = local.roles

  dynamic "statement" {
    for_each = var.eks_oidc_provider_arn == null ? [] : [1]
    content {
      sid     = "EksServiceAccount"
      actions = ["sts:AssumeRoleWithWebIdentity"]
      principals {
        type        = "Federated"
        identifiers = [var.eks_oidc_provider_arn]
      }
      condition {
        test     = "StringEquals"
        variable = "${local.oidc_host}:sub"
        values   = ["system:serviceaccount:${var.k8s_namespace}:${each.value.service_account}"]
      }
      condition {
        test     = "StringEquals"
        variable = "${local.oidc_host}:aud"
        values   = ["sts.amazonaws.com"]
      }
    }
  }

  dynamic "statement" {
    for_each = length(each.value.principals) == 0 ? [] : [1]
    content {
      sid     = "TrustedPrincipals"
      actions = ["sts:AssumeRole"]
      principals {
        type        = "AWS"
        identifiers = each.value.principals
      }
    }
  }
}

resource "aws_iam_role" "workload" {
  for_each             = local.roles
  name                 = "${var.name_prefix}-${replace(each.key, "_", "-")}"
  description          = "${var.name_prefix} ${each.key}: access to the ${each.value.bucket} bucket only"
  assume_role_policy   = data.aws_iam_policy_document.assume[each.key].json
  max_session_duration = 43200 # a paper-scale GRPO run outlives the 1 h default session

  lifecycle {
    precondition {
      condition     = var.eks_oidc_provider_arn != null || length(each.value.principals) > 0
      error_message = "Nobody could assume role ${each.key}: set eks_oidc_provider_arn or ${each.key}_trusted_principal_arns."
    }
  }
}

data "aws_iam_policy_document" "access" {
  for_each = local.roles

  statement {
    sid       = "ListOwnBucket"
    actions   = ["s3:ListBucket", "s3:GetBucketLocation", "s3:ListBucketMultipartUploads"]
    resources = [aws_s3_bucket.store[each.value.bucket].arn]
  }

  statement {
    sid       = "ObjectsInOwnBucket"
    actions   = each.value.object_actions
    resources = ["${aws_s3_bucket.store[each.value.bucket].arn}/*"]
  }

  dynamic "statement" {
    for_each = var.use_kms ? [1] : []
    content {
      sid       = "UseArtifactKey"
      actions   = ["kms:Decrypt", "kms:Encrypt", "kms:GenerateDataKey", "kms:DescribeKey"]
      resources = [local.kms_key_arn]
    }
  }
}

resource "aws_iam_policy" "access" {
  for_each    = local.roles
  name        = "${var.name_prefix}-${replace(each.key, "_", "-")}-s3"
  description = "${var.name_prefix} ${each.key}: objects of s3://${local.buckets[each.value.bucket]}"
  policy      = data.aws_iam_policy_document.access[each.key].json
}

resource "aws_iam_role_policy_attachment" "access" {
  for_each   = local.roles
  role       = aws_iam_role.workload[each.key].name
  policy_arn = aws_iam_policy.access[each.key].arn
}
