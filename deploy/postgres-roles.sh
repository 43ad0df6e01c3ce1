#!/bin/sh
# Run once by the postgres image when its data folder is new: makes the role
# usersvc serves as. The owner (POSTGRES_USER) migrates and grants it what
# serving needs at every start of usersvc (--migrate-database-url).
set -eu
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
  -c "CREATE ROLE usersvc_app LOGIN PASSWORD '${USERSVC_APP_PASSWORD:-usersvc_app}'"
