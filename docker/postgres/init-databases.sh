#!/usr/bin/env bash
# Creates the two databases of the stack in the postgres container, on its first start (the official image runs
# /docker-entrypoint-initdb.d/*.sh only while the data directory is empty): PREFECT_DB for Prefect's API server
# (with pg_trgm, which its migrations need) and MLFLOW_DB for MLflow's tracking store and model registry.
# Idempotent: run again by hand (`docker compose exec postgres /docker-entrypoint-initdb.d/10-init-databases.sh`)
# it creates only what is missing.
set -euo pipefail

prefect_db="${PREFECT_DB:-prefect}"
mlflow_db="${MLFLOW_DB:-mlflow}"

psql_as_owner() {
    psql -v ON_ERROR_STOP=1 --no-psqlrc --username "$POSTGRES_USER" "$@"
}

create_database() {
    # CREATE DATABASE cannot run inside a DO block or a function: select the statement, \gexec runs it if selected
    psql_as_owner --dbname postgres -v db="$1" <<'SQL'
SELECT format('CREATE DATABASE %I OWNER %I', :'db', current_user)
WHERE NOT EXISTS (SELECT 1 FROM pg_database WHERE datname = :'db')
\gexec
SQL
}

create_database "$prefect_db"
create_database "$mlflow_db"
psql_as_owner --dbname "$prefect_db" -c 'CREATE EXTENSION IF NOT EXISTS pg_trgm;'
echo "init-databases: ready: $prefect_db (pg_trgm), $mlflow_db"
