#!/bin/sh
# Runs once, when the Postgres volume is created (docker-entrypoint-initdb.d): the application
# role finworker uses is not a superuser; it owns its database and nothing else.
set -eu
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres \
  -v app_password="$FINWORKER_DB_PASSWORD" <<'SQL'
CREATE ROLE finworker LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD :'app_password';
CREATE DATABASE finworker OWNER finworker;
REVOKE ALL ON DATABASE finworker FROM PUBLIC;
SQL
