# Two private, versioned, encrypted buckets: the DVC remote and the MLflow artifact store.
# Kept apart so that each role gets exactly one bucket (least privilege) and each store keeps its own
# lifecycle: DVC objects are content-addressed and immutable, MLflow artifacts are deleted by `mlflow gc`.

data "aws_caller_identity" "current" {}
data "aws_partition" "current" {}

locals {
  account_id = data.aws_caller_identity.current.account_id
  buckets = {
    dvc    = coalesce(var.dvc_bucket_name, "${var.name_prefix}-dvc-${local.account_id}")
    mlflow = coalesce(var.mlflow_bucket_name, "${var.name_prefix}-mlflow-${local.account_id}")
  }
  kms_key_arn = var.use_kms ? aws_kms_key.artifacts[0].arn : null
}

resource "aws_kms_key" "artifacts" {
  count                   = var.use_kms ? 1 : 0
  description             = "${var.name_prefix}: DVC remote and MLflow artifact encryption"
  enable_key_rotation     = true
  deletion_window_in_days = 30
}

resource "aws_kms_alias" "artifacts" {
  count         = var.use_kms ? 1 : 0
  name          = "alias/${var.name_prefix}-artifacts"
  target_key_id = aws_kms_key.artifacts[0].key_id
}

resource "aws_s3_bucket" "store" {
  for_each      = local.buckets
  bucket        = each.value
  force_destroy = var.force_destroy
  tags          = { purpose = each.key }
}

# No ACLs at all: access is decided by IAM and the bucket policy only.
resource "aws_s3_bucket_ownership_controls" "store" {
  for_each = aws_s3_bucket.store
  bucket   = each.value.id
  rule {
    object_ownership = "BucketOwnerEnforced"
  }
}

resource "aws_s3_bucket_public_access_block" "store" {
  for_each                = aws_s3_bucket.store
  bucket                  = each.value.id
  block_public_acls       = true
  block_public_policy     = true
  ignore_public_acls      = true
  restrict_public_buckets = true
}

resource "aws_s3_bucket_versioning" "store" {
  for_each = aws_s3_bucket.store
  bucket   = each.value.id
  versioning_configuration {
    status = "Enabled"
  }
}

resource "aws_s3_bucket_server_side_encryption_configuration" "store" {
  for_each = aws_s3_bucket.store
  bucket   = each.value.id
  rule {
    apply_server_side_encryption_by_default {
      sse_algorithm     = var.use_kms ? "aws:kms" : "AES256"
      kms_master_key_id = local.kms_key_arn
    }
    # One KMS data key per bucket instead of per object: DVC pushes many small files.
    bucket_key_enabled = var.use_kms
  }
}

resource "aws_s3_bucket_lifecycle_configuration" "store" {
  for_each = aws_s3_bucket.store
  bucket   = each.value.id

  rule {
    id     = "expire-superseded-versions"
    status = "Enabled"
    filter {}
    noncurrent_version_expiration {
      noncurrent_days = var.noncurrent_version_retention_days
    }
    abort_incomplete_multipart_upload {
      days_after_initiation = 7
    }
  }

  depends_on = [aws_s3_bucket_versioning.store]
}

data "aws_iam_policy_document" "tls_only" {
  for_each = aws_s3_bucket.store

  statement {
    sid     = "DenyInsecureTransport"
    effect  = "Deny"
    actions = ["s3:*"]
    resources = [
      each.value.arn,
      "${each.value.arn}/*",
    ]
    principals {
      type        = "*"
      identifiers = ["*"]
    }
    condition {
      test     = "Bool"
      variable = "aws:SecureTransport"
      values   = ["false"]
    }
  }
}

resource "aws_s3_bucket_policy" "store" {
  for_each = aws_s3_bucket.store
  bucket   = each.value.id
  policy   = data.aws_iam_policy_document.tls_only[each.key].json

  depends_on = [aws_s3_bucket_public_access_block.store]
}
