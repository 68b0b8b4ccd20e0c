output "dvc_bucket" {
  description = "Bucket of the DVC remote."
  value       = aws_s3_bucket.store["dvc"].bucket
}

output "dvc_remote_url" {
  description = "Use with `dvc remote add -d s3 <url>` (or SRVAU_DVC_REMOTE for the Kubernetes work pool)."
  value       = "s3://${aws_s3_bucket.store["dvc"].bucket}/dvc"
}

output "mlflow_bucket" {
  description = "Bucket of the MLflow artifact store."
  value       = aws_s3_bucket.store["mlflow"].bucket
}

output "mlflow_artifacts_destination" {
  description = "Use with `mlflow server --artifacts-destination <url>`."
  value       = "s3://${aws_s3_bucket.store["mlflow"].bucket}/artifacts"
}

output "kms_key_arn" {
  description = "KMS key encrypting both buckets (null with use_kms = false)."
  value       = local.kms_key_arn
}

output "pipeline_role_arn" {
  description = "Annotate the flow-run service account with it (eks.amazonaws.com/role-arn)."
  value       = aws_iam_role.workload["pipeline"].arn
}

output "mlflow_server_role_arn" {
  description = "Annotate the MLflow server's service account with it (eks.amazonaws.com/role-arn)."
  value       = aws_iam_role.workload["mlflow_server"].arn
}
