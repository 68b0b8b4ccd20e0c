variable "region" {
  description = "AWS region of the buckets, the KMS key and the IAM roles."
  type        = string
  default     = "us-east-1"
}

variable "name_prefix" {
  description = "Prefix of every resource name (roles, policies, KMS alias)."
  type        = string
  default     = "srvau"

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{1,30}$", var.name_prefix))
    error_message = "name_prefix: 2-31 characters, lowercase letters, digits and '-', starting with a letter."
  }
}

variable "dvc_bucket_name" {
  description = "Bucket of the DVC remote (datasets, frame caches, checkpoints). Globally unique; null = <name_prefix>-dvc-<account id>."
  type        = string
  default     = null
}

variable "mlflow_bucket_name" {
  description = "Bucket of the MLflow artifact store (models, reports, plots). Globally unique; null = <name_prefix>-mlflow-<account id>."
  type        = string
  default     = null
}

variable "use_kms" {
  description = "Encrypt both buckets with a customer-managed KMS key (SSE-KMS, rotated yearly); false = SSE-S3 (AES256)."
  type        = bool
  default     = true
}

variable "noncurrent_version_retention_days" {
  description = "Days a superseded object version is kept (versioning protects against overwrites and deletes; this bounds its cost)."
  type        = number
  default     = 90

  validation {
    condition     = var.noncurrent_version_retention_days >= 1
    error_message = "noncurrent_version_retention_days must be >= 1."
  }
}

variable "force_destroy" {
  description = "Let `terraform destroy` delete non-empty buckets. Keep false outside throw-away stacks."
  type        = bool
  default     = false
}

variable "eks_oidc_provider_arn" {
  description = "IAM OIDC provider ARN of the EKS cluster (IRSA). Set it to let Kubernetes service accounts assume the roles; null = no Kubernetes trust."
  type        = string
  default     = null
}

variable "k8s_namespace" {
  description = "Kubernetes namespace of the pipeline pods and the MLflow server (infra/k8s uses 'srvau')."
  type        = string
  default     = "srvau"
}

variable "pipeline_service_account" {
  description = "Service account of the flow-run pods (the Prefect work-pool template's service_account_name)."
  type        = string
  default     = "srvau-pipeline"
}

variable "mlflow_service_account" {
  description = "Service account of the MLflow tracking server pods."
  type        = string
  default     = "mlflow"
}

variable "pipeline_trusted_principal_arns" {
  description = "Other IAM principals (a CI runner role, a GPU box's instance role) allowed to assume the pipeline role."
  type        = list(string)
  default     = []
}

variable "mlflow_trusted_principal_arns" {
  description = "Other IAM principals (e.g. the role of an EC2/ECS-hosted MLflow server) allowed to assume the MLflow server role."
  type        = list(string)
  default     = []
}

variable "tags" {
  description = "Extra tags on every resource."
  type        = map(string)
  default     = {}
}
