terraform {
  required_version = ">= 1.5"

  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = "~> 5.0"
    }
  }
}

# Credentials come from the environment (AWS_PROFILE, SSO, an assumed role, an instance profile):
# never from this code or a tfvars file.
provider "aws" {
  region = var.region

  default_tags {
    tags = merge({ project = "srvau", managed-by = "terraform" }, var.tags)
  }
}
