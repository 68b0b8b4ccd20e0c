# The MLflow tracking server of the compose stack: the official image plus the Postgres driver and
# boto3 for the S3 (MinIO) artifact store. Same MLflow release as the project (constraints.txt).
FROM ghcr.io/mlflow/mlflow:v3.17.2
RUN pip install --no-cache-dir "psycopg2-binary>=2.9,<3" "boto3>=1.43"
